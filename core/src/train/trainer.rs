//! The training loop shared by every stage ([`super::stage::Stage`]): data, the forward and
//! backward passes over the devices, clipping, AdamW, the weights' EMA, the discriminator,
//! metrics, previews, atomic checkpoints, exact resume, clean stop and NaN detection.
//!
//! Exact resume: the weights, optimiser moments, EMA shadow, discriminator, the stage's own state,
//! data position and step are checkpointed, and every random draw of step `s` comes from an RNG
//! seeded by `(seed, s)`, so a resumed run computes the same next step as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::adversary::Adversary;
use super::config::{StageKind, TrainConfig};
use super::data_parallel::{Replicas, ShardOutput, merge_grads, split_batch};
use super::ema::Ema;
use super::events::{StopHandle, TrainEvent};
use super::heldout::HeldOut;
use super::optim::{AdamW, LrSchedule, clip_coefficient, grad_norm};
use super::plan::PlanError;
use super::run_dir::{OpenedRun, ResumeState, RunDir};
use super::stage::{CodeFigures, Helpers, ShardContext, Stage, StepMetrics};
use super::stages::pixel::PixelStage;
use super::stages::teacher::TeacherStage;
use super::stages::tokens::TokenStages;
use super::starting_point::load_teacher;
use crate::checkpoint::CONFIG_FILE;
use crate::checkpoint::state::{StateDict, state_dict};
use crate::data::{Batch, DataLoader, DataPosition, ImageFolder, LoaderConfig, Mode};
use crate::device::on_compute_pool;
use crate::error::{Result, SftokError};
use crate::image_io::{hstack, save_png, tensor_to_images};
use crate::model::Vqgan;
use crate::model::lpips::Lpips;

/// What a finished (or stopped) run leaves.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub step: u64,
    pub model_dir: PathBuf,
    pub stopped: bool,
}

/// Runs (or resumes) a training run in `run_dir`. Events go to `emit`; `stop` ends it cleanly.
pub fn train(
    config: TrainConfig,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    emit: &mut dyn FnMut(TrainEvent),
    stop: &StopHandle,
) -> Result<TrainOutcome> {
    train_data_parallel(
        config,
        run_dir,
        resume,
        std::slice::from_ref(device),
        emit,
        stop,
    )
}

/// [`train`] on several devices of one machine (data parallel, [`super::data_parallel`]).
///
/// The optimiser, the EMA, the discriminator's update and the checkpoints live on the first
/// device, and the copies are refreshed from it before every step. Random draws (masks,
/// replacement coins) are made for the whole batch before it is split, so a run's data and
/// randomness do not depend on the number of devices; losses whose normaliser is the batch (all
/// but stage 2's weighted CE, normalised per device as the official code does under DDP) give the
/// same update as one device up to float rounding.
pub fn train_data_parallel(
    config: TrainConfig,
    run_dir: &Path,
    resume: bool,
    devices: &[Device],
    emit: &mut dyn FnMut(TrainEvent),
    stop: &StopHandle,
) -> Result<TrainOutcome> {
    let result = if devices.is_empty() {
        Err(SftokError::Device("no device given to train on".into()))
    } else {
        open_and_train(config, run_dir, resume, devices, emit, stop)
    };
    if let Err(e) = &result {
        emit(TrainEvent::Failed {
            message: e.to_string(),
        });
    }
    result
}

/// Opens the run folder (one writer per run; a resumed run keeps its configuration, only its
/// length may grow), checks the configuration, and trains the stage it names.
fn open_and_train(
    config: TrainConfig,
    run_dir: &Path,
    resume: bool,
    devices: &[Device],
    emit: &mut dyn FnMut(TrainEvent),
    stop: &StopHandle,
) -> Result<TrainOutcome> {
    let run = RunDir::new(run_dir);
    let OpenedRun {
        lock: _lock,
        config,
        latest,
    } = run.open(config, resume, |saved: TrainConfig, asked| TrainConfig {
        steps: asked.steps.max(saved.steps),
        ..saved
    })?;
    config.model.validate()?;
    if config.batch_size < devices.len() {
        return Err(SftokError::Other(format!(
            "a batch of {} cannot be split over {} devices: use a batch size of at least {}",
            config.batch_size,
            devices.len(),
            devices.len()
        )));
    }
    run.write_config(&config)?;
    let latest = latest.filter(|_| resume);
    let session = Session {
        config: &config,
        run: &run,
        devices,
        emit,
        stop,
    };
    match config.stage {
        StageKind::Teacher => session.train(TeacherStage::new(&config), latest),
        StageKind::Stage1 | StageKind::Stage2 => session.train(TokenStages::new(&config), latest),
        StageKind::Stage3 => session.train(PixelStage::new(&config), latest),
    }
}

/// An opened run, before its stage is known.
struct Session<'a, 'e> {
    config: &'a TrainConfig,
    run: &'a RunDir,
    devices: &'a [Device],
    emit: &'e mut dyn FnMut(TrainEvent),
    stop: &'e StopHandle,
}

/// The frozen models a stage uses: the teacher (whose codes the token stages learn) and the
/// perceptual loss, on the first device and copied to the others.
struct FrozenHelpers {
    teacher: Option<Vqgan>,
    lpips: Option<Lpips>,
    replicas: Replicas,
}

impl<'a> Session<'a, '_> {
    /// Sets up `stage`'s run (resuming from the checkpoint `latest` when given) and trains it.
    fn train<S: Stage>(self, stage: S, latest: Option<(u64, PathBuf)>) -> Result<TrainOutcome> {
        let config = self.config;
        let device = &self.devices[0];
        let ad = device.clone().autodiff();
        let folder = ImageFolder::scan(&config.data).map_err(SftokError::from)?;
        let heldout = match &config.eval_data {
            Some(dir) => Some(HeldOut::load(dir, config.model.image_size)?),
            None => None,
        };
        let helpers = self.frozen_helpers(&ad)?;

        // Fresh weights are drawn from the backend's generator: seed it so a run is reproducible.
        ad.seed(config.seed);
        let model = stage.initial_model(helpers.teacher.as_ref(), &ad)?;
        let mut trainer = Trainer {
            config,
            run: self.run,
            ema: Ema::new(&model, config.ema_decay),
            model: Some(model),
            stage,
            optim: AdamW::new(config.optimizer.clone()),
            adversary: Adversary::for_run(config, &ad),
            state: ResumeState::default(),
            ad,
            device: device.clone(),
            helpers,
            heldout,
        };
        let mut resumed_from = None;
        if let Some((step, path)) = latest {
            trainer.restore(&path)?;
            self.run.truncate_metrics_after(step)?;
            resumed_from = Some(step);
        }
        let loader = start_loader(config, folder, &trainer.state)?;
        (self.emit)(TrainEvent::Started {
            total_steps: config.steps,
            resumed_from,
            device: if self.devices.len() == 1 {
                format!("{device:?}")
            } else {
                format!("{} devices: {:?}", self.devices.len(), self.devices)
            },
            skipped_files: 0,
        });
        trainer.run_steps(loader, self.devices.len(), self.emit, self.stop)
    }

    fn frozen_helpers(&self, ad: &Device) -> Result<FrozenHelpers> {
        let config = self.config;
        let teacher: Option<Vqgan> = match (&config.teacher, config.stage) {
            (Some(path), _) => Some(load_teacher(path, &self.devices[0])?.1),
            (None, stage @ (StageKind::Stage1 | StageKind::Stage2)) => {
                return Err(PlanError::NeedsTeacher {
                    stage,
                    init_has_none: config.init.is_some(),
                }
                .into());
            }
            _ => None,
        };
        let lpips = match &config.perceptual {
            Some(p) => Some(Lpips::from_files(&p.vgg16, &p.lpips, ad)?.no_grad()),
            None => None,
        };
        let replicas = Replicas::new(&self.devices[1..], teacher.as_ref(), lpips.as_ref());
        Ok(FrozenHelpers {
            teacher,
            lpips,
            replicas,
        })
    }
}

fn start_loader(
    config: &TrainConfig,
    folder: ImageFolder,
    state: &ResumeState,
) -> Result<DataLoader> {
    let loader_config = LoaderConfig {
        workers: config.workers.max(1),
        seed: config.seed,
        mode: Mode::Train {
            max_scale: config.max_scale.max(1.0),
            flip: true,
        },
        ..LoaderConfig::train(config.model.image_size as u32, config.batch_size)
    };
    DataLoader::start(
        folder,
        loader_config,
        DataPosition {
            epoch: state.data_epoch,
            batch: state.data_batch,
        },
    )
    .map_err(SftokError::from)
}

/// A run in progress: the stage, its model and everything the loop keeps beside it.
struct Trainer<'a, S: Stage> {
    config: &'a TrainConfig,
    run: &'a RunDir,
    stage: S,
    /// The live weights (taken out only while the optimiser updates them, so that the update
    /// holds their only reference and can work in place).
    model: Option<S::Model>,
    optim: AdamW,
    ema: Ema,
    adversary: Option<Adversary>,
    state: ResumeState,
    /// The first device, and its autodiff twin.
    device: Device,
    ad: Device,
    helpers: FrozenHelpers,
    heldout: Option<HeldOut>,
}

/// What one optimiser step gathered, for the metrics and the preview.
struct StepResult {
    /// Loss terms summed over the micro-batches.
    terms: BTreeMap<&'static str, f64>,
    codes: CodeFigures,
    grad_norm: f64,
    lr: f64,
    preview: Option<(Tensor<4>, Tensor<4>)>,
}

/// What the micro-batches of a step gathered before the update.
#[derive(Default)]
struct Gathered {
    grads: Option<GradientsParams>,
    terms: BTreeMap<&'static str, f64>,
    codes: CodeFigures,
    /// (real, fake) pairs for the discriminator.
    fakes: Vec<(Tensor<4>, Tensor<4>)>,
    /// (codes, encoder outputs) of each micro-batch, when the stage asked for them.
    latents: Vec<(Vec<i64>, Vec<f32>)>,
    preview: Option<(Tensor<4>, Tensor<4>)>,
}

impl<S: Stage> Trainer<'_, S> {
    fn model(&self) -> &S::Model {
        self.model
            .as_ref()
            .expect("the model is out of the trainer only during the optimiser's update")
    }

    /// Steps until the run's length or a stop; then the last checkpoint and the final event.
    fn run_steps(
        mut self,
        mut loader: DataLoader,
        num_devices: usize,
        emit: &mut dyn FnMut(TrainEvent),
        stop: &StopHandle,
    ) -> Result<TrainOutcome> {
        let config = self.config;
        let schedule = LrSchedule {
            peak: config.lr,
            end: config.end_lr,
            warmup_steps: config.warmup_steps,
            total_steps: config.steps,
        };
        let started = Instant::now();
        let start_step = self.state.step;
        let mut last_skipped = 0;
        let mut stopped = false;
        while self.state.step < config.steps {
            if stop.is_stopped() {
                stopped = true;
                break;
            }
            let result = self.step(&mut loader, num_devices, &schedule)?;
            self.state.step += 1;
            let step = self.state.step;
            let micro = config.grad_accum.max(1) as f64;
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            let images_per_sec =
                ((step - start_step) as f64 * (config.batch_size as f64) * micro) / elapsed;
            emit(TrainEvent::Progress {
                step,
                total_steps: config.steps,
                loss: result.terms.get("loss").map_or(0.0, |l| l / micro),
                images_per_sec,
                eta_secs: (config.steps - step) as f64 * elapsed / (step - start_step) as f64,
            });
            let skipped = loader.skipped();
            if skipped.len() != last_skipped {
                last_skipped = skipped.len();
                emit(TrainEvent::SkippedFiles(
                    skipped
                        .iter()
                        .map(|s| (s.path.clone(), s.reason.clone()))
                        .collect(),
                ));
            }
            let metrics = StepMetrics {
                step,
                terms: result.terms.iter().map(|(&n, &v)| (n, v / micro)).collect(),
                lr: result.lr,
                grad_norm: result.grad_norm,
                images_per_sec,
                images_seen: self.state.images_seen,
                skipped_files: last_skipped,
                codes: result.codes,
                heldout: self.heldout_now(step),
            };
            self.report(metrics, result.preview, emit)?;
        }

        let step = self.state.step;
        let path = self.checkpoint()?;
        emit(TrainEvent::Checkpoint { step, path });
        let model_dir = self.run.model_dir();
        emit(if stopped {
            TrainEvent::Stopped {
                step,
                model_dir: model_dir.clone(),
            }
        } else {
            TrainEvent::Finished {
                step,
                model_dir: model_dir.clone(),
            }
        });
        Ok(TrainOutcome {
            step,
            model_dir,
            stopped,
        })
    }

    /// One optimiser step: the micro-batches' forward and backward passes, the update, the
    /// stage's own changes, the weights' EMA and the discriminator's update.
    fn step(
        &mut self,
        loader: &mut DataLoader,
        num_devices: usize,
        schedule: &LrSchedule,
    ) -> Result<StepResult> {
        let config = self.config;
        let step = self.state.step;
        let mut rng = StdRng::seed_from_u64(config.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let gan_on = self.adversary.is_some() && config.gan.is_on_at(step);
        let context = ShardContext {
            config,
            gan_on,
            // Every `preview_every` steps, and at the last step (so that a run shorter than the
            // interval still shows one).
            wants_preview: config.preview_every > 0
                && ((step + 1).is_multiple_of(config.preview_every) || step + 1 == config.steps),
            wants_latents: self.stage.wants_latents(step),
        };
        let mut gathered = Gathered::default();
        for _ in 0..config.grad_accum.max(1) {
            let batch = next_batch(loader)?;
            self.micro_batch(&context, &batch, num_devices, &mut rng, &mut gathered)?;
        }

        let micro = config.grad_accum.max(1) as f64;
        let lr = schedule.lr(step);
        let mut grads = gathered.grads.expect("at least one micro-batch");
        // The norm of the mean gradient over the micro-batches, clipped.
        let norm = grad_norm(self.model(), &grads) / micro;
        let scale = clip_coefficient(norm, config.grad_clip) / micro;
        let (optim, model) = (&mut self.optim, self.model.take().expect("the model is in"));
        let updated = on_compute_pool(&self.ad, || optim.step(model, &mut grads, lr, scale));
        // The stage's own changes (the teacher's codebook) come before the weights' EMA sees them.
        let mut codes = gathered.codes;
        let model = self
            .stage
            .after_update(updated, step, &gathered.latents, &mut rng, &mut codes);
        let ema = &mut self.ema;
        on_compute_pool(&self.ad, || ema.update(&model));
        self.model = Some(model);
        self.state.ema_updates = self.ema.updates;

        let mut terms = gathered.terms;
        if gan_on && let Some(adversary) = self.adversary.take() {
            let fakes = std::mem::take(&mut gathered.fakes);
            let (adversary, d_loss) = on_compute_pool(&self.ad, || {
                adversary.update(fakes, &config.gan, config.grad_clip)
            });
            *terms.entry("disc_loss").or_default() += d_loss;
            self.adversary = Some(adversary);
        }
        Ok(StepResult {
            terms,
            codes,
            grad_norm: norm,
            lr,
            preview: gathered.preview,
        })
    }

    /// One micro-batch over every device: its shards' losses, gradients and codes, gathered.
    fn micro_batch(
        &mut self,
        context: &ShardContext<'_>,
        batch: &Batch,
        num_devices: usize,
        rng: &mut StdRng,
        gathered: &mut Gathered,
    ) -> Result<()> {
        let step = self.state.step;
        self.state.images_seen += batch.batch_size as u64;
        let draw = self.stage.draw(rng, batch.batch_size);
        let shards = split_batch(batch.batch_size, num_devices);
        let main_helpers = Helpers {
            teacher: self.helpers.teacher.as_ref(),
            lpips: self.helpers.lpips.as_ref(),
            disc: self
                .adversary
                .as_ref()
                .filter(|_| context.gan_on)
                .map(Adversary::discriminator),
        };
        let outputs = self.helpers.replicas.run(
            &self.stage,
            context,
            self.model(),
            main_helpers,
            &self.ad,
            batch,
            draw.as_ref(),
            &shards,
        );
        let total = batch.batch_size as f64;
        let mut codes: Vec<i64> = Vec::new();
        let mut accuracy = 0.0;
        let mut latents: Option<Vec<f32>> = None;
        let mut previews = Vec::new();
        for (out, &(_, len)) in outputs.into_iter().zip(&shards) {
            let ShardOutput {
                loss,
                parts,
                grads,
                codes: shard_codes,
                proxy_accuracy,
                fake,
                latents: shard_latents,
                preview,
            } = out?;
            if !loss.is_finite() {
                return Err(self.diverged(loss));
            }
            let weight = len as f64 / total;
            for (name, v) in parts {
                *gathered.terms.entry(name).or_default() += v * weight;
            }
            *gathered.terms.entry("loss").or_default() += loss * weight;
            gathered.grads = Some(match gathered.grads.take() {
                None => grads,
                Some(mut sum) => {
                    merge_grads(self.model(), &mut sum, grads);
                    sum
                }
            });
            codes.extend(shard_codes);
            accuracy += proxy_accuracy.unwrap_or(0.0) * weight;
            gathered.fakes.extend(fake);
            if let Some(l) = shard_latents {
                latents.get_or_insert_with(Vec::new).extend(l);
            }
            previews.extend(preview);
        }
        if !previews.is_empty() {
            let (origs, recons): (Vec<_>, Vec<_>) = previews.into_iter().unzip();
            gathered.preview = Some((Tensor::cat(origs, 0), Tensor::cat(recons, 0)));
        }
        self.stage
            .record_codes(step, &codes, accuracy, &mut gathered.codes);
        if let Some(latents) = latents {
            gathered.latents.push((codes, latents));
        }
        let next = batch.position.next();
        self.state.data_batch = next.batch;
        self.state.data_epoch = next.epoch;
        Ok(())
    }

    /// The error of a step whose loss is not finite: nothing of that step is saved.
    fn diverged(&self, loss: f64) -> SftokError {
        let last_good = self
            .run
            .latest_checkpoint()
            .map_or("none yet".to_string(), |(s, _)| format!("step {s}"));
        SftokError::Other(format!(
            "the loss became {loss} at step {}; training stopped without saving this step. The last good checkpoint ({last_good}) is intact; start a new run from it with a lower learning rate",
            self.state.step + 1
        ))
    }

    /// The held-out measurements when they are due after `step` steps (empty otherwise).
    fn heldout_now(&self, step: u64) -> BTreeMap<String, f64> {
        let config = self.config;
        let due = config.eval_every > 0
            && (step.is_multiple_of(config.eval_every) || step == config.steps);
        let Some(held) = self.heldout.as_ref().filter(|_| due) else {
            return BTreeMap::new();
        };
        on_compute_pool(&self.device, || {
            let ema_model = self.ema.apply_to(self.model().clone());
            let teacher = self.helpers.teacher.as_ref();
            self.stage
                .heldout(held, self.model(), &ema_model, teacher, &self.device)
                .into_iter()
                .collect()
        })
    }

    /// The metrics row, the preview and the checkpoint that are due after a step.
    fn report(
        &self,
        metrics: StepMetrics,
        preview: Option<(Tensor<4>, Tensor<4>)>,
        emit: &mut dyn FnMut(TrainEvent),
    ) -> Result<()> {
        let config = self.config;
        let step = metrics.step;
        if step.is_multiple_of(config.log_every.max(1))
            || step == config.steps
            || !metrics.heldout.is_empty()
        {
            let row = metrics.row();
            self.run.append_metrics(&row)?;
            emit(TrainEvent::Metrics(row));
        }
        if config.preview_every > 0
            && (step.is_multiple_of(config.preview_every) || step == config.steps)
            && let Some((orig, recon)) = preview
        {
            let path = write_preview(self.run, step, orig, recon)?;
            emit(TrainEvent::Preview { step, path });
        }
        if step.is_multiple_of(config.checkpoint_every.max(1)) && step < config.steps {
            let path = self.checkpoint()?;
            emit(TrainEvent::Checkpoint { step, path });
        }
        Ok(())
    }

    /// Writes a checkpoint and publishes the EMA weights as the run's model directory.
    fn checkpoint(&self) -> Result<PathBuf> {
        let weights = state_dict(self.model());
        let ema = self.ema.state_dict();
        let optim = self.optim.state_dict();
        let mut extras = serde_json::Map::new();
        extras.insert("optim_steps".into(), serde_json::json!(self.optim.steps));
        let adversary_files = self
            .adversary
            .as_ref()
            .map(|a| a.save(&mut extras))
            .unwrap_or_default();
        self.stage.save_state(&mut extras);
        let mut files: Vec<(&str, &StateDict)> = vec![
            ("model.safetensors", &weights),
            ("ema.safetensors", &ema),
            ("optim.safetensors", &optim),
        ];
        files.extend(adversary_files.iter().map(|(name, sd)| (name.as_str(), sd)));
        let extras_bytes = serde_json::to_vec_pretty(&extras).expect("serialises");
        let path = self.run.write_checkpoint(
            &self.state,
            &files,
            Some(&extras_bytes),
            self.config.keep_checkpoints,
        )?;

        // Publish the EMA weights (the ones evaluated) as a model directory.
        let out = self.run.model_dir();
        std::fs::create_dir_all(&out).map_err(|e| SftokError::write(&out, e))?;
        crate::checkpoint::files::write_atomic(
            &out.join(CONFIG_FILE),
            self.config.model.to_json().as_bytes(),
        )?;
        let ema_model = self.ema.apply_to(self.model().clone());
        self.stage
            .publish(&out, &ema_model, self.helpers.teacher.as_ref())?;
        Ok(path)
    }

    /// Restores the run from the checkpoint folder `path`.
    fn restore(&mut self, path: &Path) -> Result<()> {
        let state = RunDir::read_checkpoint(path)?;
        let weights = RunDir::read_checkpoint_file(path, "model.safetensors")?;
        self.model = Some(self.stage.model_from_weights(
            weights,
            &self.ad,
            &path.join("model.safetensors"),
        )?);
        // Every checkpoint this trainer writes holds extra.json (the optimiser step count, the
        // codebook's moving averages, ...); without it a resume would silently differ from an
        // uninterrupted run, so it is refused.
        let extra_path = path.join("extra.json");
        let extras: serde_json::Value = std::fs::read_to_string(&extra_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| {
                SftokError::Other(format!(
                    "the checkpoint {} has no readable extra.json (the optimiser and codebook state), \
                     so it cannot be resumed exactly: it is damaged or was written by an older \
                     version. Remove that folder to resume from the checkpoint before it, or start a \
                     new run",
                    path.display()
                ))
            })?;
        self.optim.load_state_dict(
            &RunDir::read_checkpoint_file(path, "optim.safetensors")?,
            extras["optim_steps"].as_u64().unwrap_or(state.step),
            &self.ad,
        );
        self.ema.load_state_dict(
            &RunDir::read_checkpoint_file(path, "ema.safetensors")?,
            state.ema_updates,
            &self.ad,
        );
        if let Some(adversary) = self.adversary.take() {
            self.adversary = Some(adversary.restore(path, &extras, &self.ad)?);
        }
        self.stage.restore_state(&extras);
        self.state = state;
        Ok(())
    }
}

fn next_batch(loader: &mut DataLoader) -> Result<Batch> {
    loader
        .next_batch()
        .map_err(SftokError::from)?
        .ok_or_else(|| SftokError::Other("the training data ran out".into()))
}

/// Originals above reconstructions, at most 8 images.
fn write_preview(run: &RunDir, step: u64, orig: Tensor<4>, recon: Tensor<4>) -> Result<PathBuf> {
    let b = orig.dims()[0].min(8);
    let top = hstack(&tensor_to_images(orig.narrow(0, 0, b)), 2);
    let bottom = hstack(&tensor_to_images(recon.narrow(0, 0, b)), 2);
    let mut sheet = image::RgbImage::from_pixel(
        top.width(),
        top.height() * 2 + 2,
        image::Rgb([255, 255, 255]),
    );
    image::imageops::overlay(&mut sheet, &top, 0, 0);
    image::imageops::overlay(&mut sheet, &bottom, 0, (top.height() + 2) as i64);
    let path = run.previews_dir().join(format!("step_{step:08}.png"));
    save_png(&sheet, &path)?;
    Ok(path)
}
