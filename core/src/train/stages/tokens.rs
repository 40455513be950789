//! The token stages: stage 1's warm-up (every position masked) and stage 2, SFVR (the model's own
//! first prediction at the visible positions, [`crate::train::sfvr`]) or its vanilla ablation
//! (the truth there). Both learn the teacher's codes with a cross-entropy
//! ([`crate::train::token_step`], checked against the official steps), plus the soft-embedding
//! term on small models.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;

use crate::checkpoint::state::{StateDict, state_dict};
use crate::checkpoint::{MODEL_FILE, TEACHER_FILE, build_sftok};
use crate::error::{Result, SftokError};
use crate::model::{Sftok, Vqgan};
use crate::reconstruct::rows_i64;
use crate::train::config::{StageKind, TrainConfig};
use crate::train::heldout::{HeldOut, tokenizer_entries};
use crate::train::masking::MaskDraw;
use crate::train::plan::PlanError;
use crate::train::stage::{CodeFigures, Helpers, ShardContext, Stage, StageForward, scalar};
use crate::train::starting_point::{fresh_tokenizer, load_tokenizer};
use crate::train::teacher_step::perplexity;
use crate::train::token_step::{TokenStage, proxy_accuracy, soft_embedding_loss, token_step};

/// Stage 1 or stage 2 of the tokenizer.
pub struct TokenStages<'a> {
    config: &'a TrainConfig,
    kind: TokenStage,
}

impl<'a> TokenStages<'a> {
    /// The token stage `config.stage` names (stage 1 or 2; stage 2 as `config.stage2_inputs`
    /// says: SFVR with its replacement probability, or vanilla).
    pub fn new(config: &'a TrainConfig) -> Self {
        let kind = match config.stage {
            StageKind::Stage1 => TokenStage::WarmUp,
            _ => TokenStage::Stage2(config.stage2_inputs),
        };
        TokenStages { config, kind }
    }
}

impl Stage for TokenStages<'_> {
    type Model = Sftok;

    fn initial_model(&self, teacher: Option<&Vqgan>, ad: &Device) -> Result<Sftok> {
        let config = self.config;
        if !matches!(self.kind, TokenStage::WarmUp) {
            let Some(path) = &config.init else {
                return Err(PlanError::NeedsInit {
                    stage: self.config.stage,
                }
                .into());
            };
            return load_tokenizer(path, config, ad);
        }
        let mut model = match &config.init {
            Some(path) => load_tokenizer(path, config, ad)?,
            None => fresh_tokenizer(config, teacher, ad)?,
        };
        model.mask_token_id = config.model.mask_token_id();
        Ok(model)
    }

    fn model_from_weights(&self, weights: StateDict, ad: &Device, source: &Path) -> Result<Sftok> {
        build_sftok(&self.config.model, weights, ad, source)
    }

    fn draw(&self, rng: &mut StdRng, batch_size: usize) -> Option<MaskDraw> {
        Some(mask_draw(self.config, rng, batch_size))
    }

    fn forward(
        &self,
        shard: &ShardContext<'_>,
        model: &Sftok,
        helpers: &Helpers<'_>,
        x: Tensor<4>,
        draw: Option<&MaskDraw>,
    ) -> Result<StageForward> {
        let draw = draw.ok_or_else(|| SftokError::Other("no mask draw for a shard".into()))?;
        let teacher = helpers
            .teacher
            .ok_or_else(|| SftokError::Other("stages 1 and 2 need the teacher's codes".into()))?;
        let proxy = rows_i64(teacher.encode(x.clone().inner()));
        let out = token_step(model, x.clone(), &proxy, self.kind, draw);
        let mut parts = vec![
            ("recon_loss", scalar(&out.recon_loss)),
            ("quantizer_loss", scalar(&out.quantizer_loss)),
            ("commitment_loss", scalar(&out.commitment_loss)),
            ("codebook_loss", scalar(&out.codebook_loss)),
        ];
        let mut loss = out.total_loss;
        if self.config.soft_embedding_weight > 0.0 {
            let soft = soft_embedding_loss(model, out.logits.clone(), &proxy);
            parts.push(("soft_embedding_loss", scalar(&soft)));
            loss = loss + soft.mul_scalar(self.config.soft_embedding_weight);
        }
        let reconstruction = if shard.wants_preview {
            model.valid().pixels_from_logits(out.logits.clone().inner())
        } else {
            x
        };
        Ok(StageForward {
            loss,
            parts,
            reconstruction,
            codes: out.latent_ids.iter().flatten().copied().collect(),
            proxy_accuracy: Some(proxy_accuracy(&out.logits, &proxy)),
            latents: None,
        })
    }

    fn in_pixel_space(&self) -> bool {
        false
    }

    fn record_codes(&mut self, _: u64, codes: &[i64], accuracy: f64, figures: &mut CodeFigures) {
        let k = self.config.model.quantizer.codebook_size;
        let used: std::collections::BTreeSet<i64> = codes.iter().copied().collect();
        figures.proxy_accuracy = Some(accuracy);
        figures.codebook_utilisation = Some(used.len() as f64 / k as f64);
        figures.perplexity = Some(perplexity(codes, k));
    }

    fn heldout(
        &self,
        held: &HeldOut,
        live: &Sftok,
        ema: &Sftok,
        teacher: Option<&Vqgan>,
        device: &Device,
    ) -> Vec<(String, f64)> {
        tokenizer_entries(held, live, ema, teacher, device)
    }

    fn publish(&self, dir: &Path, ema_model: &Sftok, teacher: Option<&Vqgan>) -> Result<()> {
        publish_tokenizer(dir, ema_model, teacher)
    }
}

/// One step's masks over the proxy-code positions: every tokenizer stage draws them the same way
/// (stage 3 masks its first-step predictions as stage 2 does).
pub(crate) fn mask_draw(config: &TrainConfig, rng: &mut StdRng, batch_size: usize) -> MaskDraw {
    MaskDraw::sample(rng, batch_size, config.model.num_proxy_codes())
}

/// A tokenizer model directory: `model.safetensors`, and the teacher it learnt from.
pub(crate) fn publish_tokenizer(dir: &Path, model: &Sftok, teacher: Option<&Vqgan>) -> Result<()> {
    if let Some(t) = teacher {
        crate::checkpoint::files::write_safetensors(&dir.join(TEACHER_FILE), &state_dict(t))?;
    }
    crate::checkpoint::files::write_safetensors(&dir.join(MODEL_FILE), &state_dict(model))
}
