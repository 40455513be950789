//! The teacher's (MaskGIT-VQGAN) training forward pass, its codebook statistics, and the guard
//! against codebook collapse.
//!
//! Collapse guard: a VQGAN trained from scratch on little data tends to use a handful of codes,
//! which would leave SFTok's decoder almost nothing to predict. Every `dead_code_window` steps,
//! the codes that no image used during the window are restarted at encoder outputs drawn from the
//! current batch (the "random restart" of Dhariwal et al., Jukebox, 2020). Utilisation (share of
//! codes used in the window) and perplexity are logged so the effect is visible. By default the
//! codebook itself is not learnt by gradient descent but as a moving average (`train::codebook`).

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;

use crate::model::Vqgan;
use crate::model::quantizer::argmax_rows;

/// What one teacher forward pass gives.
#[derive(Debug, Clone)]
pub struct TeacherForward {
    /// Reconstruction `[B, 3, H, W]`, not clamped.
    pub reconstruction: Tensor<4>,
    /// Code of every position, batch-major raster order.
    pub codes: Vec<i64>,
    /// Encoder outputs `[B*g*g, Zc]` on the host (candidates for restarting dead codes).
    pub latents: Vec<f32>,
    /// `mean((q - sg(z))^2)`
    pub codebook_loss: Tensor<1>,
    /// `commitment * mean((sg(q) - z)^2)`
    pub commitment_loss: Tensor<1>,
}

/// Encoder, nearest code, straight-through, decoder.
pub fn teacher_forward(teacher: &Vqgan, x: Tensor<4>, commitment: f64) -> TeacherForward {
    let z = teacher.encoder.forward(x); // [B, C, g, g]
    let [b, c, h, w] = z.dims();
    // Assignment needs no gradients: distances on the plain (non-autodiff) values.
    let distances = teacher.quantize.valid().distances(z.clone().inner());
    let flat = z.swap_dims(1, 2).swap_dims(2, 3).reshape([b * h * w, c]);
    let codes = argmax_rows(distances.neg());
    let device = flat.device();
    let ids = Tensor::<1, burn::tensor::Int>::from_data(
        TensorData::new(codes.clone(), [codes.len()]),
        &device,
    );
    let q = teacher.quantize.embedding.weight.val().select(0, ids); // [n, C]
    let codebook_loss = (q.clone() - flat.clone().detach()).powi_scalar(2).mean();
    let commitment_loss = (q.clone().detach() - flat.clone())
        .powi_scalar(2)
        .mean()
        .mul_scalar(commitment);
    let latents = flat
        .clone()
        .inner()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let z_st = flat.clone() + (q - flat).detach();
    let z_st = z_st.reshape([b, h, w, c]).swap_dims(2, 3).swap_dims(1, 2);
    TeacherForward {
        reconstruction: teacher.decoder.forward(z_st),
        codes,
        latents,
        codebook_loss,
        commitment_loss,
    }
}

/// Which codes were used recently.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CodeUsage {
    /// Step at which each code was last used (`None`: never).
    pub last_used: Vec<Option<u64>>,
}

impl CodeUsage {
    pub fn new(codebook_size: usize) -> Self {
        CodeUsage {
            last_used: vec![None; codebook_size],
        }
    }

    pub fn record(&mut self, codes: &[i64], step: u64) {
        for &c in codes {
            if let Some(slot) = self.last_used.get_mut(c as usize) {
                *slot = Some(step);
            }
        }
    }

    /// Share of codes used within the last `window` steps.
    pub fn utilisation(&self, step: u64, window: u64) -> f64 {
        let used = self
            .last_used
            .iter()
            .filter(|s| s.is_some_and(|s| step.saturating_sub(s) < window))
            .count();
        used as f64 / self.last_used.len().max(1) as f64
    }

    /// Codes unused within the last `window` steps.
    pub fn dead(&self, step: u64, window: u64) -> Vec<usize> {
        self.last_used
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_some_and(|s| step.saturating_sub(s) < window))
            .map(|(i, _)| i)
            .collect()
    }
}

/// `exp(entropy)` of the code histogram of `codes` (1 = one code, V = uniform).
pub fn perplexity(codes: &[i64], codebook_size: usize) -> f64 {
    let mut counts = vec![0u64; codebook_size];
    for &c in codes {
        if let Some(n) = counts.get_mut(c as usize) {
            *n += 1;
        }
    }
    let total = codes.len().max(1) as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// Moves each dead code onto a random encoder output of the batch (`latents`, rows of `dim`).
pub fn restart_dead_codes(
    teacher: Vqgan,
    dead: &[usize],
    latents: &[f32],
    dim: usize,
    rng: &mut impl Rng,
) -> Vqgan {
    let rows = latents.len() / dim.max(1);
    if dead.is_empty() || rows == 0 {
        return teacher;
    }
    let mut values = codebook_values(&teacher);
    let c = teacher.quantize.embedding.weight.dims()[1];
    for &code in dead {
        let row = rng.random_range(0..rows);
        values[code * c..(code + 1) * c].copy_from_slice(&latents[row * dim..(row + 1) * dim]);
    }
    set_codebook(teacher, values)
}

/// The codebook `[V * Zc]`, row-major, on the host.
pub fn codebook_values(teacher: &Vqgan) -> Vec<f32> {
    teacher
        .quantize
        .embedding
        .weight
        .val()
        .inner()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Replaces the codebook's values (`[V * Zc]`, row-major), keeping the parameter's id (so the
/// optimiser and the EMA still know it) and whether it requires gradients.
pub fn set_codebook(teacher: Vqgan, values: Vec<f32>) -> Vqgan {
    let mut teacher = teacher;
    let weight = teacher.quantize.embedding.weight.val();
    let device = weight.device();
    let [v, c] = weight.dims();
    let require_grad = weight.is_require_grad();
    let (id, _, mapper) = teacher.quantize.embedding.weight.consume();
    let mut t = Tensor::<2>::from_data(TensorData::new(values, [v, c]), &device);
    if require_grad {
        t = t.require_grad();
    }
    teacher.quantize.embedding.weight = Param::from_mapped_value(id, t, mapper);
    teacher
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_of_uniform_and_single_code() {
        assert!((perplexity(&[0, 1, 2, 3], 8) - 4.0).abs() < 1e-9);
        assert!((perplexity(&[5, 5, 5], 8) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn usage_window() {
        let mut u = CodeUsage::new(4);
        u.record(&[0, 1], 1);
        u.record(&[1], 10);
        assert_eq!(u.utilisation(10, 5), 0.25);
        assert_eq!(u.dead(10, 5), vec![0, 2, 3]);
        assert_eq!(u.utilisation(10, 100), 0.5);
    }
}
