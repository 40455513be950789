//! The recorded linear layer `x W + b`: one product forward, two backward.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::record;
use crate::kernels::buffers::zeroed;
use crate::kernels::gemm::{gemm_threaded, linear_values};
use crate::kernels::tensors::{Ad, contiguous_f32, f32s, flex_from};

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
