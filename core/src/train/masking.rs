//! The random masking of stages 2 and 3 (`MultiStepDecoder.masking_tokens`, official
//! `blocks_multistep.py` l.346-400), with the random draws as explicit inputs so that a step can
//! be replayed exactly (and checked against the official fixtures). What the unmasked positions
//! then hold (SFVR's replacement, or the truth) is in [`super::sfvr`].

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
    fn weights_are_one_masked_and_a_tenth_unmasked() {
        assert_eq!(
            loss_weights(&[vec![true, false]], 0.1),
            vec![vec![1.0, 0.1]]
        );
    }
}
