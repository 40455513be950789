//! Matrix products: every product of the kernels ends here, on the system BLAS when one is loaded
//! ([`super::blas`]) or on the `gemm` crate (the one burn's flex backend uses).

use rayon::prelude::*;

use super::buffers::zeroed;
use super::builtin_gemm::builtin_gemm;

/// A strided f32 GEMM: `dst (m x n) = [dst +] scale * lhs (m x k) * rhs (k x n)`, each matrix given
/// by its pointer and (row, column) strides, on the calling thread.
///
/// # Safety
/// Every element the strides reach must be inside its allocation, and `dst` must not overlap the
/// inputs or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    dims: [usize; 3],
    dst: *mut f32,
    dst_strides: [usize; 2],
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: [usize; 2],
    rhs: *const f32,
    rhs_strides: [usize; 2],
    scale: f32,
) {
    let (a, b) = ((lhs, lhs_strides), (rhs, rhs_strides));
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(dims, (dst, dst_strides), accumulate, a, b, scale, false) }
}

/// [`gemm_strided`] with scale 1, threaded over all cores when the product is large: for calls
/// that are not already inside a parallel loop.
///
/// # Safety
/// As [`gemm_strided`].
pub(crate) unsafe fn gemm_threaded(
    dims: [usize; 3],
    dst: (*mut f32, [usize; 2]),
    accumulate: bool,
    lhs: (*const f32, [usize; 2]),
    rhs: (*const f32, [usize; 2]),
) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(dims, dst, accumulate, lhs, rhs, 1.0, true) }
}

/// Every product of this module and of [`super::autodiff`] ends here: the system BLAS when
/// one is loaded ([`super::blas`]), else the `gemm` crate. A threaded product is cut into one
/// block of rows (or of columns, when there are more columns) per rayon thread, each block a
/// single-threaded call, so that rayon stays the only thread pool.
unsafe fn gemm_with(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, [usize; 2]),
    accumulate: bool,
    lhs: (*const f32, [usize; 2]),
    rhs: (*const f32, [usize; 2]),
    scale: f32,
    threaded: bool,
) {
    let large = m * n * k >= 128 * 128 * 128;
    let threads = rayon::current_num_threads();
    if !(threaded && large && threads > 1 && super::blas::available()) {
        // SAFETY: forwarded from the caller.
        unsafe {
            gemm_block(
                [m, n, k],
                dst,
                accumulate,
                lhs,
                rhs,
                scale,
                threaded && large,
            )
        };
        return;
    }
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    // Blocks of a multiple of 16 rows (or columns), the BLAS kernels' register tiles; several
    // per thread, so that a thread that finishes early takes another instead of waiting (with
    // one block each, the second thread waited through a sixth of an SFVR step).
    const BLOCKS_PER_THREAD: usize = 4;
    let chunk = len
        .div_ceil(threads * BLOCKS_PER_THREAD)
        .next_multiple_of(16);
    // Raw pointers are not Send: the blocks get the addresses and the strides.
    let (dst_addr, lhs_addr, rhs_addr) = (dst.0 as usize, lhs.0 as usize, rhs.0 as usize);
    let (ds, ls, rs) = (dst.1, lhs.1, rhs.1);
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|block| {
        let start = block * chunk;
        let size = chunk.min(len - start);
        let (dst_ptr, lhs_ptr, rhs_ptr) = (
            dst_addr as *mut f32,
            lhs_addr as *const f32,
            rhs_addr as *const f32,
        );
        // SAFETY: a block of rows of dst and lhs (or of columns of dst and rhs) of the product the
        // caller vouches for; the blocks of dst are disjoint.
        unsafe {
            if by_rows {
                gemm_block(
                    [size, n, k],
                    (dst_ptr.add(start * ds[0]), ds),
                    accumulate,
                    (lhs_ptr.add(start * ls[0]), ls),
                    (rhs_ptr, rs),
                    scale,
                    false,
                )
            } else {
                gemm_block(
                    [m, size, k],
                    (dst_ptr.add(start * ds[1]), ds),
                    accumulate,
                    (lhs_ptr, ls),
                    (rhs_ptr.add(start * rs[1]), rs),
                    scale,
                    false,
                )
            }
        }
    });
}

/// One product on the system BLAS when it takes it, else on the `gemm` crate (threaded over
/// rayon when `parallel`).
unsafe fn gemm_block(
    [m, n, k]: [usize; 3],
    (dst, [dst_rs, dst_cs]): (*mut f32, [usize; 2]),
    accumulate: bool,
    (lhs, [lhs_rs, lhs_cs]): (*const f32, [usize; 2]),
    (rhs, [rhs_rs, rhs_cs]): (*const f32, [usize; 2]),
    scale: f32,
    parallel: bool,
) {
    // SAFETY: forwarded from the caller.
    let done = unsafe {
        super::blas::sgemm(
            [m, n, k],
            (dst, [dst_rs, dst_cs]),
            accumulate,
            (lhs, [lhs_rs, lhs_cs]),
            (rhs, [rhs_rs, rhs_cs]),
            scale,
        )
    };
    if done {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        builtin_gemm(
            [m, n, k],
            (dst, [dst_rs, dst_cs]),
            accumulate,
            (lhs, [lhs_rs, lhs_cs]),
            (rhs, [rhs_rs, rhs_cs]),
            scale,
            parallel,
        )
    }
}

/// `x W + b` on raw values: `x` is `rows x d_in`, contiguous; `W` (`d_in x d_out`) is read at
/// `w` with its (row, column) strides. The bias, when given, is written into the output first and
/// the product accumulated onto it, so it costs no extra pass.
///
/// # Safety
/// `w` addresses a `d_in x d_out` matrix with those strides.
pub(crate) unsafe fn linear_values(
    x: &[f32],
    [rows, d_in, d_out]: [usize; 3],
    w: (*const f32, [usize; 2]),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = zeroed(rows * d_out);
    if let Some(b) = bias {
        out.par_chunks_mut(d_out)
            .for_each(|row| row.copy_from_slice(b));
    }
    let dst = (out.as_mut_ptr(), [d_out, 1]);
    // SAFETY: out is rows x d_out, x rows x d_in (both row-major); w as the caller vouches.
    unsafe {
        gemm_threaded(
            [rows, d_out, d_in],
            dst,
            bias.is_some(),
            (x.as_ptr(), [d_in, 1]),
            w,
        )
    };
    out
}
