//! "Same" convolutions (stride 1, odd k x k kernel, zero padding (k-1)/2) on raw values: the
//! forward pass and the weight gradient, each with the implementation that is fastest for the
//! sizes and the CPU at hand.
//!
//! - [`direct`]: register tiles over the padded input, no GEMM (small planes, few channels);
//! - [`shifted_gemm`]: k*k strided products on shifted views (large planes and many channels,
//!   and every CPU without AVX2);
//! - [`weight_grad`]: the weight gradient with register tiles on position-major copies;
//! - [`weight_grad_gemm`]: the weight gradient as one product per tap.

pub(crate) mod direct;
mod shape;
pub(crate) mod shifted_gemm;
pub(crate) mod weight_grad;
mod weight_grad_gemm;

pub(crate) use shape::{SameConv, same_conv_kernel};
pub(crate) use shifted_gemm::same_conv_gemm;
pub(crate) use weight_grad_gemm::weight_gradient_gemm;

/// A stride-1 convolution with a k x k kernel (k odd) and zero padding (k-1)/2 on every side:
/// the direct kernel where it is available and measured faster ([`direct::preferred`]), else the
/// shifted GEMMs.
pub(crate) fn same_conv(conv: SameConv<'_>) -> Vec<f32> {
    let [_, c, h, w] = conv.dims;
    if direct::available() && direct::preferred(c, h, w, conv.k) {
        return direct::same_conv(conv);
    }
    same_conv_gemm(conv)
}

/// `dL/dw`, `[o][c][k][k]`, of a "same" convolution of `x` (`[batch, c, h, w]`) whose output
/// gradient is `g` (`[batch, o, h, w]`).
///
/// A 1x1 kernel's gradient is a single product, which the GEMM path does well. Over fewer than
/// 8 input channels (an RGB image) the register tile is half empty and the two paths measured
/// within noise of each other at the demo teacher's first convolution (GEMMs / tiles: 3.5 / 4.7
/// ms in one run, 6.2 / 5.0 in another).
pub(crate) fn weight_gradient(
    x: &[f32],
    g: &[f32],
    dims: [usize; 4],
    o: usize,
    k: usize,
) -> Vec<f32> {
    if k > 1 && dims[1] >= 8 && weight_grad::available() {
        weight_grad::weight_gradient(x, g, dims, o, k)
    } else {
        weight_gradient_gemm(x, g, dims, o, k)
    }
}
