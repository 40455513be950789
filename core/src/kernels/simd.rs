//! Which vector instructions the kernels use, and the element-wise loops compiled for each.
//!
//! The loops are plain Rust closures over slices; each is compiled once per instruction set (the
//! `target_feature` wrappers below) and the widest the CPU runs is chosen at run time, so that the
//! compiler's vectoriser can use the whole register width without a build for one CPU.
//!
//! `SFTOK_SIMD=baseline|avx2|avx512` caps the choice (never above what the CPU has): the tests
//! and the parity check run the narrower paths with it on a CPU that has the wider ones.

use std::sync::OnceLock;

/// An instruction set the kernels have a path for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// x86-64 baseline (SSE2, 4 lanes), and every other architecture.
    Baseline,
    /// AVX2 + FMA (8 lanes).
    Avx2,
    /// AVX-512 F, BW, DQ and VL with FMA (16 lanes).
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// The widest instruction set this CPU runs (checked by std, which caches it).
pub fn cpu_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("fma")
        {
            return Isa::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The instruction set the kernels use: the CPU's, capped by `SFTOK_SIMD` when set (read once).
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = match std::env::var("SFTOK_SIMD")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            Ok(v) if v == "baseline" || v == "off" || v == "none" => Isa::Baseline,
            Ok(v) if v == "avx2" => Isa::Avx2,
            _ => Isa::Avx512,
        };
        cpu_isa().min(cap)
    })
}

/// Whether the kernels may use AVX2 and FMA.
#[inline]
pub(crate) fn has_avx2() -> bool {
    isa() >= Isa::Avx2
}

/// Whether the kernels may use AVX-512 (F, BW, DQ, VL) and FMA.
#[inline]
pub(crate) fn has_avx512() -> bool {
    isa() >= Isa::Avx512
}

/// Runs one of three compilations of the same loop: `$plain` is an `#[inline(always)]` function,
/// `$avx2` and `$avx512` wrappers that call it under those target features.
macro_rules! widest {
    ($avx512:ident, $avx2:ident, $plain:ident, ($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::kernels::simd::has_avx512() {
                // SAFETY: the CPU has AVX-512 F/BW/DQ/VL and FMA (checked just above).
                return unsafe { $avx512($($arg),*) };
            }
            if $crate::kernels::simd::has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return unsafe { $avx2($($arg),*) };
            }
        }
        $plain($($arg),*)
    }};
}
pub(crate) use widest;

#[inline(always)]
fn map_plain(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map_avx2(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    map_plain(dst, src, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn map_avx512(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    map_plain(dst, src, f)
}

#[inline(always)]
fn map2_plain(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map2_avx2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    map2_plain(dst, a, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn map2_avx512(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    map2_plain(dst, a, b, f)
}

#[inline(always)]
fn update_plain(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (d, &b) in dst.iter_mut().zip(b) {
        *d = f(*d, b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn update_avx2(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    update_plain(dst, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn update_avx512(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    update_plain(dst, b, f)
}

/// `dst[i] = f(dst[i], b[i])` in place, vectorised as [`map_f32`].
#[inline]
pub(crate) fn update_f32(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    widest!(update_avx512, update_avx2, update_plain, (dst, b, f))
}

/// `dst[i] = f(a[i], b[i])`, vectorised as [`map_f32`].
#[inline]
pub(crate) fn map2_f32(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    widest!(map2_avx512, map2_avx2, map2_plain, (dst, a, b, f))
}

/// `dst[i] = f(src[i])`, vectorised for the widest instruction set the kernels may use.
#[inline]
pub(crate) fn map_f32(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    widest!(map_avx512, map_avx2, map_plain, (dst, src, f))
}

/// `sum f(v)` in f64 over 8 independent lanes, which the compiler turns into vector adds (one
/// running sum is a chain it may not reorder).
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says which path the kernel tests of this run exercise; with `SFTOK_REQUIRE_SIMD=avx512`
    /// (or `avx2`) a CPU or a cap below that is an error instead of a quietly narrower run.
    #[test]
    fn reports_the_instruction_set_in_use() {
        let (cpu, used) = (cpu_isa(), isa());
        eprintln!("kernels: CPU has {}, tests use {}", cpu.name(), used.name());
        let required = match std::env::var("SFTOK_REQUIRE_SIMD").as_deref() {
            Ok("avx512") => Isa::Avx512,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Baseline,
        };
        assert!(
            used >= required,
            "SFTOK_REQUIRE_SIMD asks for {} but the kernels use {} (CPU: {})",
            required.name(),
            used.name(),
            cpu.name()
        );
    }

    #[test]
    fn every_path_of_the_loops_gives_the_same_values() {
        let src: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let f = |v: f32| super::super::math::exp_f32(v) * 0.5 + v;
        let mut want = vec![0.0; src.len()];
        map_plain(&mut want, &src, f);
        #[cfg(target_arch = "x86_64")]
        for level in [Isa::Avx2, Isa::Avx512] {
            if cpu_isa() < level {
                eprintln!("skipped: the CPU has no {}", level.name());
                continue;
            }
            let mut got = vec![0.0; src.len()];
            // SAFETY: the CPU has the instruction set (checked above).
            unsafe {
                match level {
                    Isa::Avx2 => map_avx2(&mut got, &src, f),
                    _ => map_avx512(&mut got, &src, f),
                }
            }
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{}: {g} vs {w}",
                    level.name()
                );
            }
        }
    }
}
