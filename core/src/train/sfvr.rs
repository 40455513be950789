//! Self-Forcing Guided Visual Reconstruction (SFVR), the paper's stage-2 recipe: the positions
//! the arccos mask leaves visible hold the model's own first-step prediction M1 (with probability
//! `replace_prob`, per position) instead of the teacher's true code, so that training sees the
//! kind of inputs multi-step decoding feeds itself at inference. The vanilla baseline keeps the
//! truth there (teacher forcing). Official: `MultiStepDecoder.masking_tokens` with
//! `guided_mask` (`blocks_multistep.py` l.346-400), M1 from `generate_guided_mask`
//! ([`super::token_step::first_step_prediction`]).

use serde::{Deserialize, Serialize};

use super::masking::{MaskDraw, mask_from_perm, mask_ratio, num_masked};

/// What unmasked positions hold in stage 2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Stage2Inputs {
    /// SFVR: the model's own first-step prediction M1, with probability `replace_prob`, else the
    /// true code.
    SelfForcing { replace_prob: f32 },
    /// The ablation: the true proxy codes (teacher forcing).
    Vanilla,
}

/// Decoder inputs and masks of one stage-2 step.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedInputs {
    pub ids: Vec<Vec<i64>>,
    pub mask: Vec<Vec<bool>>,
    pub num_masked: Vec<usize>,
    pub should_replace: Vec<Vec<bool>>,
}

/// Builds the decoder input of a stage-2 step from the proxy codes, the first-step prediction M1
/// (unused by vanilla) and the draws.
pub fn stage2_inputs(
    proxy: &[Vec<i64>],
    m1: &[Vec<i64>],
    draw: &MaskDraw,
    mode: Stage2Inputs,
    mask_id: i64,
) -> MaskedInputs {
    let n = proxy.first().map_or(0, Vec::len);
    let mut out = MaskedInputs {
        ids: Vec::new(),
        mask: Vec::new(),
        num_masked: Vec::new(),
        should_replace: Vec::new(),
    };
    for b in 0..proxy.len() {
        let num = num_masked(n, mask_ratio(draw.timesteps[b]));
        let mask = mask_from_perm(&draw.perm_rand[b], num);
        let replace: Vec<bool> = match mode {
            Stage2Inputs::SelfForcing { replace_prob } => draw.replace_rand[b]
                .iter()
                .map(|&u| u < replace_prob)
                .collect(),
            Stage2Inputs::Vanilla => vec![false; n],
        };
        let ids = (0..n)
            .map(|j| {
                if mask[j] {
                    mask_id
                } else if replace[j] {
                    m1[b][j]
                } else {
                    proxy[b][j]
                }
            })
            .collect();
        out.ids.push(ids);
        out.mask.push(mask);
        out.num_masked.push(num);
        out.should_replace.push(replace);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn masked_count_follows_the_drawn_ratio() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let draw = MaskDraw::sample(&mut rng, 4, 64);
            let proxy = vec![vec![1i64; 64]; 4];
            let inputs = stage2_inputs(&proxy, &proxy, &draw, Stage2Inputs::Vanilla, 99);
            for b in 0..4 {
                let want = num_masked(64, mask_ratio(draw.timesteps[b]));
                assert_eq!(inputs.mask[b].iter().filter(|&&m| m).count(), want);
                assert_eq!(inputs.ids[b].iter().filter(|&&id| id == 99).count(), want);
            }
        }
    }

    #[test]
    fn sfvr_with_p1_puts_m1_and_vanilla_the_truth_at_unmasked_positions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let draw = MaskDraw::sample(&mut rng, 3, 32);
        let proxy: Vec<Vec<i64>> = (0..3)
            .map(|b| (0..32).map(|j| (b * 32 + j) as i64).collect())
            .collect();
        let m1: Vec<Vec<i64>> = proxy
            .iter()
            .map(|r| r.iter().map(|x| x + 1000).collect())
            .collect();
        let sfvr = stage2_inputs(
            &proxy,
            &m1,
            &draw,
            Stage2Inputs::SelfForcing { replace_prob: 1.0 },
            -1,
        );
        let vanilla = stage2_inputs(&proxy, &m1, &draw, Stage2Inputs::Vanilla, -1);
        for b in 0..3 {
            for j in 0..32 {
                if sfvr.mask[b][j] {
                    assert_eq!(sfvr.ids[b][j], -1);
                } else {
                    assert_eq!(sfvr.ids[b][j], m1[b][j]);
                    assert_eq!(vanilla.ids[b][j], proxy[b][j]);
                }
            }
        }
        assert_eq!(sfvr.mask, vanilla.mask);
    }
}
