//! The recorded attention core (scores, softmax, weighted sum) and its backward pass.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::OpsKind;

use crate::kernels::attention::attention_values;
use crate::kernels::buffers::zeroed;
use crate::kernels::gemm::gemm_strided;
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

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
            // SAFETY: as the products above: q, k rows inside `qkv` at stride 3w, `ds` s x s,
            // and the gradient's q and k slices of this (image, head) written by this task only.
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

/// The attention core of [`crate::kernels::attention`] recorded as one operation on
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
