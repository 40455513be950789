//! Recorded nearest 2x upsampling and 2x2 average pooling.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{backward_unary, record};
use crate::kernels::resample::{block_sums_2x2, upsample_values};
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

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
