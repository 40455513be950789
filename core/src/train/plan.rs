//! What a person asks for when starting a run, and the run configuration it becomes.
//!
//! The command line (`sftok train`) and the app's Train view both fill a [`RunPlan`] and call
//! [`RunPlan::config`]; neither knows how a stage's model size, teacher and starting checkpoint
//! combine, which is decided here once. Options left `None` take the stage's defaults
//! ([`TrainConfig::for_stage`]).
//!
//! [`RunPlan::check`] looks at the folders a run names before anything starts, and what is wrong
//! comes back as a [`PlanError`]: each front end words it for its own controls (the command line
//! names its flags, the app its fields), so neither rewrites the other's messages.

use std::path::{Path, PathBuf};

use super::config::{PerceptualWeights, StageKind, TrainConfig};
use super::sfvr::Stage2Inputs;
use super::starting_point::model_config_of;
use crate::checkpoint::model_dir::{carries_teacher, missing_model_file, published_model_dir};
use crate::checkpoint::{MODEL_FILE, TEACHER_FILE};
use crate::config::SftokConfig;
use crate::error::SftokError;

/// A folder a run names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanInput {
    /// The training images.
    Data,
    /// The teacher whose codes stages 1 and 2 learn.
    Teacher,
    /// The run or model directory the stage starts from.
    Init,
    /// A tokenizer to fine-tune (a model directory or the run that published one).
    Model,
}

impl std::fmt::Display for PlanInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlanInput::Data => "data folder",
            PlanInput::Teacher => "teacher",
            PlanInput::Init => "starting checkpoint",
            PlanInput::Model => "model folder",
        })
    }
}

/// What is wrong with a planned run. The messages say what is wrong in the library's words;
/// front ends say what to do in theirs (a flag to pass, a field to fill).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the {input} {} does not exist", path.display())]
    Missing { input: PlanInput, path: PathBuf },
    #[error("the {input} {} is not a folder", path.display())]
    NotAFolder { input: PlanInput, path: PathBuf },
    #[error("{} holds no teacher ({TEACHER_FILE})", path.display())]
    NoTeacher { path: PathBuf },
    /// A folder given as a tokenizer lacks `missing` (config or weights).
    #[error("{} is not a model folder ({missing} is missing)", path.display())]
    NotAModel {
        path: PathBuf,
        missing: &'static str,
    },
    /// The starting checkpoint lacks the weights `stage` starts from.
    #[error("{} cannot start {stage}: it holds no {}", path.display(), needed_file(*stage))]
    CannotStart { path: PathBuf, stage: StageKind },
    #[error(
        "the batch size ({batch}) is larger than the {images} image(s) in {}",
        data.display()
    )]
    BatchLargerThanData {
        batch: usize,
        images: usize,
        data: PathBuf,
    },
    /// Stages 1 and 2 learn the teacher's codes; `init_has_none`: a starting checkpoint was
    /// given but carries no teacher.
    #[error("{stage} learns the teacher's codes and no teacher was given")]
    NeedsTeacher {
        stage: StageKind,
        init_has_none: bool,
    },
    /// Stages 2 and 3 continue the previous stage.
    #[error("{stage} continues stage {} and no starting checkpoint was given", previous(*stage))]
    NeedsInit { stage: StageKind },
    /// A new run's folder already holds one (resume it, or choose another folder).
    #[error("{} already holds a run with checkpoints", path.display())]
    RunExists { path: PathBuf },
    /// A teacher's or starting checkpoint's configuration could not be read.
    #[error("reading the configuration of the {input} {}: {error}", path.display())]
    Unreadable {
        input: PlanInput,
        path: PathBuf,
        error: SftokError,
    },
    /// The model configuration (an unknown preset, say).
    #[error(transparent)]
    Model(#[from] SftokError),
}

/// The file a starting checkpoint must hold for `stage`.
fn needed_file(stage: StageKind) -> &'static str {
    if stage == StageKind::Teacher {
        TEACHER_FILE
    } else {
        MODEL_FILE
    }
}

/// The stage a stage continues (0 for the ones that start afresh).
pub fn previous(stage: StageKind) -> u8 {
    match stage {
        StageKind::Stage2 => 1,
        StageKind::Stage3 => 2,
        _ => 0,
    }
}

/// `input` at `path` is a folder, or the error that says what it is instead.
fn check_folder(input: PlanInput, path: &Path) -> Result<(), PlanError> {
    if path.is_dir() {
        Ok(())
    } else if path.exists() {
        Err(PlanError::NotAFolder {
            input,
            path: path.to_path_buf(),
        })
    } else {
        Err(PlanError::Missing {
            input,
            path: path.to_path_buf(),
        })
    }
}

fn has_model(path: &Path) -> bool {
    published_model_dir(path).join(MODEL_FILE).is_file()
}

/// The tokenizer model directory `path` stands for (itself, or the `model/` a run published),
/// checked to hold a configuration and weights: what a fine-tune starts from.
pub fn check_model_folder(path: &Path) -> Result<PathBuf, PlanError> {
    check_folder(PlanInput::Model, path)?;
    let dir = published_model_dir(path);
    match missing_model_file(&dir) {
        Some(missing) => Err(PlanError::NotAModel {
            path: path.to_path_buf(),
            missing,
        }),
        None => Ok(dir),
    }
}

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
    fn model(&self) -> Result<SftokConfig, PlanError> {
        let reading = |input: PlanInput, path: &Path, error: SftokError| PlanError::Unreadable {
            input,
            path: path.to_path_buf(),
            error,
        };
        match (&self.init, &self.teacher, self.stage) {
            // A stage that starts from a run takes that run's model configuration (stage 1 and
            // the teacher too: continuing a run, where the preset, default `tiny`, would name a
            // model the weights do not fit; a demo teacher continued under the tiny preset's
            // codebook size collapsed to 7 codes within 200 steps).
            (Some(init), _, _) => {
                model_config_of(init).map_err(|e| reading(PlanInput::Init, init, e))
            }
            (_, Some(teacher), StageKind::Stage1) => {
                let mut c = SftokConfig::preset(&self.preset)?;
                // The teacher fixes the proxy-code vocabulary and grid.
                c.vqgan = model_config_of(teacher)
                    .map_err(|e| reading(PlanInput::Teacher, teacher, e))?
                    .vqgan;
                Ok(c)
            }
            _ => Ok(SftokConfig::preset(&self.preset)?),
        }
    }

    /// Checks the folders the run names and that the stage has what it starts from, before
    /// anything is read or started.
    pub fn check(&self) -> Result<(), PlanError> {
        check_folder(PlanInput::Data, &self.data)?;
        // Refused here, before anything starts, rather than by the loader after the run has
        // appeared to begin.
        if let Ok(folder) = crate::data::ImageFolder::scan(&self.data)
            && folder.paths().len() < self.batch_size.max(1)
        {
            return Err(PlanError::BatchLargerThanData {
                batch: self.batch_size,
                images: folder.paths().len(),
                data: self.data.clone(),
            });
        }
        if let Some(teacher) = &self.teacher {
            check_folder(PlanInput::Teacher, teacher)?;
            if !carries_teacher(teacher) {
                return Err(PlanError::NoTeacher {
                    path: teacher.clone(),
                });
            }
        }
        if let Some(init) = &self.init {
            check_folder(PlanInput::Init, init)?;
            let fits = if self.stage == StageKind::Teacher {
                carries_teacher(init)
            } else {
                has_model(init)
            };
            if !fits {
                return Err(PlanError::CannotStart {
                    path: init.clone(),
                    stage: self.stage,
                });
            }
        }
        match (self.stage, &self.init) {
            (StageKind::Stage1, _) if self.teacher.is_none() && self.init.is_none() => {
                Err(PlanError::NeedsTeacher {
                    stage: self.stage,
                    init_has_none: false,
                })
            }
            (StageKind::Stage2 | StageKind::Stage3, None) => {
                Err(PlanError::NeedsInit { stage: self.stage })
            }
            (StageKind::Stage1 | StageKind::Stage2, Some(init))
                if self.teacher.is_none() && !carries_teacher(init) =>
            {
                Err(PlanError::NeedsTeacher {
                    stage: self.stage,
                    init_has_none: true,
                })
            }
            _ => Ok(()),
        }
    }

    /// The run's configuration.
    pub fn config(&self) -> Result<TrainConfig, PlanError> {
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
        if let Some(start) = self.gan_start {
            config.gan.start_step = start;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CONFIG_FILE;

    #[test]
    fn a_model_folder_is_a_model_directory_or_the_run_that_published_one() {
        let root = std::env::temp_dir().join(format!("sftok-plan-model-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let run = root.join("run");
        let model = run.join("model");
        std::fs::create_dir_all(&model).unwrap();
        let file = root.join("file.png");
        std::fs::write(&file, b"x").unwrap();

        assert!(matches!(
            check_model_folder(&root.join("gone")),
            Err(PlanError::Missing {
                input: PlanInput::Model,
                ..
            })
        ));
        assert!(matches!(
            check_model_folder(&file),
            Err(PlanError::NotAFolder { .. })
        ));
        // An empty model/ : the run is not a model yet, and the message names the file.
        let e = check_model_folder(&run).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::NotAModel {
                    missing: CONFIG_FILE,
                    ..
                }
            ),
            "{e}"
        );
        std::fs::write(model.join(MODEL_FILE), b"w").unwrap();
        let e = check_model_folder(&model).unwrap_err();
        assert!(e.to_string().contains(CONFIG_FILE), "{e}");
        std::fs::write(model.join(CONFIG_FILE), b"{}").unwrap();
        assert_eq!(check_model_folder(&run).unwrap(), model);
        assert_eq!(check_model_folder(&model).unwrap(), model);
        assert!(has_model(&run) && has_model(&model) && !has_model(&root));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
