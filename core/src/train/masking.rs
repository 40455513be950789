//! The random masking of stages 2 and 3 (`MultiStepDecoder.masking_tokens`, official
//! `blocks_multistep.py` l.346-400), with the random draws as explicit inputs so that a step can
//! be replayed exactly (and checked against the official fixtures).

use rand::Rng;

/// The random numbers one masking draws.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskDraw {
    /// `t ~ U[0, 1)` per sample.
    pub timesteps: Vec<f32>,
    /// `U[0, 1)` per position, whose argsort gives the mask.
    pub perm_rand: Vec<Vec<f32>>,
    /// `U[0, 1)` per position, the replacement coins of SFVR.
    pub replace_rand: Vec<Vec<f32>>,
}

impl MaskDraw {
    /// The draws of samples `start..start + len` (one device's shard of a batch).
    pub fn slice(&self, start: usize, len: usize) -> MaskDraw {
        MaskDraw {
            timesteps: self.timesteps[start..start + len].to_vec(),
            perm_rand: self.perm_rand[start..start + len].to_vec(),
            replace_rand: self.replace_rand[start..start + len].to_vec(),
        }
    }

    pub fn sample(rng: &mut impl Rng, batch: usize, num_codes: usize) -> Self {
        let row = |rng: &mut dyn rand::RngCore| {
            (0..num_codes)
                .map(|_| rng.random::<f32>())
                .collect::<Vec<f32>>()
        };
        let timesteps = (0..batch).map(|_| rng.random::<f32>()).collect();
        let perm_rand = (0..batch).map(|_| row(rng)).collect();
        let replace_rand = (0..batch).map(|_| row(rng)).collect();
        MaskDraw {
            timesteps,
            perm_rand,
            replace_rand,
        }
    }
}

/// `clamp(acos(t) / (pi/2), 0, 1)`, in float32 as the official code computes it.
pub fn mask_ratio(t: f32) -> f32 {
    (t.clamp(-1.0, 1.0).acos() / (std::f32::consts::PI * 0.5)).clamp(0.0, 1.0)
}

/// `clamp(round(N * ratio), 0, N)` with round-half-to-even, as `torch.round`.
pub fn num_masked(num_codes: usize, ratio: f32) -> usize {
    let x = num_codes as f32 * ratio;
    let r = x.round_ties_even();
    (r.max(0.0) as usize).min(num_codes)
}

/// `mask[j] = argsort(perm_rand)[j] < num`: the value of the argsort at position j (not the rank
/// of j), which is still a uniformly random subset of size `num`.
pub fn mask_from_perm(perm_rand: &[f32], num: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..perm_rand.len()).collect();
    // A stable sort, as torch's argsort gives for distinct keys.
    order.sort_by(|&a, &b| perm_rand[a].total_cmp(&perm_rand[b]));
    order.iter().map(|&idx| idx < num).collect()
}

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

use serde::{Deserialize, Serialize};

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

/// CE weights: 1 on masked positions, `unmasked_weight` (0.1) elsewhere.
pub fn loss_weights(mask: &[Vec<bool>], unmasked_weight: f32) -> Vec<Vec<f32>> {
    mask.iter()
        .map(|row| {
            row.iter()
                .map(|&m| if m { 1.0 } else { unmasked_weight })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_count_follow_the_official_formulas() {
        assert_eq!(mask_ratio(0.0), 1.0);
        assert!(mask_ratio(1.0).abs() < 1e-6);
        assert_eq!(num_masked(16, 0.5), 8);
        // Half to even: 2.5 -> 2, 3.5 -> 4.
        assert_eq!(num_masked(5, 0.5), 2);
        assert_eq!(num_masked(7, 0.5), 4);
    }

    #[test]
    fn mask_uses_the_argsort_value_at_each_position() {
        // argsort([0.3, 0.1, 0.2]) = [1, 2, 0]; with num = 1 only position 2 (value 0) is masked.
        assert_eq!(
            mask_from_perm(&[0.3, 0.1, 0.2], 1),
            vec![false, false, true]
        );
    }

    #[test]
    fn masked_count_follows_the_drawn_ratio() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        use rand::SeedableRng;
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
        use rand::SeedableRng;
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

    #[test]
    fn weights_are_one_masked_and_a_tenth_unmasked() {
        assert_eq!(
            loss_weights(&[vec![true, false]], 0.1),
            vec![vec![1.0, 0.1]]
        );
    }
}
