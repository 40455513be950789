//! The recorded row-wise cross-entropy of the token stages (log-softmax and NLL in one pass).

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{backward_unary, record};
use crate::kernels::buffers::zeroed;
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

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
                    crate::kernels::simd::map_f32(dst, src, |v| {
                        scale * crate::kernels::math::exp_f32(v - lse)
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
                .map(|&v| crate::kernels::math::exp_f32(v - max))
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
