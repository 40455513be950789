//! The CPU kernels: everything the model computes on burn's CPU backend (flex) faster than flex's
//! generic operations, and the training versions of the same operations as recorded autodiff
//! operations. The model calls only the functions re-exported here (the seam); each falls back
//! to burn's own operation when its fast path does not apply (another backend such as wgpu,
//! another dtype, a layer configuration outside the cases handled), so the model code is the
//! same on every backend.
//!
//! Layers, each using only the ones above it (no module cycles):
//! - building blocks: [`simd`] (instruction-set choice and vectorised loops), [`math`] (exp, erf,
//!   tanh, softmax), [`buffers`] (output storage), [`tensors`] (burn tensors to raw slices);
//! - raw kernels on slices: [`gemm`] (with the optional system BLAS, [`blas`], and the
//!   `gemm` crate, [`builtin_gemm`]), [`conv`]
//!   (direct and shifted-GEMM convolutions, weight gradients), [`norm`], [`attention`],
//!   [`resample`];
//! - [`autodiff`]: the recorded training operations, one per file, whose forward and backward
//!   passes are the raw kernels;
//! - [`ops`]: the tensor-level functions the model calls, which try the recorded operation
//!   (training), then the raw kernel (inference), then burn.
//!
//! `unsafe` is allowed in this module only (the crate root denies it elsewhere), and every
//! `unsafe` block here states why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
// The layout above links the crate-private layers for whoever works on them
// (`cargo doc --document-private-items` resolves them); the public docs show them as names.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod attention;
pub mod autodiff;
pub mod blas;
pub(crate) mod buffers;
pub(crate) mod builtin_gemm;
pub(crate) mod conv;
pub(crate) mod gemm;
pub(crate) mod math;
pub mod memory;
pub(crate) mod norm;
pub mod ops;
pub(crate) mod resample;
pub(crate) mod simd;
pub(crate) mod tensors;

pub use autodiff::cross_entropy_rows;
pub use math::{erf_f32, exp_f32, tanh_f32};
pub use ops::{
    attention, avg_pool_2x2, conv2d, gelu, group_norm_silu, layer_norm, linear, linear_layer,
    pointwise_conv, tanh, upsample_nearest_2x,
};
pub(crate) use tensors::{cpu_values, f32s};

/// The instruction set the kernels use, for the device line: `AVX-512`, `AVX2` or `baseline`,
/// with the CPU's own when `SFTOK_SIMD` caps it lower.
pub fn instruction_set() -> String {
    let (used, cpu) = (simd::isa(), simd::cpu_isa());
    if used == cpu {
        used.name().to_string()
    } else {
        format!("{} (SFTOK_SIMD; the CPU has {})", used.name(), cpu.name())
    }
}
