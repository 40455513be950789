//! The training loop shared by every stage: data, forward, losses, clipping, AdamW, EMA, metrics,
//! previews, atomic checkpoints, exact resume, clean stop and NaN detection.
//!
//! Exact resume: the weights, optimiser moments, EMA shadow, discriminator, data position and
//! step are checkpointed, and every random draw of step `s` comes from an RNG seeded by
//! `(seed, s)`, so a resumed run computes the same next step as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

use super::codebook::CodebookEma;
use super::config::{StageKind, TrainConfig};
use super::ema::Ema;
use super::events::{StopHandle, TrainEvent};
use super::heldout::{HeldOut, teacher_entries, tokenizer_entries};
use super::masking::MaskDraw;
use super::optim::{AdamW, LrSchedule, clip_coefficient, grad_norm};
use super::pixel_step::stage3_forward;
use super::run_dir::{OpenedRun, ResumeState, RunDir};
use super::teacher_step::{
    CodeUsage, codebook_values, perplexity, restart_dead_codes, set_codebook, teacher_forward,
};
use super::token_step::{TokenStage, proxy_accuracy, soft_embedding_loss, token_step};
use crate::checkpoint::files::read_weights;
use crate::checkpoint::model_dir::{fill_pixel_parts_from_teacher, published_model_dir};
use crate::checkpoint::state::{StateDict, state_dict};
use crate::checkpoint::{CONFIG_FILE, MODEL_FILE, TEACHER_FILE, build_sftok, build_teacher};
use crate::config::SftokConfig;
use crate::data::{Batch, DataLoader, DataPosition, ImageFolder, LoaderConfig, Mode};
use crate::device::on_compute_pool;
use crate::error::{Result, SftokError};
use crate::image_io::{hstack, save_png, tensor_to_images};
use crate::model::discriminator::{LeCam, PatchDiscriminator, generator_loss, hinge_d_loss};
use crate::model::lpips::Lpips;
use crate::model::{Sftok, Vqgan};
use crate::reconstruct::rows_i64;

/// What a finished (or stopped) run leaves.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub step: u64,
    pub model_dir: PathBuf,
    pub stopped: bool,
}

/// The model being trained. (One lives per run, so the size difference of the variants is moot.)
#[allow(clippy::large_enum_variant)]
enum Trainee {
    Teacher(Vqgan),
    Tokenizer(Sftok),
}

/// Mutable state of a run besides the model.
struct Progress {
    optim: AdamW,
    ema: Ema,
    state: ResumeState,
    disc: Option<(PatchDiscriminator, AdamW)>,
    lecam: LeCam,
    usage: CodeUsage,
    /// The teacher's moving-average codebook (`None` before the first step, or when the
    /// codebook is learnt by gradient descent).
    codebook: Option<CodebookEma>,
}

impl Progress {
    /// A fresh run's state: new optimiser moments, the EMA at the initial weights, step 0, and a
    /// discriminator (with its own AdamW, betas 0.5 / 0.9) when the adversarial loss will be on.
    fn new(config: &TrainConfig, trainee: &Trainee, ad: &Device) -> Self {
        Progress {
            optim: AdamW::new(config.optimizer.clone()),
            ema: match &trainee {
                Trainee::Teacher(m) => Ema::new(m, config.ema_decay),
                Trainee::Tokenizer(m) => Ema::new(m, config.ema_decay),
            },
            state: ResumeState {
                step: 0,
                data_epoch: 0,
                data_batch: 0,
                ema_updates: 0,
                images_seen: 0,
            },
            disc: (config.gan.start_step != u64::MAX).then(|| {
                (
                    PatchDiscriminator::new(64, 3, ad),
                    AdamW::new(super::optim::AdamWConfig {
                        beta1: 0.5,
                        beta2: 0.9,
                        weight_decay: 0.0,
                        ..Default::default()
                    }),
                )
            }),
            lecam: LeCam::new(0.999),
            usage: CodeUsage::new(config.model.vqgan.num_embeddings),
            codebook: None,
        }
    }
}

/// Reads the teacher from a model directory (with `teacher.safetensors`) or a run directory
/// (its `model/` folder), with the configuration found there.
pub fn load_teacher(path: &Path, device: &Device) -> Result<(SftokConfig, Vqgan)> {
    let dir = if path.join("model").join(TEACHER_FILE).is_file() {
        path.join("model")
    } else {
        path.to_path_buf()
    };
    let weights = dir.join(TEACHER_FILE);
    if !weights.is_file() {
        return Err(SftokError::Other(format!(
            "{} has no {TEACHER_FILE}: --teacher takes a teacher run (`sftok train teacher`), or a model directory made by `sftok import --teacher`",
            path.display()
        )));
    }
    let config = SftokConfig::from_file(&dir.join(CONFIG_FILE))?;
    let teacher = build_teacher(&config, read_weights(&weights)?, device, &weights)?;
    Ok((config, teacher))
}

/// The model configuration of a run directory (its `model/` or its run config) or of a model
/// directory.
pub fn model_config_of(path: &Path) -> Result<SftokConfig> {
    let published = path.join("model").join(CONFIG_FILE);
    if published.is_file() {
        return SftokConfig::from_file(&published);
    }
    let file = path.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| SftokError::io(&file, e))?;
    if let Ok(run) = serde_json::from_str::<TrainConfig>(&text) {
        return Ok(run.model);
    }
    SftokConfig::from_file(&file).map_err(|_| {
        SftokError::Other(format!(
            "{} is neither a run directory (made by `sftok train`) nor a model directory (config.json + model.safetensors)",
            path.display()
        ))
    })
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

/// [`train`] on several devices of one machine (data parallel).
///
/// Every micro-batch is split into one contiguous shard per device (sizes differ by at most one
/// image); each device runs the forward and backward pass of its shard on its own copy of the
/// model, in its own thread, and the gradients are brought to the first device and summed there,
/// each shard's loss weighted by its share of the batch. The optimiser, the EMA, the
/// discriminator's update and the checkpoints live on the first device, and the copies are
/// refreshed from it before every step. This is what PyTorch's DistributedDataParallel does (the
/// mean over devices of each device's loss), and what burn's own multi-device training
/// (`burn-train`'s multi-device strategy) does, with gradients moved between devices by burn.
/// Random draws (masks, replacement coins) are made for the whole batch before it is split, so a
/// run's data and randomness do not depend on the number of devices; losses whose normaliser is
/// the batch (all but stage 2's weighted CE, normalised per device as the official code does under
/// DDP) give the same update as one device up to float rounding.
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
        train_inner(config, run_dir, resume, devices, emit, stop)
    };
    if let Err(e) = &result {
        emit(TrainEvent::Failed {
            message: e.to_string(),
        });
    }
    result
}

fn train_inner(
    config: TrainConfig,
    run_dir: &Path,
    resume: bool,
    devices: &[Device],
    emit: &mut dyn FnMut(TrainEvent),
    stop: &StopHandle,
) -> Result<TrainOutcome> {
    let device = &devices[0];
    let run = RunDir::new(run_dir);
    // One writer per run folder, for the whole run; a resumed run keeps its configuration, only
    // its length may grow.
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

    let ad = device.clone().autodiff();
    let folder = ImageFolder::scan(&config.data).map_err(|e| SftokError::Other(e.to_string()))?;
    let heldout = match &config.eval_data {
        Some(dir) => Some(HeldOut::load(dir, config.model.image_size)?),
        None => None,
    };

    // The frozen teacher (stages 1 and 2 need its codes).
    let teacher: Option<Vqgan> = match (&config.teacher, config.stage) {
        (Some(path), _) => Some(load_teacher(path, device)?.1),
        (None, StageKind::Stage1 | StageKind::Stage2) => {
            return Err(SftokError::Other(
                "stages 1 and 2 need the teacher's codes: pass --teacher (a teacher run or an imported official teacher)".into(),
            ));
        }
        _ => None,
    };
    let lpips = match &config.perceptual {
        Some(p) => Some(Lpips::from_files(&p.vgg16, &p.lpips, &ad)?.no_grad()),
        None => None,
    };

    // Fresh weights are drawn from the backend's generator: seed it so a run is reproducible.
    ad.seed(config.seed);
    let mut trainee = initial_model(&config, teacher.as_ref(), &ad)?;
    let mut progress = Progress::new(&config, &trainee, &ad);
    let mut resumed_from = None;
    if resume && let Some((step, path)) = &latest {
        restore(&config, path, &mut trainee, &mut progress, &ad)?;
        run.truncate_metrics_after(*step)?;
        resumed_from = Some(*step);
    }

    let loader_config = LoaderConfig {
        workers: config.workers.max(1),
        seed: config.seed,
        mode: Mode::Train {
            max_scale: config.max_scale.max(1.0),
            flip: true,
        },
        ..LoaderConfig::train(config.model.image_size as u32, config.batch_size)
    };
    let mut loader = DataLoader::start(
        folder,
        loader_config,
        DataPosition {
            epoch: progress.state.data_epoch,
            batch: progress.state.data_batch,
        },
    )
    .map_err(|e| SftokError::Other(e.to_string()))?;
    emit(TrainEvent::Started {
        total_steps: config.steps,
        resumed_from,
        device: if devices.len() == 1 {
            format!("{device:?}")
        } else {
            format!("{} devices: {devices:?}", devices.len())
        },
        skipped_files: 0,
    });

    // The frozen helpers, once per extra device.
    let extra_devices: Vec<Device> = devices[1..].to_vec();
    let teachers: Vec<Option<Vqgan>> = extra_devices
        .iter()
        .map(|d| teacher.clone().map(|t| t.to_device(d)))
        .collect();
    let lpipses: Vec<Option<Lpips>> = extra_devices
        .iter()
        .map(|d| lpips.clone().map(|l| l.to_device(&d.clone().autodiff())))
        .collect();

    let replicas_run = Replicas {
        devices: &extra_devices,
        teachers: &teachers,
        lpipses: &lpipses,
        teacher: teacher.as_ref(),
        lpips: lpips.as_ref(),
    };
    let schedule = LrSchedule {
        peak: config.lr,
        end: config.end_lr,
        warmup_steps: config.warmup_steps,
        total_steps: config.steps,
    };
    let started = Instant::now();
    let start_step = progress.state.step;
    let mut last_skipped = 0;
    let mut stopped = false;
    while progress.state.step < config.steps {
        if stop.is_stopped() {
            stopped = true;
            break;
        }
        let step = progress.state.step;
        let mut rng = StdRng::seed_from_u64(config.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut grads_total: Option<GradientsParams> = None;
        let mut terms: Vec<(&'static str, f64)> = Vec::new();
        let mut preview: Option<(Tensor<4>, Tensor<4>)> = None;
        let mut extra = serde_json::Map::new();
        let mut fakes_for_disc: Vec<(Tensor<4>, Tensor<4>)> = Vec::new();
        let mut restart_latents: Option<Vec<f32>> = None;
        // (codes, encoder outputs) of every micro-batch, for the moving-average codebook.
        let mut assigned: Vec<(Vec<i64>, Vec<f32>)> = Vec::new();
        let restart_step =
            config.dead_code_window > 0 && (step + 1).is_multiple_of(config.dead_code_window);
        let gan_on = config.gan.start_step != u64::MAX && step >= config.gan.start_step;

        for _ in 0..config.grad_accum.max(1) {
            let batch = next_batch(&mut loader)?;
            progress.state.images_seen += batch.batch_size as u64;
            let draw = matches!(trainee, Trainee::Tokenizer(_)).then(|| {
                MaskDraw::sample(&mut rng, batch.batch_size, config.model.num_proxy_codes())
            });
            let wants_latents = matches!(trainee, Trainee::Teacher(_))
                && (restart_step || config.codebook_ema_decay.is_some());
            let context = ShardContext {
                config: &config,
                gan_on,
                // Every `preview_every` steps, and at the last step (so that a run shorter than
                // the interval still shows one).
                wants_preview: config.preview_every > 0
                    && ((step + 1).is_multiple_of(config.preview_every)
                        || step + 1 == config.steps),
                wants_latents,
                main: ad.clone(),
            };
            let shards = split_batch(batch.batch_size, devices.len());
            let total = batch.batch_size as f64;
            let main_disc = progress.disc.as_ref().map(|(d, _)| d);
            let outputs = replicas_run.run(
                &context,
                &trainee,
                main_disc.filter(|_| gan_on),
                main_disc,
                &batch,
                draw.as_ref(),
                &shards,
            );
            let mut codes: Vec<i64> = Vec::new();
            let mut accuracy = 0.0;
            let mut latents: Option<Vec<f32>> = None;
            let mut previews: Vec<(Tensor<4>, Tensor<4>)> = Vec::new();
            for (out, &(_, len)) in outputs.into_iter().zip(&shards) {
                let out = out?;
                let weight = len as f64 / total;
                if !out.loss.is_finite() {
                    let last_good = run
                        .latest_checkpoint()
                        .map_or("none yet".to_string(), |(s, _)| format!("step {s}"));
                    return Err(SftokError::Other(format!(
                        "the loss became {} at step {}; training stopped without saving this step. The last good checkpoint ({last_good}) is intact; start a new run from it (--init) with a lower learning rate (--lr)",
                        out.loss,
                        step + 1
                    )));
                }
                for (name, v) in out.parts {
                    accumulate(&mut terms, name, v * weight);
                }
                accumulate(&mut terms, "loss", out.loss * weight);
                grads_total = Some(match grads_total.take() {
                    None => out.grads,
                    Some(mut total) => {
                        merge_grads(&trainee, &mut total, out.grads);
                        total
                    }
                });
                codes.extend(out.codes);
                accuracy += out.proxy_accuracy.unwrap_or(0.0) * weight;
                if let Some(fake) = out.fake {
                    fakes_for_disc.push(fake);
                }
                if let Some(l) = out.latents {
                    latents.get_or_insert_with(Vec::new).extend(l);
                }
                previews.extend(out.preview);
            }
            if let Some(latents) = latents {
                if config.codebook_ema_decay.is_some() {
                    assigned.push((codes.clone(), latents.clone()));
                }
                // Dead codes are restarted after the update (below), at this micro-batch's latents.
                if restart_step {
                    restart_latents = Some(latents);
                }
            }
            if !previews.is_empty() {
                let (origs, recons): (Vec<_>, Vec<_>) = previews.into_iter().unzip();
                preview = Some((Tensor::cat(origs, 0), Tensor::cat(recons, 0)));
            }
            if matches!(trainee, Trainee::Teacher(_)) {
                progress.usage.record(&codes, step);
            }
            extra.extend(code_statistics(&trainee, &config, &codes, accuracy));
            progress.state.data_batch = batch.position.next().batch;
            progress.state.data_epoch = batch.position.next().epoch;
        }
        let micro = config.grad_accum.max(1) as f64;
        let lr = schedule.lr(step);
        let norm;
        (trainee, norm) = optimiser_step(
            trainee,
            &mut progress.optim,
            grads_total.expect("at least one micro-batch"),
            lr,
            micro,
            config.grad_clip,
            &ad,
        );

        // The teacher's codebook: moving average, and the guard against codebook collapse. Both
        // change the live weights, so they come before the weights' EMA sees them.
        if let Trainee::Teacher(m) = trainee {
            let (m, restarted) = update_teacher_codebook(
                m,
                &config,
                step,
                &mut progress,
                &assigned,
                restart_latents.as_deref(),
                &mut rng,
            );
            if let Some(n) = restarted {
                extra.insert("restarted_codes".into(), json!(n));
            }
            trainee = Trainee::Teacher(m);
        }
        on_compute_pool(&ad, || match &trainee {
            Trainee::Teacher(m) => progress.ema.update(m),
            Trainee::Tokenizer(m) => progress.ema.update(m),
        });
        progress.state.ema_updates = progress.ema.updates;

        // The discriminator's own update.
        if gan_on && let Some((disc, disc_optim)) = progress.disc.take() {
            let lecam = &mut progress.lecam;
            let (disc, disc_optim, d_total) = on_compute_pool(&ad, || {
                update_discriminator(disc, disc_optim, lecam, &mut fakes_for_disc, &config)
            });
            accumulate(&mut terms, "disc_loss", d_total);
            progress.disc = Some((disc, disc_optim));
        }

        if matches!(trainee, Trainee::Teacher(_)) {
            extra.insert(
                "codebook_utilisation".into(),
                json!(
                    progress
                        .usage
                        .utilisation(step, config.dead_code_window.max(1))
                ),
            );
        }

        progress.state.step += 1;
        let step = progress.state.step;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let images_per_sec =
            ((step - start_step) as f64 * (config.batch_size as f64) * micro) / elapsed;
        let loss = terms
            .iter()
            .find(|(n, _)| *n == "loss")
            .map_or(0.0, |t| t.1 / micro);
        let eta = (config.steps - step) as f64 * elapsed / (step - start_step) as f64;
        emit(TrainEvent::Progress {
            step,
            total_steps: config.steps,
            loss,
            images_per_sec,
            eta_secs: eta,
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
        let eval_now = config.eval_every > 0
            && (step.is_multiple_of(config.eval_every) || step == config.steps);
        if let (Some(held), true) = (&heldout, eval_now) {
            let entries = on_compute_pool(device, || {
                heldout_entries(held, &trainee, &progress.ema, teacher.as_ref(), device)
            });
            for (name, value) in entries {
                extra.insert(name, json!(value));
            }
        }
        if step.is_multiple_of(config.log_every.max(1))
            || step == config.steps
            || (eval_now && heldout.is_some())
        {
            let row = StepMetrics {
                step,
                terms: terms.iter().map(|&(name, v)| (name, v / micro)).collect(),
                lr,
                grad_norm: norm,
                images_per_sec,
                images_seen: progress.state.images_seen,
                skipped_files: last_skipped,
                extra,
            }
            .row();
            run.append_metrics(&row)?;
            emit(TrainEvent::Metrics(row));
        }
        if config.preview_every > 0
            && (step.is_multiple_of(config.preview_every) || step == config.steps)
            && let Some((orig, recon)) = preview.take()
        {
            let path = write_preview(&run, step, orig, recon)?;
            emit(TrainEvent::Preview { step, path });
        }
        if step.is_multiple_of(config.checkpoint_every.max(1)) && step < config.steps {
            let path = checkpoint(&run, &config, &trainee, &progress, teacher.as_ref())?;
            emit(TrainEvent::Checkpoint { step, path });
        }
    }

    let step = progress.state.step;
    let path = checkpoint(&run, &config, &trainee, &progress, teacher.as_ref())?;
    emit(TrainEvent::Checkpoint { step, path });
    let model_dir = run.model_dir();
    if stopped {
        emit(TrainEvent::Stopped {
            step,
            model_dir: model_dir.clone(),
        });
    } else {
        emit(TrainEvent::Finished {
            step,
            model_dir: model_dir.clone(),
        });
    }
    Ok(TrainOutcome {
        step,
        model_dir,
        stopped,
    })
}

/// The teacher's codebook after an optimiser step: the moving average of what each code
/// quantized (started at k-means centres of the first batch's encoder outputs, or at the current
/// codes of a teacher that starts from trained weights), or the gradient-learnt codebook; codes
/// unused for `dead_code_window` steps restart at encoder outputs. Returns the teacher and how
/// many codes were restarted (on restart steps).
fn update_teacher_codebook(
    m: Vqgan,
    config: &TrainConfig,
    step: u64,
    progress: &mut Progress,
    assigned: &[(Vec<i64>, Vec<f32>)],
    restart_latents: Option<&[f32]>,
    rng: &mut StdRng,
) -> (Vqgan, Option<usize>) {
    let dim = config.model.vqgan.z_channels;
    let dead = restart_latents.map(|_| progress.usage.dead(step, config.dead_code_window));
    let restarted = dead.as_ref().map(Vec::len);
    let m = match (config.codebook_ema_decay, progress.codebook.as_mut()) {
        (Some(decay), None) => {
            let v = config.model.vqgan.num_embeddings;
            let ema = match (&config.init, assigned.last()) {
                (None, Some((_, latents))) => {
                    CodebookEma::from_latents(latents, dim, v, decay, rng)
                }
                _ => CodebookEma {
                    decay,
                    dim,
                    counts: vec![1.0; v],
                    sums: codebook_values(&m).iter().map(|&x| x as f64).collect(),
                },
            };
            let values = ema.vectors();
            progress.codebook = Some(ema);
            set_codebook(m, values)
        }
        (Some(_), Some(ema)) => {
            for (codes, latents) in assigned {
                ema.update(codes, latents);
            }
            if let (Some(dead), Some(latents)) = (&dead, restart_latents) {
                ema.restart(dead, latents, rng);
            }
            set_codebook(m, ema.vectors())
        }
        (None, _) => match (&dead, restart_latents) {
            (Some(dead), Some(latents)) => restart_dead_codes(m, dead, latents, dim, rng),
            _ => m,
        },
    };
    (m, restarted)
}

/// The PatchGAN discriminator's own update, once per micro-batch's (real, fake) pair: hinge loss
/// plus the LeCam regulariser, clipped, AdamW. Returns the summed discriminator loss.
fn update_discriminator(
    mut disc: PatchDiscriminator,
    mut optim: AdamW,
    lecam: &mut LeCam,
    pairs: &mut Vec<(Tensor<4>, Tensor<4>)>,
    config: &TrainConfig,
) -> (PatchDiscriminator, AdamW, f64) {
    let mut total = 0.0;
    for (real, fake) in pairs.drain(..) {
        let logits_real = disc.forward(real.detach());
        let logits_fake = disc.forward(fake.detach());
        let regulariser = lecam.loss(logits_real.clone(), logits_fake.clone());
        let d_loss = hinge_d_loss(logits_real, logits_fake)
            + regulariser.mul_scalar(config.gan.lecam_weight);
        total += scalar(&d_loss);
        let mut g = GradientsParams::from_grads(d_loss.backward(), &disc);
        let n = grad_norm(&disc, &g);
        disc = optim.step(
            disc,
            &mut g,
            config.gan.lr,
            clip_coefficient(n, config.grad_clip),
        );
    }
    (disc, optim, total)
}

/// One row of `metrics.jsonl`.
struct StepMetrics {
    step: u64,
    /// Each loss term, averaged over the micro-batches (`loss` is their weighted sum).
    terms: Vec<(&'static str, f64)>,
    lr: f64,
    /// Before clipping.
    grad_norm: f64,
    images_per_sec: f64,
    images_seen: u64,
    skipped_files: usize,
    /// The stage's own figures: code statistics, held-out measurements, restarted codes.
    extra: serde_json::Map<String, serde_json::Value>,
}

impl StepMetrics {
    fn row(self) -> serde_json::Value {
        let mut row = serde_json::Map::new();
        row.insert("step".into(), json!(self.step));
        for (name, v) in self.terms {
            row.insert(name.into(), json!(v));
        }
        row.insert("lr".into(), json!(self.lr));
        row.insert("grad_norm".into(), json!(self.grad_norm));
        row.insert("images_per_sec".into(), json!(self.images_per_sec));
        row.insert("images_seen".into(), json!(self.images_seen));
        row.insert("skipped_files".into(), json!(self.skipped_files));
        row.extend(self.extra);
        serde_json::Value::Object(row)
    }
}

/// One AdamW update from the gradients summed over `micro` micro-batches: their mean's norm
/// (returned, before clipping) is clipped to `max_norm`.
fn optimiser_step(
    trainee: Trainee,
    optim: &mut AdamW,
    mut grads: GradientsParams,
    lr: f64,
    micro: f64,
    max_norm: f64,
    ad: &Device,
) -> (Trainee, f64) {
    let norm = match &trainee {
        Trainee::Teacher(m) => grad_norm(m, &grads),
        Trainee::Tokenizer(m) => grad_norm(m, &grads),
    } / micro;
    let scale = clip_coefficient(norm, max_norm) / micro;
    let trainee = on_compute_pool(ad, || match trainee {
        Trainee::Teacher(m) => Trainee::Teacher(optim.step(m, &mut grads, lr, scale)),
        Trainee::Tokenizer(m) => Trainee::Tokenizer(optim.step(m, &mut grads, lr, scale)),
    });
    (trainee, norm)
}

/// What the codes of a micro-batch say: the teacher's code perplexity, or a token stage's
/// proxy-code accuracy, OptVQ codebook use and perplexity (stage 3 has no codes to report).
fn code_statistics(
    trainee: &Trainee,
    config: &TrainConfig,
    codes: &[i64],
    accuracy: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    match trainee {
        Trainee::Teacher(_) => {
            let v = config.model.vqgan.num_embeddings;
            out.insert("perplexity".into(), json!(perplexity(codes, v)));
        }
        Trainee::Tokenizer(_) if config.stage != StageKind::Stage3 => {
            let k = config.model.quantizer.codebook_size;
            let used: std::collections::BTreeSet<i64> = codes.iter().copied().collect();
            out.insert("proxy_accuracy".into(), json!(accuracy));
            out.insert(
                "codebook_utilisation".into(),
                json!(used.len() as f64 / k as f64),
            );
            out.insert("perplexity".into(), json!(perplexity(codes, k)));
        }
        Trainee::Tokenizer(_) => {}
    }
    out
}

/// The held-out measurements of the live and the EMA weights.
fn heldout_entries(
    held: &HeldOut,
    trainee: &Trainee,
    ema: &Ema,
    teacher: Option<&Vqgan>,
    device: &Device,
) -> Vec<(String, f64)> {
    match trainee {
        Trainee::Teacher(m) => teacher_entries(held, m, &ema.apply_to(m.clone()), device),
        Trainee::Tokenizer(m) => {
            tokenizer_entries(held, m, &ema.apply_to(m.clone()), teacher, device)
        }
    }
}

/// Data parallelism: the other devices' frozen helpers, and one micro-batch run over every
/// device, each shard's forward and backward pass on its own copy of the model in its own thread.
struct Replicas<'a> {
    /// The devices after the first (the first holds the model, optimiser and checkpoints).
    devices: &'a [Device],
    teachers: &'a [Option<Vqgan>],
    lpipses: &'a [Option<Lpips>],
    /// The first device's frozen helpers.
    teacher: Option<&'a Vqgan>,
    lpips: Option<&'a Lpips>,
}

impl Replicas<'_> {
    /// Runs shard `i` of `batch` (`shards[i]`, `(start, len)`) on device `i` (0: the main one,
    /// `context.main`); `forked_disc` is what the other devices copy the discriminator from
    /// (when the adversarial loss is on), `main_disc` the first device's own.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        context: &ShardContext<'_>,
        trainee: &Trainee,
        forked_disc: Option<&PatchDiscriminator>,
        main_disc: Option<&PatchDiscriminator>,
        batch: &Batch,
        draw: Option<&MaskDraw>,
        shards: &[(usize, usize)],
    ) -> Vec<Result<ShardOutput>> {
        let ad = &context.main;
        let total = batch.batch_size as f64;
        let discs: Vec<Option<PatchDiscriminator>> = self
            .devices
            .iter()
            .map(|d| forked_disc.map(|disc| disc.clone().fork(&d.clone().autodiff())))
            .collect();
        let replicas: Vec<Trainee> = self
            .devices
            .iter()
            .map(|d| trainee.fork(&d.clone().autodiff()))
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = shards[1..]
                .iter()
                .enumerate()
                .map(|(i, &(start, len))| {
                    let device = self.devices[i].clone();
                    let (model, teacher, lpips, disc) =
                        (&replicas[i], &self.teachers[i], &self.lpipses[i], &discs[i]);
                    let draw = draw.map(|d| d.slice(start, len));
                    scope.spawn(move || {
                        let x = shard_tensor(batch, start, len, &device.clone().autodiff());
                        on_compute_pool(&device, || {
                            run_shard(
                                context,
                                model,
                                teacher.as_ref(),
                                lpips.as_ref(),
                                disc.as_ref(),
                                x,
                                draw.as_ref(),
                                len as f64 / total,
                            )
                        })
                    })
                })
                .collect();
            let (start, len) = shards[0];
            let first = on_compute_pool(ad, || {
                run_shard(
                    context,
                    trainee,
                    self.teacher,
                    self.lpips,
                    main_disc,
                    shard_tensor(batch, start, len, ad),
                    draw.map(|d| d.slice(start, len)).as_ref(),
                    len as f64 / total,
                )
            });
            std::iter::once(first)
                .chain(handles.into_iter().map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SftokError::Other(
                            "a training thread of another device failed".into(),
                        ))
                    })
                }))
                .collect()
        })
    }
}

impl Trainee {
    /// A copy on `device` with the same parameter ids, for another device's shard.
    fn fork(&self, device: &Device) -> Trainee {
        match self {
            Trainee::Teacher(m) => Trainee::Teacher(m.clone().fork(device)),
            Trainee::Tokenizer(m) => Trainee::Tokenizer(m.clone().fork(device)),
        }
    }
}

/// What every shard of a step shares.
struct ShardContext<'a> {
    config: &'a TrainConfig,
    gan_on: bool,
    wants_preview: bool,
    wants_latents: bool,
    /// The first device (autodiff), where gradients and results are gathered.
    main: Device,
}

/// What one device made of its shard; tensors are on the first device.
struct ShardOutput {
    /// The shard's loss (not weighted), and its terms.
    loss: f64,
    parts: Vec<(&'static str, f64)>,
    /// Gradients of the loss weighted by the shard's share of the batch.
    grads: GradientsParams,
    /// The teacher's codes (teacher stage) or the latent ids (stages 1 and 2).
    codes: Vec<i64>,
    proxy_accuracy: Option<f64>,
    /// (real, fake), detached, for the discriminator's update.
    fake: Option<(Tensor<4>, Tensor<4>)>,
    /// The encoder's latents, for restarting dead codes.
    latents: Option<Vec<f32>>,
    /// (originals, reconstructions), plain tensors, when a preview is due.
    preview: Option<(Tensor<4>, Tensor<4>)>,
}

/// `n` images in `k` contiguous shards whose sizes differ by at most one: `(start, len)`.
fn split_batch(n: usize, k: usize) -> Vec<(usize, usize)> {
    let (base, rest) = (n / k, n % k);
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = base + usize::from(i < rest);
            let shard = (start, len);
            start += len;
            shard
        })
        .collect()
}

/// Images `start..start + len` of a batch as a tensor on `device`.
fn shard_tensor(batch: &Batch, start: usize, len: usize, device: &Device) -> Tensor<4> {
    let s = batch.image_size as usize;
    let per_image = 3 * s * s;
    Tensor::from_data(
        TensorData::new(
            batch.pixels[start * per_image..(start + len) * per_image].to_vec(),
            [len, 3, s, s],
        ),
        device,
    )
}

/// Forward and backward pass of one shard on the device of `model` (and of `x`).
#[allow(clippy::too_many_arguments)]
fn run_shard(
    ctx: &ShardContext,
    model: &Trainee,
    teacher: Option<&Vqgan>,
    lpips: Option<&Lpips>,
    disc: Option<&PatchDiscriminator>,
    x: Tensor<4>,
    draw: Option<&MaskDraw>,
    weight: f64,
) -> Result<ShardOutput> {
    let config = ctx.config;
    let mut codes = Vec::new();
    let mut accuracy = None;
    let mut latents = None;
    let (loss, parts, recon) = match model {
        Trainee::Teacher(m) => {
            let out = teacher_forward(m, x.clone(), config.model.vqgan.commitment_cost);
            codes = out.codes.clone();
            let (loss, mut parts) =
                pixel_losses(config, &x, &out.reconstruction, lpips, disc, ctx.gan_on);
            // With the moving-average codebook the codes are not learnt from this loss.
            let loss = if config.codebook_ema_decay.is_some() {
                loss + out.commitment_loss.clone()
            } else {
                loss + out.codebook_loss.clone() + out.commitment_loss.clone()
            };
            parts.push(("codebook_loss", scalar(&out.codebook_loss)));
            parts.push(("commitment_loss", scalar(&out.commitment_loss)));
            if ctx.wants_latents {
                latents = Some(out.latents.clone());
            }
            (loss, parts, out.reconstruction)
        }
        Trainee::Tokenizer(m) => {
            let draw = draw.ok_or_else(|| SftokError::Other("no mask draw for a shard".into()))?;
            if config.stage == StageKind::Stage3 {
                let (recon, quantizer_loss) =
                    stage3_forward(m, x.clone(), draw, config.stage3_train_encoder);
                let (mut loss, mut parts) =
                    pixel_losses(config, &x, &recon, lpips, disc, ctx.gan_on);
                if let Some(q) = quantizer_loss {
                    parts.push(("quantizer_loss", scalar(&q)));
                    loss = loss + q;
                }
                (loss, parts, recon)
            } else {
                let teacher = teacher.ok_or_else(|| {
                    SftokError::Other("stages 1 and 2 need the teacher's codes".into())
                })?;
                let proxy = rows_i64(teacher.encode(x.clone().inner()));
                let stage = if config.stage == StageKind::Stage1 {
                    TokenStage::WarmUp
                } else {
                    TokenStage::Stage2(config.stage2_inputs)
                };
                let out = token_step(m, x.clone(), &proxy, stage, draw);
                accuracy = Some(proxy_accuracy(&out.logits, &proxy));
                codes = out.latent_ids.iter().flatten().copied().collect();
                let mut parts = vec![
                    ("recon_loss", scalar(&out.recon_loss)),
                    ("quantizer_loss", scalar(&out.quantizer_loss)),
                    ("commitment_loss", scalar(&out.commitment_loss)),
                    ("codebook_loss", scalar(&out.codebook_loss)),
                ];
                let mut total = out.total_loss;
                if config.soft_embedding_weight > 0.0 {
                    let soft = soft_embedding_loss(m, out.logits.clone(), &proxy);
                    parts.push(("soft_embedding_loss", scalar(&soft)));
                    total = total + soft.mul_scalar(config.soft_embedding_weight);
                }
                let recon = if ctx.wants_preview {
                    m.valid().pixels_from_logits(out.logits.clone().inner())
                } else {
                    x.clone()
                };
                (total, parts, recon)
            }
        }
    };
    let loss_value = scalar(&loss);
    let grads = if loss_value.is_finite() {
        let grads = loss.mul_scalar(weight).backward();
        match model {
            Trainee::Teacher(m) => GradientsParams::from_grads(grads, m).to_device(&ctx.main, m),
            Trainee::Tokenizer(m) => GradientsParams::from_grads(grads, m).to_device(&ctx.main, m),
        }
    } else {
        GradientsParams::new()
    };
    let main_inner = ctx.main.clone().inner();
    let makes_fakes =
        ctx.gan_on && (matches!(model, Trainee::Teacher(_)) || config.stage == StageKind::Stage3);
    Ok(ShardOutput {
        loss: loss_value,
        parts,
        grads,
        codes,
        proxy_accuracy: accuracy,
        fake: makes_fakes.then(|| {
            (
                x.clone().detach().to_device(&ctx.main),
                recon.clone().detach().to_device(&ctx.main),
            )
        }),
        latents,
        preview: ctx.wants_preview.then(|| {
            (
                x.inner().to_device(&main_inner),
                recon.inner().to_device(&main_inner),
            )
        }),
    })
}

/// Adds `grads` into `total`, parameter by parameter.
fn merge_grads(trainee: &Trainee, total: &mut GradientsParams, grads: GradientsParams) {
    use burn::module::{ModuleVisitor, Param};
    struct Add<'a> {
        total: &'a mut GradientsParams,
        grads: GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let sum = match self.total.remove::<D>(param.id) {
                    Some(t) => t + g,
                    None => g,
                };
                self.total.register(param.id, sum);
            }
        }
    }
    let mut add = Add { total, grads };
    match trainee {
        Trainee::Teacher(m) => m.visit(&mut add),
        Trainee::Tokenizer(m) => m.visit(&mut add),
    }
}

fn initial_model(config: &TrainConfig, teacher: Option<&Vqgan>, ad: &Device) -> Result<Trainee> {
    match config.stage {
        StageKind::Teacher => match &config.init {
            Some(path) => Ok(Trainee::Teacher(load_teacher(path, ad)?.1)),
            None => Ok(Trainee::Teacher(Vqgan::new(&config.model.vqgan, ad))),
        },
        StageKind::Stage1 => {
            let mut model = match &config.init {
                Some(path) => load_sftok_weights(&published_model_dir(path), config, ad)?,
                None => {
                    // A fresh SFTok whose pixel codebook and decoder start as the teacher's.
                    let fresh = Sftok::new(&config.model, ad);
                    let mut tensors = state_dict(&fresh);
                    if let Some(t) = teacher {
                        tensors.retain(|k, _| !k.starts_with("pixel_"));
                        fill_pixel_parts_from_teacher(&mut tensors, &state_dict(t));
                    }
                    build_sftok(&config.model, tensors, ad, Path::new("(fresh model)"))?
                }
            };
            model.mask_token_id = config.model.mask_token_id();
            Ok(Trainee::Tokenizer(model))
        }
        StageKind::Stage2 | StageKind::Stage3 => {
            let Some(path) = &config.init else {
                return Err(SftokError::Other(format!(
                    "{} starts from the previous stage: pass --init (a stage-{} run or a model directory)",
                    config.stage,
                    if config.stage == StageKind::Stage2 {
                        1
                    } else {
                        2
                    }
                )));
            };
            let model = load_sftok_weights(&published_model_dir(path), config, ad)?;
            Ok(Trainee::Tokenizer(
                if config.stage == StageKind::Stage3 && !config.stage3_train_encoder {
                    freeze_for_stage3(model)
                } else {
                    model
                },
            ))
        }
    }
}

fn load_sftok_weights(dir: &Path, config: &TrainConfig, ad: &Device) -> Result<Sftok> {
    let weights = dir.join(MODEL_FILE);
    if !weights.is_file() {
        return Err(SftokError::Other(format!(
            "{} has no {MODEL_FILE}; --init takes a run directory or a model directory",
            dir.display()
        )));
    }
    build_sftok(&config.model, read_weights(&weights)?, ad, &weights)
}

/// Stage 3 trains the decoder, the pixel codebook and the pixel decoder only.
pub fn freeze_for_stage3(mut model: Sftok) -> Sftok {
    model.encoder = model.encoder.no_grad();
    model.quantize = model.quantize.no_grad();
    model.latent_tokens = model.latent_tokens.set_require_grad(false);
    model
}

/// MSE (+ LPIPS) (+ the generator's adversarial loss) of a reconstruction.
fn pixel_losses(
    config: &TrainConfig,
    x: &Tensor<4>,
    recon: &Tensor<4>,
    lpips: Option<&Lpips>,
    disc: Option<&PatchDiscriminator>,
    gan_on: bool,
) -> (Tensor<1>, Vec<(&'static str, f64)>) {
    let mse = (recon.clone() - x.clone()).powi_scalar(2).mean();
    let mut parts = vec![("mse", scalar(&mse))];
    let mut loss = mse.mul_scalar(config.reconstruction_weight);
    if let Some(lpips) = lpips {
        let p = lpips.forward(recon.clone(), x.clone()).mean();
        parts.push(("perceptual_loss", scalar(&p)));
        loss = loss + p.mul_scalar(config.perceptual_weight);
    }
    if gan_on && let Some(disc) = disc {
        // The discriminator is a fixed function for the generator's update: its parameters get
        // gradients here too, but only the trainee's are read from this backward pass.
        let g = generator_loss(disc.forward(recon.clone()));
        parts.push(("gan_loss", scalar(&g)));
        loss = loss + g.mul_scalar(config.gan.weight);
    }
    (loss, parts)
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .inner()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}

fn accumulate(terms: &mut Vec<(&'static str, f64)>, name: &'static str, value: f64) {
    match terms.iter_mut().find(|(n, _)| *n == name) {
        Some(t) => t.1 += value,
        None => terms.push((name, value)),
    }
}

fn next_batch(loader: &mut DataLoader) -> Result<Batch> {
    loader
        .next_batch()
        .map_err(|e| SftokError::Other(e.to_string()))?
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

/// Writes a checkpoint and publishes the EMA weights as the run's model directory.
fn checkpoint(
    run: &RunDir,
    config: &TrainConfig,
    trainee: &Trainee,
    progress: &Progress,
    teacher: Option<&Vqgan>,
) -> Result<PathBuf> {
    let weights = match trainee {
        Trainee::Teacher(m) => state_dict(m),
        Trainee::Tokenizer(m) => state_dict(m),
    };
    let ema = progress.ema.state_dict();
    let optim = progress.optim.state_dict();
    let mut extra_files: Vec<(String, StateDict)> = Vec::new();
    if let Some((disc, disc_optim)) = &progress.disc {
        extra_files.push(("disc.safetensors".into(), state_dict(disc)));
        extra_files.push(("disc_optim.safetensors".into(), disc_optim.state_dict()));
    }
    let mut files: Vec<(&str, &StateDict)> = vec![
        ("model.safetensors", &weights),
        ("ema.safetensors", &ema),
        ("optim.safetensors", &optim),
    ];
    for (name, sd) in &extra_files {
        files.push((name.as_str(), sd));
    }
    let extras = json!({
        "optim_steps": progress.optim.steps,
        "disc_optim_steps": progress.disc.as_ref().map(|d| d.1.steps),
        "lecam": progress.lecam,
        "usage": progress.usage,
        "codebook_ema": progress.codebook,
    });
    let extras_bytes = serde_json::to_vec_pretty(&extras).expect("serialises");
    let path = run.write_checkpoint(
        &progress.state,
        &files,
        Some(&extras_bytes),
        config.keep_checkpoints,
    )?;

    // Publish the EMA weights (the ones evaluated) as a model directory.
    let out = run.model_dir();
    std::fs::create_dir_all(&out).map_err(|e| SftokError::write(&out, e))?;
    crate::checkpoint::files::write_atomic(
        &out.join(CONFIG_FILE),
        config.model.to_json().as_bytes(),
    )?;
    match trainee {
        Trainee::Teacher(m) => {
            let ema_model = progress.ema.apply_to(m.clone());
            crate::checkpoint::files::write_safetensors(
                &out.join(TEACHER_FILE),
                &state_dict(&ema_model),
            )?;
        }
        Trainee::Tokenizer(m) => {
            let ema_model = progress.ema.apply_to(m.clone());
            if let Some(t) = teacher {
                crate::checkpoint::files::write_safetensors(
                    &out.join(TEACHER_FILE),
                    &state_dict(t),
                )?;
            }
            crate::checkpoint::files::write_safetensors(
                &out.join(MODEL_FILE),
                &state_dict(&ema_model),
            )?;
        }
    }
    Ok(path)
}

/// Restores a run from a checkpoint folder.
fn restore(
    config: &TrainConfig,
    path: &Path,
    trainee: &mut Trainee,
    progress: &mut Progress,
    ad: &Device,
) -> Result<()> {
    let state = RunDir::read_checkpoint(path)?;
    let weights = RunDir::read_checkpoint_file(path, "model.safetensors")?;
    let source = path.join("model.safetensors");
    *trainee = match trainee {
        Trainee::Teacher(_) => {
            Trainee::Teacher(build_teacher(&config.model, weights, ad, &source)?)
        }
        Trainee::Tokenizer(_) => {
            let m = build_sftok(&config.model, weights, ad, &source)?;
            Trainee::Tokenizer(
                if config.stage == StageKind::Stage3 && !config.stage3_train_encoder {
                    freeze_for_stage3(m)
                } else {
                    m
                },
            )
        }
    };
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
    let optim_steps = extras["optim_steps"].as_u64().unwrap_or(state.step);
    progress.optim.load_state_dict(
        &RunDir::read_checkpoint_file(path, "optim.safetensors")?,
        optim_steps,
        ad,
    );
    progress.ema.load_state_dict(
        &RunDir::read_checkpoint_file(path, "ema.safetensors")?,
        state.ema_updates,
        ad,
    );
    if let Some((disc, disc_optim)) = progress.disc.take() {
        let disc = crate::checkpoint::state::load_state_dict(
            disc,
            RunDir::read_checkpoint_file(path, "disc.safetensors")?,
            ad,
            &path.join("disc.safetensors"),
        )?;
        let mut disc_optim = disc_optim;
        disc_optim.load_state_dict(
            &RunDir::read_checkpoint_file(path, "disc_optim.safetensors")?,
            extras["disc_optim_steps"].as_u64().unwrap_or(0),
            ad,
        );
        progress.disc = Some((disc, disc_optim));
    }
    if let Ok(lecam) = serde_json::from_value(extras["lecam"].clone()) {
        progress.lecam = lecam;
    }
    if let Ok(usage) = serde_json::from_value(extras["usage"].clone()) {
        progress.usage = usage;
    }
    if let Ok(codebook) = serde_json::from_value(extras["codebook_ema"].clone()) {
        progress.codebook = codebook;
    }
    progress.state = state;
    Ok(())
}
