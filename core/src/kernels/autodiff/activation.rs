//! Recorded element-wise activations (SiLU, exact GELU, tanh): one vectorised pass forward and
//! one backward.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{backward_unary, record};
use crate::kernels::buffers::zeroed;
use crate::kernels::math::{erf_f32, exp_f32, silu_f32, tanh_f32};
use crate::kernels::simd::{map_f32, map2_f32};
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

/// An element-wise activation: its value and derivative, inlined into the vectorised loops.
pub(super) trait Activation: Send + std::fmt::Debug + 'static {
    fn value(x: f32) -> f32;
    fn derivative(x: f32) -> f32;
}

#[derive(Debug)]
pub(super) struct Silu;

impl Activation for Silu {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        silu_f32(x)
    }

    #[inline(always)]
    fn derivative(x: f32) -> f32 {
        let s = 1.0 / (1.0 + exp_f32(-x));
        s * (1.0 + x * (1.0 - s))
    }
}

#[derive(Debug)]
struct Gelu;

impl Activation for Gelu {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
    }

    /// d/dx x Phi(x) = Phi(x) + x phi(x).
    #[inline(always)]
    fn derivative(x: f32) -> f32 {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
        cdf + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
    }
}

#[derive(Debug)]
struct Tanh;

impl Activation for Tanh {
    #[inline(always)]
    fn value(x: f32) -> f32 {
        tanh_f32(x)
    }

    #[inline(always)]
    fn derivative(x: f32) -> f32 {
        let t = tanh_f32(x);
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
                    map2_f32(d, x, g, |x, g| g * A::derivative(x));
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
        .for_each(|(d, s)| map_f32(d, s, A::value));
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
