//! MaskGIT sampling (`ImageBert.generate`): start from all-masked tokens and, over `T` steps,
//! sample every masked token, keep the most confident ones and mask the rest again, on the
//! arccos schedule.
//!
//! Everything after the network's logits runs on the host in `f32`, as the official code runs it
//! (the logits are `B x L x K`, a few MB at full size). The random draws come from a
//! [`NoiseSource`], so the parity test can feed the official run's draws and a user's seed gives
//! the same images every time.

use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::bert::ImageBert;
use super::config::{GuidanceDecay, SamplingDefaults};
use crate::device::on_compute_pool;
use crate::reconstruct::ids_tensor;

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Generator steps T (each commits a share of the tokens).
    pub steps: usize,
    /// Classifier-free guidance scale (0: none, one forward pass per step).
    pub guidance_scale: f64,
    pub guidance_decay: GuidanceDecay,
    /// The exponent of the power-cosine decay.
    pub guidance_scale_pow: f64,
    /// Gumbel-noise temperature at the first step; it falls linearly to 0 at the last.
    pub randomize_temperature: f64,
    /// Divide the logits by `0.5 + 0.8 (1 - ratio)` before sampling.
    pub softmax_temperature_annealing: bool,
    /// Keep each step's logits (and the cond / null ones) in the trace (tests, diagnostics).
    pub keep_logits: bool,
}

impl From<&SamplingDefaults> for GenerateOptions {
    fn from(s: &SamplingDefaults) -> Self {
        GenerateOptions {
            steps: s.num_steps,
            guidance_scale: s.guidance_scale,
            guidance_decay: s.guidance_decay,
            guidance_scale_pow: s.guidance_scale_pow,
            randomize_temperature: s.randomize_temperature,
            softmax_temperature_annealing: s.softmax_temperature_annealing,
            keep_logits: false,
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        (&SamplingDefaults::default()).into()
    }
}

/// Which of a step's two draws is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// `[B, L, K]` uniforms for the Gumbel noise added to the logits.
    Logits,
    /// `[B, L]` uniforms for the Gumbel noise added to the confidences.
    Confidence,
}

/// Where the uniforms in `[0, 1)` come from.
pub trait NoiseSource {
    fn uniforms(&mut self, step: usize, draw: Draw, len: usize) -> Vec<f32>;
}

/// Uniforms from a seeded generator: the same seed gives the same images.
pub struct SeededNoise(StdRng);

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        SeededNoise(StdRng::seed_from_u64(seed))
    }
}

impl NoiseSource for SeededNoise {
    fn uniforms(&mut self, _step: usize, _draw: Draw, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.0.random::<f32>()).collect()
    }
}

/// `-log(-log(u))` as the official `gumbel_noise` computes it in float32, clamped at 1e-20.
pub fn gumbel(u: f32) -> f32 {
    -(-(u.max(1e-20)).ln()).max(1e-20).ln()
}

/// The number of tokens left masked after step `step` of `steps` (0-based), before the
/// `max(1, min(masked - 1, .))` bounds: `floor(L arccos(ratio) / (pi / 2))`, in float64 as the
/// official code computes it (float32 can fall below an exact integer and floor one lower).
pub fn scheduled_mask_len(image_seq_len: usize, step: usize, steps: usize) -> usize {
    let ratio = (step + 1) as f64 / steps as f64;
    let mask_ratio = ratio.acos() / (std::f64::consts::PI * 0.5);
    (image_seq_len as f64 * mask_ratio).floor() as usize
}

/// The guidance scale that step `step` of `steps` uses, and the decay's combination rule.
/// `None` for linear decay's first step and a zero constant scale: one unguided forward pass.
pub fn guidance_at(opts: &GenerateOptions, step: usize) -> Option<f32> {
    let t = opts.steps as f64;
    let s = match opts.guidance_decay {
        GuidanceDecay::Constant => opts.guidance_scale,
        // Set at the end of the previous step to `ratio * scale`; 0 before the first.
        GuidanceDecay::Linear => step as f64 / t * opts.guidance_scale,
        GuidanceDecay::PowerCosine => {
            let x = (step as f64 / t).powf(opts.guidance_scale_pow) * std::f64::consts::PI;
            let ss = ((1.0 - x.cos()) * 0.5) as f32;
            return Some((opts.guidance_scale as f32 - 1.0) * ss + 1.0);
        }
    };
    (s != 0.0).then_some(s as f32)
}

/// One generator step, for the trace and the parity test. Rows are images.
#[derive(Debug, Clone)]
pub struct GeneratorStep {
    /// Ids at the start of the step (mask = K).
    pub input_ids: Vec<Vec<i64>>,
    /// The sample at every masked position; known tokens are copied.
    pub sampled_ids: Vec<Vec<i64>>,
    /// The sampled token's softmax probability under the step's logits (1 at known tokens):
    /// what the app shows as a token's confidence.
    pub probabilities: Vec<Vec<f32>>,
    /// The official confidence: the sampled token's raw logit plus the annealed Gumbel noise
    /// (+inf at known tokens).
    pub confidence: Vec<Vec<f32>>,
    /// Tokens left masked after the step (computed at the last step too, where it is unused).
    pub mask_len: usize,
    /// Each image's confidence threshold.
    pub cut_off: Vec<f32>,
    /// `confidence <= cut_off`: where the step masks its sample again (computed at the last
    /// step too, where it is not applied).
    pub remask: Vec<Vec<bool>>,
    pub output_ids: Vec<Vec<i64>>,
    /// The guidance scale used, 0 when the step ran one unguided pass.
    pub cfg_scale: f32,
    pub uses_cfg: bool,
    pub annealed_temp: f64,
    /// `[B, L, K]` flat: the logits sampling used (after guidance and annealing), the cond pass
    /// (before annealing) and the null pass of a guided step; kept only with
    /// [`GenerateOptions::keep_logits`].
    pub logits: Option<Vec<f32>>,
    pub cond_logits: Option<Vec<f32>>,
    pub null_logits: Option<Vec<f32>>,
}

/// What [`generate`] returns: the final latent ids `[B][L]` and every step.
#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<Vec<i64>>,
    pub classes: Vec<Option<usize>>,
    pub steps: Vec<GeneratorStep>,
}

/// Generates latent token ids for each entry of `classes` (`None`: unconditional, the
/// class-drop token). Runs on rayon's pool on the CPU, as the tokenizer does.
pub fn generate(
    model: &ImageBert,
    classes: &[Option<usize>],
    opts: &GenerateOptions,
    noise: &mut (dyn NoiseSource + Send),
) -> Generation {
    on_compute_pool(&model.device(), || {
        generate_here(model, classes, opts, noise)
    })
}

/// Host values of a `[B, L, K]` tensor.
fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float logits")
}

fn generate_here(
    model: &ImageBert,
    classes: &[Option<usize>],
    opts: &GenerateOptions,
    noise: &mut (dyn NoiseSource + Send),
) -> Generation {
    let device = model.device();
    let b = classes.len();
    let l = model.model.embeddings.position_embeddings.weight.dims()[0] - 1;
    let k = model.codebook_size;
    let mask = model.mask_token_id() as i64;
    let steps_total = opts.steps.max(1);
    let opts = &GenerateOptions {
        steps: steps_total,
        ..opts.clone()
    };
    let cond_tokens = model.condition_tokens(classes, &vec![false; b]);
    let null_tokens = model.condition_tokens(classes, &vec![true; b]);
    let mut ids = vec![vec![mask; l]; b];
    let mut steps = Vec::with_capacity(steps_total);

    for step in 0..steps_total {
        let ratio = (step + 1) as f64 / steps_total as f64;
        let temp = opts.randomize_temperature * (1.0 - ratio);
        let input_ids = ids.clone();
        let guidance = guidance_at(opts, step);
        // The cond and null passes run as one batch of 2B rows (rows are independent).
        let (logits, cond, null) = match guidance {
            Some(s) => {
                let mut rows = ids.clone();
                rows.extend(ids.iter().cloned());
                let mut tokens = cond_tokens.clone();
                tokens.extend(&null_tokens);
                let both = host(model.forward(ids_tensor(&rows, &device), &tokens));
                let (c, u) = both.split_at(b * l * k);
                let guided: Vec<f32> = match opts.guidance_decay {
                    GuidanceDecay::PowerCosine => {
                        u.iter().zip(c).map(|(&u, &c)| u + (c - u) * s).collect()
                    }
                    _ => c.iter().zip(u).map(|(&c, &u)| c + (c - u) * s).collect(),
                };
                (guided, Some(c.to_vec()), Some(u.to_vec()))
            }
            None => {
                let logits = host(model.forward(ids_tensor(&ids, &device), &cond_tokens));
                let cond = opts.keep_logits.then(|| logits.clone());
                (logits, cond, None)
            }
        };
        let mut logits = logits;
        if opts.softmax_temperature_annealing {
            let divisor = (0.5 + 0.8 * (1.0 - ratio)) as f32;
            logits.iter_mut().for_each(|v| *v /= divisor);
        }

        // Sample every position: argmax of the logits plus annealed Gumbel noise.
        // At temperature 0 (the last step, and deterministic sampling) the noise adds nothing, so
        // none is drawn: the official code draws it anyway, which only advances torch's stream.
        let temp32 = temp as f32;
        let draw = |noise: &mut (dyn NoiseSource + Send), which, len| {
            if temp32 == 0.0 {
                vec![0.5; len]
            } else {
                noise.uniforms(step, which, len)
            }
        };
        let u1 = draw(noise, Draw::Logits, b * l * k);
        let u2 = draw(noise, Draw::Confidence, b * l);
        let mut sampled_ids = ids.clone();
        let mut probabilities = vec![vec![1.0f32; l]; b];
        let mut confidence = vec![vec![f32::INFINITY; l]; b];
        for bi in 0..b {
            for j in 0..l {
                let row = (bi * l + j) * k;
                let scores = &logits[row..row + k];
                let noise_row = &u1[row..row + k];
                let mut best = 0;
                let mut best_score = f32::NEG_INFINITY;
                for (i, (&v, &u)) in scores.iter().zip(noise_row).enumerate() {
                    let s = if temp32 == 0.0 {
                        v
                    } else {
                        v + temp32 * gumbel(u)
                    };
                    // The first maximum, as torch's argmax; NaN never wins.
                    if s > best_score || i == 0 {
                        best = i;
                        best_score = s;
                    }
                }
                if ids[bi][j] == mask {
                    sampled_ids[bi][j] = best as i64;
                    let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = scores.iter().map(|&v| (v - top).exp()).sum();
                    probabilities[bi][j] = (scores[best] - top).exp() / sum;
                    confidence[bi][j] = if temp32 == 0.0 {
                        scores[best]
                    } else {
                        scores[best] + temp32 * gumbel(u2[bi * l + j])
                    };
                }
            }
        }

        let masked_in_row0 = ids[0].iter().filter(|&&v| v == mask).count();
        let mask_len = scheduled_mask_len(l, step, steps_total)
            .min(masked_in_row0.saturating_sub(1))
            .max(1);
        let mut cut_off = Vec::with_capacity(b);
        let mut remask = vec![vec![false; l]; b];
        let last = step + 1 == steps_total;
        for bi in 0..b {
            let mut sorted = confidence[bi].clone();
            sorted.sort_by(f32::total_cmp);
            let cut = sorted[(mask_len - 1).min(l - 1)];
            cut_off.push(cut);
            for j in 0..l {
                let again = confidence[bi][j] <= cut;
                remask[bi][j] = again;
                ids[bi][j] = if again && !last {
                    mask
                } else {
                    sampled_ids[bi][j]
                };
            }
        }
        let keep = opts.keep_logits;
        steps.push(GeneratorStep {
            input_ids,
            sampled_ids,
            probabilities,
            confidence,
            mask_len,
            cut_off,
            remask,
            output_ids: ids.clone(),
            cfg_scale: guidance.unwrap_or(0.0),
            uses_cfg: guidance.is_some(),
            annealed_temp: temp,
            logits: keep.then_some(logits),
            cond_logits: if keep { cond } else { None },
            null_logits: if keep { null } else { None },
        });
    }
    Generation {
        ids,
        classes: classes.to_vec(),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_size_schedule_is_the_official_one() {
        let lens: Vec<usize> = (0..7).map(|s| scheduled_mask_len(64, s, 8)).collect();
        assert_eq!(lens, [58, 53, 48, 42, 36, 29, 20]);
        // At ratio 1/2 with L a multiple of 3 the exact value is an integer (L / 1.5 ... floor).
        assert_eq!(scheduled_mask_len(6, 1, 4), 4);
    }

    #[test]
    fn guidance_follows_each_decay() {
        let mut o = GenerateOptions {
            steps: 8,
            guidance_scale: 4.5,
            ..GenerateOptions::default()
        };
        assert_eq!(guidance_at(&o, 0), Some(4.5));
        o.guidance_decay = GuidanceDecay::Linear;
        assert_eq!(guidance_at(&o, 0), None);
        assert_eq!(guidance_at(&o, 1), Some(0.5625));
        assert_eq!(guidance_at(&o, 7), Some(3.9375));
        o.guidance_decay = GuidanceDecay::PowerCosine;
        let want = [
            1.0, 1.0000329, 1.002108, 1.0239608, 1.1332109, 1.4899957, 2.3247848, 3.6404526,
        ];
        for (s, w) in want.iter().enumerate() {
            let got = guidance_at(&o, s).unwrap();
            assert!((got - w).abs() < 1e-6, "step {s}: {got} vs {w}");
        }
        o.guidance_scale = 0.0;
        o.guidance_decay = GuidanceDecay::Constant;
        assert_eq!(guidance_at(&o, 3), None);
    }

    #[test]
    fn gumbel_noise_is_finite_at_the_ends() {
        assert!(gumbel(0.0).is_finite());
        assert!(gumbel(1.0 - f32::EPSILON).is_finite());
        assert!((gumbel(0.5) - 0.366_512_9).abs() < 1e-6);
    }
}
