//! The recorded layer norm of the transformer blocks.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::group_norm::norm_backward_finish;
use super::record;
use crate::kernels::buffers::zeroed;
use crate::kernels::norm::layer_norm_values;
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

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
