//! An optional system BLAS for the CPU matrix products, loaded at run time.
//!
//! Why: the `gemm` crate (pure Rust, the one burn's flex backend uses) reaches 90-150 GFLOP/s on
//! this project's linear-layer shapes on two AVX2 cores, while OpenBLAS reaches 135-165 on the
//! same shapes, and at batch 1 (321 tokens) 150 against 90 (BENCHMARKS.md). PyTorch, the
//! reference the speed goals are set against, calls MKL. So when a CBLAS library is installed,
//! the products go through its `cblas_sgemm`; when none is, everything runs as before on the
//! `gemm` crate. Nothing is linked at build time: the library is opened with `dlopen` on first
//! use, so the build and the binaries stay free of system dependencies.
//!
//! Which library: none unless asked for (see [`blas`] for why). `SFTOK_BLAS=/path/to/lib.so`
//! names one; `SFTOK_BLAS=auto` looks for a threaded OpenBLAS build under its usual names (Debian:
//! `libopenblas0-pthread`). Plain `libblas.so.3` is not tried: it may be the reference BLAS, which
//! is slower than `gemm`.
//!
//! Threads: rayon stays the only thread pool. The library is asked to use one thread
//! (`openblas_set_num_threads(1)` and the MKL and BLIS equivalents, when exported), and large
//! products are split across rayon's threads by the caller ([`super::gemm`]). A product
//! that cannot be expressed in CBLAS's terms (no unit stride in either dimension, or a dimension
//! past `i32`) returns `false` and the caller uses the `gemm` crate.

use std::ffi::{CStr, c_char, c_float, c_int};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::builtin_gemm::builtin_gemm;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_float,
    *const c_float,
    c_int,
    *const c_float,
    c_int,
    c_float,
    *mut c_float,
    c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);
type GetParallel = unsafe extern "C" fn() -> c_int;
type GetThreads = unsafe extern "C" fn() -> c_int;
type GetCorename = unsafe extern "C" fn() -> *const c_char;

/// OpenBLAS kernels older than AVX2. On a CPU that the library does not know, OpenBLAS 0.3.21
/// (Debian 12) falls back to `Prescott` (SSE3) even when the CPU has AVX-512: on a 2-core Xeon
/// (family 6, model 207) that made an SFTok-B reconstruction 4.1x slower than PyTorch, against
/// 1.14x with the right core (issue 19).
const PRE_AVX2_CORES: &[&str] = &[
    "prescott",
    "core2",
    "penryn",
    "dunnington",
    "nehalem",
    "sandybridge",
    "atom",
    "katmai",
    "coppermine",
    "northwood",
    "banias",
    "opteron",
    "barcelona",
    "bobcat",
    "bulldozer",
    "piledriver",
    "athlon",
    "generic",
];

fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Asks OpenBLAS for its AVX-512 kernels (`OPENBLAS_CORETYPE=SkylakeX`) on a CPU with AVX-512,
/// unless the user chose a core or turned the BLAS off. OpenBLAS reads the variable once, when
/// it is loaded, so this must run before the first product; and since changing the environment
/// is only sound while no other thread runs, it is for the start of `main` (the `sftok` binary
/// calls it first thing). Elsewhere (tests, a library user) a fallback core is detected after
/// loading instead, and the library is then not used ([`backend`] says why).
///
/// # Safety
/// No other thread may be running (reading or writing the environment).
pub unsafe fn prefer_best_core_at_startup() {
    // Only when the library is asked for (it is opt-in).
    let wanted =
        std::env::var("SFTOK_BLAS").is_ok_and(|v| !matches!(v.trim(), "off" | "none" | "0" | ""));
    if !wanted {
        return;
    }
    // One thread from the start, so that OpenBLAS never starts its own pool ([`OWN_POOL`]).
    // SAFETY: the caller guarantees a single thread.
    unsafe { std::env::set_var("OPENBLAS_NUM_THREADS", "1") };
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() || !cpu_has_avx512() {
        return;
    }
    // SAFETY: as above.
    unsafe { std::env::set_var("OPENBLAS_CORETYPE", "SkylakeX") };
}

/// Why a library that started its own thread pool is never used (issue 19).
///
/// With `OPENBLAS_NUM_THREADS` unset, OpenBLAS starts one worker thread per core when it is
/// loaded; `openblas_set_num_threads(1)` afterwards makes each call run on its caller, but the
/// pool stays. With that pool in the process, the `app_ui` test binary (the app's views driving
/// the model from several threads) aborted with "double free or corruption" or "corrupted size vs.
/// prev_size in fastbins" in 4 of 150 runs on a 2-core Intel Xeon (AVX-512, SkylakeX kernels),
/// and 3 of 60 on an AMD EPYC; loaded with `OPENBLAS_NUM_THREADS=1`, so that no pool is ever
/// started, 0 of 200 runs of the same binary on the same machine, in the same conditions. The
/// `sftok` binary sets the variable before anything runs ([`prefer_best_core_at_startup`]);
/// elsewhere (tests, a library user) a library that reports more than one thread when it is
/// opened is refused, with what to set.
///
/// Not the whole cause: on a 2-core AMD EPYC (Zen 4, AVX-512, SkylakeX kernels) the same binary
/// with `OPENBLAS_NUM_THREADS=1` still aborted at exit in 3 of 114 runs (2026-12-07), and without
/// the library (`SFTOK_BLAS=off`) in 2 of 55: the exit-time abort is not this library's alone
/// (README, issue 19).
pub const OWN_POOL: &str = "OpenBLAS started its own thread pool, with which the program's heap      was corrupted in about 1 run in 40: set OPENBLAS_NUM_THREADS=1 before the program starts      (the sftok binary does this itself)";

/// Why the last library that was found is not used, if one was refused.
static REFUSED: OnceLock<String> = OnceLock::new();

struct Blas {
    sgemm: Sgemm,
    description: String,
    // Keeps the library mapped for as long as `sgemm` may be called (the whole process).
    _library: libloading::Library,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// Products running in the library now, and whether the process is exiting.
///
/// Why: OpenBLAS frees its buffers and stops its threads in a library destructor, which runs
/// when the process exits, whatever other threads are doing. A thread of ours still inside
/// `cblas_sgemm` then writes into freed memory: the `app_ui` test binary aborted with "corrupted
/// size vs. prev_size" after its tests had passed (issue 19). A C program that exits while three
/// threads run 256^3 products crashed 10 times of 40 with the core OpenBLAS picks here (AMD EPYC,
/// Zen) and 25 of 40 with `OPENBLAS_CORETYPE=Prescott`, the core it falls back to on CPUs it does
/// not know; with the exit handler below, 0 of 40 in all four settings. The handler is registered
/// after the library is opened, so it runs before the library's destructor: it closes the door to
/// new calls (they take the `gemm` crate instead) and waits for the ones in flight.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static CLOSING: AtomicBool = AtomicBool::new(false);

extern "C" fn quiesce_at_exit() {
    CLOSING.store(true, Ordering::SeqCst);
    // A product takes milliseconds; a bound keeps a wedged library from hanging the exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
}

/// The names tried when `SFTOK_BLAS` is unset: OpenBLAS as distributions install it (Debian's
/// threaded builds by their own paths too, in case the default is the sequential build).
const SEARCHED: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
    "libopenblas.dll",
    "openblas.dll",
];

fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(|| match std::env::var("SFTOK_BLAS") {
        // Opt-in (issue 19): with the library in use, the `app_ui` test binary aborted with
        // "corrupted size vs. prev_size in fastbins" after its tests passed in 3 of 60 runs on a
        // 2-core AMD EPYC and 4 of 150 on an Intel Xeon, after the exit-time hazard below was
        // fixed. That second fault comes with the library's own thread pool ([`OWN_POOL`]: 0 of
        // 200 without it), which is now refused; the library stays opt-in until more machines
        // have run it this way.
        Err(_) => {
            let _ = REFUSED.set("OpenBLAS is opt-in: SFTOK_BLAS=auto".into());
            None
        }
        Ok(v) if matches!(v.trim(), "off" | "none" | "0" | "") => None,
        Ok(v) if v.trim() == "auto" => SEARCHED.iter().find_map(|name| open(name, false)),
        Ok(path) => {
            let loaded = open(path.trim(), true);
            if loaded.is_none() {
                eprintln!(
                    "warning: SFTOK_BLAS={path} is not a loadable library exporting cblas_sgemm; \
                     using the built-in matrix products (unset SFTOK_BLAS or fix the path)"
                );
            }
            loaded
        }
    })
    .as_ref()
}

/// Opens one library. Unless `named` (the user's own choice through `SFTOK_BLAS`), a sequential
/// OpenBLAS build is passed over: it is only safe to call from several threads at once when built
/// with `USE_LOCKING`, which it does not report, and rayon calls it from several threads. The
/// threaded builds lock their buffers and, set to one thread, run each call on its caller.
fn open(name: &str, named: bool) -> Option<Blas> {
    // SAFETY: loading a shared library runs its initialisers; the names are BLAS libraries
    // (OpenBLAS's initialiser only sizes its buffers and thread pool).
    let library = unsafe { libloading::Library::new(name) }.ok()?;
    if !named {
        // SAFETY: `openblas_get_parallel` takes nothing and returns 0 for a sequential build.
        if let Ok(parallel) = unsafe { library.get::<GetParallel>(b"openblas_get_parallel\0") }
            // SAFETY: as above; the function was found under its documented name.
            && unsafe { parallel() } == 0
        {
            return None;
        }
    }
    // SAFETY: `openblas_get_num_threads` takes nothing and returns the thread count the library
    // set itself up with (before ours is set below).
    if let Ok(threads) = unsafe { library.get::<GetThreads>(b"openblas_get_num_threads\0") }
        // SAFETY: as above; the function was found under its documented name.
        && unsafe { threads() } > 1
    {
        let _ = REFUSED.set(OWN_POOL.to_string());
        if named {
            eprintln!("warning: {name} is not used: {OWN_POOL}");
        }
        // Kept mapped: unloading a library whose pool threads are parked in it is not safe.
        std::mem::forget(library);
        return None;
    }
    // SAFETY: `cblas_sgemm` has this signature in every CBLAS (LP64; an ILP64 build exports the
    // symbol with a suffix, so it is not picked up here).
    let sgemm: Sgemm = unsafe { *library.get::<Sgemm>(b"cblas_sgemm\0").ok()? };
    // SAFETY: `openblas_get_corename` takes nothing and returns a static C string.
    let core = unsafe { library.get::<GetCorename>(b"openblas_get_corename\0") }
        .ok()
        .map(|f| unsafe { f() })
        .filter(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    if let Some(core) = &core
        && super::simd::cpu_isa() >= super::simd::Isa::Avx2
        && PRE_AVX2_CORES.contains(&core.to_ascii_lowercase().as_str())
    {
        let advice = format!(
            "{name} chose its {core} kernels, made for CPUs without AVX2, on this CPU with {}; \
             the built-in products are faster. Set OPENBLAS_CORETYPE={} to use it",
            if cpu_has_avx512() { "AVX-512" } else { "AVX2" },
            if cpu_has_avx512() {
                "SkylakeX"
            } else {
                "Haswell"
            },
        );
        if !named {
            let _ = REFUSED.set(advice);
            return None;
        }
        eprintln!("warning: {advice}");
    }
    for setter in [
        &b"openblas_set_num_threads\0"[..],
        b"MKL_Set_Num_Threads\0",
        b"bli_thread_set_num_threads\0",
    ] {
        // SAFETY: each of these takes one int, the thread count.
        if let Ok(set) = unsafe { library.get::<SetThreads>(setter) } {
            // SAFETY: `set` takes one int, found under its documented name.
            unsafe { set(1) };
        }
    }
    // A library that is slower than the built-in products on this machine is not used (it
    // would only make the program slower): measured on one product of the model's kind.
    let (library_ms, builtin_ms) = race(sgemm);
    if library_ms > SLOWER_THAN_BUILTIN * builtin_ms {
        let advice = format!(
            "{name}{} took {library_ms:.1} ms for a {RACE_M}x{RACE_K}x{RACE_N} product on one \
             thread against {builtin_ms:.1} ms for the built-in products",
            core.as_deref()
                .map_or_else(String::new, |c| format!(" ({c} kernels)"))
        );
        if !named {
            let _ = REFUSED.set(format!("{advice}, so it is not used"));
            return None;
        }
        eprintln!("warning: {advice}; it is used because SFTOK_BLAS names it");
    }
    // SAFETY: registers a handler that only touches two atomics (see `IN_FLIGHT`).
    unsafe { libc::atexit(quiesce_at_exit) };
    Some(Blas {
        sgemm,
        description: match core {
            Some(core) => format!("BLAS {name} (OpenBLAS, {core} kernels)"),
            None => format!("BLAS {name}"),
        },
        _library: library,
    })
}

/// The product [`race`] measures: a batch-1 transformer layer's shape (rows x inner x outputs).
const RACE_M: usize = 512;
const RACE_K: usize = 768;
const RACE_N: usize = 768;
/// How much slower than the built-in products a library may be and still be used: none (a
/// library that only ties is not worth its risks; best of 5 each).
const SLOWER_THAN_BUILTIN: f64 = 1.0;

/// Milliseconds for one fixed product on the calling thread, best of 5: through `sgemm`, and
/// through the `gemm` crate.
fn race(sgemm: Sgemm) -> (f64, f64) {
    let (m, k, n) = (RACE_M, RACE_K, RACE_N);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; m * n];
    let best = |f: &mut dyn FnMut()| {
        f(); // warm-up: first-touch of buffers, the library's own lazy set-up
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::MAX, f64::min)
    };
    let (mi, ni, ki) = (m as c_int, n as c_int, k as c_int);
    let library = best(&mut || {
        // SAFETY: a, b, c are row-major m x k, k x n, m x n with those leading dimensions.
        unsafe {
            sgemm(
                ROW_MAJOR,
                NO_TRANS,
                NO_TRANS,
                mi,
                ni,
                ki,
                1.0,
                a.as_ptr(),
                ki,
                b.as_ptr(),
                ni,
                0.0,
                c.as_mut_ptr(),
                ni,
            )
        }
    });
    let builtin = best(&mut || {
        // SAFETY: as above.
        unsafe {
            builtin_gemm(
                [m, n, k],
                (c.as_mut_ptr(), [n, 1]),
                false,
                (a.as_ptr(), [k, 1]),
                (b.as_ptr(), [n, 1]),
                1.0,
                false,
            )
        }
    });
    (library, builtin)
}

/// What does the CPU matrix products: the BLAS library found, or the `gemm` crate.
pub fn backend() -> String {
    blas().map_or_else(
        || match REFUSED.get() {
            Some(why) => format!("gemm crate ({why})"),
            None => "gemm crate (no system BLAS; install OpenBLAS for faster products)".to_string(),
        },
        |b| b.description.clone(),
    )
}

/// Whether a BLAS library was found (and not disabled).
pub fn available() -> bool {
    blas().is_some()
}

/// A matrix with its (row, column) strides as one CBLAS row-major operand: the transpose flag and
/// the leading dimension, or `None` when neither stride is 1, or rows would overlap (a stride of 0
/// broadcasts, which CBLAS cannot express). A dimension of 1 makes its stride irrelevant.
fn operand(rows: usize, cols: usize, [rs, cs]: [usize; 2]) -> Option<(c_int, c_int)> {
    let (trans, ld) = if cs == 1 || cols == 1 {
        // Stored as it is: row i starts at i * rs.
        if rows > 1 && rs < cols {
            return None;
        }
        (NO_TRANS, if rows == 1 { cols } else { rs })
    } else if rs == 1 || rows == 1 {
        // Stored as its transpose (cols x rows, row-major): column j starts at j * cs.
        if cs < rows {
            return None;
        }
        (TRANS, cs)
    } else {
        return None;
    };
    Some((trans, c_int::try_from(ld.max(1)).ok()?))
}

/// `dst (m x n) = [dst +] scale * lhs (m x k) * rhs (k x n)` through the system BLAS, on the
/// calling thread. Returns `false`, having done nothing, when there is no BLAS or the strides do
/// not fit CBLAS (the caller then uses the `gemm` crate).
///
/// # Safety
/// Every element the strides reach must be inside its allocation, and `dst` must not overlap the
/// inputs or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    [m, n, k]: [usize; 3],
    (dst, dst_strides): (*mut f32, [usize; 2]),
    accumulate: bool,
    (lhs, lhs_strides): (*const f32, [usize; 2]),
    (rhs, rhs_strides): (*const f32, [usize; 2]),
    scale: f32,
) -> bool {
    let Some(blas) = blas() else { return false };
    if m == 0 || n == 0 || k == 0 {
        return false;
    }
    // A column-major destination is computed as its transpose, dst^T = rhs^T lhs^T, which is
    // row-major.
    let (m, n, lhs, lhs_strides, rhs, rhs_strides, dst_strides) = if dst_strides[1] == 1 || n == 1 {
        (m, n, lhs, lhs_strides, rhs, rhs_strides, dst_strides)
    } else if dst_strides[0] == 1 || m == 1 {
        let swap = |[a, b]: [usize; 2]| [b, a];
        (
            n,
            m,
            rhs,
            swap(rhs_strides),
            lhs,
            swap(lhs_strides),
            swap(dst_strides),
        )
    } else {
        return false;
    };
    let (Some((ta, lda)), Some((tb, ldb)), Some((NO_TRANS, ldc))) = (
        operand(m, k, lhs_strides),
        operand(k, n, rhs_strides),
        operand(m, n, dst_strides),
    ) else {
        return false;
    };
    let (Ok(mi), Ok(ni), Ok(ki)) = (c_int::try_from(m), c_int::try_from(n), c_int::try_from(k))
    else {
        return false;
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    // Enter, then check the door (in that order, both SeqCst: either the exit handler sees this
    // call in flight, or this call sees the door closed).
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    if CLOSING.load(Ordering::SeqCst) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    // SAFETY: the caller vouches for the memory; the operands were checked to be CBLAS matrices
    // with those leading dimensions. With beta 0 the BLAS does not read dst.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR, ta, tb, mi, ni, ki, scale, lhs, lda, rhs, ldb, beta, dst, ldc,
        )
    };
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::direct::tests::values;

    /// The product by definition, in f64, reading every operand through its strides.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        [m, n, k]: [usize; 3],
        dst: &mut [f32],
        ds: [usize; 2],
        accumulate: bool,
        lhs: &[f32],
        ls: [usize; 2],
        rhs: &[f32],
        rs: [usize; 2],
        scale: f32,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += lhs[i * ls[0] + p * ls[1]] as f64 * rhs[p * rs[0] + j * rs[1]] as f64;
                }
                let d = &mut dst[i * ds[0] + j * ds[1]];
                *d = (if accumulate { *d as f64 } else { 0.0 } + scale as f64 * s) as f32;
            }
        }
    }

    /// The library in use is not slower than the built-in products on a fixed product of the
    /// model's kind (a larger one than the check when the library is opened), measured here on
    /// two threads as the model runs it; best of 5 each. Skips without a BLAS unless
    /// `SFTOK_REQUIRE_BLAS` is set, and when `SFTOK_BLAS` names the library (then it is used
    /// even where slower, by the user's choice).
    #[test]
    fn the_library_in_use_is_not_slower_than_the_built_in_products() {
        if std::env::var("SFTOK_BLAS").is_ok_and(|v| v.trim() != "auto") {
            eprintln!("skipped: SFTOK_BLAS names the library, which is then used regardless");
            return;
        }
        if !available() {
            assert!(
                std::env::var_os("SFTOK_REQUIRE_BLAS").is_none(),
                "SFTOK_REQUIRE_BLAS is set but no BLAS was found: {}",
                backend()
            );
            eprintln!("skipped: {}", backend());
            return;
        }
        let (m, k, n) = (1024, 768, 768);
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let time = |use_library: bool| {
            let mut c = vec![0.0f32; m * n];
            let mut run = || {
                let dst = (c.as_mut_ptr(), [n, 1]);
                let (lhs, rhs) = ((a.as_ptr(), [k, 1]), (b.as_ptr(), [n, 1]));
                if use_library {
                    // SAFETY: row-major buffers of these sizes.
                    unsafe { crate::kernels::gemm::gemm_threaded([m, n, k], dst, false, lhs, rhs) };
                } else {
                    // What `gemm_threaded` does without a library: the gemm crate on rayon.
                    // SAFETY: as above.
                    unsafe { builtin_gemm([m, n, k], dst, false, lhs, rhs, 1.0, true) };
                }
            };
            run();
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    run();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::MAX, f64::min)
        };
        let (library, builtin) = (time(true), time(false));
        eprintln!(
            "{}: {library:.2} ms; built-in products: {builtin:.2} ms",
            backend()
        );
        assert!(
            library <= 1.25 * builtin,
            "{} is slower than the built-in products: {library:.2} vs {builtin:.2} ms",
            backend()
        );
    }

    /// Every layout the callers use (row- and column-major operands and destination, padded
    /// leading dimensions, vectors), against the definition. Skips without a BLAS unless
    /// `SFTOK_REQUIRE_BLAS` is set (CI installs OpenBLAS and sets it).
    #[test]
    fn matches_the_definition_in_every_layout() {
        if !available() {
            assert!(
                std::env::var_os("SFTOK_REQUIRE_BLAS").is_none(),
                "SFTOK_REQUIRE_BLAS is set but no BLAS was found: {}",
                backend()
            );
            eprintln!("skipped: {}", backend());
            return;
        }
        let mut checked = 0;
        for [m, n, k] in [[7, 5, 3], [1, 9, 4], [6, 1, 8], [33, 17, 65], [4, 4, 1]] {
            // (row stride, column stride) for a rows x cols matrix: row-major with 2 padding
            // columns, or column-major with 3 padding rows.
            let layouts = |rows: usize, cols: usize| [[cols + 2, 1], [1, rows + 3]];
            for ds in layouts(m, n) {
                for ls in layouts(m, k) {
                    for rs in layouts(k, n) {
                        for (accumulate, scale) in [(false, 1.0), (true, 0.5)] {
                            let size = |r: usize, c: usize, s: [usize; 2]| {
                                (r - 1) * s[0] + (c - 1) * s[1] + 1
                            };
                            let lhs = values(size(m, k, ls), 1);
                            let rhs = values(size(k, n, rs), 2);
                            let start = values(size(m, n, ds), 3);
                            let mut want = start.clone();
                            reference(
                                [m, n, k],
                                &mut want,
                                ds,
                                accumulate,
                                &lhs,
                                ls,
                                &rhs,
                                rs,
                                scale,
                            );
                            let mut got = start.clone();
                            // SAFETY: each buffer holds exactly what its strides reach.
                            let done = unsafe {
                                sgemm(
                                    [m, n, k],
                                    (got.as_mut_ptr(), ds),
                                    accumulate,
                                    (lhs.as_ptr(), ls),
                                    (rhs.as_ptr(), rs),
                                    scale,
                                )
                            };
                            assert!(done, "layout {ds:?} {ls:?} {rs:?} of {m}x{n}x{k} refused");
                            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                    "{m}x{n}x{k} dst {ds:?} lhs {ls:?} rhs {rs:?} acc {accumulate}: \
                                     element {i} is {g}, want {w}"
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 5 * 8 * 2);
    }

    #[test]
    fn operands_without_a_unit_stride_are_refused() {
        assert_eq!(operand(4, 5, [10, 2]), None);
        assert_eq!(operand(4, 5, [3, 1]), None, "rows would overlap");
        assert_eq!(operand(4, 5, [7, 1]), Some((NO_TRANS, 7)));
        assert_eq!(operand(4, 5, [1, 6]), Some((TRANS, 6)));
        assert_eq!(operand(1, 5, [0, 1]), Some((NO_TRANS, 5)));
        assert_eq!(operand(4, 1, [1, 0]), Some((NO_TRANS, 1)));
        assert_eq!(operand(4, 1, [0, 1]), None, "a broadcast column");
    }

    /// Shapes `[m, n, k]` of the products the models make (demo and SFTok-B linear layers and
    /// attention, convolution products and weight gradients, with the blocks the threaded
    /// products are cut into) and odd sizes around the kernels' tiles.
    const MODEL_SHAPES: &[[usize; 3]] = &[
        [1536, 512, 128],
        [1536, 128, 512],
        [128, 512, 1536],
        [512, 384, 128],
        [4096, 32, 288],
        [32, 288, 4096],
        [1024, 64, 576],
        [64, 576, 1024],
        [321, 768, 768],
        [321, 3072, 768],
        [64, 321, 64],
        [16, 1024, 32],
        [48, 512, 128],
        [17, 33, 65],
        [1, 129, 257],
        [255, 1, 31],
    ];

    /// Calls the BLAS for every model shape and layout from many threads at once, `rounds`
    /// times, each product in buffers with guard zones on both sides, and checks every result
    /// against the `gemm` crate and every guard zone: a write outside its buffer (a wrong leading
    /// dimension, a wrong block split, a library that is not safe to call concurrently) fails it.
    fn concurrent_products(rounds: usize) {
        if !available() {
            assert!(
                std::env::var_os("SFTOK_REQUIRE_BLAS").is_none(),
                "SFTOK_REQUIRE_BLAS is set but no BLAS is in use: {}",
                backend()
            );
            eprintln!("skipped: {}", backend());
            return;
        }
        const GUARD: usize = 4096;
        const CANARY: f32 = -7.25e7;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .expect("a pool");
        let jobs: Vec<([usize; 3], bool)> = MODEL_SHAPES
            .iter()
            .flat_map(|&s| [(s, false), (s, true)])
            .collect();
        pool.install(|| {
            use rayon::prelude::*;
            (0..rounds * jobs.len()).into_par_iter().for_each(|job| {
                let ([m, n, k], transposed) = jobs[job % jobs.len()];
                // Row-major operands, or column-major ones (the layouts the kernels pass).
                let (ls, rs, ds) = if transposed {
                    ([1, m], [1, k], [1, m])
                } else {
                    ([k, 1], [n, 1], [n, 1])
                };
                let guarded = |len: usize, seed: u32| {
                    let mut v = vec![CANARY; len + 2 * GUARD];
                    v[GUARD..GUARD + len].copy_from_slice(&values(len, seed));
                    v
                };
                let lhs = guarded(m * k, job as u32);
                let rhs = guarded(k * n, job as u32 + 1);
                let mut dst = guarded(m * n, job as u32 + 2);
                let mut want = dst[GUARD..GUARD + m * n].to_vec();
                // SAFETY: each buffer holds exactly what its strides reach, past the guard.
                let done = unsafe {
                    sgemm(
                        [m, n, k],
                        (dst.as_mut_ptr().add(GUARD), ds),
                        true,
                        (lhs.as_ptr().add(GUARD), ls),
                        (rhs.as_ptr().add(GUARD), rs),
                        0.5,
                    )
                };
                assert!(done, "{m}x{n}x{k} refused");
                // SAFETY: as above, on the plain slices.
                unsafe {
                    builtin_gemm(
                        [m, n, k],
                        (want.as_mut_ptr(), ds),
                        true,
                        (lhs.as_ptr().add(GUARD), ls),
                        (rhs.as_ptr().add(GUARD), rs),
                        0.5,
                        false,
                    )
                };
                for (name, buf, len) in [
                    ("lhs", &lhs, m * k),
                    ("rhs", &rhs, k * n),
                    ("dst", &dst, m * n),
                ] {
                    let outside = buf[..GUARD].iter().chain(&buf[GUARD + len..]);
                    assert!(
                        outside.into_iter().all(|&x| x == CANARY),
                        "{m}x{n}x{k} (transposed {transposed}): a write outside {name}"
                    );
                }
                for (i, (g, w)) in dst[GUARD..GUARD + m * n].iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                        "{m}x{n}x{k} (transposed {transposed}) element {i}: {g}, want {w}"
                    );
                }
            });
        });
    }

    /// A process that exits while threads are inside the library (what a test binary does when
    /// its last test returns with a model worker still busy) must exit cleanly. The test runs
    /// itself as a child 20 times; each child starts three threads of 256^3 products and exits
    /// after 30-50 ms. Without the exit handler, 10 of 40 such exits crashed here.
    #[test]
    fn exiting_while_products_run_is_clean() {
        const CHILD: &str = "SFTOK_BLAS_EXIT_CHILD";
        if !available() {
            eprintln!("skipped: {}", backend());
            return;
        }
        if std::env::var_os(CHILD).is_some() {
            let n = 256;
            for t in 0..3u32 {
                std::thread::spawn(move || {
                    let (a, b) = (values(n * n, t), values(n * n, t + 7));
                    let mut c = vec![0.0f32; n * n];
                    loop {
                        // SAFETY: n x n row-major buffers.
                        unsafe {
                            sgemm(
                                [n, n, n],
                                (c.as_mut_ptr(), [n, 1]),
                                false,
                                (a.as_ptr(), [n, 1]),
                                (b.as_ptr(), [n, 1]),
                                1.0,
                            )
                        };
                    }
                });
            }
            let pause = 30 + std::process::id() as u64 % 20;
            std::thread::sleep(Duration::from_millis(pause));
            std::process::exit(0);
        }
        let exe = std::env::current_exe().expect("the test binary");
        let mut failures = Vec::new();
        for _ in 0..20 {
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "kernels::blas::tests::exiting_while_products_run_is_clean",
                ])
                .env(CHILD, "1")
                .output()
                .expect("the child runs");
            // A child that ran no test (a renamed test) would pass without checking anything.
            if !out.status.success() {
                failures.push(format!("{:?}", out.status));
            } else if !String::from_utf8_lossy(&out.stdout).contains("running 1 test") {
                failures.push("the child ran no test".into());
            }
        }
        assert!(
            failures.is_empty(),
            "children that exited mid-product crashed: {failures:?}"
        );
    }

    /// A library loaded with its own thread pool is refused ([`OWN_POOL`]): the test runs itself
    /// as a child with `OPENBLAS_NUM_THREADS=2`, where the library, usable here, must not be
    /// used and the device line must say why.
    #[test]
    fn a_library_that_started_its_own_thread_pool_is_refused() {
        const CHILD: &str = "SFTOK_BLAS_POOL_CHILD";
        if std::env::var_os(CHILD).is_some() {
            assert!(!available(), "the library was used: {}", backend());
            assert!(backend().contains("own thread pool"), "{}", backend());
            return;
        }
        if !available() {
            eprintln!("skipped: {}", backend());
            return;
        }
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            eprintln!("skipped: one core, so OpenBLAS starts no pool");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "kernels::blas::tests::a_library_that_started_its_own_thread_pool_is_refused",
            ])
            .env(CHILD, "1")
            .env("OPENBLAS_NUM_THREADS", "2")
            .output()
            .expect("the child runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn concurrent_products_stay_in_bounds_and_match() {
        concurrent_products(2);
    }

    /// The same, long, for a memory checker:
    /// `valgrind --error-exitcode=1 <test binary> --ignored concurrent_products_soak`
    /// (`scripts/blas_soak.sh`).
    #[test]
    #[ignore]
    fn concurrent_products_soak() {
        concurrent_products(
            std::env::var("SFTOK_BLAS_SOAK_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(40),
        );
    }
}
