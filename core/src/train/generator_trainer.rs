//! Training the MaskGIT generator on a tokenizer's tokens (`train_one_epoch_generator`): the
//! official recipe (AdamW with betas 0.9/0.96 and weight decay 0.03, cosine schedule, gradient
//! clipping at 1, EMA 0.999) on tokens cached once per run ([`super::generator_tokens`]).
//!
//! The run folder is the other stages' (`config.json`, `metrics.jsonl`, `checkpoints/step_N`,
//! `model/` published with the EMA weights), with the same events, stop handle and resume. A
//! step's random draws come from a generator seeded by (seed, step), so a resumed run draws
//! what the uninterrupted one would have.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ema::Ema;
use super::events::{StopHandle, TrainEvent};
use super::generator_step::{GeneratorDraws, generator_step};
use super::generator_tokens::{GeneratorData, TokenSet, Views, prepare_tokens};
use super::optim::{AdamW, AdamWConfig, LrSchedule, clip_coefficient, grad_norm};
use super::run_dir::{OpenedRun, ResumeState, RunDir};
use crate::checkpoint::load_model_dir;
use crate::checkpoint::state::{load_state_dict, state_dict};
use crate::data::ImageFolder;
use crate::error::{Result, SftokError};
use crate::generator::{GeneratorConfig, ImageBert, save_generator_dir};

/// Everything a generator run is made of (`config.json` of the run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorTrainConfig {
    /// Training images; classes are its sub-folders.
    pub data: PathBuf,
    /// The tokenizer (model directory or run) whose tokens the generator learns.
    pub tokenizer: PathBuf,
    /// Sizes and sampling settings; the token layout and classes are filled in from the
    /// tokenizer and the data.
    pub model: GeneratorConfig,
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub end_learning_rate: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta2: f64,
    pub max_grad_norm: f64,
    pub ema_decay: f64,
    /// Random crops (with flips) tokenized per training image.
    pub views: usize,
    pub max_scale: f32,
    pub seed: u64,
    pub log_every: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
}

impl GeneratorTrainConfig {
    /// The official optimiser settings at a demo's scale: a small BERT, 8 views per image.
    pub fn demo(data: PathBuf, tokenizer: PathBuf) -> Self {
        GeneratorTrainConfig {
            data,
            tokenizer,
            model: GeneratorConfig::demo(0, 0, Vec::new()),
            steps: 3000,
            batch_size: 64,
            learning_rate: 5e-4,
            end_learning_rate: 1e-5,
            warmup_steps: 200,
            weight_decay: 0.03,
            beta2: 0.96,
            max_grad_norm: 1.0,
            ema_decay: 0.999,
            views: 8,
            max_scale: 1.25,
            seed: 0,
            log_every: 10,
            eval_every: 250,
            checkpoint_every: 500,
            keep_checkpoints: 3,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SftokError::Other(m));
        if self.batch_size == 0 || self.steps == 0 || self.views == 0 {
            return bad("steps, batch size and views must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning rate {} must be a positive number",
                self.learning_rate
            ));
        }
        Ok(())
    }
}

/// What a finished or stopped run left.
#[derive(Debug, Clone)]
pub struct GeneratorOutcome {
    pub step: u64,
    pub model_dir: PathBuf,
    pub stopped: bool,
}

/// Trains (or, with `resume`, continues) a generator in `run_dir`.
pub fn train_generator(
    config: GeneratorTrainConfig,
    run_dir: &Path,
    resume: bool,
    device: &burn::tensor::Device,
    emit: &mut dyn FnMut(TrainEvent),
    stop: &StopHandle,
) -> Result<GeneratorOutcome> {
    let run = RunDir::new(run_dir);
    // One writer per run folder; a resumed run keeps its configuration, only its length may grow.
    let OpenedRun {
        lock: _lock,
        mut config,
        latest,
    } = run.open(config, resume, |saved: GeneratorTrainConfig, asked| {
        GeneratorTrainConfig {
            steps: asked.steps.max(saved.steps),
            ..saved
        }
    })?;
    config.validate()?;
    run.create()?;

    let data = tokenize_data(&mut config, &run, device, emit)?;
    run.write_config(&config)?;

    let ad = device.clone().autodiff();
    let mut model = ImageBert::new(&config.model, &ad);
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: config.beta2,
        epsilon: 1e-8,
        weight_decay: config.weight_decay,
    });
    let mut ema = Ema::new(&model, config.ema_decay);
    let mut start = 0;
    let mut resumed_from = None;
    if resume && let Some((step, path)) = &latest {
        (model, start) = restore(path, model, &mut optim, &mut ema, &ad)?;
        resumed_from = Some(*step);
    }
    emit(TrainEvent::Started {
        total_steps: config.steps,
        resumed_from,
        device: format!(
            "{device:?} ({} training sequences, {} held out, {} classes)",
            data.train.ids.len(),
            data.heldout.ids.len(),
            data.class_names.len()
        ),
        skipped_files: 0,
    });
    let schedule = LrSchedule {
        peak: config.learning_rate,
        end: config.end_learning_rate,
        warmup_steps: config.warmup_steps.min(config.steps / 2),
        total_steps: config.steps,
    };
    let baseline = positional_baseline(&data.train, &data.heldout);
    let started = Instant::now();
    let mut step = start;
    while step < config.steps {
        if stop.is_stopped() {
            let model_dir = save(&run, &config, &model, &optim, &ema, step)?;
            emit(TrainEvent::Stopped {
                step,
                model_dir: model_dir.clone(),
            });
            return Ok(GeneratorOutcome {
                step,
                model_dir,
                stopped: true,
            });
        }
        let lr = schedule.lr(step);
        let done;
        (model, done) = train_step(model, &mut optim, &data, &config, step, lr);
        ema.update(&model);
        let StepDone {
            loss,
            correct_tokens,
            grad_norm: norm,
        } = done;
        step += 1;
        let elapsed = started.elapsed().as_secs_f64();
        let per_step = elapsed / (step - start) as f64;
        emit(TrainEvent::Progress {
            step,
            total_steps: config.steps,
            loss,
            images_per_sec: config.batch_size as f64 / per_step.max(1e-9),
            eta_secs: per_step * (config.steps - step) as f64,
        });
        if step % config.log_every.max(1) == 0 {
            let row = serde_json::json!({
                "step": step, "loss": loss, "masked_token_accuracy": correct_tokens,
                "lr": lr, "grad_norm": norm,
            });
            run.append_metrics(&row)?;
            emit(TrainEvent::Metrics(row));
        }
        if (step % config.eval_every.max(1) == 0 || step == config.steps)
            && !data.heldout.ids.is_empty()
        {
            let row = heldout_row(&model, &ema, &data, &config, step, baseline);
            run.append_metrics(&row)?;
            emit(TrainEvent::Metrics(row));
        }
        if step % config.checkpoint_every.max(1) == 0 && step < config.steps {
            let path = checkpoint(&run, &config, &model, &optim, &ema, step)?;
            emit(TrainEvent::Checkpoint { step, path });
        }
    }
    let model_dir = save(&run, &config, &model, &optim, &ema, step)?;
    emit(TrainEvent::Finished {
        step,
        model_dir: model_dir.clone(),
    });
    Ok(GeneratorOutcome {
        step,
        model_dir,
        stopped: false,
    })
}

/// Tokenizes the training images with the run's tokenizer (cached in the run folder) and fits
/// the generator's configuration to them: the tokenizer fixes the token layout, the data fixes
/// the classes.
fn tokenize_data(
    config: &mut GeneratorTrainConfig,
    run: &RunDir,
    device: &burn::tensor::Device,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<GeneratorData> {
    let tokenizer = load_model_dir(&config.tokenizer, device)?;
    let folder = ImageFolder::scan(&config.data).map_err(SftokError::from)?;
    let views = Views {
        image_size: tokenizer.config.image_size,
        views: config.views,
        max_scale: config.max_scale,
        seed: config.seed,
    };
    let data = prepare_tokens(
        &run.root,
        &folder,
        &tokenizer.model,
        &views,
        device,
        &mut |done, total| {
            emit(TrainEvent::Metrics(serde_json::json!({
                "tokenizing": done, "of": total
            })))
        },
    )?;
    let tok = &tokenizer.config;
    config.model.codebook_size = tok.quantizer.codebook_size;
    config.model.image_seq_len = tok.num_latent_tokens;
    config.model.condition_num_classes = data.class_names.len().max(1);
    config.model.class_names = data.class_names.clone();
    config.model.validate()?;
    Ok(data)
}

/// Restores the weights, optimiser and EMA of the checkpoint folder `path`; returns the model
/// and the step it holds.
fn restore(
    path: &Path,
    model: ImageBert,
    optim: &mut AdamW,
    ema: &mut Ema,
    ad: &burn::tensor::Device,
) -> Result<(ImageBert, u64)> {
    let state = RunDir::read_checkpoint(path)?;
    let weights = RunDir::read_checkpoint_file(path, "model.safetensors")?;
    let model = load_state_dict(model, weights, ad, path)?;
    optim.load_state_dict(
        &RunDir::read_checkpoint_file(path, "optim.safetensors")?,
        state.step,
        ad,
    );
    ema.load_state_dict(
        &RunDir::read_checkpoint_file(path, "ema.safetensors")?,
        state.ema_updates,
        ad,
    );
    Ok((model, state.step))
}

/// What one optimiser step measured.
struct StepDone {
    loss: f64,
    correct_tokens: f32,
    /// Before clipping.
    grad_norm: f64,
}

/// One optimiser step on a batch drawn (with its masks) from the RNG of step `step`.
fn train_step(
    model: ImageBert,
    optim: &mut AdamW,
    data: &GeneratorData,
    config: &GeneratorTrainConfig,
    step: u64,
    lr: f64,
) -> (ImageBert, StepDone) {
    let mut rng =
        StdRng::seed_from_u64(config.seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let picks: Vec<usize> = (0..config.batch_size)
        .map(|_| rng.random_range(0..data.train.ids.len()))
        .collect();
    let tokens: Vec<Vec<i64>> = picks.iter().map(|&i| data.train.ids[i].clone()).collect();
    let classes: Vec<Option<usize>> = picks.iter().map(|&i| data.train.classes[i]).collect();
    let draws = GeneratorDraws::sample(&mut rng, tokens.len(), tokens[0].len());
    let out = generator_step(
        &model,
        &tokens,
        &classes,
        &draws,
        config.model.class_label_dropout,
    );
    let loss = out.loss.clone().into_scalar::<f32>() as f64;
    let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
    let norm = grad_norm(&model, &grads);
    let model = optim.step(
        model,
        &mut grads,
        lr,
        clip_coefficient(norm, config.max_grad_norm),
    );
    (
        model,
        StepDone {
            loss,
            correct_tokens: out.correct_tokens,
            grad_norm: norm,
        },
    )
}

/// Held-out masked-token loss and accuracy with the live and the EMA weights, at fixed masking
/// draws (the same every time, so the curve shows the model and not the draws), conditioned on
/// each image's class; beside the accuracy of always predicting each position's most frequent
/// training token.
fn heldout_row(
    model: &ImageBert,
    ema: &Ema,
    data: &GeneratorData,
    config: &GeneratorTrainConfig,
    step: u64,
    baseline: f64,
) -> serde_json::Value {
    let live = model.valid();
    let averaged = ema.apply_to(live.clone());
    let held = &data.heldout;
    let mut rng = StdRng::seed_from_u64(0x5EED);
    let draws = GeneratorDraws {
        drop_rand: vec![1.0; held.ids.len()], // never drop the class here
        ..GeneratorDraws::sample(&mut rng, held.ids.len(), held.ids[0].len())
    };
    let measure = |m: &ImageBert| {
        let out = generator_step(
            m,
            &held.ids,
            &held.classes,
            &draws,
            config.model.class_label_dropout,
        );
        (
            out.loss.into_scalar::<f32>() as f64,
            out.correct_tokens as f64,
        )
    };
    let (loss, acc) = measure(&live);
    let (ema_loss, ema_acc) = measure(&averaged);
    serde_json::json!({
        "step": step,
        "heldout_loss": loss, "heldout_masked_accuracy": acc,
        "heldout_loss_ema": ema_loss, "heldout_masked_accuracy_ema": ema_acc,
        "heldout_frequency_baseline_accuracy": baseline,
        "heldout_chance_accuracy": 1.0 / config.model.codebook_size as f64,
    })
}

/// Accuracy on `heldout` of predicting, at each position, its most frequent token in `train`.
fn positional_baseline(train: &TokenSet, heldout: &TokenSet) -> f64 {
    let Some(l) = train.ids.first().map(Vec::len) else {
        return 0.0;
    };
    let best: Vec<i64> = (0..l)
        .map(|j| {
            let mut counts = std::collections::HashMap::new();
            for row in &train.ids {
                *counts.entry(row[j]).or_insert(0usize) += 1;
            }
            counts
                .into_iter()
                .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
                .map_or(0, |(id, _)| id)
        })
        .collect();
    let total = heldout.ids.len() * l;
    let right = heldout
        .ids
        .iter()
        .flat_map(|row| row.iter().zip(&best).filter(|(a, b)| a == b))
        .count();
    right as f64 / total.max(1) as f64
}

fn checkpoint(
    run: &RunDir,
    config: &GeneratorTrainConfig,
    model: &ImageBert,
    optim: &AdamW,
    ema: &Ema,
    step: u64,
) -> Result<PathBuf> {
    let state = ResumeState {
        step,
        data_epoch: 0,
        data_batch: 0,
        ema_updates: ema.updates,
        images_seen: step * config.batch_size as u64,
    };
    run.write_checkpoint(
        &state,
        &[
            ("model.safetensors", &state_dict(model)),
            ("optim.safetensors", &optim.state_dict()),
            ("ema.safetensors", &ema.state_dict()),
        ],
        None,
        config.keep_checkpoints,
    )
}

/// A checkpoint, then the EMA weights published as the run's `model/`.
fn save(
    run: &RunDir,
    config: &GeneratorTrainConfig,
    model: &ImageBert,
    optim: &AdamW,
    ema: &Ema,
    step: u64,
) -> Result<PathBuf> {
    checkpoint(run, config, model, optim, ema, step)?;
    let published = ema.apply_to(model.valid());
    let dir = run.model_dir();
    save_generator_dir(&dir, &config.model, &published)?;
    Ok(dir)
}
