//! Training versions of the CPU kernels: burn autodiff operations on the flex backend whose
//! forward and backward passes are the kernels of [`super::cpu_kernels`].
//!
//! Why: in training, burn records its own operations, so the fast inference paths do not apply,
//! and flex computes a convolution's input gradient as a transposed convolution and its weight
//! gradient through an im2col buffer, together the largest part of a teacher or stage-3 step.
//! Here a "same" convolution is one recorded operation: the forward pass is the shifted-GEMM
//! convolution, the input gradient is the same convolution of the output gradient with the
//! kernel flipped and its channels swapped, and the weight gradient is one GEMM per kernel tap
//! between the output gradient (laid out on the padded-width grid) and the shifted input.
//!
//! These apply to tensors of burn's `Autodiff<Flex>` backend without gradient checkpointing (what
//! `Device::flex().autodiff()` gives); anything else returns `None` and the caller uses burn's
//! operations.

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::cpu_kernels::{
    SameConv as ConvOperands, attention_values, block_sums_2x2, contiguous_f32, f32s, flex_from,
    gemm_strided, gemm_threaded, group_norm_silu_values, group_stats, has_avx2, layer_norm_values,
    linear_values, same_conv, same_conv_kernel, silu_f32, update_f32, upsample_values, zeroed,
};

pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;

/// Records `op` over `parents`, keeping `state` for its backward pass when a parent is tracked;
/// the result is the autodiff tensor of `out`.
fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
    op: O,
    parents: [NodeGuard; N],
    state: O::State,
    out: FlexTensor,
) -> Tensor<D> {
    let result = match op
        .prepare::<NoCheckpointing>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive::<Ad>(result)
}

/// The backward pass of a one-input operation: when the input is tracked, `gradient(state,
/// dL/dout)` (the incoming gradient made contiguous f32) is registered as its gradient.
fn backward_unary<S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    gradient: impl FnOnce(S, &FlexTensor) -> FlexTensor,
) {
    let grad = grads.consume::<Flex>(&ops.node);
    let [Some(node)] = &ops.parents else {
        return;
    };
    let Some(grad) = contiguous_f32(&grad) else {
        return;
    };
    let id = node.id;
    grads.register::<Flex>(id, gradient(ops.state, &grad));
}

/// [`record`] for `$op::<2>` (parents: input, weight) or `$op::<3>` (and bias).
macro_rules! record_with_optional_bias {
    ($op:ident, $x:expr, $w:expr, $bias:expr, $state:expr, $out:expr) => {
        match $bias {
            Some(b) => record($op::<3>, [$x.node(), $w.node(), b.node()], $state, $out),
            None => record($op::<2>, [$x.node(), $w.node()], $state, $out),
        }
    };
}

/// What the backward pass of a convolution keeps: the input and weight values and the sizes.
#[derive(Clone, Debug)]
struct ConvState {
    input: FlexTensor,
    weight: FlexTensor,
    dims: [usize; 4],
    out_channels: usize,
    k: usize,
}

/// A recorded "same" convolution with `N` parents: input, weight (and bias when `N` = 3).
#[derive(Debug)]
struct SameConv<const N: usize>;

impl<const N: usize> Backward<Flex, N> for SameConv<N> {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(grad) = contiguous_f32(&grad) else {
            return;
        };
        let st = ops.state;
        let [batch, c, h, w] = st.dims;
        let o = st.out_channels;
        let k = st.k;
        let g = f32s(&grad);
        let x = f32s(&st.input);
        let wt = f32s(&st.weight);
        let taps = k * k;
        if let Some(node) = &ops.parents[0] {
            // dL/dx = same convolution of dL/dy with w'[c][o][ky][kx] = w[o][c][k-1-ky][k-1-kx].
            let mut flipped = zeroed(c * o * taps);
            for oc in 0..o {
                for ic in 0..c {
                    for t in 0..taps {
                        flipped[(ic * o + oc) * taps + (taps - 1 - t)] =
                            wt[(oc * c + ic) * taps + t];
                    }
                }
            }
            let gx = same_conv(ConvOperands {
                x: g,
                dims: [batch, o, h, w],
                weight: &flipped,
                out_channels: c,
                k,
                bias: None,
                residual: None,
            });
            grads.register::<Flex>(node.id, flex_from(gx, &[batch, c, h, w]));
        }
        if let Some(node) = &ops.parents[1] {
            // A 1x1 kernel's gradient is a single product, which the GEMM path does well. Over
            // fewer than 8 input channels (an RGB image) the register tile is half empty and the
            // two paths measured within noise of each other at the demo teacher's first
            // convolution (GEMMs / tiles: 3.5 / 4.7 ms in one run, 6.2 / 5.0 in another).
            let gw = if k > 1 && c >= 8 && super::weight_grad::available() {
                super::weight_grad::weight_gradient(x, g, [batch, c, h, w], o, k)
            } else {
                weight_gradient_gemm(x, g, [batch, c, h, w], o, k)
            };
            grads.register::<Flex>(node.id, flex_from(gw, &[o, c, k, k]));
        }
        if N == 3
            && let Some(node) = &ops.parents[N - 1]
        {
            let mut gb = zeroed(o);
            gb.par_iter_mut().enumerate().for_each(|(oc, sum)| {
                *sum = (0..batch)
                    .map(|b| {
                        g[(b * o + oc) * h * w..][..h * w]
                            .iter()
                            .map(|&v| v as f64)
                            .sum::<f64>()
                    })
                    .sum::<f64>() as f32;
            });
            grads.register::<Flex>(node.id, flex_from(gb, &[o]));
        }
    }
}

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
fn weight_gradient_gemm(
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

/// `conv.forward(x)` as one recorded operation when `x` is a tracked-or-not `Autodiff<Flex>`
/// tensor and `conv` a "same" convolution; `None` otherwise.
pub fn conv2d(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let k = same_conv_kernel(conv)?;
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let wa = conv.weight.val().try_into_primitive::<Ad>().ok()?;
    let ba = match &conv.bias {
        Some(b) => Some(b.val().try_into_primitive::<Ad>().ok()?),
        None => None,
    };
    let input = contiguous_f32(xa.primitive())?;
    let weight = contiguous_f32(wa.primitive())?;
    let bias = match &ba {
        Some(b) => Some(contiguous_f32(b.primitive())?),
        None => None,
    };
    let [batch, c, h, w] = x.dims();
    let [o, wc, _, _] = conv.weight.dims();
    if wc != c {
        return None;
    }
    let out = same_conv(ConvOperands {
        x: f32s(&input),
        dims: [batch, c, h, w],
        weight: f32s(&weight),
        out_channels: o,
        k,
        bias: bias.as_ref().map(f32s),
        residual: None,
    });
    let out = flex_from(out, &[batch, o, h, w]);
    let state = ConvState {
        input,
        weight,
        dims: [batch, c, h, w],
        out_channels: o,
        k,
    };
    Some(record_with_optional_bias!(SameConv, xa, wa, ba, state, out))
}

/// What the backward pass of a linear layer keeps.
#[derive(Clone, Debug)]
struct LinearState {
    input: FlexTensor,
    weight: FlexTensor,
    rows: usize,
    d_in: usize,
    d_out: usize,
}

/// A recorded `x W + b` (burn's layout: `W` is `[d_in, d_out]`) with `N` parents: input, weight
/// (and bias when `N` = 3).
#[derive(Debug)]
struct LinearOp<const N: usize>;

impl<const N: usize> Backward<Flex, N> for LinearOp<N> {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(grad) = contiguous_f32(&grad) else {
            return;
        };
        let st = ops.state;
        let (rows, d_in, d_out) = (st.rows, st.d_in, st.d_out);
        let g = f32s(&grad);
        if let Some(node) = &ops.parents[0] {
            // dL/dx = G W^T: rhs element (j, i) is W[i][j].
            let mut gx = zeroed(rows * d_in);
            // SAFETY: gx is rows x d_in; g is rows x d_out row-major; W is d_in x d_out
            // row-major, read transposed.
            unsafe {
                gemm_threaded(
                    [rows, d_in, d_out],
                    (gx.as_mut_ptr(), [d_in, 1]),
                    false,
                    (g.as_ptr(), [d_out, 1]),
                    (f32s(&st.weight).as_ptr(), [1, d_out]),
                )
            };
            grads.register::<Flex>(node.id, flex_from(gx, st.input.layout().shape()));
        }
        if let Some(node) = &ops.parents[1] {
            // dL/dW = X^T G: lhs element (i, r) is x[r][i].
            let mut gw = zeroed(d_in * d_out);
            // SAFETY: gw is d_in x d_out; x is rows x d_in row-major, read transposed; g is
            // rows x d_out row-major.
            unsafe {
                gemm_threaded(
                    [d_in, d_out, rows],
                    (gw.as_mut_ptr(), [d_out, 1]),
                    false,
                    (f32s(&st.input).as_ptr(), [1, d_in]),
                    (g.as_ptr(), [d_out, 1]),
                )
            };
            grads.register::<Flex>(node.id, flex_from(gw, &[d_in, d_out]));
        }
        if N == 3
            && let Some(node) = &ops.parents[N - 1]
        {
            // Column sums of G, in f64, over blocks of rows in parallel.
            let block = rows
                .div_ceil(rayon::current_num_threads().max(1) * 4)
                .max(1);
            let gb = g
                .par_chunks(block * d_out)
                .map(|chunk| {
                    let mut sums = vec![0.0f64; d_out];
                    for row in chunk.chunks_exact(d_out) {
                        for (s, &v) in sums.iter_mut().zip(row) {
                            *s += v as f64;
                        }
                    }
                    sums
                })
                .reduce(
                    || vec![0.0f64; d_out],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    },
                );
            let gb: Vec<f32> = gb.into_iter().map(|v| v as f32).collect();
            grads.register::<Flex>(node.id, flex_from(gb, &[d_out]));
        }
    }
}

/// `x W + b` (`W`: `[d_in, d_out]`, as `burn::nn::Linear` stores it) recorded as one operation on
/// `Autodiff<Flex>`: the bias is written into the output first and the product accumulated onto
/// it; the backward pass reads `W` and `x` transposed through strides instead of copying them.
/// `None` elsewhere.
pub fn linear<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    if D < 2 || dims[D - 1] != d_in {
        return None;
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let wa = weight.clone().try_into_primitive::<Ad>().ok()?;
    let ba = match bias {
        Some(b) => Some(b.clone().try_into_primitive::<Ad>().ok()?),
        None => None,
    };
    let input = contiguous_f32(xa.primitive())?;
    let weight_values = contiguous_f32(wa.primitive())?;
    let bias_values = match &ba {
        Some(b) => Some(contiguous_f32(b.primitive())?),
        None => None,
    };
    let rows = dims[..D - 1].iter().product::<usize>();
    // SAFETY: the weight's values are contiguous, d_in x d_out row-major.
    let out = unsafe {
        linear_values(
            f32s(&input),
            [rows, d_in, d_out],
            (f32s(&weight_values).as_ptr(), [d_out, 1]),
            bias_values.as_ref().map(f32s),
        )
    };
    let mut out_shape = dims.to_vec();
    out_shape[D - 1] = d_out;
    let out = flex_from(out, &out_shape);
    let state = LinearState {
        input,
        weight: weight_values,
        rows,
        d_in,
        d_out,
    };
    Some(record_with_optional_bias!(LinearOp, xa, wa, ba, state, out))
}

/// An element-wise activation: its value and derivative, inlined into the vectorised loops.
trait Activation: Send + std::fmt::Debug + 'static {
    fn value(x: f32) -> f32;
    fn derivative(x: f32) -> f32;
}

#[derive(Debug)]
struct Silu;

impl Activation for Silu {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        silu_f32(x)
    }

    #[inline(always)]
    fn derivative(x: f32) -> f32 {
        let s = 1.0 / (1.0 + super::cpu_kernels::exp_f32(-x));
        s * (1.0 + x * (1.0 - s))
    }
}

#[derive(Debug)]
struct Gelu;

impl Activation for Gelu {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        0.5 * x * (1.0 + super::cpu_kernels::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
    }

    /// d/dx x Phi(x) = Phi(x) + x phi(x).
    #[inline(always)]
    fn derivative(x: f32) -> f32 {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let cdf = 0.5 * (1.0 + super::cpu_kernels::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
        cdf + x * INV_SQRT_2PI * super::cpu_kernels::exp_f32(-0.5 * x * x)
    }
}

#[derive(Debug)]
struct Tanh;

impl Activation for Tanh {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        super::cpu_kernels::tanh_f32(x)
    }

    #[inline(always)]
    fn derivative(x: f32) -> f32 {
        let t = super::cpu_kernels::tanh_f32(x);
        1.0 - t * t
    }
}

/// An element-wise activation recorded as one operation; the state is its input.
#[derive(Debug)]
struct Elementwise<A: Activation>(std::marker::PhantomData<A>);

impl<A: Activation> Backward<Flex, 1> for Elementwise<A> {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backward_unary(ops, grads, |input_tensor, grad| {
            let (input, g) = (f32s(&input_tensor), f32s(grad));
            let mut out = zeroed(g.len());
            out.par_chunks_mut(1 << 14)
                .zip(input.par_chunks(1 << 14).zip(g.par_chunks(1 << 14)))
                .for_each(|(d, (x, g))| {
                    super::cpu_kernels::map2_f32(d, x, g, |x, g| g * A::derivative(x));
                });
            flex_from(out, input_tensor.layout().shape())
        });
    }
}

fn elementwise<A: Activation, const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let input = contiguous_f32(xa.primitive())?;
    let values = f32s(&input);
    let mut out = zeroed(values.len());
    out.par_chunks_mut(1 << 14)
        .zip(values.par_chunks(1 << 14))
        .for_each(|(d, s)| super::cpu_kernels::map_f32(d, s, A::value));
    let out = flex_from(out, input.layout().shape());
    Some(record(
        Elementwise::<A>(std::marker::PhantomData),
        [xa.node()],
        input,
        out,
    ))
}

/// `silu(x)` recorded as one operation on `Autodiff<Flex>`; `None` elsewhere.
pub fn silu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    elementwise::<Silu, D>(x)
}

/// `tanh(x)` recorded as one operation on `Autodiff<Flex>`; `None` elsewhere.
pub fn tanh<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    elementwise::<Tanh, D>(x)
}

/// Exact GELU recorded as one operation on `Autodiff<Flex>`; `None` elsewhere.
pub fn gelu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    elementwise::<Gelu, D>(x)
}

/// What the backward pass of a group norm + SiLU keeps.
#[derive(Clone, Debug)]
struct NormState {
    input: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    groups: usize,
    eps: f64,
}

/// `silu(group_norm(x))` with affine parameters, recorded as one operation (parents: x, gamma,
/// beta).
#[derive(Debug)]
struct GroupNormSilu;

impl Backward<Flex, 3> for GroupNormSilu {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(grad) = contiguous_f32(&grad) else {
            return;
        };
        let st = ops.state;
        let shape = st.input.layout().shape().clone();
        let (batch, c) = (shape[0], shape[1]);
        let per_channel: usize = shape.iter().skip(2).product();
        let groups = st.groups;
        let cpg = c / groups;
        let per_group = cpg * per_channel;
        let x = f32s(&st.input);
        let g = f32s(&grad);
        let gamma = f32s(&st.gamma);
        let beta = f32s(&st.beta);
        let mut dx = zeroed(x.len());
        // Per (image, group): dx, and this group's contributions to dgamma and dbeta.
        let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(per_group)
            .zip(x.par_chunks(per_group).zip(g.par_chunks(per_group)))
            .enumerate()
            .map(|(bg, (dx, (x, g)))| {
                let (mean, rstd) = group_stats(x, st.eps);
                let first = (bg % groups) * cpg;
                let mut dgamma = vec![0.0f64; cpg];
                let mut dbeta = vec![0.0f64; cpg];
                // dL/dxhat = dL/dn * gamma, with dL/dn = g * silu'(n); sums for the mean terms.
                let (mut sum_dxhat, mut sum_dxhat_xhat) = (0.0f64, 0.0f64);
                for i in 0..cpg {
                    let ch = first + i;
                    let range = i * per_channel..(i + 1) * per_channel;
                    let sums = norm_silu_backward_channel(
                        &mut dx[range.clone()],
                        &x[range.clone()],
                        &g[range],
                        [mean as f32, rstd as f32, gamma[ch], beta[ch]],
                    );
                    dgamma[i] += sums[0];
                    dbeta[i] += sums[1];
                    sum_dxhat += sums[2];
                    sum_dxhat_xhat += sums[3];
                }
                let count = per_group as f64;
                let (m1, m2) = ((sum_dxhat / count) as f32, (sum_dxhat_xhat / count) as f32);
                let (mean, rstd) = (mean as f32, rstd as f32);
                norm_backward_finish(dx, x, [mean, rstd, m1, m2]);
                (dgamma, dbeta)
            })
            .collect();
        let [px, pg, pb] = &ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex_from(dx, shape.as_slice()));
        }
        let mut dgamma = zeroed(c);
        let mut dbeta = zeroed(c);
        for (bg, (dg, db)) in partial.into_iter().enumerate() {
            let first = (bg % groups) * cpg;
            for i in 0..cpg {
                dgamma[first + i] += dg[i] as f32;
                dbeta[first + i] += db[i] as f32;
            }
        }
        let _ = batch;
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_from(dgamma, &[c]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex_from(dbeta, &[c]));
        }
    }
}

/// One channel of the group norm + SiLU backward: writes `dL/dxhat` into `dx` and returns the
/// channel's sums of `dn * xhat`, `dn` (its dgamma and dbeta), `dxhat` and `dxhat * xhat`.
/// `[mean, rstd, gamma, beta]` are the group's statistics and the channel's affine parameters.
fn norm_silu_backward_channel(dx: &mut [f32], x: &[f32], g: &[f32], params: [f32; 4]) -> [f64; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { norm_silu_backward_channel_avx2(dx, x, g, params) };
    }
    norm_silu_backward_channel_plain(dx, x, g, params)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn norm_silu_backward_channel_avx2(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    params: [f32; 4],
) -> [f64; 4] {
    norm_silu_backward_channel_plain(dx, x, g, params)
}

/// Eight independent f32 lanes per sum (one vector of them), added up in f64 at the end; a lane
/// sums at most 8,192 values (one channel of a 256 x 256 plane), well inside f32's precision for
/// a gradient.
#[inline(always)]
fn norm_silu_backward_channel_plain(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    [mean, rstd, gamma, beta]: [f32; 4],
) -> [f64; 4] {
    let step = |xv: f32, gv: f32| {
        let xhat = (xv - mean) * rstd;
        let dn = gv * Silu::derivative(xhat * gamma + beta);
        let dxhat = dn * gamma;
        (xhat, dn, dxhat)
    };
    let mut lanes = [[0.0f32; 8]; 4];
    let n = x.len() / 8 * 8;
    for ((d, xs), gs) in dx[..n]
        .chunks_exact_mut(8)
        .zip(x[..n].chunks_exact(8))
        .zip(g[..n].chunks_exact(8))
    {
        for l in 0..8 {
            let (xhat, dn, dxhat) = step(xs[l], gs[l]);
            lanes[0][l] += dn * xhat;
            lanes[1][l] += dn;
            lanes[2][l] += dxhat;
            lanes[3][l] += dxhat * xhat;
            d[l] = dxhat;
        }
    }
    let mut sums = lanes.map(|lane| lane.iter().map(|&v| v as f64).sum::<f64>());
    for i in n..x.len() {
        let (xhat, dn, dxhat) = step(x[i], g[i]);
        sums[0] += (dn * xhat) as f64;
        sums[1] += dn as f64;
        sums[2] += dxhat as f64;
        sums[3] += (dxhat * xhat) as f64;
        dx[i] = dxhat;
    }
    sums
}

/// `dx = rstd (dxhat - m1 - xhat m2)` in place over a group, with `xhat = (x - mean) rstd`.
fn norm_backward_finish(dx: &mut [f32], x: &[f32], [mean, rstd, m1, m2]: [f32; 4]) {
    update_f32(dx, x, |d, xv| rstd * (d - m1 - (xv - mean) * rstd * m2));
}

/// `silu(norm.forward(x))` recorded as one operation on `Autodiff<Flex>` (affine group norm, 4-d
/// input); `None` elsewhere.
pub fn group_norm_silu(norm: &burn::nn::GroupNorm, x: &Tensor<4>) -> Option<Tensor<4>> {
    let [_, c, _, _] = x.dims();
    let groups = norm.num_groups;
    if !norm.affine || c != norm.num_channels || groups == 0 || !c.is_multiple_of(groups) {
        return None;
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let ga = norm.gamma.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let ba = norm.beta.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let input = contiguous_f32(xa.primitive())?;
    let gamma = contiguous_f32(ga.primitive())?;
    let beta = contiguous_f32(ba.primitive())?;
    let per_channel = input.layout().num_elements() / x.dims()[0] / c;
    let out = group_norm_silu_values(
        f32s(&input),
        [c, per_channel],
        groups,
        Some(f32s(&gamma)),
        Some(f32s(&beta)),
        norm.epsilon,
    );
    let out = flex_from(out, input.layout().shape().as_slice());
    let state = NormState {
        input,
        gamma,
        beta,
        groups,
        eps: norm.epsilon,
    };
    Some(record(
        GroupNormSilu,
        [xa.node(), ga.node(), ba.node()],
        state,
        out,
    ))
}

/// What the backward pass of a layer norm keeps: its input, gamma and each row's mean and
/// 1 / standard deviation.
#[derive(Clone, Debug)]
struct LayerNormState {
    input: FlexTensor,
    gamma: FlexTensor,
    stats: std::sync::Arc<Vec<[f32; 2]>>,
}

/// `layer_norm(x) * gamma + beta` over the last dimension, recorded as one operation (parents:
/// x, gamma, beta).
#[derive(Debug)]
struct LayerNormOp;

impl Backward<Flex, 3> for LayerNormOp {
    type State = LayerNormState;

    fn backward(self, ops: Ops<LayerNormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(grad) = contiguous_f32(&grad) else {
            return;
        };
        let st = ops.state;
        let x = f32s(&st.input);
        let g = f32s(&grad);
        let gamma = f32s(&st.gamma);
        let width = gamma.len();
        const ROWS_PER_TASK: usize = 32;
        let mut dx = zeroed(x.len());
        // Per block of rows: dx, and the block's sums of dy * xhat (dgamma) and dy (dbeta).
        let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(ROWS_PER_TASK * width)
            .zip(x.par_chunks(ROWS_PER_TASK * width))
            .zip(g.par_chunks(ROWS_PER_TASK * width))
            .zip(st.stats.par_chunks(ROWS_PER_TASK))
            .map(|(((dx, x), g), stats)| {
                let mut dgamma = vec![0.0f64; width];
                let mut dbeta = vec![0.0f64; width];
                for (((dx, x), g), &[mean, rstd]) in dx
                    .chunks_exact_mut(width)
                    .zip(x.chunks_exact(width))
                    .zip(g.chunks_exact(width))
                    .zip(stats)
                {
                    // dxhat = dy * gamma into dx, then the group norm's finish: dx = rstd *
                    // (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
                    let (mut sum_dxhat, mut sum_dxhat_xhat) = (0.0f64, 0.0f64);
                    for i in 0..width {
                        let xhat = (x[i] - mean) * rstd;
                        let dxhat = g[i] * gamma[i];
                        dx[i] = dxhat;
                        sum_dxhat += dxhat as f64;
                        sum_dxhat_xhat += (dxhat * xhat) as f64;
                        dgamma[i] += (g[i] * xhat) as f64;
                        dbeta[i] += g[i] as f64;
                    }
                    let m1 = (sum_dxhat / width as f64) as f32;
                    let m2 = (sum_dxhat_xhat / width as f64) as f32;
                    norm_backward_finish(dx, x, [mean, rstd, m1, m2]);
                }
                (dgamma, dbeta)
            })
            .collect();
        let [px, pg, pb] = &ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex_from(dx, st.input.layout().shape()));
        }
        let (mut dgamma, mut dbeta) = (vec![0.0f64; width], vec![0.0f64; width]);
        for (dg, db) in &partial {
            dgamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
            dbeta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
        }
        let narrow = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_from(narrow(dgamma), &[width]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex_from(narrow(dbeta), &[width]));
        }
    }
}

/// `norm.forward(x)` (epsilon `eps`) recorded as one operation on `Autodiff<Flex>`; `None`
/// elsewhere and for a layer norm without a bias.
pub fn layer_norm<const D: usize>(
    norm: &burn::nn::LayerNorm,
    x: &Tensor<D>,
    eps: f64,
) -> Option<Tensor<D>> {
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let ga = norm.gamma.val().try_into_primitive::<Ad>().ok()?;
    let ba = norm.beta.as_ref()?.val().try_into_primitive::<Ad>().ok()?;
    let input = contiguous_f32(xa.primitive())?;
    let gamma = contiguous_f32(ga.primitive())?;
    let beta = contiguous_f32(ba.primitive())?;
    let width = gamma.layout().num_elements();
    if x.dims().last() != Some(&width) || beta.layout().num_elements() != width {
        return None;
    }
    let (out, stats) = layer_norm_values(f32s(&input), width, f32s(&gamma), f32s(&beta), eps);
    let out = flex_from(out, input.layout().shape());
    let state = LayerNormState {
        input,
        gamma,
        stats: std::sync::Arc::new(stats),
    };
    Some(record(
        LayerNormOp,
        [xa.node(), ga.node(), ba.node()],
        state,
        out,
    ))
}

/// What the backward pass of a cross-entropy keeps: the logits, the targets and each row's
/// log-sum-exp.
#[derive(Clone, Debug)]
struct CrossEntropyState {
    logits: FlexTensor,
    targets: std::sync::Arc<Vec<usize>>,
    log_sum_exp: std::sync::Arc<Vec<f32>>,
}

/// Per-row cross-entropy `logsumexp(l) - l[target]` recorded as one operation.
#[derive(Debug)]
struct CrossEntropyOp;

impl Backward<Flex, 1> for CrossEntropyOp {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<CrossEntropyState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backward_unary(ops, grads, |st, grad| {
            let logits = f32s(&st.logits);
            let g = f32s(grad);
            let classes = logits.len() / g.len().max(1);
            // d ce / d l = softmax(l) - onehot(target), per row, times the row's incoming
            // gradient.
            let mut dl = zeroed(logits.len());
            dl.par_chunks_mut(classes)
                .zip(logits.par_chunks(classes))
                .enumerate()
                .for_each(|(row, (dst, src))| {
                    let (lse, scale) = (st.log_sum_exp[row], g[row]);
                    super::cpu_kernels::map_f32(dst, src, |v| {
                        scale * super::cpu_kernels::exp_f32(v - lse)
                    });
                    dst[st.targets[row]] -= scale;
                });
            flex_from(dl, st.logits.layout().shape())
        });
    }
}

/// `-log_softmax(logits)[target]` per row (`logits` `[.., V]`, one target per row in `0..V`)
/// recorded as one operation on `Autodiff<Flex>`; `None` elsewhere or for a target out of range.
pub fn cross_entropy_rows<const D: usize, const E: usize>(
    logits: &Tensor<D>,
    targets: &Tensor<E, burn::tensor::Int>,
) -> Option<Tensor<E>> {
    let dims = logits.dims();
    let classes = *dims.last()?;
    let rows: usize = dims[..D - 1].iter().product();
    if E != D - 1 || targets.dims()[..] != dims[..D - 1] || classes == 0 {
        return None;
    }
    // Checked before the targets are read: elsewhere (a GPU) reading them would be a transfer.
    let la = logits.clone().try_into_primitive::<Ad>().ok()?;
    let targets: Vec<usize> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .ok()?
        .into_iter()
        .map(|t| usize::try_from(t).ok().filter(|&t| t < classes))
        .collect::<Option<_>>()?;
    let values = contiguous_f32(la.primitive())?;
    let l = f32s(&values);
    let mut ce = zeroed(rows);
    let mut log_sum_exp = zeroed(rows);
    ce.par_iter_mut()
        .zip(log_sum_exp.par_iter_mut())
        .zip(l.par_chunks(classes))
        .zip(&targets)
        .for_each(|(((ce, lse), row), &t)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row
                .iter()
                .map(|&v| super::cpu_kernels::exp_f32(v - max))
                .sum();
            *lse = max + sum.ln();
            *ce = *lse - row[t];
        });
    let out = flex_from(ce, &dims[..D - 1]);
    let state = CrossEntropyState {
        logits: values,
        targets: std::sync::Arc::new(targets),
        log_sum_exp: std::sync::Arc::new(log_sum_exp),
    };
    Some(record(CrossEntropyOp, [la.node()], state, out))
}

/// A 2x resampling of `[b, c, h, w]` planes recorded as one operation: nearest upsampling
/// (`UPSAMPLE`) or 2x2 average pooling. Each one's gradient is the other's operation (block sums
/// for the upsampling, the upsampling at 1/4 for the pooling). The state is the input's shape.
#[derive(Debug)]
struct Resample2x<const UPSAMPLE: bool>;

impl<const UPSAMPLE: bool> Backward<Flex, 1> for Resample2x<UPSAMPLE> {
    type State = [usize; 4];

    fn backward(self, ops: Ops<[usize; 4], 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backward_unary(ops, grads, |[b, c, h, w], grad| {
            let g = f32s(grad);
            let gx = if UPSAMPLE {
                block_sums_2x2(g, 2 * w, 1.0)
            } else {
                let mut up = upsample_values(g, w / 2);
                up.par_iter_mut().for_each(|v| *v *= 0.25);
                up
            };
            flex_from(gx, &[b, c, h, w])
        });
    }
}

fn resample_2x<const UPSAMPLE: bool>(x: &Tensor<4>) -> Option<Tensor<4>> {
    let [b, c, h, w] = x.dims();
    if !UPSAMPLE && (h % 2 != 0 || w % 2 != 0) {
        return None;
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let input = contiguous_f32(xa.primitive())?;
    let (out, shape) = if UPSAMPLE {
        (upsample_values(f32s(&input), w), [b, c, 2 * h, 2 * w])
    } else {
        (block_sums_2x2(f32s(&input), w, 0.25), [b, c, h / 2, w / 2])
    };
    let out = flex_from(out, &shape);
    Some(record(
        Resample2x::<UPSAMPLE>,
        [xa.node()],
        [b, c, h, w],
        out,
    ))
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")` recorded as one operation on
/// `Autodiff<Flex>`; `None` elsewhere.
pub fn upsample_nearest_2x(x: &Tensor<4>) -> Option<Tensor<4>> {
    resample_2x::<true>(x)
}

/// `F.avg_pool2d(x, 2)` on even planes recorded as one operation on `Autodiff<Flex>`; `None`
/// elsewhere.
pub fn avg_pool_2x2(x: &Tensor<4>) -> Option<Tensor<4>> {
    resample_2x::<false>(x)
}

/// What the backward pass of the attention core keeps: its input and the probabilities.
#[derive(Clone, Debug)]
struct AttentionState {
    qkv: FlexTensor,
    probs: std::sync::Arc<Vec<f32>>,
    heads: usize,
}

/// The attention core (`qkv` -> heads' outputs) recorded as one operation.
#[derive(Debug)]
struct AttentionCore;

impl Backward<Flex, 1> for AttentionCore {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [Some(node)] = &ops.parents else {
            return;
        };
        let Some(grad) = contiguous_f32(&grad) else {
            return;
        };
        let st = ops.state;
        let shape = st.qkv.layout().shape().clone();
        let (b, s, w3) = (shape[0], shape[1], shape[2]);
        let (w, heads) = (w3 / 3, st.heads);
        let hd = w / heads;
        let scale = (hd as f32).powf(-0.5);
        let qkv = f32s(&st.qkv);
        let d_out = f32s(&grad);
        let probs = &st.probs;
        let mut d_qkv = zeroed(qkv.len());
        let d_addr = d_qkv.as_mut_ptr() as usize;
        (0..b * heads).into_par_iter().for_each(|task| {
            let (image, head) = (task / heads, task % heads);
            let base = image * s * w3;
            let col = head * hd;
            let p = &probs[task * s * s..(task + 1) * s * s];
            let d_o = d_out[image * s * w + col..].as_ptr();
            let (q, k, v) = (
                qkv[base + col..].as_ptr(),
                qkv[base + w + col..].as_ptr(),
                qkv[base + 2 * w + col..].as_ptr(),
            );
            let d_base = d_addr as *mut f32;
            let mut ds = zeroed(s * s);
            // SAFETY: all views are rows of hd values at the strides of `qkv` / `d_out` inside
            // their buffers; the destinations are this task's columns of `d_qkv` (q, k and v
            // slices of this head in this image), written by no other task.
            unsafe {
                // dV = P^T dO
                let dv = d_base.add(base + 2 * w + col);
                gemm_strided(
                    [s, hd, s],
                    dv,
                    [w3, 1],
                    false,
                    p.as_ptr(),
                    [1, s],
                    d_o,
                    [w, 1],
                    1.0,
                );
                // dP = dO V^T
                gemm_strided(
                    [s, s, hd],
                    ds.as_mut_ptr(),
                    [s, 1],
                    false,
                    d_o,
                    [w, 1],
                    v,
                    [1, w3],
                    1.0,
                );
            }
            // dS = P * (dP - rowsum(dP * P))
            for (ds, p) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                for (d, &pv) in ds.iter_mut().zip(p) {
                    *d = pv * (*d - dot);
                }
            }
            unsafe {
                // dQ = scale dS K, dK = scale dS^T Q
                let dq = d_base.add(base + col);
                gemm_strided(
                    [s, hd, s],
                    dq,
                    [w3, 1],
                    false,
                    ds.as_ptr(),
                    [s, 1],
                    k,
                    [w3, 1],
                    scale,
                );
                let dk = d_base.add(base + w + col);
                gemm_strided(
                    [s, hd, s],
                    dk,
                    [w3, 1],
                    false,
                    ds.as_ptr(),
                    [1, s],
                    q,
                    [w3, 1],
                    scale,
                );
            }
        });
        grads.register::<Flex>(node.id, flex_from(d_qkv, shape.as_slice()));
    }
}

/// The attention core of [`super::cpu_kernels::attention`] recorded as one operation on
/// `Autodiff<Flex>`; `None` elsewhere.
pub fn attention(qkv: &Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let [b, s, w3] = qkv.dims();
    let qa = qkv.clone().try_into_primitive::<Ad>().ok()?;
    let input = contiguous_f32(qa.primitive())?;
    let tracked = qkv.is_require_grad();
    let (out, probs) = attention_values(f32s(&input), [b, s, w3], heads, tracked);
    let out = flex_from(out, &[b, s, w3 / 3]);
    let result = match AttentionCore
        .prepare::<NoCheckpointing>([qa.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let probs = match probs {
                Some(p) => p,
                None => attention_values(f32s(&input), [b, s, w3], heads, true).1?,
            };
            let state = AttentionState {
                qkv: input,
                probs: std::sync::Arc::new(probs),
                heads,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Gradients of `sum(conv(x) * r)` for a fixed random `r`, through this operation and
    /// through burn's own convolution.
    #[test]
    fn convolution_gradients_match_burn() {
        for (c, o, k, h, w, bias) in [
            (3, 4, 3, 6, 7, true),
            (5, 2, 1, 4, 4, false),
            (2, 3, 5, 6, 5, true),
            // More channels than one 6-channel tile, rows wider than one 16-wide tile.
            (8, 13, 3, 9, 17, true),
        ] {
            let ad = Device::flex().autodiff();
            let pad = (k - 1) / 2;
            let conv = Conv2dConfig::new([c, o], [k, k])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(bias)
                .init(&ad);
            let x = Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &ad)
                .require_grad();
            let r = Tensor::<4>::random([2, o, h, w], Distribution::Normal(0.0, 1.0), &ad);

            let fast = conv2d(&conv, &x).expect("fast path on Autodiff<Flex>");
            let loss = (fast.clone() * r.clone()).sum();
            let g = loss.backward();
            let (gx, gw) = (x.grad(&g).unwrap(), conv.weight.grad(&g).unwrap());
            let gb = conv.bias.as_ref().map(|b| b.grad(&g).unwrap());

            // burn's own convolution (`Conv2d::forward` does not take this path), on a copy of x.
            let x2 = x.clone().detach().require_grad();
            let slow = conv.forward(x2.clone());
            let g2 = (slow.clone() * r).sum().backward();
            let conv2 = &conv;
            let tol = Tolerance::absolute(2e-4);
            fast.inner()
                .into_data()
                .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
            gx.into_data()
                .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
            gw.into_data()
                .assert_approx_eq::<f32>(&conv2.weight.grad(&g2).unwrap().into_data(), tol);
            if let Some(gb) = gb {
                let gb2 = conv2.bias.as_ref().unwrap().grad(&g2).unwrap();
                gb.into_data()
                    .assert_approx_eq::<f32>(&gb2.into_data(), tol);
            }
        }
    }

    #[test]
    fn layer_norm_gradients_match_burn() {
        for (rows, width) in [(7, 5), (40, 128), (3, 1)] {
            let ad = Device::flex().autodiff();
            let eps = 1e-5;
            let mut norm = burn::nn::LayerNormConfig::new(width)
                .with_epsilon(eps)
                .init(&ad);
            // Non-trivial affine parameters.
            norm.gamma = burn::module::Param::from_tensor(Tensor::random(
                [width],
                Distribution::Normal(1.0, 0.5),
                &ad,
            ));
            norm.beta = Some(burn::module::Param::from_tensor(Tensor::random(
                [width],
                Distribution::Normal(0.0, 0.5),
                &ad,
            )));
            let x = Tensor::<3>::random([2, rows, width], Distribution::Normal(0.5, 2.0), &ad)
                .require_grad();
            let r = Tensor::<3>::random([2, rows, width], Distribution::Normal(0.0, 1.0), &ad);
            let fast = layer_norm(&norm, &x, eps).expect("Autodiff<Flex> path");
            let g = (fast.clone() * r.clone()).sum().backward();
            let x2 = x.clone().detach().require_grad();
            let slow = norm.forward(x2.clone());
            let g2 = (slow.clone() * r).sum().backward();
            let tol = Tolerance::absolute(1e-4);
            fast.inner()
                .into_data()
                .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
            x.grad(&g)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
            let beta = norm.beta.as_ref().unwrap();
            for (a, b) in [
                (norm.gamma.grad(&g), norm.gamma.grad(&g2)),
                (beta.grad(&g), beta.grad(&g2)),
            ] {
                a.unwrap()
                    .into_data()
                    .assert_approx_eq::<f32>(&b.unwrap().into_data(), tol);
            }
        }
    }

    #[test]
    fn cross_entropy_gradients_match_burn() {
        let ad = Device::flex().autodiff();
        let (b, n, v) = (3, 5, 37);
        let logits =
            Tensor::<3>::random([b, n, v], Distribution::Normal(0.0, 4.0), &ad).require_grad();
        let targets: Vec<i64> = (0..b * n).map(|i| (i * 7 % v) as i64).collect();
        let ids = |values: Vec<i64>| {
            Tensor::<2, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(values, [b, n]),
                &ad,
            )
        };
        let r = Tensor::<2>::random([b, n], Distribution::Normal(0.0, 1.0), &ad);
        let fast: Tensor<2> =
            cross_entropy_rows(&logits, &ids(targets.clone())).expect("Autodiff<Flex> path");
        let g = (fast.clone() * r.clone()).sum().backward();
        let l2 = logits.clone().detach().require_grad();
        let t = ids(targets).reshape([b, n, 1]);
        let slow = burn::tensor::activation::log_softmax(l2.clone(), 2)
            .gather(2, t)
            .reshape([b, n])
            .neg();
        let g2 = (slow.clone() * r).sum().backward();
        let tol = Tolerance::absolute(1e-5);
        fast.inner()
            .into_data()
            .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
        logits
            .grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&l2.grad(&g2).unwrap().into_data(), tol);
        // A target out of range is not this path's.
        assert!(cross_entropy_rows::<3, 2>(&logits, &ids(vec![v as i64; b * n])).is_none());
    }

    #[test]
    fn resampling_gradients_match_burn() {
        let ad = Device::flex().autodiff();
        let x =
            Tensor::<4>::random([2, 3, 4, 6], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let [b, c, h, w] = x.dims();
        let r_up = Tensor::<4>::random([b, c, 2 * h, 2 * w], Distribution::Normal(0.0, 1.0), &ad);
        let r_down = Tensor::<4>::random([b, c, h / 2, w / 2], Distribution::Normal(0.0, 1.0), &ad);
        let tol = Tolerance::absolute(1e-5);
        let up = upsample_nearest_2x(&x).expect("Autodiff<Flex> path");
        let down = avg_pool_2x2(&x).expect("Autodiff<Flex> path");
        let g =
            ((up.clone() * r_up.clone()).sum() + (down.clone() * r_down.clone()).sum()).backward();
        let x2 = x.clone().detach().require_grad();
        let up2 = x2
            .clone()
            .reshape([b * c * h, 1, w, 1])
            .expand([b * c * h, 2, w, 2])
            .reshape([b, c, 2 * h, 2 * w]);
        let down2 = x2
            .clone()
            .reshape([b * c * (h / 2), 2, w / 2, 2])
            .sum_dim(3)
            .sum_dim(1)
            .mul_scalar(0.25)
            .reshape([b, c, h / 2, w / 2]);
        let g2 = ((up2.clone() * r_up).sum() + (down2.clone() * r_down).sum()).backward();
        up.inner()
            .into_data()
            .assert_approx_eq::<f32>(&up2.inner().into_data(), tol);
        down.inner()
            .into_data()
            .assert_approx_eq::<f32>(&down2.inner().into_data(), tol);
        x.grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
        // Odd planes are not the pooling's.
        let odd = Tensor::<4>::zeros([1, 1, 3, 4], &ad);
        assert!(avg_pool_2x2(&odd).is_none());
    }

    #[test]
    fn linear_gradients_match_burn() {
        for (rows, d_in, d_out, bias) in [(7, 5, 3, true), (4, 9, 11, false), (130, 64, 96, true)] {
            let ad = Device::flex().autodiff();
            let layer = burn::nn::LinearConfig::new(d_in, d_out)
                .with_bias(bias)
                .init(&ad);
            let x = Tensor::<3>::random([2, rows, d_in], Distribution::Normal(0.0, 1.0), &ad)
                .require_grad();
            let r = Tensor::<3>::random([2, rows, d_out], Distribution::Normal(0.0, 1.0), &ad);
            let b = layer.bias.as_ref().map(|b| b.val());
            let fast = linear(&x, &layer.weight.val(), b.as_ref()).expect("Autodiff<Flex> path");
            let g = (fast.clone() * r.clone()).sum().backward();
            let x2 = x.clone().detach().require_grad();
            let slow = layer.forward(x2.clone());
            let g2 = (slow.clone() * r).sum().backward();
            let tol = Tolerance::absolute(2e-4);
            fast.inner()
                .into_data()
                .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
            x.grad(&g)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
            layer
                .weight
                .grad(&g)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&layer.weight.grad(&g2).unwrap().into_data(), tol);
            if let Some(bias) = &layer.bias {
                bias.grad(&g)
                    .unwrap()
                    .into_data()
                    .assert_approx_eq::<f32>(&bias.grad(&g2).unwrap().into_data(), tol);
            }
        }
    }

    #[test]
    fn silu_gelu_and_tanh_gradients_match_burn() {
        let ad = Device::flex().autodiff();
        let x =
            Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 3.0), &ad).require_grad();
        let r = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 1.0), &ad);
        type Fast = fn(&Tensor<3>) -> Option<Tensor<3>>;
        type Slow = fn(Tensor<3>) -> Tensor<3>;
        let cases: [(Fast, Slow); 3] = [
            (silu, burn::tensor::activation::silu),
            (gelu, burn::tensor::activation::gelu),
            (tanh, |x| x.tanh()),
        ];
        for (fast, slow) in cases {
            let y = fast(&x).expect("fast path on Autodiff<Flex>");
            let gx = x.grad(&(y.clone() * r.clone()).sum().backward()).unwrap();
            let x2 = x.clone().detach().require_grad();
            let y2 = slow(x2.clone());
            let gx2 = x2.grad(&(y2.clone() * r.clone()).sum().backward()).unwrap();
            let tol = Tolerance::absolute(1e-5);
            y.inner()
                .into_data()
                .assert_approx_eq::<f32>(&y2.inner().into_data(), tol);
            gx.into_data()
                .assert_approx_eq::<f32>(&gx2.into_data(), tol);
        }
        // Plain tensors are not this path's.
        assert!(silu(&x.inner()).is_none());
    }

    #[test]
    fn group_norm_silu_gradients_match_burn() {
        let ad = Device::flex().autodiff();
        let mut norm = burn::nn::GroupNormConfig::new(3, 6)
            .with_epsilon(1e-6)
            .init(&ad);
        norm.gamma = norm.gamma.map(|g| {
            g.map(|_| Tensor::random([6], Distribution::Normal(1.0, 0.5), &ad).require_grad())
        });
        norm.beta = norm.beta.map(|b| {
            b.map(|_| Tensor::random([6], Distribution::Normal(0.0, 0.5), &ad).require_grad())
        });
        let x =
            Tensor::<4>::random([2, 6, 5, 4], Distribution::Normal(1.0, 2.0), &ad).require_grad();
        let r = Tensor::<4>::random([2, 6, 5, 4], Distribution::Normal(0.0, 1.0), &ad);
        let y = group_norm_silu(&norm, &x).expect("fast path on Autodiff<Flex>");
        let g = (y.clone() * r.clone()).sum().backward();
        let x2 = x.clone().detach().require_grad();
        let y2 = burn::tensor::activation::silu(norm.forward(x2.clone()));
        let g2 = (y2.clone() * r).sum().backward();
        let tol = Tolerance::absolute(2e-5);
        y.inner()
            .into_data()
            .assert_approx_eq::<f32>(&y2.inner().into_data(), tol);
        x.grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
        let (gamma, beta) = (norm.gamma.as_ref().unwrap(), norm.beta.as_ref().unwrap());
        gamma
            .grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&gamma.grad(&g2).unwrap().into_data(), tol);
        beta.grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&beta.grad(&g2).unwrap().into_data(), tol);
    }

    #[test]
    fn attention_gradients_match_burn() {
        let ad = Device::flex().autodiff();
        let (b, s, heads, hd) = (2, 7, 3, 4);
        let w = heads * hd;
        let qkv =
            Tensor::<3>::random([b, s, 3 * w], Distribution::Normal(0.0, 1.5), &ad).require_grad();
        let r = Tensor::<3>::random([b, s, w], Distribution::Normal(0.0, 1.0), &ad);
        let y = attention(&qkv, heads).expect("fast path on Autodiff<Flex>");
        let g = (y.clone() * r.clone()).sum().backward();
        let x = qkv.clone().detach().require_grad();
        let split = |t: Tensor<3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
        let q = split(x.clone().narrow(2, 0, w));
        let k = split(x.clone().narrow(2, w, w));
        let v = split(x.clone().narrow(2, 2 * w, w));
        let p = burn::tensor::activation::softmax(
            q.matmul(k.swap_dims(2, 3))
                .mul_scalar((hd as f64).powf(-0.5)),
            3,
        );
        let y2 = p.matmul(v).swap_dims(1, 2).reshape([b, s, w]);
        let g2 = (y2.clone() * r).sum().backward();
        let tol = Tolerance::absolute(1e-5);
        y.inner()
            .into_data()
            .assert_approx_eq::<f32>(&y2.inner().into_data(), tol);
        qkv.grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&x.grad(&g2).unwrap().into_data(), tol);
    }

    /// Times the three parts of a training convolution (forward, input gradient, weight
    /// gradient) at the demo teacher's 3x3 sizes, batch 16, best of 7, both threads; the same
    /// table on the PyTorch side: `bench/pytorch_conv.py`.
    /// `cargo test --release --workspace --lib conv_training_parts -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark, not a test"]
    fn benchmark_conv_training_parts() {
        use crate::model::direct_conv::tests::values;
        let batch = 16;
        for (c, o, hw) in [
            (3, 32, 64),
            (32, 32, 64),
            (64, 64, 64),
            (64, 32, 64),
            (32, 3, 64),
            (32, 64, 32),
            (64, 64, 32),
            (64, 64, 16),
            (64, 128, 8),
            (128, 128, 8),
            (128, 32, 8),
        ] {
            let x = values(batch * c * hw * hw, 1);
            let wt = values(o * c * 9, 2);
            let g = values(batch * o * hw * hw, 3);
            let flipped = values(o * c * 9, 4);
            let best = |f: &dyn Fn() -> Vec<f32>| {
                std::hint::black_box(f());
                (0..7)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        std::hint::black_box(f());
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::MAX, f64::min)
            };
            let conv = |x: &[f32], c: usize, w: &[f32], o: usize| {
                same_conv(ConvOperands {
                    x,
                    dims: [batch, c, hw, hw],
                    weight: w,
                    out_channels: o,
                    k: 3,
                    bias: None,
                    residual: None,
                })
            };
            let times = [
                best(&|| conv(&x, c, &wt, o)),
                best(&|| conv(&g, o, &flipped, c)),
                best(&|| {
                    crate::model::weight_grad::weight_gradient(&x, &g, [batch, c, hw, hw], o, 3)
                }),
                best(&|| weight_gradient_gemm(&x, &g, [batch, c, hw, hw], o, 3)),
            ];
            let flops = 2.0 * (batch * c * o * 9 * hw * hw) as f64;
            let [f, d, w, wg] = times.map(|t| format!("{:7.2} ({:4.0})", t * 1e3, flops / t / 1e9));
            println!(
                "{c:4}->{o:4} @{hw:3}: fwd {f}  bwd-data {d}  bwd-weight {w}  (GEMMs: {wg})   ms (GFLOP/s)"
            );
        }
    }
}
