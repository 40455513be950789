//! The recorded group norm + SiLU pair of the convolutional blocks.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::activation::{Activation, Silu};
use super::record;
use crate::kernels::buffers::zeroed;
use crate::kernels::norm::{group_norm_silu_values, group_stats};
use crate::kernels::simd::{update_f32, widest};
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

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
    widest!(
        norm_silu_backward_channel_avx512,
        norm_silu_backward_channel_avx2,
        norm_silu_backward_channel_plain,
        (dx, x, g, params)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn norm_silu_backward_channel_avx512(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    params: [f32; 4],
) -> [f64; 4] {
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
pub(super) fn norm_backward_finish(dx: &mut [f32], x: &[f32], [mean, rstd, m1, m2]: [f32; 4]) {
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
