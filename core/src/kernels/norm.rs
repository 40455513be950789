//! Layer norm and group norm (+ SiLU) on raw values: the forward passes, whose statistics the
//! backward passes in [`super::autodiff`] reuse.

use rayon::prelude::*;

use super::buffers::zeroed;
use super::math::silu_f32;
use super::simd::{lane_sum, map_f32, widest};

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

/// Mean and reciprocal standard deviation of one group's values, in f64 and in two passes (the
/// mean, then the biased variance about it), as PyTorch's group norm computes them, without the
/// cancellation of E[x^2] - E[x]^2.
pub(crate) fn group_stats(values: &[f32], eps: f64) -> (f64, f64) {
    widest!(
        group_stats_avx512,
        group_stats_avx2,
        group_stats_plain,
        (values, eps)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn group_stats_avx512(values: &[f32], eps: f64) -> (f64, f64) {
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
