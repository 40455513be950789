//! The weight gradient of a "same" convolution as one matrix product per kernel tap: the path
//! where the register-tile kernel of [`super::weight_grad`] does not apply.

use rayon::prelude::*;

use crate::kernels::buffers::zeroed;
use crate::kernels::gemm::gemm_strided;

/// `dL/dw[o][c][ky][kx] = sum over images and positions of dL/dy[o][y][x] * xpad[c][y+ky][x+kx]`
/// through GEMMs: where AVX2 is missing, and for 1x1 kernels (see
/// [`super::weight_grad`] for the others).
///
/// Both operands are laid out channel-major over the whole batch: for each channel, the padded
/// planes of all images one after the other (length `batch * plane`), the output gradient on the
/// same padded grid with zeros outside the `h x w` interior. On that layout position q of the
/// gradient meets position q + ky*wp + kx of the input for every image at once, so each tap is
/// one GEMM `G [o, batch*plane] x X_shifted [c, batch*plane]^T` whose inner dimension is the whole
/// batch's positions (per image, it was as small as 80 at the demo model's 8x8 codes).
pub(crate) fn weight_gradient_gemm(
    x: &[f32],
    g: &[f32],
    [batch, c, h, w]: [usize; 4],
    o: usize,
    k: usize,
) -> Vec<f32> {
    let pad = (k - 1) / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let plane = hp * wp;
    let span = batch * plane;
    let taps = k * k;
    // Reads of the shifted input run up to (k-1)*wp + k-1 values past a channel's span.
    let stride = span + k * wp;
    let channel_major = |values: &[f32], channels: usize, interior_at: usize| {
        let mut out = zeroed(channels * stride);
        out.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(ch, dst)| {
                for b in 0..batch {
                    let src = &values[(b * channels + ch) * h * w..][..h * w];
                    for y in 0..h {
                        let at = b * plane + (y + interior_at) * wp + interior_at;
                        dst[at..at + w].copy_from_slice(&src[y * w..(y + 1) * w]);
                    }
                }
            });
        out
    };
    // The input with its zero border; the gradient at the grid's top-left (its position q pairs
    // with input position q + tap offset).
    let xs = channel_major(x, c, pad);
    let gs = channel_major(g, o, 0);
    let mut gw = zeroed(o * c * taps);
    // Each tap writes its own column of `gw` (stride `taps`): the taps run in parallel.
    let gw_addr = gw.as_mut_ptr() as usize;
    (0..taps).into_par_iter().for_each(|tap| {
        let (ky, kx) = (tap / k, tap % k);
        // SAFETY: dst is gw viewed as o x c with strides (c*taps, taps) from offset `tap`,
        // written by this task only; lhs is gs as o x span (row stride `stride`); rhs[q][ci] is
        // xs[ci*stride + ky*wp + kx + q] for q < span, inside xs (k*wp values of slack).
        unsafe {
            gemm_strided(
                [o, c, span],
                (gw_addr as *mut f32).add(tap),
                [c * taps, taps],
                false,
                gs.as_ptr(),
                [stride, 1],
                xs.as_ptr().add(ky * wp + kx),
                [1, stride],
                1.0,
            );
        }
    });
    gw
}
