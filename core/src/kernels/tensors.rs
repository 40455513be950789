//! The glue between burn tensors and the raw `f32` slices the kernels work on: a tensor's values
//! when it is a plain (or autodiff-tracked) f32 tensor of the CPU backend, and a tensor built
//! from a kernel's output without a copy.

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{DType, Shape, Tensor, TensorData};

/// The autodiff backend the training kernels record on: flex without gradient checkpointing
/// (what `Device::flex().autodiff()` gives).
pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;

/// The tensor's values, contiguous, when it is a plain f32 flex tensor (not autodiff); else `None`.
pub(crate) fn flex_values<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    contiguous_f32(&t.clone().try_into_primitive::<Flex>().ok()?)
}

/// The tensor's values, contiguous, when it lives on the CPU backend, tracked by autodiff or not;
/// else `None`.
pub(crate) fn cpu_values<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if let Some(values) = flex_values(t) {
        return Some(values);
    }
    let tracked = t.clone().try_into_primitive::<Ad>();
    contiguous_f32(tracked.ok()?.primitive())
}

/// `t` itself when it is f32, contiguous and starts at offset 0; a contiguous copy when it is f32
/// otherwise; `None` for other dtypes.
pub(crate) fn contiguous_f32(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(if t.is_contiguous() && t.layout().start_offset() == 0 {
        t.clone()
    } else {
        t.to_contiguous()
    })
}

pub(crate) fn f32s(ft: &FlexTensor) -> &[f32] {
    let n = ft.layout().num_elements();
    let start = ft.layout().start_offset();
    &ft.storage::<f32>()[start..start + n]
}

/// A flex tensor owning `values` (no copy), contiguous with `shape`.
pub(crate) fn flex_from(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    let ft = FlexTensor::from_data(TensorData::new(values, Shape::from(shape.to_vec())));
    debug_assert_eq!(
        ft.layout(),
        &Layout::contiguous(Shape::from(shape.to_vec()))
    );
    ft
}

pub(crate) fn from_vec<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(flex_from(values, &shape))
}
