//! The "same" convolution as k*k strided matrix products on shifted views of one zero-padded
//! copy of the input.

use rayon::prelude::*;

use super::shape::SameConv;
use crate::kernels::buffers::{fill_padded, zeroed};
use crate::kernels::gemm::gemm_strided;

/// [`same_conv`] through the `gemm` crate: the path where AVX2 + FMA are missing, and the
/// reference the direct kernel is benchmarked against.
pub(crate) fn same_conv_gemm(conv: SameConv<'_>) -> Vec<f32> {
    let SameConv { x, weight, k, .. } = conv;
    let ([batch, c, h, w], o) = (conv.dims, conv.out_channels);
    let (bias, residual) = (conv.bias, conv.residual);
    let pad = (k - 1) / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let plane = hp * wp;
    let taps = k * k;
    let mut out = zeroed(batch * o * h * w);
    // The weights regrouped per tap, [tap][o][c], so that each tap's matrix is row-major: what a
    // BLAS takes.
    let mut by_tap = zeroed(taps * o * c);
    for (i, v) in weight.iter().enumerate() {
        let (oc_ci, tap) = (i / taps, i % taps);
        by_tap[tap * o * c + oc_ci] = *v;
    }
    // Reads for the junk columns of the last rows run up to k-1 values past the last plane.
    let mut padded = if pad == 0 {
        Vec::new()
    } else {
        zeroed(c * plane + k)
    };
    // About 2 MiB of grid per block (o x rows x wp floats), and at least a few blocks per thread.
    let threads = rayon::current_num_threads().max(1);
    let rows = (((1 << 19) / (o * wp).max(1)).max(1))
        .min(h.div_ceil(2 * threads))
        .max(1);
    let blocks = h.div_ceil(rows);
    for b in 0..batch {
        let image = &x[b * c * h * w..(b + 1) * c * h * w];
        let src: &[f32] = if pad == 0 {
            image
        } else {
            fill_padded(&mut padded, image, [h, w], pad);
            &padded
        };
        let out_addr = out[b * o * h * w..].as_mut_ptr() as usize;
        let res_image = residual.map(|r| &r[b * o * h * w..(b + 1) * o * h * w]);
        (0..blocks).into_par_iter().for_each(|block| {
            let y0 = block * rows;
            let nrows = rows.min(h - y0);
            let n = nrows * wp;
            let mut grid = zeroed(o * n);
            for ky in 0..k {
                for kx in 0..k {
                    let tap = ky * k + kx;
                    // SAFETY: grid is o x n (row stride n); lhs is by_tap[tap], o x c row-major;
                    // rhs reads, in each of the c planes (stride `plane`), n values from
                    // (y0 + ky) * wp + kx, which stay inside `src` as argued above (the padded
                    // buffer has k values of slack; with pad 0 there is one tap, wp = w and rhs is
                    // rows y0.. of the image).
                    unsafe {
                        gemm_strided(
                            [o, n, c],
                            grid.as_mut_ptr(),
                            [n, 1],
                            tap > 0,
                            by_tap[tap * o * c..].as_ptr(),
                            [c, 1],
                            src.as_ptr().add((y0 + ky) * wp + kx),
                            [plane, 1],
                            1.0,
                        );
                    }
                }
            }
            for oc in 0..o {
                let add = bias.map_or(0.0, |b| b[oc]);
                for r in 0..nrows {
                    let y = y0 + r;
                    let row = &grid[oc * n + r * wp..][..w];
                    // SAFETY: output rows y0..y0+nrows of every channel belong to this block only.
                    let d = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out_addr as *mut f32).add(oc * h * w + y * w),
                            w,
                        )
                    };
                    match res_image {
                        Some(res) => {
                            let res = &res[oc * h * w + y * w..][..w];
                            for ((d, g), r) in d.iter_mut().zip(row).zip(res) {
                                *d = g + add + r;
                            }
                        }
                        None => {
                            for (d, g) in d.iter_mut().zip(row) {
                                *d = g + add;
                            }
                        }
                    }
                }
            }
        });
    }
    out
}
