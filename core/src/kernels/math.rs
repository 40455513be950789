//! Scalar functions written so that loops over them vectorise (no library calls, no branches):
//! `exp`, `erf`, `tanh`, SiLU and a row softmax.

use super::simd::widest;

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

/// `tanh(x)` in f32 through [`exp_f32`], so that loops over it vectorise: `1 - 2 / (e^{2x} + 1)`
/// (absolute error about 1e-7; saturates to +-1 beyond |x| = 44, where f32 tanh is +-1 too).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * x) + 1.0)
}

#[inline(always)]
pub(crate) fn silu_f32(y: f32) -> f32 {
    y / (1.0 + exp_f32(-y))
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
    softmax_rows_plain(values, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn softmax_rows_avx512(values: &mut [f32], len: usize) {
    softmax_rows_plain(values, len)
}

#[inline(always)]
fn softmax_rows_plain(values: &mut [f32], len: usize) {
    for row in values.chunks_exact_mut(len) {
        softmax_in_place(row);
    }
}

/// Softmax of each row of `len` values.
pub(crate) fn softmax_rows(values: &mut [f32], len: usize) {
    widest!(
        softmax_rows_avx512,
        softmax_rows_avx2,
        softmax_rows_plain,
        (values, len)
    )
}
