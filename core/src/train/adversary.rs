//! The PatchGAN discriminator of the pixel-space stages (the teacher and stage 3) and its own
//! update: hinge loss plus the LeCam regulariser, its own AdamW (betas 0.5 / 0.9, no weight
//! decay), clipped as the trainee's gradients are. It exists only in runs whose adversarial loss
//! has a start step.

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::config::{GanConfig, TrainConfig};
use super::optim::{AdamW, AdamWConfig, clip_coefficient, grad_norm};
use super::run_dir::RunDir;
use super::stage::scalar;
use crate::checkpoint::state::{StateDict, load_state_dict, state_dict};
use crate::error::Result;
use crate::model::discriminator::{LeCam, PatchDiscriminator, hinge_d_loss};

const DISC_FILE: &str = "disc.safetensors";
const DISC_OPTIM_FILE: &str = "disc_optim.safetensors";

/// The discriminator with its optimiser and regulariser state.
pub struct Adversary {
    disc: PatchDiscriminator,
    optim: AdamW,
    lecam: LeCam,
}

impl Adversary {
    /// A fresh discriminator, when `config`'s adversarial loss has a start step.
    pub fn for_run(config: &TrainConfig, ad: &Device) -> Option<Self> {
        config.gan.start_step.map(|_| Adversary {
            disc: PatchDiscriminator::new(64, 3, ad),
            optim: AdamW::new(AdamWConfig {
                beta1: 0.5,
                beta2: 0.9,
                weight_decay: 0.0,
                ..Default::default()
            }),
            lecam: LeCam::new(0.999),
        })
    }

    pub fn discriminator(&self) -> &PatchDiscriminator {
        &self.disc
    }

    /// One update per micro-batch's (real, fake) pair, both detached. Returns the summed
    /// discriminator loss.
    pub fn update(
        self,
        pairs: Vec<(Tensor<4>, Tensor<4>)>,
        gan: &GanConfig,
        max_norm: f64,
    ) -> (Self, f64) {
        let Adversary {
            mut disc,
            mut optim,
            mut lecam,
        } = self;
        let mut total = 0.0;
        for (real, fake) in pairs {
            let logits_real = disc.forward(real.detach());
            let logits_fake = disc.forward(fake.detach());
            let regulariser = lecam.loss(logits_real.clone(), logits_fake.clone());
            let d_loss =
                hinge_d_loss(logits_real, logits_fake) + regulariser.mul_scalar(gan.lecam_weight);
            total += scalar(&d_loss);
            let mut g = GradientsParams::from_grads(d_loss.backward(), &disc);
            let n = grad_norm(&disc, &g);
            disc = optim.step(disc, &mut g, gan.lr, clip_coefficient(n, max_norm));
        }
        (Adversary { disc, optim, lecam }, total)
    }

    /// The checkpoint files (weights and optimiser moments) and `extra.json` entries.
    pub fn save(
        &self,
        extras: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Vec<(String, StateDict)> {
        extras.insert(
            "disc_optim_steps".into(),
            serde_json::json!(self.optim.steps),
        );
        extras.insert("lecam".into(), serde_json::json!(self.lecam));
        vec![
            (DISC_FILE.into(), state_dict(&self.disc)),
            (DISC_OPTIM_FILE.into(), self.optim.state_dict()),
        ]
    }

    /// Restores what [`Adversary::save`] wrote into the checkpoint folder `path`.
    pub fn restore(self, path: &Path, extras: &serde_json::Value, ad: &Device) -> Result<Self> {
        let disc = load_state_dict(
            self.disc,
            RunDir::read_checkpoint_file(path, DISC_FILE)?,
            ad,
            &path.join(DISC_FILE),
        )?;
        let mut optim = self.optim;
        optim.load_state_dict(
            &RunDir::read_checkpoint_file(path, DISC_OPTIM_FILE)?,
            extras["disc_optim_steps"].as_u64().unwrap_or(0),
            ad,
        );
        let lecam = serde_json::from_value(extras["lecam"].clone()).unwrap_or(self.lecam);
        Ok(Adversary { disc, optim, lecam })
    }
}
