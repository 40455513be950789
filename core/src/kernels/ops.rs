//! Inference kernels for burn's CPU backend (flex), used by the convolutional parts of the model
//! (the teacher and the pixel decoder) where flex's generic operations are slowest.
//!
//! Why: at the official size the pixel decoder spends most of its time in 3x3 convolutions at
//! 256x256 and in the group norm + SiLU pairs before them. flex runs the convolution at about two
//! thirds of PyTorch's speed and the group norm and SiLU as separate passes, each about four times
//! slower than PyTorch's (see BENCHMARKS.md). The kernels here do the same arithmetic with fewer
//! passes over memory:
//! - a "same" convolution (odd kernel, stride 1, padding (k-1)/2) as k*k matrix products with the
//!   `gemm` crate (the one flex uses) on shifted views of one padded copy of the input: no im2col
//!   buffer, and the bias and an optional residual are added while the result is written out;
//! - group norm and SiLU fused in one pass (statistics in f64);
//! - nearest-neighbour 2x upsampling as a copy.
//!
//! Every function takes and returns burn tensors and falls back to burn's own operations whenever
//! the fast path does not apply: a tensor on another backend (wgpu), an autodiff tensor (training
//! needs burn's backward), another dtype, or a layer configuration outside the cases above. The
//! parity tests run both paths (flex takes the fast one, wgpu the fallback) against the official
//! fixtures.

use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::attention::attention_values;
use super::autodiff;
use super::buffers::zeroed;
use super::conv::{SameConv, same_conv, same_conv_kernel};
use super::gemm::linear_values;
use super::math::{erf_f32, tanh_f32};
use super::norm::{group_norm_silu_values, layer_norm_values};
use super::resample::{block_sums_2x2, upsample_values};
use super::simd::map_f32;
use super::tensors::{f32s, flex_values, from_vec};

/// `conv.forward(x)` (+ `residual` when given), with the fast path for "same" convolutions.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>, residual: Option<Tensor<4>>) -> Tensor<4> {
    match conv2d_fast(conv, &x, residual.as_ref()) {
        Some(out) => out,
        None => {
            let out = conv.forward(x);
            match residual {
                Some(r) => out + r,
                None => out,
            }
        }
    }
}

fn conv2d_fast(conv: &Conv2d, x: &Tensor<4>, residual: Option<&Tensor<4>>) -> Option<Tensor<4>> {
    if let Some(out) = autodiff::conv2d(conv, x) {
        return Some(match residual {
            Some(r) => out + r.clone(),
            None => out,
        });
    }
    let k = same_conv_kernel(conv)?;
    let input = flex_values(x)?;
    let weight = flex_values(&conv.weight.val())?;
    let bias = match &conv.bias {
        Some(b) => Some(flex_values(&b.val())?),
        None => None,
    };
    let res = match residual {
        Some(r) => Some(flex_values(r)?),
        None => None,
    };
    let [batch, c, h, w] = x.dims();
    let o = weight.layout().shape()[0];
    if weight.layout().shape()[1] != c {
        return None; // let burn report the mismatch
    }
    if let Some(r) = &res
        && r.layout().shape().as_slice() != [batch, o, h, w]
    {
        return None;
    }
    let out = same_conv(SameConv {
        x: f32s(&input),
        dims: [batch, c, h, w],
        weight: f32s(&weight),
        out_channels: o,
        k,
        bias: bias.as_ref().map(f32s),
        residual: res.as_ref().map(f32s),
    });
    Some(from_vec(out, [batch, o, h, w]))
}

/// Exact (erf) GELU, `x * (1 + erf(x / sqrt 2)) / 2`, as `torch.nn.GELU()` computes it.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = autodiff::gelu(&x) {
        return y;
    }
    let Some(input) = flex_values(&x) else {
        return burn::tensor::activation::gelu(x);
    };
    let mut out = zeroed(input.layout().num_elements());
    out.par_chunks_mut(1 << 14)
        .zip(f32s(&input).par_chunks(1 << 14))
        .for_each(|(d, s)| {
            map_f32(d, s, |v| {
                0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
            })
        });
    from_vec(out, x.dims())
}

/// `norm.forward(x)` for a [`LayerNorm`] whose epsilon is `eps` (burn keeps its own private):
/// one recorded operation in training on the CPU backend ([`super::autodiff::layer_norm`]),
/// one pass over the rows in inference there, burn's elsewhere.
///
/// Why: burn's layer norm is about ten element-wise operations forward and more backward, each
/// a pass over memory on one thread; the ViT's 20 of them per forward left one of the two
/// threads idle for a noticeable part of a stage-1 step.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    if let Some(y) = autodiff::layer_norm(norm, &x, eps) {
        return y;
    }
    let fast = || {
        let input = flex_values(&x)?;
        let gamma = flex_values(&norm.gamma.val())?;
        let beta = flex_values(&norm.beta.as_ref()?.val())?;
        let width = gamma.layout().num_elements();
        (x.dims().last() == Some(&width)).then_some(())?;
        let (out, _) = layer_norm_values(f32s(&input), width, f32s(&gamma), f32s(&beta), eps);
        Some(from_vec(out, x.dims()))
    };
    match fast() {
        Some(y) => y,
        None => norm.forward(x),
    }
}

/// `x.tanh()` in parallel, vectorised chunks: one recorded operation in training on the CPU
/// backend, one pass in inference there, burn's (a library call per value on one thread)
/// elsewhere.
pub fn tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = autodiff::tanh(&x) {
        return y;
    }
    let Some(input) = flex_values(&x) else {
        return x.tanh();
    };
    let mut out = zeroed(input.layout().num_elements());
    out.par_chunks_mut(1 << 14)
        .zip(f32s(&input).par_chunks(1 << 14))
        .for_each(|(d, s)| map_f32(d, s, tanh_f32));
    from_vec(out, x.dims())
}

/// Multi-head scaled dot-product attention on packed projections, as `nn.MultiheadAttention`
/// computes it after its input projection: `qkv` `[b, s, 3w]` (q, then k, then v, each split into
/// `heads` slices of `w / heads`) -> `[b, s, w]`, heads concatenated, before `out_proj`.
///
/// One task per (image, head): the scores `Q K^T` and the output `P V` are GEMMs on strided views
/// of `qkv` (no copies of q, k, v), the softmax is done in place, and each head writes its slice of
/// the output directly. `None` when the fast path does not apply.
pub fn attention(qkv: &Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let [b, s, w3] = qkv.dims();
    if heads == 0 || !w3.is_multiple_of(3 * heads) {
        return None;
    }
    if let Some(out) = autodiff::attention(qkv, heads) {
        return Some(out);
    }
    let input = flex_values(qkv)?;
    let (out, _) = attention_values(f32s(&input), [b, s, w3], heads, false);
    Some(from_vec(out, [b, s, w3 / 3]))
}

/// `x W + b` for `x` `[.., d_in]` and `weight` `[d_in, d_out]` (any strides: a transposed view
/// is read in place), as `burn::tensor::module::linear` computes it; the bias is written into the
/// output first and the product accumulated onto it, so it costs no extra pass.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if let Some(out) = autodiff::linear(&x, &weight, bias.as_ref()) {
        return out;
    }
    match linear_fast(&x, &weight, bias.as_ref()) {
        Some(out) => out,
        None => burn::tensor::module::linear(x, weight, bias),
    }
}

/// A 1x1 convolution applied to channels-last rows: `x` is `[.., C]` (one row per position) and
/// the result `[.., O]`, equal to `conv` over the same values laid out as `[B, C, h, w]`.
///
/// Why: a 1x1 convolution is a linear layer over each position. Where the values already come
/// channels-last (the decoder's hidden states, the encoder's patches) this skips the layout
/// change and burn's convolution (an im2col copy forward, a transposed convolution and another
/// im2col backward) for one product through [`linear`].
pub fn pointwise_conv<const D: usize>(conv: &Conv2d, x: Tensor<D>) -> Tensor<D> {
    let [o, c, kh, kw] = conv.weight.dims();
    let weight = conv.weight.val().reshape([o, c * kh * kw]).transpose();
    linear(x, weight, conv.bias.as_ref().map(|b| b.val()))
}

/// [`linear`] with a `burn::nn::Linear`'s parameters.
pub fn linear_layer<const D: usize>(layer: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

fn linear_fast<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    if D < 2 || dims[D - 1] != d_in {
        return None;
    }
    let input = flex_values(x)?;
    // The weight as stored (no copy): strides and offset from its layout.
    let w = weight.clone().try_into_primitive::<Flex>().ok()?;
    if w.dtype() != DType::F32 || !w.layout().has_positive_strides() {
        return None;
    }
    // Positive (checked above), so the casts keep the values.
    let (w_rs, w_cs) = (
        w.layout().strides()[0] as usize,
        w.layout().strides()[1] as usize,
    );
    let w_ptr = w.storage::<f32>()[w.layout().start_offset()..].as_ptr();
    let bias = match bias {
        Some(b) => Some(flex_values(b)?),
        None => None,
    };
    let rows = dims[..D - 1].iter().product::<usize>();
    // SAFETY: the weight's layout addresses d_in x d_out values from its start offset.
    let out = unsafe {
        linear_values(
            f32s(&input),
            [rows, d_in, d_out],
            (w_ptr, [w_rs, w_cs]),
            bias.as_ref().map(f32s),
        )
    };
    let mut shape = dims;
    shape[D - 1] = d_out;
    Some(from_vec(out, shape))
}

/// `silu(norm.forward(x))` in one pass where it can.
pub fn group_norm_silu(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    if let Some(y) = autodiff::group_norm_silu(norm, &x) {
        return y;
    }
    group_norm_silu_fast(norm, &x).unwrap_or_else(|| {
        let h = norm.forward(x);
        autodiff::silu(&h).unwrap_or_else(|| silu(h))
    })
}

fn group_norm_silu_fast(norm: &GroupNorm, x: &Tensor<4>) -> Option<Tensor<4>> {
    let [batch, c, h, w] = x.dims();
    let groups = norm.num_groups;
    if c != norm.num_channels || groups == 0 || !c.is_multiple_of(groups) {
        return None;
    }
    let input = flex_values(x)?;
    let (gamma, beta) = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if norm.affine => {
            (Some(flex_values(&g.val())?), Some(flex_values(&b.val())?))
        }
        _ => (None, None),
    };
    let out = group_norm_silu_values(
        f32s(&input),
        [c, h * w],
        groups,
        gamma.as_ref().map(f32s),
        beta.as_ref().map(f32s),
        norm.epsilon,
    );
    Some(from_vec(out, [batch, c, h, w]))
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`.
pub fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if let Some(y) = autodiff::upsample_nearest_2x(&x) {
        return y;
    }
    let Some(input) = flex_values(&x) else {
        return x
            .reshape([b * c * h, 1, w, 1])
            .expand([b * c * h, 2, w, 2])
            .reshape([b, c, 2 * h, 2 * w]);
    };
    from_vec(upsample_values(f32s(&input), w), [b, c, 2 * h, 2 * w])
}

/// `F.avg_pool2d(x, 2)` on even planes: one recorded operation in training on the CPU backend,
/// one pass in inference there, burn's reductions elsewhere.
pub fn avg_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if let Some(y) = autodiff::avg_pool_2x2(&x) {
        return y;
    }
    match flex_values(&x) {
        Some(input) if h % 2 == 0 && w % 2 == 0 => {
            from_vec(block_sums_2x2(f32s(&input), w, 0.25), [b, c, h / 2, w / 2])
        }
        _ => x
            .reshape([b * c * (h / 2), 2, w / 2, 2])
            .sum_dim(3)
            .sum_dim(1)
            .mul_scalar(0.25)
            .reshape([b, c, h / 2, w / 2]),
    }
}

#[cfg(test)]
mod tests;
