//! What a training stage is to the loop ([`super::trainer`]): the model it trains and where that
//! model starts, one device's forward pass and loss on its share of a batch, what its codes say,
//! what it changes after the optimiser's update, and what it publishes.
//!
//! The stages, one file each in [`super::stages`]: the MaskGIT-VQGAN teacher
//! ([`super::stages::teacher`]), the token stages (stage 1's warm-up, stage 2's SFVR or vanilla:
//! [`super::stages::tokens`]) and the pixel stage (stage 3: [`super::stages::pixel`]). The loop
//! owns everything they share: data, resume, stop, the optimiser, the weights' EMA, the
//! discriminator, metrics, previews and checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use serde::Serialize;

use super::config::TrainConfig;
use super::heldout::HeldOut;
use super::masking::MaskDraw;
use crate::checkpoint::state::StateDict;
use crate::error::Result;
use crate::model::Vqgan;
use crate::model::discriminator::{PatchDiscriminator, generator_loss};
use crate::model::lpips::Lpips;

/// A training stage. The loop calls [`Stage::forward`] from one thread per device at once, so a
/// stage is shared (`Sync`) and keeps what it changes to the calls that take `&mut self`, which
/// run on the loop's thread between steps.
pub trait Stage: Sync {
    /// The model this stage trains (the teacher or the tokenizer).
    type Model: Module + Sync;

    /// The model a new run starts from: fresh weights, or the ones `--init` names.
    fn initial_model(&self, teacher: Option<&Vqgan>, ad: &Device) -> Result<Self::Model>;

    /// The model a checkpoint's weights hold (`source` names the file, for messages).
    fn model_from_weights(
        &self,
        weights: StateDict,
        ad: &Device,
        source: &Path,
    ) -> Result<Self::Model>;

    /// The random draws of one micro-batch (masks, replacement coins), made for the whole batch
    /// before it is split over devices so that a run does not depend on how many there are.
    fn draw(&self, _rng: &mut StdRng, _batch_size: usize) -> Option<MaskDraw> {
        None
    }

    /// Whether the forward passes of optimiser step `step` (0-based) return the encoder's
    /// outputs ([`StageForward::latents`]).
    fn wants_latents(&self, _step: u64) -> bool {
        false
    }

    /// One device's forward pass and loss on its shard `x` of a micro-batch.
    fn forward(
        &self,
        shard: &ShardContext<'_>,
        model: &Self::Model,
        helpers: &Helpers<'_>,
        x: Tensor<4>,
        draw: Option<&MaskDraw>,
    ) -> Result<StageForward>;

    /// Whether the stage makes images in pixel space that a discriminator can judge (the GAN
    /// terms apply to such stages only).
    fn in_pixel_space(&self) -> bool;

    /// Takes note of a micro-batch's codes (all shards), and of the share of positions whose
    /// predicted code was the teacher's.
    fn record_codes(
        &mut self,
        _step: u64,
        _codes: &[i64],
        _proxy_accuracy: f64,
        _figures: &mut CodeFigures,
    ) {
    }

    /// Changes the stage makes to the live weights after the optimiser's update, before the
    /// weights' EMA sees them. `latents` holds each micro-batch's (codes, encoder outputs) when
    /// [`Stage::wants_latents`] asked for them.
    fn after_update(
        &mut self,
        model: Self::Model,
        _step: u64,
        _latents: &[(Vec<i64>, Vec<f32>)],
        _rng: &mut StdRng,
        _figures: &mut CodeFigures,
    ) -> Self::Model {
        model
    }

    /// The held-out measurements of the live and the EMA weights, as metric entries
    /// (`heldout_psnr`, `heldout_psnr_ema`, ...).
    fn heldout(
        &self,
        held: &HeldOut,
        live: &Self::Model,
        ema: &Self::Model,
        teacher: Option<&Vqgan>,
        device: &Device,
    ) -> Vec<(String, f64)>;

    /// Writes the weights of the published model directory `dir` (the EMA weights); the loop
    /// has written its `config.json`.
    fn publish(&self, dir: &Path, ema_model: &Self::Model, teacher: Option<&Vqgan>) -> Result<()>;

    /// The stage's own state, saved in each checkpoint's `extra.json` beside the loop's.
    fn save_state(&self, _extras: &mut serde_json::Map<String, serde_json::Value>) {}

    /// Restores what [`Stage::save_state`] saved.
    fn restore_state(&mut self, _extras: &serde_json::Value) {}
}

/// What every device's forward pass of a step shares.
pub struct ShardContext<'a> {
    pub config: &'a TrainConfig,
    /// Whether the adversarial loss counts in this step.
    pub gan_on: bool,
    /// Whether the reconstruction is wanted for a preview.
    pub wants_preview: bool,
    /// Whether the encoder's outputs are wanted ([`Stage::wants_latents`]).
    pub wants_latents: bool,
}

/// The frozen helpers of one device.
#[derive(Clone, Copy)]
pub struct Helpers<'a> {
    /// The teacher whose codes the token stages learn.
    pub teacher: Option<&'a Vqgan>,
    /// The perceptual loss.
    pub lpips: Option<&'a Lpips>,
    /// The discriminator, while the adversarial loss is on.
    pub disc: Option<&'a PatchDiscriminator>,
}

/// What one device's forward pass of a stage gives.
pub struct StageForward {
    /// The loss to minimise (on the device's autodiff backend).
    pub loss: Tensor<1>,
    /// Its terms, for the metrics.
    pub parts: Vec<(&'static str, f64)>,
    /// The reconstruction, for previews and the discriminator (the input itself where a stage
    /// has none to show this step).
    pub reconstruction: Tensor<4>,
    /// The teacher's codes (teacher) or the latent ids (token stages).
    pub codes: Vec<i64>,
    /// Share of positions whose predicted code is the teacher's (token stages).
    pub proxy_accuracy: Option<f64>,
    /// The encoder's outputs, rows of the code dimension, when asked for.
    pub latents: Option<Vec<f32>>,
}

/// What a step's codes say; the fields a stage does not report stay `None` and are left out of
/// the metrics row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CodeFigures {
    /// `exp(entropy)` of the code histogram of the last micro-batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Token stages: share of positions whose predicted code is the teacher's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_accuracy: Option<f64>,
    /// Share of the codebook in use (teacher: within the dead-code window; token stages: in the
    /// last micro-batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codebook_utilisation: Option<f64>,
    /// Teacher: codes restarted at this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarted_codes: Option<usize>,
}

/// One row of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Each loss term, averaged over the micro-batches (`loss` is their weighted sum).
    #[serde(flatten)]
    pub terms: BTreeMap<&'static str, f64>,
    pub lr: f64,
    /// Before clipping.
    pub grad_norm: f64,
    pub images_per_sec: f64,
    pub images_seen: u64,
    pub skipped_files: usize,
    #[serde(flatten)]
    pub codes: CodeFigures,
    /// The held-out measurements, on the steps they are made.
    #[serde(flatten)]
    pub heldout: BTreeMap<String, f64>,
}

impl StepMetrics {
    /// The row as JSON, as `metrics.jsonl` and [`super::TrainEvent::Metrics`] carry it.
    pub fn row(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("metrics are plain numbers")
    }
}

/// MSE (+ LPIPS) (+ the generator's adversarial loss) of a reconstruction: the loss of the
/// pixel-space stages.
pub fn pixel_losses(
    config: &TrainConfig,
    x: &Tensor<4>,
    recon: &Tensor<4>,
    helpers: &Helpers<'_>,
    gan_on: bool,
) -> (Tensor<1>, Vec<(&'static str, f64)>) {
    let mse = (recon.clone() - x.clone()).powi_scalar(2).mean();
    let mut parts = vec![("mse", scalar(&mse))];
    let mut loss = mse.mul_scalar(config.reconstruction_weight);
    if let Some(lpips) = helpers.lpips {
        let p = lpips.forward(recon.clone(), x.clone()).mean();
        parts.push(("perceptual_loss", scalar(&p)));
        loss = loss + p.mul_scalar(config.perceptual_weight);
    }
    if gan_on && let Some(disc) = helpers.disc {
        // The discriminator is a fixed function for the generator's update: its parameters get
        // gradients here too, but only the trainee's are read from this backward pass.
        let g = generator_loss(disc.forward(recon.clone()));
        parts.push(("gan_loss", scalar(&g)));
        loss = loss + g.mul_scalar(config.gan.weight);
    }
    (loss, parts)
}

/// The value of a one-element tensor (NaN when it cannot be read).
pub fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .inner()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}
