//! The recorded "same" convolution: forward, input gradient (the same convolution with the
//! kernel flipped) and weight gradient.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::record;
use crate::kernels::buffers::zeroed;
use crate::kernels::conv::{
    SameConv as ConvOperands, same_conv, same_conv_kernel, weight_gradient,
};
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};
use burn::nn::conv::Conv2d;

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
            let gw = weight_gradient(x, g, [batch, c, h, w], o, k);
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
