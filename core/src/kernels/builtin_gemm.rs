//! The built-in matrix product: the `gemm` crate (the one burn's flex backend uses), called with
//! this module's (row, column) stride convention. The lowest layer of the products: [`super::gemm`]
//! falls back to it, and [`super::blas`] races a library against it.

/// `dst (m x n) = [dst +] scale * lhs (m x k) * rhs (k x n)` on the `gemm` crate, each matrix
/// given by its pointer and (row, column) strides; threaded over rayon when `parallel`.
///
/// # Safety
/// Every element the strides reach must be inside its allocation, and `dst` must not overlap the
/// inputs or be written by another thread meanwhile.
pub(crate) unsafe fn builtin_gemm(
    [m, n, k]: [usize; 3],
    (dst, [dst_rs, dst_cs]): (*mut f32, [usize; 2]),
    accumulate: bool,
    (lhs, [lhs_rs, lhs_cs]): (*const f32, [usize; 2]),
    (rhs, [rhs_rs, rhs_cs]): (*const f32, [usize; 2]),
    scale: f32,
    parallel: bool,
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller vouches for the pointers and strides; the gemm crate takes (column,
    // row) strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
