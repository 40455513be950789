//! Nearest 2x upsampling and 2x2 block sums (average pooling, and the upsampling's gradient) on
//! raw values.

use rayon::prelude::*;

use super::buffers::zeroed;

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
