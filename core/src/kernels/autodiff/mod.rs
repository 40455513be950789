//! Training versions of the CPU kernels: burn autodiff operations on the flex backend whose
//! forward and backward passes are the kernels of [`super::ops`].
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

/// [`record`] for `$op::<2>` (parents: input, weight) or `$op::<3>` (and bias).
macro_rules! record_with_optional_bias {
    ($op:ident, $x:expr, $w:expr, $bias:expr, $state:expr, $out:expr) => {
        match $bias {
            Some(b) => record($op::<3>, [$x.node(), $w.node(), b.node()], $state, $out),
            None => record($op::<2>, [$x.node(), $w.node()], $state, $out),
        }
    };
}

mod activation;
mod attention;
mod conv;
mod cross_entropy;
mod group_norm;
mod layer_norm;
mod linear;
mod resample;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;

pub use activation::{gelu, silu, tanh};
pub use attention::attention;
pub use conv::conv2d;
pub use cross_entropy::cross_entropy_rows;
pub use group_norm::group_norm_silu;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use resample::{avg_pool_2x2, upsample_nearest_2x};

use crate::kernels::tensors::{Ad, contiguous_f32};

/// Records `op` over `parents`, keeping `state` for its backward pass when a parent is tracked;
/// the result is the autodiff tensor of `out`.
pub(crate) fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
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
pub(crate) fn backward_unary<S>(
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

#[cfg(test)]
mod tests;
