//! What a person asks for when starting a run, and the run configuration it becomes.
//!
//! The command line (`sftok train`) and the app's Train view both fill a [`RunPlan`] and call
//! [`RunPlan::config`]; neither knows how a stage's model size, teacher and starting checkpoint
//! combine, which is decided here once. Options left `None` take the stage's defaults
//! ([`TrainConfig::for_stage`]).

use std::path::{Path, PathBuf};

use super::config::{PerceptualWeights, StageKind, TrainConfig};
use super::masking::Stage2Inputs;
use super::trainer::model_config_of;
use crate::checkpoint::model_dir::carries_teacher;
use crate::config::SftokConfig;
use crate::error::{Result, SftokError};

/// How the codebook of a teacher run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeacherCodebook {
    /// k-means start, moving average of the encoder outputs (the default).
    #[default]
    MovingAverage,
    /// The plain VQGAN codebook loss (collapses when trained from scratch: docs/teacher.md).
    Gradient,
}

/// A run as asked for. [`RunPlan::new`] gives `sftok train STAGE --data DATA`'s defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub stage: StageKind,
    pub data: PathBuf,
    /// Model size: tiny, demo, sftok-b, sftok-l (ignored where a teacher or starting checkpoint
    /// fixes it).
    pub preset: String,
    pub teacher: Option<PathBuf>,
    /// The run or model directory this stage starts from (it also carries its teacher).
    pub init: Option<PathBuf>,
    /// Stage 2: the vanilla ablation instead of SFVR.
    pub vanilla: bool,
    pub replace_prob: f32,
    pub steps: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: Option<f64>,
    pub warmup: Option<u64>,
    pub seed: u64,
    pub max_scale: f32,
    /// The adversarial loss: `None` off, `Some(step)` on from that step; unset, the stage's
    /// default (off for the teacher, half-way for stage 3).
    pub gan_start: Option<Option<u64>>,
    pub perceptual: Option<PerceptualWeights>,
    pub eval_data: Option<PathBuf>,
    pub eval_every: u64,
    pub codebook: TeacherCodebook,
    pub dead_code_window: u64,
    pub soft_embedding_weight: Option<f32>,
    pub train_encoder: bool,
    pub log_every: u64,
    pub preview_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub workers: usize,
}

impl RunPlan {
    pub fn new(stage: StageKind, data: &Path) -> Self {
        RunPlan {
            stage,
            data: data.to_path_buf(),
            preset: "tiny".into(),
            teacher: None,
            init: None,
            vanilla: false,
            replace_prob: 1.0,
            steps: 1000,
            batch_size: 8,
            grad_accum: 1,
            lr: None,
            warmup: None,
            seed: 0,
            max_scale: 1.0,
            gan_start: None,
            perceptual: None,
            eval_data: None,
            eval_every: 250,
            codebook: TeacherCodebook::MovingAverage,
            dead_code_window: 100,
            soft_embedding_weight: None,
            train_encoder: false,
            log_every: 10,
            preview_every: 200,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            workers: 2,
        }
    }

    /// The model this run trains: a starting checkpoint's (so that its weights fit), else the
    /// preset, with a stage-1 teacher's proxy-code vocabulary.
    fn model(&self) -> Result<SftokConfig> {
        let reading = |what: &str, path: &Path, e: SftokError| {
            SftokError::Other(format!(
                "reading the configuration of the {what} {}: {e}",
                path.display()
            ))
        };
        match (&self.init, &self.teacher, self.stage) {
            // A stage that starts from a run takes that run's model configuration (stage 1 and
            // the teacher too: continuing a run, where the preset, default `tiny`, would name a
            // model the weights do not fit; a demo teacher continued under the tiny preset's
            // codebook size collapsed to 7 codes within 200 steps).
            (Some(init), _, _) => {
                model_config_of(init).map_err(|e| reading("starting checkpoint", init, e))
            }
            (_, Some(teacher), StageKind::Stage1) => {
                let mut c = SftokConfig::preset(&self.preset)?;
                // The teacher fixes the proxy-code vocabulary and grid.
                c.vqgan = model_config_of(teacher)
                    .map_err(|e| reading("teacher", teacher, e))?
                    .vqgan;
                Ok(c)
            }
            _ => SftokConfig::preset(&self.preset),
        }
    }

    /// The run's configuration.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut config =
            TrainConfig::for_stage(self.stage, self.model()?, self.data.clone(), self.steps);
        config.teacher = self.teacher.clone();
        config.init = self.init.clone();
        if config.teacher.is_none() {
            // The starting run carries its teacher (stage 3 passes it on to its model when it
            // has one, so that the result can still be measured against it).
            config.teacher = match (self.stage, &self.init) {
                (StageKind::Stage1 | StageKind::Stage2, init) => init.clone(),
                (StageKind::Stage3, Some(init)) if carries_teacher(init) => Some(init.clone()),
                _ => None,
            };
        }
        config.stage2_inputs = if self.vanilla {
            Stage2Inputs::Vanilla
        } else {
            Stage2Inputs::SelfForcing {
                replace_prob: self.replace_prob,
            }
        };
        config.batch_size = self.batch_size;
        config.grad_accum = self.grad_accum;
        if let Some(lr) = self.lr {
            config.end_lr = lr / 10.0;
            config.lr = lr;
        }
        if let Some(w) = self.warmup {
            config.warmup_steps = w;
        }
        config.seed = self.seed;
        config.max_scale = self.max_scale;
        match self.gan_start {
            Some(None) => config.gan.start_step = u64::MAX,
            Some(Some(s)) => config.gan.start_step = s,
            None => {}
        }
        if let Some(p) = &self.perceptual {
            config.perceptual = Some(p.clone());
            config.perceptual_status = "on".into();
        }
        config.eval_data = self.eval_data.clone();
        config.eval_every = self.eval_every;
        if self.codebook == TeacherCodebook::Gradient {
            config.codebook_ema_decay = None;
        }
        config.dead_code_window = self.dead_code_window;
        config.stage3_train_encoder = self.train_encoder;
        if let Some(w) = self.soft_embedding_weight {
            config.soft_embedding_weight = w;
        }
        config.log_every = self.log_every;
        config.preview_every = self.preview_every;
        config.checkpoint_every = self.checkpoint_every;
        config.keep_checkpoints = self.keep_checkpoints;
        config.workers = self.workers;
        Ok(config)
    }
}
