//! Stage 3, the pixel stage: the decoder (and the pixel codebook and decoder) fine-tuned in pixel
//! space on its own first-step predictions under a random arccos mask
//! ([`crate::train::pixel_step`]), with MSE, optional LPIPS and GAN terms. The paper freezes the
//! encoder, quantizer and latent tokens here; `--train-encoder` trains them too.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;

use crate::checkpoint::build_sftok;
use crate::checkpoint::state::StateDict;
use crate::error::{Result, SftokError};
use crate::model::{Sftok, Vqgan};
use crate::train::config::TrainConfig;
use crate::train::heldout::{HeldOut, tokenizer_entries};
use crate::train::masking::MaskDraw;
use crate::train::pixel_step::stage3_forward;
use crate::train::plan::PlanError;
use crate::train::stage::{Helpers, ShardContext, Stage, StageForward, pixel_losses, scalar};
use crate::train::stages::tokens::{mask_draw, publish_tokenizer};
use crate::train::starting_point::load_tokenizer;

/// Stage 3.
pub struct PixelStage<'a> {
    config: &'a TrainConfig,
}

impl<'a> PixelStage<'a> {
    pub fn new(config: &'a TrainConfig) -> Self {
        PixelStage { config }
    }

    /// The model as this stage trains it: frozen where the paper freezes it, unless the run
    /// trains the encoder too.
    fn as_trained(&self, model: Sftok) -> Sftok {
        if self.config.stage3_train_encoder {
            model
        } else {
            freeze_for_stage3(model)
        }
    }
}

/// Stage 3 trains the decoder, the pixel codebook and the pixel decoder only.
pub fn freeze_for_stage3(mut model: Sftok) -> Sftok {
    model.encoder = model.encoder.no_grad();
    model.quantize = model.quantize.no_grad();
    model.latent_tokens = model.latent_tokens.set_require_grad(false);
    model
}

impl Stage for PixelStage<'_> {
    type Model = Sftok;

    fn initial_model(&self, _teacher: Option<&Vqgan>, ad: &Device) -> Result<Sftok> {
        let Some(path) = &self.config.init else {
            return Err(PlanError::NeedsInit {
                stage: self.config.stage,
            }
            .into());
        };
        Ok(self.as_trained(load_tokenizer(path, self.config, ad)?))
    }

    fn model_from_weights(&self, weights: StateDict, ad: &Device, source: &Path) -> Result<Sftok> {
        Ok(self.as_trained(build_sftok(&self.config.model, weights, ad, source)?))
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
        let (recon, quantizer_loss) =
            stage3_forward(model, x.clone(), draw, self.config.stage3_train_encoder);
        let (mut loss, mut parts) = pixel_losses(self.config, &x, &recon, helpers, shard.gan_on);
        if let Some(q) = quantizer_loss {
            parts.push(("quantizer_loss", scalar(&q)));
            loss = loss + q;
        }
        Ok(StageForward {
            loss,
            parts,
            reconstruction: recon,
            codes: Vec::new(),
            proxy_accuracy: None,
            latents: None,
        })
    }

    fn in_pixel_space(&self) -> bool {
        true
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
