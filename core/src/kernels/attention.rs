//! The multi-head attention core on raw values: scores, softmax and the weighted sum, one task
//! per (image, head), on strided views of the packed projections.

use rayon::prelude::*;

use super::buffers::zeroed;
use super::gemm::gemm_strided;
use super::math::softmax_rows;

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
        // SAFETY: `scores` is s x s; v rows are hd values at stride 3w inside `qkv`; the output
        // rows (stride w, hd columns from image*s*w + head*hd) are this task's only.
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
