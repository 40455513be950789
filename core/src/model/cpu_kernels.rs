//! Inference kernels for burn's CPU backend (flex), used by the convolutional parts of the model
//! (the teacher and the pixel decoder) where flex's generic operations are slowest.
//!
//! Why: at the official size the pixel decoder spends most of its time in 3x3 convolutions at
//! 256x256 and in the group norm + SiLU pairs before them. flex runs the convolution at about two
//! thirds of PyTorch's speed and the group norm and SiLU as separate passes, each about four times
//! slower than PyTorch's (see BENCHMARKS.md). The kernels here do the same arithmetic with fewer
//! passes over memory:
//! - a "same" convolution (odd kernel, stride 1, padding (k-1)/2) as k*k matrix products with the
//!   `gemm` crate (the one flex uses) on shifted views of one padded copy of the input: no im2col
//!   buffer, and the bias and an optional residual are added while the result is written out;
//! - group norm and SiLU fused in one pass (statistics in f64);
//! - nearest-neighbour 2x upsampling as a copy.
//!
//! Every function takes and returns burn tensors and falls back to burn's own operations whenever
//! the fast path does not apply: a tensor on another backend (wgpu), an autodiff tensor (training
//! needs burn's backward), another dtype, or a layer configuration outside the cases above. The
//! parity tests run both paths (flex takes the fast one, wgpu the fallback) against the official
//! fixtures.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

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
    let tracked = t.clone().try_into_primitive::<super::cpu_autodiff::Ad>();
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

fn from_vec<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(flex_from(values, &shape))
}

/// `conv.forward(x)` (+ `residual` when given), with the fast path for "same" convolutions.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>, residual: Option<Tensor<4>>) -> Tensor<4> {
    match conv2d_fast(conv, &x, residual.as_ref()) {
        Some(out) => out,
        None => {
            let out = conv.forward(x);
            match residual {
                Some(r) => out + r,
                None => out,
            }
        }
    }
}

/// The kernel size when `conv` is a "same" convolution (odd square kernel, stride 1, no dilation,
/// one group, padding (k-1)/2 on every side), the case the kernels here handle.
pub(crate) fn same_conv_kernel(conv: &Conv2d) -> Option<usize> {
    let [k, kw] = conv.kernel_size;
    let pad = (k - 1) / 2;
    let same = k == kw
        && k % 2 == 1
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && match conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r] == [pad; 4],
            PaddingConfig2d::Same => true,
            PaddingConfig2d::Valid => k == 1,
        };
    same.then_some(k)
}

fn conv2d_fast(conv: &Conv2d, x: &Tensor<4>, residual: Option<&Tensor<4>>) -> Option<Tensor<4>> {
    if let Some(out) = super::cpu_autodiff::conv2d(conv, x) {
        return Some(match residual {
            Some(r) => out + r.clone(),
            None => out,
        });
    }
    let k = same_conv_kernel(conv)?;
    let input = flex_values(x)?;
    let weight = flex_values(&conv.weight.val())?;
    let bias = match &conv.bias {
        Some(b) => Some(flex_values(&b.val())?),
        None => None,
    };
    let res = match residual {
        Some(r) => Some(flex_values(r)?),
        None => None,
    };
    let [batch, c, h, w] = x.dims();
    let o = weight.layout().shape()[0];
    if weight.layout().shape()[1] != c {
        return None; // let burn report the mismatch
    }
    if let Some(r) = &res
        && r.layout().shape().as_slice() != [batch, o, h, w]
    {
        return None;
    }
    let out = same_conv(SameConv {
        x: f32s(&input),
        dims: [batch, c, h, w],
        weight: f32s(&weight),
        out_channels: o,
        k,
        bias: bias.as_ref().map(f32s),
        residual: res.as_ref().map(f32s),
    });
    Some(from_vec(out, [batch, o, h, w]))
}

/// Copies the planes of `image` (`h x w` each) into the interiors of the zero-bordered planes of
/// `padded` (`(h + 2 pad) x (w + 2 pad)` each, borders already zero).
pub(crate) fn fill_padded(padded: &mut [f32], image: &[f32], [h, w]: [usize; 2], pad: usize) {
    let wp = w + 2 * pad;
    let plane = (h + 2 * pad) * wp;
    padded
        .par_chunks_mut(plane)
        .zip(image.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for y in 0..h {
                dst[(y + pad) * wp + pad..][..w].copy_from_slice(&src[y * w..][..w]);
            }
        });
}

/// [`fill_padded`] into storage that has not been written: every value of the `c` planes is
/// written, the border with zeros.
pub(crate) fn write_padded(
    padded: &mut [MaybeUninit<f32>],
    image: &[f32],
    [h, w]: [usize; 2],
    pad: usize,
) {
    let wp = w + 2 * pad;
    let plane = (h + 2 * pad) * wp;
    let zero = MaybeUninit::new(0.0f32);
    padded
        .par_chunks_mut(plane)
        .zip(image.par_chunks(h * w))
        .for_each(|(dst, src)| {
            dst[..pad * wp].fill(zero);
            dst[(h + pad) * wp..].fill(zero);
            for (y, row) in dst[pad * wp..(h + pad) * wp]
                .chunks_exact_mut(wp)
                .enumerate()
            {
                row[..pad].fill(zero);
                row[pad..pad + w].write_copy_of_slice(&src[y * w..][..w]);
                row[pad + w..].fill(zero);
            }
        });
}

/// `len` zeros, written by all threads when there are many: a zero fill on the calling thread
/// (what `vec![0.0; len]` does with reused memory) leaves the other threads idle meanwhile; such
/// fills were the largest part of the time one thread waited for the other in a training step.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    const PARALLEL_FROM: usize = 1 << 16;
    if len < PARALLEL_FROM {
        return vec![0.0; len];
    }
    let mut values = unwritten(len);
    values
        .par_chunks_mut(PARALLEL_FROM)
        .for_each(|chunk| chunk.fill(MaybeUninit::new(0.0)));
    // SAFETY: every chunk was filled.
    unsafe { written(values) }
}

/// Storage for `len` values that a kernel writes completely: no zero fill first, which would
/// be one more pass over memory as large as a convolution's input or output (the zero fills
/// were 1-2 % of a teacher training step).
pub(crate) fn unwritten(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut values = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` values need no initialisation.
    unsafe { values.set_len(len) };
    values
}

/// The values of [`unwritten`] storage once all of them have been written.
///
/// # Safety
/// Every value of `values` has been written.
pub(crate) unsafe fn written(values: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut values = std::mem::ManuallyDrop::new(values);
    let (ptr, len, cap) = (values.as_mut_ptr(), values.len(), values.capacity());
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; same allocation, length and capacity;
    // the caller vouches that every value is initialised.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// The operands of a "same" convolution (stride 1, odd k x k kernel, zero padding (k-1)/2) on
/// raw values.
#[derive(Clone, Copy)]
pub(crate) struct SameConv<'a> {
    /// The input, `[batch, c, h, w]` contiguous.
    pub x: &'a [f32],
    /// `[batch, c, h, w]`.
    pub dims: [usize; 4],
    /// `[out_channels, c, k, k]` contiguous.
    pub weight: &'a [f32],
    pub out_channels: usize,
    pub k: usize,
    /// Added per output channel.
    pub bias: Option<&'a [f32]>,
    /// Added to the output, `[batch, out_channels, h, w]`.
    pub residual: Option<&'a [f32]>,
}

/// A stride-1 convolution with a k x k kernel (k odd) and zero padding (k-1)/2 on every side.
///
/// The input of each image is copied once into a zero-padded plane per channel of width
/// `wp = w + k - 1`. On that layout the input pixel under kernel tap (ky, kx) for output (y, x) is at
/// `(y + ky) * wp + x + kx`: one constant offset per tap. So a block of output rows, computed on a
/// grid of `rows` rows of `wp` columns (the last k-1 columns of each row are never read), is a sum
/// of k*k matrix products `W_tap [o, c] x X_shifted [c, rows*wp]`, each a plain strided GEMM.
/// Blocks of rows run in parallel, each into a small grid that stays in cache until its rows are
/// written out with the bias and the residual added.
pub(crate) fn same_conv(conv: SameConv<'_>) -> Vec<f32> {
    let [_, c, h, w] = conv.dims;
    if super::direct_conv::available() && super::direct_conv::preferred(c, h, w, conv.k) {
        return super::direct_conv::same_conv(conv);
    }
    same_conv_gemm(conv)
}

/// [`same_conv`] through the `gemm` crate: the path where AVX2 + FMA are missing, and the
/// reference the direct kernel is benchmarked against.
pub(crate) fn same_conv_gemm(conv: SameConv<'_>) -> Vec<f32> {
    let SameConv { x, weight, k, .. } = conv;
    let ([batch, c, h, w], o) = (conv.dims, conv.out_channels);
    let (bias, residual) = (conv.bias, conv.residual);
    let pad = (k - 1) / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let plane = hp * wp;
    let taps = k * k;
    let mut out = zeroed(batch * o * h * w);
    // The weights regrouped per tap, [tap][o][c], so that each tap's matrix is row-major: what a
    // BLAS takes.
    let mut by_tap = zeroed(taps * o * c);
    for (i, v) in weight.iter().enumerate() {
        let (oc_ci, tap) = (i / taps, i % taps);
        by_tap[tap * o * c + oc_ci] = *v;
    }
    // Reads for the junk columns of the last rows run up to k-1 values past the last plane.
    let mut padded = if pad == 0 {
        Vec::new()
    } else {
        zeroed(c * plane + k)
    };
    // About 2 MiB of grid per block (o x rows x wp floats), and at least a few blocks per thread.
    let threads = rayon::current_num_threads().max(1);
    let rows = (((1 << 19) / (o * wp).max(1)).max(1))
        .min(h.div_ceil(2 * threads))
        .max(1);
    let blocks = h.div_ceil(rows);
    for b in 0..batch {
        let image = &x[b * c * h * w..(b + 1) * c * h * w];
        let src: &[f32] = if pad == 0 {
            image
        } else {
            fill_padded(&mut padded, image, [h, w], pad);
            &padded
        };
        let out_addr = out[b * o * h * w..].as_mut_ptr() as usize;
        let res_image = residual.map(|r| &r[b * o * h * w..(b + 1) * o * h * w]);
        (0..blocks).into_par_iter().for_each(|block| {
            let y0 = block * rows;
            let nrows = rows.min(h - y0);
            let n = nrows * wp;
            let mut grid = zeroed(o * n);
            for ky in 0..k {
                for kx in 0..k {
                    let tap = ky * k + kx;
                    // SAFETY: grid is o x n (row stride n); lhs is by_tap[tap], o x c row-major;
                    // rhs reads, in each of the c planes (stride `plane`), n values from
                    // (y0 + ky) * wp + kx, which stay inside `src` as argued above (the padded
                    // buffer has k values of slack; with pad 0 there is one tap, wp = w and rhs is
                    // rows y0.. of the image).
                    unsafe {
                        gemm_strided(
                            [o, n, c],
                            grid.as_mut_ptr(),
                            [n, 1],
                            tap > 0,
                            by_tap[tap * o * c..].as_ptr(),
                            [c, 1],
                            src.as_ptr().add((y0 + ky) * wp + kx),
                            [plane, 1],
                            1.0,
                        );
                    }
                }
            }
            for oc in 0..o {
                let add = bias.map_or(0.0, |b| b[oc]);
                for r in 0..nrows {
                    let y = y0 + r;
                    let row = &grid[oc * n + r * wp..][..w];
                    // SAFETY: output rows y0..y0+nrows of every channel belong to this block only.
                    let d = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out_addr as *mut f32).add(oc * h * w + y * w),
                            w,
                        )
                    };
                    match res_image {
                        Some(res) => {
                            let res = &res[oc * h * w + y * w..][..w];
                            for ((d, g), r) in d.iter_mut().zip(row).zip(res) {
                                *d = g + add + r;
                            }
                        }
                        None => {
                            for (d, g) in d.iter_mut().zip(row) {
                                *d = g + add;
                            }
                        }
                    }
                }
            }
        });
    }
    out
}

/// Whether this CPU has AVX2 and FMA (checked once by std). The element-wise loops below are
/// compiled twice, for baseline x86-64 (SSE2, 4 lanes) and for AVX2 + FMA (8 lanes), and the
/// second is used when the CPU has it: the default target would leave half of the width unused.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn map_plain(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map_avx2(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    map_plain(dst, src, f)
}

#[inline(always)]
fn map2_plain(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map2_avx2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    map2_plain(dst, a, b, f)
}

#[inline(always)]
fn update_plain(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (d, &b) in dst.iter_mut().zip(b) {
        *d = f(*d, b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn update_avx2(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    update_plain(dst, b, f)
}

/// `dst[i] = f(dst[i], b[i])` in place, vectorised as [`map_f32`].
#[inline]
pub(crate) fn update_f32(dst: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { update_avx2(dst, b, f) };
    }
    update_plain(dst, b, f)
}

/// `dst[i] = f(a[i], b[i])`, vectorised as [`map_f32`].
#[inline]
pub(crate) fn map2_f32(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { map2_avx2(dst, a, b, f) };
    }
    map2_plain(dst, a, b, f)
}

/// `dst[i] = f(src[i])`, vectorised for the widest of the two targets the CPU runs.
#[inline]
pub(crate) fn map_f32(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { map_avx2(dst, src, f) };
    }
    map_plain(dst, src, f)
}

/// `e^x` in f32 without a library call, so that loops over it vectorise (Cephes' `expf`: range
/// reduction by a power of two (rounded to nearest), degree-5 polynomial; relative error about 1e-7 on the range that
/// does not overflow; arguments below -87.3 give e^-87.3 instead of a denormal, which no
/// caller here can tell from zero).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest by adding and removing 1.5 * 2^23 (|x log2 e| < 2^22): `floor` would be a
    // library call on baseline x86-64 and stop the loops from vectorising.
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // SAFETY: n is an integer in [-126, 127] after the clamp above, so the conversion is exact;
    // the unchecked form avoids the saturating conversion, which does not vectorise.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    e * f32::from_bits(((n + 127) as u32) << 23)
}

/// `erf(x)` in f32 as a rational function of x (the single-precision approximation used by Eigen
/// and XLA, exact to a few ulp; |x| >= 4 is +-1 in f32), branch-free so that it vectorises.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10_f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 - 2.101_024e-6;
    let p = p * x2 - 5.692_506_4e-5;
    let p = p * x2 - 7.349_906_3e-4;
    let p = p * x2 - 2.954_6e-3;
    let p = p * x2 - 1.609_603_3e-2;
    let q = -1.456_607_2e-5_f32;
    let q = q * x2 - 2.133_740_6e-4;
    let q = q * x2 - 1.682_827e-3;
    let q = q * x2 - 7.373_329e-3;
    let q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// Exact (erf) GELU, `x * (1 + erf(x / sqrt 2)) / 2`, as `torch.nn.GELU()` computes it.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = super::cpu_autodiff::gelu(&x) {
        return y;
    }
    let Some(input) = flex_values(&x) else {
        return burn::tensor::activation::gelu(x);
    };
    let mut out = zeroed(input.layout().num_elements());
    out.par_chunks_mut(1 << 14)
        .zip(f32s(&input).par_chunks(1 << 14))
        .for_each(|(d, s)| {
            map_f32(d, s, |v| {
                0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
            })
        });
    from_vec(out, x.dims())
}

/// `layer_norm(x) * gamma + beta` over the last dimension (`width` values per row), with each
/// row's mean and 1 / standard deviation (biased variance, as PyTorch), which the backward pass
/// reuses. Rows in parallel, sums in f64.
pub(crate) fn layer_norm_values(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<[f32; 2]>) {
    let rows = x.len() / width.max(1);
    let mut out = zeroed(x.len());
    let mut stats = vec![[0.0f32; 2]; rows];
    const ROWS_PER_TASK: usize = 32;
    out.par_chunks_mut(ROWS_PER_TASK * width)
        .zip(stats.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * width))
        .for_each(|((out, stats), x)| {
            for ((dst, st), src) in out
                .chunks_exact_mut(width)
                .zip(stats.iter_mut())
                .zip(x.chunks_exact(width))
            {
                let mean = src.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var =
                    src.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                let (mean, rstd) = (mean as f32, rstd as f32);
                for (((d, &v), &g), &b) in dst.iter_mut().zip(src).zip(gamma).zip(beta) {
                    *d = (v - mean) * rstd * g + b;
                }
                *st = [mean, rstd];
            }
        });
    (out, stats)
}

/// `norm.forward(x)` for a [`LayerNorm`] whose epsilon is `eps` (burn keeps its own private):
/// one recorded operation in training on the CPU backend ([`super::cpu_autodiff::layer_norm`]),
/// one pass over the rows in inference there, burn's elsewhere.
///
/// Why: burn's layer norm is about ten element-wise operations forward and more backward, each
/// a pass over memory on one thread; the ViT's 20 of them per forward left one of the two
/// threads idle for a noticeable part of a stage-1 step.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    if let Some(y) = super::cpu_autodiff::layer_norm(norm, &x, eps) {
        return y;
    }
    let fast = || {
        let input = flex_values(&x)?;
        let gamma = flex_values(&norm.gamma.val())?;
        let beta = flex_values(&norm.beta.as_ref()?.val())?;
        let width = gamma.layout().num_elements();
        (x.dims().last() == Some(&width)).then_some(())?;
        let (out, _) = layer_norm_values(f32s(&input), width, f32s(&gamma), f32s(&beta), eps);
        Some(from_vec(out, x.dims()))
    };
    match fast() {
        Some(y) => y,
        None => norm.forward(x),
    }
}

/// `tanh(x)` in f32 through [`exp_f32`], so that loops over it vectorise: `1 - 2 / (e^{2x} + 1)`
/// (absolute error about 1e-7; saturates to +-1 beyond |x| = 44, where f32 tanh is +-1 too).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * x) + 1.0)
}

/// `x.tanh()` in parallel, vectorised chunks: one recorded operation in training on the CPU
/// backend, one pass in inference there, burn's (a library call per value on one thread)
/// elsewhere.
pub fn tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = super::cpu_autodiff::tanh(&x) {
        return y;
    }
    let Some(input) = flex_values(&x) else {
        return x.tanh();
    };
    let mut out = zeroed(input.layout().num_elements());
    out.par_chunks_mut(1 << 14)
        .zip(f32s(&input).par_chunks(1 << 14))
        .for_each(|(d, s)| map_f32(d, s, tanh_f32));
    from_vec(out, x.dims())
}

/// Softmax of one row, in place. The passes are kept separate so that the exponentials vectorise
/// (a running sum in the same loop would serialise them).
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp_f32(*v - max);
    }
    // Eight partial sums: a vectorisable reduction (and a slightly more accurate one).
    let mut partial = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (p, v) in partial.iter_mut().zip(c) {
            *p += v;
        }
    }
    let sum: f32 = partial.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2(values: &mut [f32], len: usize) {
    for row in values.chunks_exact_mut(len) {
        softmax_in_place(row);
    }
}

/// Softmax of each row of `len` values.
fn softmax_rows(values: &mut [f32], len: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { softmax_rows_avx2(values, len) };
    }
    for row in values.chunks_exact_mut(len) {
        softmax_in_place(row);
    }
}

/// Multi-head scaled dot-product attention on packed projections, as `nn.MultiheadAttention`
/// computes it after its input projection: `qkv` `[b, s, 3w]` (q, then k, then v, each split into
/// `heads` slices of `w / heads`) -> `[b, s, w]`, heads concatenated, before `out_proj`.
///
/// One task per (image, head): the scores `Q K^T` and the output `P V` are GEMMs on strided views
/// of `qkv` (no copies of q, k, v), the softmax is done in place, and each head writes its slice of
/// the output directly. `None` when the fast path does not apply.
pub fn attention(qkv: &Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let [b, s, w3] = qkv.dims();
    if heads == 0 || !w3.is_multiple_of(3 * heads) {
        return None;
    }
    if let Some(out) = super::cpu_autodiff::attention(qkv, heads) {
        return Some(out);
    }
    let input = flex_values(qkv)?;
    let (out, _) = attention_values(f32s(&input), [b, s, w3], heads, false);
    Some(from_vec(out, [b, s, w3 / 3]))
}

/// A strided f32 GEMM: `dst (m x n) = [dst +] scale * lhs (m x k) * rhs (k x n)`, each matrix given
/// by its pointer and (row, column) strides, on the calling thread.
///
/// # Safety
/// Every element the strides reach must be inside its allocation, and `dst` must not overlap the
/// inputs or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    dims: [usize; 3],
    dst: *mut f32,
    dst_strides: [usize; 2],
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: [usize; 2],
    rhs: *const f32,
    rhs_strides: [usize; 2],
    scale: f32,
) {
    let (a, b) = ((lhs, lhs_strides), (rhs, rhs_strides));
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(dims, (dst, dst_strides), accumulate, a, b, scale, false) }
}

/// [`gemm_strided`] with scale 1, threaded over all cores when the product is large: for calls
/// that are not already inside a parallel loop.
///
/// # Safety
/// As [`gemm_strided`].
pub(crate) unsafe fn gemm_threaded(
    dims: [usize; 3],
    dst: (*mut f32, [usize; 2]),
    accumulate: bool,
    lhs: (*const f32, [usize; 2]),
    rhs: (*const f32, [usize; 2]),
) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(dims, dst, accumulate, lhs, rhs, 1.0, true) }
}

/// Every product of this module and of [`super::cpu_autodiff`] ends here: the system BLAS when
/// one is loaded ([`super::blas`]), else the `gemm` crate. A threaded product is cut into one
/// block of rows (or of columns, when there are more columns) per rayon thread, each block a
/// single-threaded call, so that rayon stays the only thread pool.
unsafe fn gemm_with(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, [usize; 2]),
    accumulate: bool,
    lhs: (*const f32, [usize; 2]),
    rhs: (*const f32, [usize; 2]),
    scale: f32,
    threaded: bool,
) {
    let large = m * n * k >= 128 * 128 * 128;
    let threads = rayon::current_num_threads();
    if !(threaded && large && threads > 1 && super::blas::available()) {
        // SAFETY: forwarded from the caller.
        unsafe {
            gemm_block(
                [m, n, k],
                dst,
                accumulate,
                lhs,
                rhs,
                scale,
                threaded && large,
            )
        };
        return;
    }
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    // Blocks of a multiple of 16 rows (or columns), the BLAS kernels' register tiles; several
    // per thread, so that a thread that finishes early takes another instead of waiting (with
    // one block each, the second thread waited through a sixth of an SFVR step).
    const BLOCKS_PER_THREAD: usize = 4;
    let chunk = len
        .div_ceil(threads * BLOCKS_PER_THREAD)
        .next_multiple_of(16);
    // Raw pointers are not Send: the blocks get the addresses and the strides.
    let (dst_addr, lhs_addr, rhs_addr) = (dst.0 as usize, lhs.0 as usize, rhs.0 as usize);
    let (ds, ls, rs) = (dst.1, lhs.1, rhs.1);
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|block| {
        let start = block * chunk;
        let size = chunk.min(len - start);
        let (dst_ptr, lhs_ptr, rhs_ptr) = (
            dst_addr as *mut f32,
            lhs_addr as *const f32,
            rhs_addr as *const f32,
        );
        // SAFETY: a block of rows of dst and lhs (or of columns of dst and rhs) of the product the
        // caller vouches for; the blocks of dst are disjoint.
        unsafe {
            if by_rows {
                gemm_block(
                    [size, n, k],
                    (dst_ptr.add(start * ds[0]), ds),
                    accumulate,
                    (lhs_ptr.add(start * ls[0]), ls),
                    (rhs_ptr, rs),
                    scale,
                    false,
                )
            } else {
                gemm_block(
                    [m, size, k],
                    (dst_ptr.add(start * ds[1]), ds),
                    accumulate,
                    (lhs_ptr, ls),
                    (rhs_ptr.add(start * rs[1]), rs),
                    scale,
                    false,
                )
            }
        }
    });
}

/// One product on the system BLAS when it takes it, else on the `gemm` crate (threaded over
/// rayon when `parallel`).
unsafe fn gemm_block(
    [m, n, k]: [usize; 3],
    (dst, [dst_rs, dst_cs]): (*mut f32, [usize; 2]),
    accumulate: bool,
    (lhs, [lhs_rs, lhs_cs]): (*const f32, [usize; 2]),
    (rhs, [rhs_rs, rhs_cs]): (*const f32, [usize; 2]),
    scale: f32,
    parallel: bool,
) {
    // SAFETY: forwarded from the caller.
    let done = unsafe {
        super::blas::sgemm(
            [m, n, k],
            (dst, [dst_rs, dst_cs]),
            accumulate,
            (lhs, [lhs_rs, lhs_cs]),
            (rhs, [rhs_rs, rhs_cs]),
            scale,
        )
    };
    if done {
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller vouches for the pointers and strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `x W + b` on raw values: `x` is `rows x d_in`, contiguous; `W` (`d_in x d_out`) is read at
/// `w` with its (row, column) strides. The bias, when given, is written into the output first and
/// the product accumulated onto it, so it costs no extra pass.
///
/// # Safety
/// `w` addresses a `d_in x d_out` matrix with those strides.
pub(crate) unsafe fn linear_values(
    x: &[f32],
    [rows, d_in, d_out]: [usize; 3],
    w: (*const f32, [usize; 2]),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = zeroed(rows * d_out);
    if let Some(b) = bias {
        out.par_chunks_mut(d_out)
            .for_each(|row| row.copy_from_slice(b));
    }
    let dst = (out.as_mut_ptr(), [d_out, 1]);
    // SAFETY: out is rows x d_out, x rows x d_in (both row-major); w as the caller vouches.
    unsafe {
        gemm_threaded(
            [rows, d_out, d_in],
            dst,
            bias.is_some(),
            (x.as_ptr(), [d_in, 1]),
            w,
        )
    };
    out
}

/// The attention core on raw values: `qkv` `[b, s, 3w]` -> the heads' outputs `[b, s, w]`, and
/// the attention probabilities `[b, heads, s, s]` when `keep_probs` (for a backward pass).
///
/// One task per (image, head): the scores `Q K^T` and the output `P V` are GEMMs on strided views
/// of `qkv` (no copies of q, k, v), the softmax is done in place, and each head writes its slice of
/// the output directly.
pub(crate) fn attention_values(
    qkv: &[f32],
    [b, s, w3]: [usize; 3],
    heads: usize,
    keep_probs: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let w = w3 / 3;
    let hd = w / heads;
    let scale = (hd as f32).powf(-0.5);
    let mut out = zeroed(b * s * w);
    let mut probs = keep_probs.then(|| zeroed(b * heads * s * s));
    // Each task writes the columns [head*hd, (head+1)*hd) of its image's rows, and its own s x s
    // block of `probs`: disjoint regions, handed out as raw addresses because they interleave.
    let out_addr = out.as_mut_ptr() as usize;
    let probs_addr = probs.as_mut().map(|p| p.as_mut_ptr() as usize);
    (0..b * heads).into_par_iter().for_each(|task| {
        let (image, head) = (task / heads, task % heads);
        let base = image * s * w3;
        let q = qkv[base + head * hd..].as_ptr();
        let k = qkv[base + w + head * hd..].as_ptr();
        let v = qkv[base + 2 * w + head * hd..].as_ptr();
        let mut local = Vec::new();
        let scores: &mut [f32] = match probs_addr {
            // SAFETY: block `task` of `probs` (s*s values) belongs to this task only.
            Some(addr) => unsafe {
                std::slice::from_raw_parts_mut((addr as *mut f32).add(task * s * s), s * s)
            },
            None => {
                local.resize(s * s, 0.0f32);
                &mut local
            }
        };
        // SAFETY: q and k rows are hd values at stride 3w inside `qkv` (s rows from `base`);
        // `scores` is s x s; the output rows (stride w, hd columns from image*s*w + head*hd) are
        // this task's only.
        unsafe {
            gemm_strided(
                [s, s, hd],
                scores.as_mut_ptr(),
                [s, 1],
                false,
                q,
                [w3, 1],
                k,
                [1, w3],
                scale,
            );
        }
        softmax_rows(scores, s);
        unsafe {
            let dst = (out_addr as *mut f32).add(image * s * w + head * hd);
            gemm_strided(
                [s, hd, s],
                dst,
                [w, 1],
                false,
                scores.as_ptr(),
                [s, 1],
                v,
                [w3, 1],
                1.0,
            );
        }
    });
    (out, probs)
}

/// `x W + b` for `x` `[.., d_in]` and `weight` `[d_in, d_out]` (any strides: a transposed view
/// is read in place), as `burn::tensor::module::linear` computes it; the bias is written into the
/// output first and the product accumulated onto it, so it costs no extra pass.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if let Some(out) = super::cpu_autodiff::linear(&x, &weight, bias.as_ref()) {
        return out;
    }
    match linear_fast(&x, &weight, bias.as_ref()) {
        Some(out) => out,
        None => burn::tensor::module::linear(x, weight, bias),
    }
}

/// A 1x1 convolution applied to channels-last rows: `x` is `[.., C]` (one row per position) and
/// the result `[.., O]`, equal to `conv` over the same values laid out as `[B, C, h, w]`.
///
/// Why: a 1x1 convolution is a linear layer over each position. Where the values already come
/// channels-last (the decoder's hidden states, the encoder's patches) this skips the layout
/// change and burn's convolution (an im2col copy forward, a transposed convolution and another
/// im2col backward) for one product through [`linear`].
pub fn pointwise_conv<const D: usize>(conv: &Conv2d, x: Tensor<D>) -> Tensor<D> {
    let [o, c, kh, kw] = conv.weight.dims();
    let weight = conv.weight.val().reshape([o, c * kh * kw]).transpose();
    linear(x, weight, conv.bias.as_ref().map(|b| b.val()))
}

/// [`linear`] with a `burn::nn::Linear`'s parameters.
pub fn linear_layer<const D: usize>(layer: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

fn linear_fast<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    if D < 2 || dims[D - 1] != d_in {
        return None;
    }
    let input = flex_values(x)?;
    // The weight as stored (no copy): strides and offset from its layout.
    let w = weight.clone().try_into_primitive::<Flex>().ok()?;
    if w.dtype() != DType::F32 || !w.layout().has_positive_strides() {
        return None;
    }
    // Positive (checked above), so the casts keep the values.
    let (w_rs, w_cs) = (
        w.layout().strides()[0] as usize,
        w.layout().strides()[1] as usize,
    );
    let w_ptr = w.storage::<f32>()[w.layout().start_offset()..].as_ptr();
    let bias = match bias {
        Some(b) => Some(flex_values(b)?),
        None => None,
    };
    let rows = dims[..D - 1].iter().product::<usize>();
    // SAFETY: the weight's layout addresses d_in x d_out values from its start offset.
    let out = unsafe {
        linear_values(
            f32s(&input),
            [rows, d_in, d_out],
            (w_ptr, [w_rs, w_cs]),
            bias.as_ref().map(f32s),
        )
    };
    let mut shape = dims;
    shape[D - 1] = d_out;
    Some(from_vec(out, shape))
}

/// `silu(norm.forward(x))` in one pass where it can.
pub fn group_norm_silu(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    if let Some(y) = super::cpu_autodiff::group_norm_silu(norm, &x) {
        return y;
    }
    group_norm_silu_fast(norm, &x).unwrap_or_else(|| {
        let h = norm.forward(x);
        super::cpu_autodiff::silu(&h).unwrap_or_else(|| silu(h))
    })
}

fn group_norm_silu_fast(norm: &GroupNorm, x: &Tensor<4>) -> Option<Tensor<4>> {
    let [batch, c, h, w] = x.dims();
    let groups = norm.num_groups;
    if c != norm.num_channels || groups == 0 || !c.is_multiple_of(groups) {
        return None;
    }
    let input = flex_values(x)?;
    let (gamma, beta) = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if norm.affine => {
            (Some(flex_values(&g.val())?), Some(flex_values(&b.val())?))
        }
        _ => (None, None),
    };
    let out = group_norm_silu_values(
        f32s(&input),
        [c, h * w],
        groups,
        gamma.as_ref().map(f32s),
        beta.as_ref().map(f32s),
        norm.epsilon,
    );
    Some(from_vec(out, [batch, c, h, w]))
}

/// Mean and reciprocal standard deviation of one group's values, in f64 and in two passes (the
/// mean, then the biased variance about it), as PyTorch's group norm computes them, without the
/// cancellation of E[x^2] - E[x]^2.
pub(crate) fn group_stats(values: &[f32], eps: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { group_stats_avx2(values, eps) };
    }
    group_stats_plain(values, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn group_stats_avx2(values: &[f32], eps: f64) -> (f64, f64) {
    group_stats_plain(values, eps)
}

#[inline(always)]
fn group_stats_plain(values: &[f32], eps: f64) -> (f64, f64) {
    let count = values.len() as f64;
    let mean = lane_sum(values, |v| v as f64) / count;
    let var = lane_sum(values, |v| {
        let d = v as f64 - mean;
        d * d
    }) / count;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `sum f(v)` in f64 over 8 independent lanes, which the compiler turns into vector adds (one
/// running sum is a chain it may not reorder).
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    lanes.iter().sum::<f64>() + tail
}

#[inline(always)]
pub(crate) fn silu_f32(y: f32) -> f32 {
    y / (1.0 + exp_f32(-y))
}

/// `silu(group_norm(x))` on the values of an `[N, C, ...]` tensor (`c` channels of
/// `per_channel` values each, in `groups` groups; optional per-channel affine parameters), one
/// task per (image, group).
pub(crate) fn group_norm_silu_values(
    values: &[f32],
    [c, per_channel]: [usize; 2],
    groups: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
) -> Vec<f32> {
    let cpg = c / groups;
    let mut out = zeroed(values.len());
    out.par_chunks_mut(cpg * per_channel)
        .zip(values.par_chunks(cpg * per_channel))
        .enumerate()
        .for_each(|(bg, (dst, src))| {
            let (mean, rstd) = group_stats(src, eps);
            let first_channel = (bg % groups) * cpg;
            for (i, (d, s)) in dst
                .chunks_mut(per_channel)
                .zip(src.chunks(per_channel))
                .enumerate()
            {
                let ch = first_channel + i;
                let scale = (rstd * gamma.map_or(1.0, |g| g[ch] as f64)) as f32;
                let shift = (beta.map_or(0.0, |b| b[ch] as f64) - mean * scale as f64) as f32;
                map_f32(d, s, |s| silu_f32(s * scale + shift));
            }
        });
    out
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`.
pub fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if let Some(y) = super::cpu_autodiff::upsample_nearest_2x(&x) {
        return y;
    }
    let Some(input) = flex_values(&x) else {
        return x
            .reshape([b * c * h, 1, w, 1])
            .expand([b * c * h, 2, w, 2])
            .reshape([b, c, 2 * h, 2 * w]);
    };
    from_vec(upsample_values(f32s(&input), w), [b, c, 2 * h, 2 * w])
}

/// Each value of rows `w` wide repeated twice across and each row twice down.
pub(crate) fn upsample_values(values: &[f32], w: usize) -> Vec<f32> {
    let mut out = zeroed(values.len() * 4);
    out.par_chunks_mut(4 * w)
        .zip(values.par_chunks(w))
        .for_each(|(dst, src)| {
            let (top, bottom) = dst.split_at_mut(2 * w);
            for (pair, &v) in top.chunks_exact_mut(2).zip(src) {
                pair[0] = v;
                pair[1] = v;
            }
            bottom.copy_from_slice(top);
        });
    out
}

/// `scale * ((a + b) + (c + d))` for every 2 x 2 block of planes whose rows are `w` (even) wide
/// and whose row count is even: a 2x average pool at scale 1/4, the gradient of
/// [`upsample_values`] at scale 1.
pub(crate) fn block_sums_2x2(values: &[f32], w: usize, scale: f32) -> Vec<f32> {
    let half = w / 2;
    let mut out = zeroed(values.len() / 4);
    out.par_chunks_mut(half)
        .zip(values.par_chunks(2 * w))
        .for_each(|(dst, src)| {
            let (top, bottom) = src.split_at(w);
            for (i, d) in dst.iter_mut().enumerate() {
                let across = top[2 * i] + top[2 * i + 1];
                let below = bottom[2 * i] + bottom[2 * i + 1];
                *d = (across + below) * scale;
            }
        });
    out
}

/// `F.avg_pool2d(x, 2)` on even planes: one recorded operation in training on the CPU backend,
/// one pass in inference there, burn's reductions elsewhere.
pub fn avg_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if let Some(y) = super::cpu_autodiff::avg_pool_2x2(&x) {
        return y;
    }
    match flex_values(&x) {
        Some(input) if h % 2 == 0 && w % 2 == 0 => {
            from_vec(block_sums_2x2(f32s(&input), w, 0.25), [b, c, h / 2, w / 2])
        }
        _ => x
            .reshape([b * c * (h / 2), 2, w / 2, 2])
            .sum_dim(3)
            .sum_dim(1)
            .mul_scalar(0.25)
            .reshape([b, c, h / 2, w / 2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::GroupNormConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Tolerance};

    fn reference_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        // Forced onto burn's path by going through autodiff (the fast path refuses it).
        let ad = Device::flex().autodiff();
        conv.clone()
            .to_device(&ad)
            .forward(x.to_device(&ad))
            .inner()
            .to_device(&Device::flex())
    }

    #[test]
    fn same_convolutions_match_burn() {
        let d = Device::flex();
        for (c, o, k, h, w, bias) in [
            (3, 5, 3, 7, 9, true),
            (4, 4, 1, 6, 5, false),
            (6, 2, 5, 8, 8, true),
            (8, 16, 3, 1, 1, false),
        ] {
            let pad = (k - 1) / 2;
            let conv = Conv2dConfig::new([c, o], [k, k])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(bias)
                .init(&d);
            let x = Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &d);
            let residual = Tensor::<4>::random([2, o, h, w], Distribution::Normal(0.0, 1.0), &d);
            assert!(conv2d_fast(&conv, &x, None).is_some(), "fast path taken");
            let fast = conv2d(&conv, x.clone(), Some(residual.clone()));
            let slow = reference_conv(&conv, x) + residual;
            fast.into_data()
                .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn other_convolutions_fall_back() {
        let d = Device::flex();
        let strided = Conv2dConfig::new([3, 4], [2, 2])
            .with_stride([2, 2])
            .init(&d);
        let x = Tensor::<4>::random([1, 3, 8, 8], Distribution::Default, &d);
        assert!(conv2d_fast(&strided, &x, None).is_none());
        assert_eq!(conv2d(&strided, x, None).dims(), [1, 4, 4, 4]);
    }

    #[test]
    fn group_norm_silu_matches_burn() {
        let d = Device::flex();
        let ad = d.clone().autodiff();
        let mut norm = GroupNormConfig::new(4, 8).with_epsilon(1e-6).init(&d);
        norm.gamma = norm
            .gamma
            .map(|g| g.map(|_| Tensor::random([8], Distribution::Normal(1.0, 0.5), &d)));
        norm.beta = norm
            .beta
            .map(|b| b.map(|_| Tensor::random([8], Distribution::Normal(0.0, 0.5), &d)));
        let x = Tensor::<4>::random([3, 8, 5, 6], Distribution::Normal(2.0, 3.0), &d);
        assert!(group_norm_silu_fast(&norm, &x).is_some());
        let fast = group_norm_silu(&norm, x.clone());
        let slow = silu(norm.clone().to_device(&ad).forward(x.to_device(&ad)))
            .inner()
            .to_device(&d);
        fast.into_data()
            .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
    }

    /// erf in f64 by its Taylor series (enough terms for |x| <= 4.5), for checking the f32 one.
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let exact = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - exact) / exact).abs();
            assert!(rel < 3e-7, "exp({x}): relative error {rel}");
        }
        for i in -600..=600 {
            let x = i as f32 * 0.0075;
            let exact = erf_reference(x as f64);
            let err = (erf_f32(x) as f64 - exact).abs();
            assert!(err < 3e-7, "erf({x}): error {err}");
        }
    }

    #[test]
    fn gelu_matches_burn() {
        let d = Device::flex();
        let ad = d.clone().autodiff();
        let x = Tensor::<3>::random([2, 7, 33], Distribution::Normal(0.0, 3.0), &d);
        let slow = burn::tensor::activation::gelu(x.clone().to_device(&ad))
            .inner()
            .to_device(&d);
        gelu(x)
            .into_data()
            .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(2e-6));
    }

    #[test]
    fn attention_matches_burn() {
        let d = Device::flex();
        let ad = d.clone().autodiff();
        let (b, s, heads, hd) = (2, 9, 3, 4);
        let w = heads * hd;
        let qkv = Tensor::<3>::random([b, s, 3 * w], Distribution::Normal(0.0, 2.0), &d);
        let fast = attention(&qkv, heads).expect("fast path");
        let x = qkv.to_device(&ad);
        let split = |t: Tensor<3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
        let q = split(x.clone().narrow(2, 0, w));
        let k = split(x.clone().narrow(2, w, w));
        let v = split(x.narrow(2, 2 * w, w));
        let p = burn::tensor::activation::softmax(
            q.matmul(k.swap_dims(2, 3))
                .mul_scalar((hd as f64).powf(-0.5)),
            3,
        );
        let slow = p
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, s, w])
            .inner()
            .to_device(&d);
        fast.into_data()
            .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn linear_matches_burn_with_plain_and_transposed_weights() {
        let d = Device::flex();
        let ad = d.clone().autodiff();
        let x = Tensor::<3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<2>::random([7, 4], Distribution::Normal(0.0, 1.0), &d);
        let wt = Tensor::<2>::random([4, 7], Distribution::Normal(0.0, 1.0), &d);
        let b = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &d);
        for (weight, bias) in [
            (w, Some(b.clone())),
            (wt.clone().transpose(), None),
            (wt.transpose(), Some(b)),
        ] {
            assert!(linear_fast(&x, &weight, bias.as_ref()).is_some());
            let fast = linear(x.clone(), weight.clone(), bias.clone());
            let slow = burn::tensor::module::linear(
                x.clone().to_device(&ad),
                weight.to_device(&ad),
                bias.map(|b| b.to_device(&ad)),
            )
            .inner()
            .to_device(&d);
            fast.into_data()
                .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn upsampling_matches_burn() {
        let d = Device::flex();
        let x = Tensor::<4>::random([2, 3, 4, 5], Distribution::Default, &d);
        let expected = x
            .clone()
            .reshape([24, 1, 5, 1])
            .expand([24, 2, 5, 2])
            .reshape([2, 3, 8, 10]);
        upsample_nearest_2x(x)
            .into_data()
            .assert_eq(&expected.into_data(), true);
    }
}
