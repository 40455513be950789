//! The MaskGIT-VQGAN teacher: trained in pixel space (MSE, optional LPIPS and GAN terms), its
//! codebook learnt as a moving average of what each code quantizes and guarded against collapse
//! by restarting the codes no image used for a while ([`crate::train::teacher_step`],
//! [`crate::train::codebook`]).

use std::path::Path;

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;

use crate::checkpoint::state::{StateDict, state_dict};
use crate::checkpoint::{TEACHER_FILE, build_teacher};
use crate::error::Result;
use crate::model::Vqgan;
use crate::train::codebook::CodebookEma;
use crate::train::config::TrainConfig;
use crate::train::heldout::{HeldOut, teacher_entries};
use crate::train::masking::MaskDraw;
use crate::train::stage::{
    CodeFigures, Helpers, ShardContext, Stage, StageForward, pixel_losses, scalar,
};
use crate::train::starting_point::load_teacher;
use crate::train::teacher_step::{
    CodeUsage, codebook_values, perplexity, restart_dead_codes, set_codebook, teacher_forward,
};

/// The teacher stage and what it keeps between steps.
pub struct TeacherStage<'a> {
    config: &'a TrainConfig,
    /// When each code was last used, for the utilisation figure and the restarts.
    usage: CodeUsage,
    /// The moving-average codebook (`None` before the first step, or when the codebook is
    /// learnt by gradient descent).
    codebook: Option<CodebookEma>,
}

impl<'a> TeacherStage<'a> {
    pub fn new(config: &'a TrainConfig) -> Self {
        TeacherStage {
            config,
            usage: CodeUsage::new(config.model.vqgan.num_embeddings),
            codebook: None,
        }
    }

    /// Whether step `step` (0-based) restarts the codes that went unused.
    fn restarts_at(&self, step: u64) -> bool {
        let window = self.config.dead_code_window;
        window > 0 && (step + 1).is_multiple_of(window)
    }
}

impl Stage for TeacherStage<'_> {
    type Model = Vqgan;

    fn initial_model(&self, _teacher: Option<&Vqgan>, ad: &Device) -> Result<Vqgan> {
        match &self.config.init {
            Some(path) => Ok(load_teacher(path, ad)?.1),
            None => Ok(Vqgan::new(&self.config.model.vqgan, ad)),
        }
    }

    fn model_from_weights(&self, weights: StateDict, ad: &Device, source: &Path) -> Result<Vqgan> {
        build_teacher(&self.config.model, weights, ad, source)
    }

    fn wants_latents(&self, step: u64) -> bool {
        self.restarts_at(step) || self.config.codebook_ema_decay.is_some()
    }

    fn forward(
        &self,
        shard: &ShardContext<'_>,
        model: &Vqgan,
        helpers: &Helpers<'_>,
        x: Tensor<4>,
        _draw: Option<&MaskDraw>,
    ) -> Result<StageForward> {
        let config = self.config;
        let out = teacher_forward(model, x.clone(), config.model.vqgan.commitment_cost);
        let (loss, mut parts) =
            pixel_losses(config, &x, &out.reconstruction, helpers, shard.gan_on);
        // With the moving-average codebook the codes are not learnt from this loss.
        let loss = if config.codebook_ema_decay.is_some() {
            loss + out.commitment_loss.clone()
        } else {
            loss + out.codebook_loss.clone() + out.commitment_loss.clone()
        };
        parts.push(("codebook_loss", scalar(&out.codebook_loss)));
        parts.push(("commitment_loss", scalar(&out.commitment_loss)));
        Ok(StageForward {
            loss,
            parts,
            reconstruction: out.reconstruction,
            codes: out.codes,
            proxy_accuracy: None,
            latents: shard.wants_latents.then_some(out.latents),
        })
    }

    fn in_pixel_space(&self) -> bool {
        true
    }

    fn record_codes(&mut self, step: u64, codes: &[i64], _: f64, figures: &mut CodeFigures) {
        self.usage.record(codes, step);
        figures.perplexity = Some(perplexity(codes, self.config.model.vqgan.num_embeddings));
    }

    /// The codebook after an optimiser step: the moving average of what each code quantized
    /// (started at k-means centres of the first batch's encoder outputs, or at the current codes
    /// of a teacher that starts from trained weights), or the gradient-learnt codebook; codes
    /// unused for `dead_code_window` steps restart at encoder outputs of the last micro-batch.
    fn after_update(
        &mut self,
        model: Vqgan,
        step: u64,
        latents: &[(Vec<i64>, Vec<f32>)],
        rng: &mut StdRng,
        figures: &mut CodeFigures,
    ) -> Vqgan {
        let config = self.config;
        let dim = config.model.vqgan.z_channels;
        let restart_latents = latents
            .last()
            .filter(|_| self.restarts_at(step))
            .map(|(_, l)| l.as_slice());
        let dead = restart_latents.map(|_| self.usage.dead(step, config.dead_code_window));
        let model = match (config.codebook_ema_decay, self.codebook.as_mut()) {
            (Some(decay), None) => {
                let v = config.model.vqgan.num_embeddings;
                let ema = match (&config.init, latents.last()) {
                    (None, Some((_, first))) => {
                        CodebookEma::from_latents(first, dim, v, decay, rng)
                    }
                    _ => CodebookEma {
                        decay,
                        dim,
                        counts: vec![1.0; v],
                        sums: codebook_values(&model).iter().map(|&x| x as f64).collect(),
                    },
                };
                let values = ema.vectors();
                self.codebook = Some(ema);
                set_codebook(model, values)
            }
            (Some(_), Some(ema)) => {
                for (codes, outputs) in latents {
                    ema.update(codes, outputs);
                }
                if let (Some(dead), Some(outputs)) = (&dead, restart_latents) {
                    ema.restart(dead, outputs, rng);
                }
                set_codebook(model, ema.vectors())
            }
            (None, _) => match (&dead, restart_latents) {
                (Some(dead), Some(outputs)) => restart_dead_codes(model, dead, outputs, dim, rng),
                _ => model,
            },
        };
        figures.restarted_codes = dead.as_ref().map(Vec::len);
        figures.codebook_utilisation =
            Some(self.usage.utilisation(step, config.dead_code_window.max(1)));
        model
    }

    fn heldout(
        &self,
        held: &HeldOut,
        live: &Vqgan,
        ema: &Vqgan,
        _teacher: Option<&Vqgan>,
        device: &Device,
    ) -> Vec<(String, f64)> {
        teacher_entries(held, live, ema, device)
    }

    fn publish(&self, dir: &Path, ema_model: &Vqgan, _teacher: Option<&Vqgan>) -> Result<()> {
        crate::checkpoint::files::write_safetensors(&dir.join(TEACHER_FILE), &state_dict(ema_model))
    }

    fn save_state(&self, extras: &mut serde_json::Map<String, serde_json::Value>) {
        extras.insert("usage".into(), serde_json::json!(self.usage));
        extras.insert("codebook_ema".into(), serde_json::json!(self.codebook));
    }

    fn restore_state(&mut self, extras: &serde_json::Value) {
        if let Ok(usage) = serde_json::from_value(extras["usage"].clone()) {
            self.usage = usage;
        }
        if let Ok(codebook) = serde_json::from_value(extras["codebook_ema"].clone()) {
            self.codebook = codebook;
        }
    }
}
