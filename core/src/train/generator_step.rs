//! One MaskGIT generator training step (`train_one_epoch_generator` with
//! `masking_input_tokens` and `MLMLoss`), with its random draws as explicit inputs so that a step
//! can be replayed exactly (and checked against the official fixtures).
//!
//! Mask a random share of each token sequence on the arccos schedule, drop the class with
//! probability `class_label_dropout` (so the model also learns the unconditional logits that
//! classifier-free guidance needs), and train every position to predict its true token with
//! label smoothing, the masked ones at full weight and the visible ones at 0.1.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;

use super::masking::{mask_from_perm, num_masked};
use crate::generator::ImageBert;
use crate::reconstruct::ids_tensor;

/// `CrossEntropyLoss(label_smoothing=0.1)` of the official `MLMLoss`.
pub const LABEL_SMOOTHING: f32 = 0.1;
/// `loss_weight_unmasked_token`: visible positions still learn, at a tenth of the weight.
pub const UNMASKED_TOKEN_WEIGHT: f32 = 0.1;

/// The random numbers one step draws, in the official call order.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorDraws {
    /// `t ~ U[0, 1)` per sequence: the masking time.
    pub timesteps: Vec<f32>,
    /// `U[0, 1)` per position, whose argsort picks the masked positions.
    pub perm_rand: Vec<Vec<f32>>,
    /// `U[0, 1)` per sequence: the class is dropped where it is below `class_label_dropout`.
    pub drop_rand: Vec<f32>,
}

impl GeneratorDraws {
    pub fn sample(rng: &mut impl Rng, batch: usize, seq_len: usize) -> Self {
        let timesteps = (0..batch).map(|_| rng.random::<f32>()).collect();
        let perm_rand = (0..batch)
            .map(|_| (0..seq_len).map(|_| rng.random::<f32>()).collect())
            .collect();
        let drop_rand = (0..batch).map(|_| rng.random::<f32>()).collect();
        GeneratorDraws {
            timesteps,
            perm_rand,
            drop_rand,
        }
    }
}

/// The masked inputs of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorMasking {
    /// `clamp(acos(t) / (pi / 2), 1e-6, 1)`.
    pub mask_ratio: Vec<f32>,
    /// `max(1, round_half_even(L * ratio))`.
    pub num_token_masked: Vec<usize>,
    pub mask: Vec<Vec<bool>>,
    /// The tokens with the masked ones replaced by the mask token.
    pub masked_tokens: Vec<Vec<i64>>,
    pub drop_label: Vec<bool>,
    /// The class token, or the class-drop token where dropped or unconditional.
    pub condition_tokens: Vec<i64>,
}

/// Masks `tokens` `[B][L]` and draws the class dropout.
pub fn generator_masking(
    model: &ImageBert,
    tokens: &[Vec<i64>],
    classes: &[Option<usize>],
    draws: &GeneratorDraws,
    class_label_dropout: f64,
) -> GeneratorMasking {
    let mask_id = model.mask_token_id() as i64;
    let mut out = GeneratorMasking {
        mask_ratio: Vec::new(),
        num_token_masked: Vec::new(),
        mask: Vec::new(),
        masked_tokens: Vec::new(),
        drop_label: Vec::new(),
        condition_tokens: Vec::new(),
    };
    for (row, t) in tokens.iter().zip(&draws.timesteps) {
        let l = row.len();
        // float32, as the official `torch.acos(t) / (math.pi * 0.5)`.
        let ratio = (t.clamp(-1.0, 1.0).acos() / (std::f32::consts::PI * 0.5)).clamp(1e-6, 1.0);
        let n = num_masked(l, ratio).max(1);
        let i = out.mask.len();
        let mask = mask_from_perm(&draws.perm_rand[i], n);
        out.masked_tokens.push(
            row.iter()
                .zip(&mask)
                .map(|(&v, &m)| if m { mask_id } else { v })
                .collect(),
        );
        out.mask_ratio.push(ratio);
        out.num_token_masked.push(n);
        out.mask.push(mask);
    }
    out.drop_label = draws
        .drop_rand
        .iter()
        .map(|&d| (d as f64) < class_label_dropout)
        .collect();
    out.condition_tokens = model.condition_tokens(classes, &out.drop_label);
    out
}

/// The step's forward pass and loss.
#[derive(Debug, Clone)]
pub struct GeneratorStepOutput {
    pub masking: GeneratorMasking,
    /// `[B, L, K]`.
    pub logits: Tensor<3>,
    /// `lse - logit[target]`, `[B, L]`.
    pub nll: Tensor<2>,
    /// `mean_k(lse - logit_k)`, `[B, L]`.
    pub smooth: Tensor<2>,
    /// `0.9 nll + 0.1 smooth`, `[B, L]`.
    pub ce: Tensor<2>,
    /// 1 at masked positions, 0.1 elsewhere.
    pub loss_weights: Vec<Vec<f32>>,
    /// `sum(ce w) / (sum(w) + 1e-8)` over the batch, `[1]`.
    pub loss: Tensor<1>,
    /// Mean over sequences of the share of masked tokens predicted right (argmax).
    pub correct_tokens: f32,
}

/// One training step's forward and loss on the model's device (an autodiff device for
/// training; gradients come from `out.loss.backward()`).
pub fn generator_step(
    model: &ImageBert,
    tokens: &[Vec<i64>],
    classes: &[Option<usize>],
    draws: &GeneratorDraws,
    class_label_dropout: f64,
) -> GeneratorStepOutput {
    let device = model.device();
    let masking = generator_masking(model, tokens, classes, draws, class_label_dropout);
    let logits = model.forward(
        ids_tensor(&masking.masked_tokens, &device),
        &masking.condition_tokens,
    );
    let [b, l, _] = logits.dims();
    let log_probs = log_softmax(logits.clone(), 2);
    let targets: Tensor<3, Int> = ids_tensor(tokens, &device).reshape([b, l, 1]);
    let nll = log_probs.clone().gather(2, targets).reshape([b, l]).neg();
    let smooth = log_probs.mean_dim(2).reshape([b, l]).neg();
    let ce = nll
        .clone()
        .mul_scalar(1.0 - LABEL_SMOOTHING)
        .add(smooth.clone().mul_scalar(LABEL_SMOOTHING));
    let loss_weights: Vec<Vec<f32>> = masking
        .mask
        .iter()
        .map(|row| {
            row.iter()
                .map(|&m| if m { 1.0 } else { UNMASKED_TOKEN_WEIGHT })
                .collect()
        })
        .collect();
    let weight_sum: f64 = loss_weights.iter().flatten().map(|&w| w as f64).sum();
    let w = Tensor::<2>::from_data(
        TensorData::new(
            loss_weights.iter().flatten().copied().collect::<Vec<f32>>(),
            [b, l],
        ),
        &device,
    );
    let loss = (ce.clone() * w)
        .sum()
        .div_scalar((weight_sum + 1e-8) as f32);
    let correct_tokens = masked_accuracy(&logits, tokens, &masking.mask);
    GeneratorStepOutput {
        masking,
        logits,
        nll,
        smooth,
        ce,
        loss_weights,
        loss,
        correct_tokens,
    }
}

/// Mean over sequences of `sum_j [argmax = target] mask / (sum_j mask + 1e-8)`.
pub fn masked_accuracy(logits: &Tensor<3>, tokens: &[Vec<i64>], mask: &[Vec<bool>]) -> f32 {
    let [b, l, _] = logits.dims();
    let predicted = logits
        .clone()
        .argmax(2)
        .reshape([b * l])
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int argmax");
    let mut total = 0.0f64;
    for bi in 0..b {
        let (mut right, mut masked) = (0.0f64, 0.0f64);
        for j in 0..l {
            if mask[bi][j] {
                masked += 1.0;
                right += f64::from(u8::from(predicted[bi * l + j] == tokens[bi][j]));
            }
        }
        total += right / (masked + 1e-8);
    }
    (total / b.max(1) as f64) as f32
}
