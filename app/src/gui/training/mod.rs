//! The Train view's controller: runs a training stage (teacher, stage 1, stage 2, stage 3) on a
//! background thread, pauses / resumes / stops it, gathers its losses, learning rate, speed and
//! previews as they come, follows a run started elsewhere (`sftok train`) by tailing its folder,
//! and fine-tunes a model on the gallery's images with one click. What the view draws of it is
//! in [`crate::gui::views::train`].
//!
//! Its parts: `setup` builds run configurations (through the same `RunPlan` as the command
//! line) and words their errors for the app, `tail` reads a growing `metrics.jsonl`, `worker`
//! is the training thread, `labels` names the metrics.

pub(crate) mod labels;
pub(crate) mod setup;
pub(crate) mod tail;
pub(crate) mod worker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sftok_core::train::run_dir::{METRICS, RUN_CONFIG, RunDir};
use sftok_core::train::{StageKind, TrainConfig, TrainEvent};
use sftok_core::{DeviceChoice, SftokConfig};

use setup::{
    FINETUNE_STEPS, check_finetune_base, check_new_run_dir, config_from_settings, default_run_dir,
    finetune_config, finetune_run_dir, gather_images, resume_config,
};
use tail::{MetricSeries, MetricsTail};
use worker::{Worker, WorkerMsg};

use crate::gui::views::train::{PreviewTexture, format_duration};

/// How often a followed run folder is read.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Points drawn per plotted series (longer series are thinned evenly).
pub(crate) const MAX_PLOT_POINTS: usize = 2000;

/// Persisted (serde) settings of the Train view: last stage, preset, data folder, teacher/init
/// dirs, steps, batch size, run folder, followed run dir. Fields missing from a saved copy take
/// their defaults, which are the command line's (`sftok train`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainSettings {
    pub stage: StageKind,
    /// Stage 2: the vanilla ablation instead of SFVR.
    pub vanilla: bool,
    /// Stage 2 (SFVR): probability that an unmasked position holds the model's own prediction.
    pub replace_prob: f32,
    /// Model size: tiny, demo, sftok-b or sftok-l (teacher and stage 1; later stages take the
    /// size of their starting checkpoint).
    pub preset: String,
    pub data: Option<PathBuf>,
    /// `--teacher`: a teacher run or a model folder with its teacher.
    pub teacher: Option<PathBuf>,
    /// `--init`: the run or model folder the stage starts from.
    pub init: Option<PathBuf>,
    pub steps: u64,
    pub batch_size: usize,
    /// The run folder; `None`: a new one under the app's data folder at Start.
    pub run_dir: Option<PathBuf>,
    /// The run folder being followed ("Open run…"), followed again at the next start.
    pub followed: Option<PathBuf>,
    /// The model the one-click fine-tune starts from; `None`: the bundled default model.
    pub finetune_base: Option<PathBuf>,
    pub log_every: u64,
    /// 0: no previews.
    pub preview_every: u64,
    pub checkpoint_every: u64,
    /// Teacher and stage 3: turn the adversarial loss off.
    pub no_gan: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        // The command line's defaults (a test checks they agree).
        TrainSettings {
            stage: StageKind::Teacher,
            vanilla: false,
            replace_prob: 1.0,
            preset: "tiny".into(),
            data: None,
            teacher: None,
            init: None,
            steps: 1000,
            batch_size: 8,
            run_dir: None,
            followed: None,
            finetune_base: None,
            log_every: 10,
            preview_every: 200,
            checkpoint_every: 500,
            no_gan: true,
        }
    }
}

impl TrainSettings {
    /// Repairs values a hand-edited or older settings file may hold.
    pub(crate) fn normalized(mut self) -> Self {
        if !SftokConfig::PRESETS.contains(&self.preset.as_str()) {
            self.preset = "tiny".into();
        }
        self.replace_prob = if self.replace_prob.is_finite() {
            self.replace_prob.clamp(0.0, 1.0)
        } else {
            1.0
        };
        self.steps = self.steps.max(1);
        self.batch_size = self.batch_size.max(1);
        self.log_every = self.log_every.max(1);
        self.checkpoint_every = self.checkpoint_every.max(1);
        self
    }
}

/// What the app must react to.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingOutcome {
    /// A fine-tune finished: open `tuned` beside `base` in the compare view.
    FineTuned { base: PathBuf, tuned: PathBuf },
    /// A run finished or stopped and published its model in `model_dir`.
    RunEnded {
        model_dir: PathBuf,
        stopped: bool,
        /// Stopped with Pause: to be continued with Resume.
        paused: bool,
    },
}

/// The training running in this app.
pub(crate) struct Job {
    pub(crate) worker: Worker,
    pub(crate) kind: JobKind,
    /// Stopped with Pause (rather than Stop): only the words differ.
    pub(crate) pausing: bool,
}

pub(crate) enum JobKind {
    Train,
    FineTune { base: PathBuf },
}

/// What a run is, for the header and the ETA of a followed run.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunInfo {
    pub(crate) stage: String,
    pub(crate) model: String,
    pub(crate) total_steps: u64,
    pub(crate) images_per_step: f64,
}

impl RunInfo {
    pub(crate) fn of(config: &TrainConfig) -> Self {
        RunInfo {
            stage: config.stage.to_string(),
            model: config.model.name.clone(),
            total_steps: config.steps,
            images_per_step: (config.batch_size * config.grad_accum.max(1)) as f64,
        }
    }

    /// Read loosely from a run's `config.json`, so that runs of other versions still show.
    pub(crate) fn read(run_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join(RUN_CONFIG)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let batch =
            v["batch_size"].as_f64().unwrap_or(0.0) * v["grad_accum"].as_f64().unwrap_or(1.0);
        Some(RunInfo {
            stage: v["stage"].as_str().unwrap_or("?").to_string(),
            model: v["model"]["name"].as_str().unwrap_or("?").to_string(),
            total_steps: v["steps"].as_u64().unwrap_or(0),
            images_per_step: batch,
        })
    }
}

/// A run folder followed by tailing it.
pub(crate) struct Follow {
    pub(crate) run_dir: PathBuf,
    pub(crate) tail: MetricsTail,
    pub(crate) info: Option<RunInfo>,
    pub(crate) next_check: Instant,
}

/// What the view shows: the app's own run, or a followed one.
#[derive(Default)]
pub(crate) struct LiveView {
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) following: bool,
    pub(crate) info: RunInfo,
    pub(crate) step: u64,
    pub(crate) resumed_from: Option<u64>,
    pub(crate) loss: Option<f64>,
    pub(crate) images_per_sec: Option<f64>,
    pub(crate) eta_secs: Option<f64>,
    pub(crate) device: Option<String>,
    pub(crate) status: String,
    pub(crate) failed: bool,
    pub(crate) metrics: MetricSeries,
    pub(crate) preview: Option<PathBuf>,
    pub(crate) preview_step: Option<u64>,
    pub(crate) last_checkpoint: Option<u64>,
    pub(crate) skipped: Vec<(PathBuf, String)>,
}

/// Whether the run folder in the settings has a checkpoint (looked up at most once a second).
#[derive(Default)]
pub(crate) struct ResumeProbe {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) step: Option<u64>,
    pub(crate) checked: Option<Instant>,
}

pub struct TrainingPanel {
    pub(crate) settings: TrainSettings,
    pub(crate) job: Option<Job>,
    pub(crate) follow: Option<Follow>,
    pub(crate) live: LiveView,
    pub(crate) error: Option<String>,
    pub(crate) preview: PreviewTexture,
    pub(crate) probe: ResumeProbe,
    pub(crate) device: DeviceChoice,
    /// The run folder of the last one-click fine-tune: Resume continues it to its own step
    /// count, not to the Train form's.
    pub(crate) finetune_run: Option<PathBuf>,
    /// A run has started since the front end last asked ([`Self::take_started`]): the problems
    /// it reported before are stale.
    pub(crate) started: bool,
}

impl TrainingPanel {
    pub fn new(settings: TrainSettings) -> Self {
        let mut panel = TrainingPanel {
            settings: settings.normalized(),
            job: None,
            follow: None,
            live: LiveView::default(),
            error: None,
            preview: PreviewTexture::default(),
            probe: ResumeProbe::default(),
            device: DeviceChoice::Auto,
            finetune_run: None,
            started: false,
        };
        if let Some(dir) = panel.settings.followed.clone() {
            // Follow again what was followed last time, if it is still there.
            if panel.follow(dir).is_err() {
                panel.settings.followed = None;
            }
        }
        panel
    }

    pub fn settings(&self) -> TrainSettings {
        self.settings.clone()
    }

    /// Called every frame from App::logic: drains worker events, tails a followed metrics.jsonl
    /// (at most about once per second, with ctx.request_repaint_after while following), returns
    /// outcomes.
    pub fn poll(&mut self, ctx: &egui::Context) -> Vec<TrainingOutcome> {
        let mut outcomes = Vec::new();
        let messages = match &mut self.job {
            Some(job) => job.worker.drain(),
            None => Vec::new(),
        };
        for message in messages {
            self.handle(message, &mut outcomes);
        }
        if self.follow.is_some() {
            self.tick_follow();
            ctx.request_repaint_after(FOLLOW_INTERVAL);
        }
        outcomes
    }

    /// One-click fine-tune of `base` (a model dir: config.json + model.safetensors +
    /// teacher.safetensors) on `images` with a short schedule; runs in the background.
    pub fn start_finetune(
        &mut self,
        base: PathBuf,
        images: Vec<PathBuf>,
        ctx: &egui::Context,
    ) -> Result<(), String> {
        self.check_finetune(&base, &images)?;
        let run_dir = finetune_run_dir(&base);
        self.start_finetune_in(base, &images, FINETUNE_STEPS, run_dir, ctx)
    }

    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    /// Asks a running training to stop after writing a checkpoint (the trainer's StopHandle).
    pub fn request_stop(&mut self) {
        if let Some(job) = &self.job {
            job.worker.stop();
            self.live.status = "stopping after this step (writing a checkpoint)…".into();
        }
    }

    /// The latest error to show (cleared when read), if any.
    pub fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    /// Whether a run has started since the last call (cleared when read).
    pub fn take_started(&mut self) -> bool {
        std::mem::take(&mut self.started)
    }

    // ---- actions ----

    pub(crate) fn report(&mut self, result: Result<(), String>) {
        if let Err(message) = result {
            self.error = Some(match self.error.take() {
                Some(earlier) => format!("{earlier}\n{message}"),
                None => message,
            });
        }
    }

    pub(crate) fn pause(&mut self) {
        if let Some(job) = &mut self.job {
            job.pausing = true;
        }
        self.request_stop();
    }

    /// Starts a new run (or resumes the one in the run folder) from the settings.
    pub(crate) fn start(&mut self, ctx: &egui::Context, resume: bool) -> Result<(), String> {
        if self.job.is_some() {
            return Err("a training is already running: stop it first".into());
        }
        let (run_dir, config) = if resume {
            let run_dir = self
                .settings
                .run_dir
                .clone()
                .ok_or("choose the run folder to resume")?;
            // A fine-tune continues to its own length (the form's steps are another run's).
            let steps = if self.finetune_run.as_ref() == Some(&run_dir) {
                0
            } else {
                self.settings.steps
            };
            let config = resume_config(&run_dir, steps)?;
            (run_dir, config)
        } else {
            let run_dir = self
                .settings
                .run_dir
                .clone()
                .unwrap_or_else(|| default_run_dir(&self.settings));
            check_new_run_dir(&run_dir)?;
            let config = config_from_settings(&self.settings)?;
            (run_dir, config)
        };
        self.launch(config, run_dir.clone(), resume, JobKind::Train, ctx)?;
        self.settings.run_dir = Some(run_dir);
        Ok(())
    }

    pub(crate) fn start_finetune_in(
        &mut self,
        base: PathBuf,
        images: &[PathBuf],
        steps: u64,
        run_dir: PathBuf,
        ctx: &egui::Context,
    ) -> Result<(), String> {
        self.check_finetune(&base, images)?;
        let placed = gather_images(images, &run_dir.join("data"))?;
        let config = finetune_config(&base, &run_dir, placed, steps)?;
        self.launch(
            config,
            run_dir.clone(),
            false,
            JobKind::FineTune { base },
            ctx,
        )?;
        // The run folder is the fine-tune's now, so that Resume (which the stopped status
        // offers) continues it.
        self.settings.run_dir = Some(run_dir.clone());
        self.finetune_run = Some(run_dir);
        Ok(())
    }

    pub(crate) fn check_finetune(&self, base: &Path, images: &[PathBuf]) -> Result<(), String> {
        if self.job.is_some() {
            return Err("a training is already running: stop it before fine-tuning".into());
        }
        if images.is_empty() {
            return Err("the gallery is empty: add the images to fine-tune on first".into());
        }
        check_finetune_base(base)
    }

    pub(crate) fn launch(
        &mut self,
        config: TrainConfig,
        run_dir: PathBuf,
        resume: bool,
        kind: JobKind,
        ctx: &egui::Context,
    ) -> Result<(), String> {
        let info = RunInfo::of(&config);
        let worker = Worker::spawn(config, run_dir.clone(), resume, self.device, ctx.clone())?;
        self.unfollow();
        self.live = LiveView {
            run_dir: Some(run_dir),
            info,
            status: if resume { "resuming…" } else { "starting…" }.into(),
            ..LiveView::default()
        };
        self.job = Some(Job {
            worker,
            kind,
            pausing: false,
        });
        self.probe = ResumeProbe::default();
        self.started = true;
        Ok(())
    }

    /// Follows a run folder: its metrics, previews and checkpoints, read once a second.
    pub(crate) fn follow(&mut self, run_dir: PathBuf) -> Result<(), String> {
        if !run_dir.is_dir() {
            return Err(format!("{} is not a folder", run_dir.display()));
        }
        if !run_dir.join(RUN_CONFIG).is_file() && !run_dir.join(METRICS).is_file() {
            return Err(format!(
                "{} is not a run folder (it has no {RUN_CONFIG} or {METRICS}): choose a folder made by `sftok train` or by this view",
                run_dir.display()
            ));
        }
        self.follow = Some(Follow {
            tail: MetricsTail::new(run_dir.join(METRICS)),
            run_dir: run_dir.clone(),
            info: None,
            next_check: Instant::now(),
        });
        self.live = LiveView {
            run_dir: Some(run_dir.clone()),
            following: true,
            status: "reading…".into(),
            ..LiveView::default()
        };
        self.settings.followed = Some(run_dir);
        self.tick_follow();
        Ok(())
    }

    pub(crate) fn unfollow(&mut self) {
        if self.follow.take().is_some() {
            self.live = LiveView::default();
        }
        self.settings.followed = None;
    }

    /// Reads what a followed run wrote since the last look (at most once a second).
    pub(crate) fn tick_follow(&mut self) {
        let Some(f) = self.follow.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now < f.next_check {
            return;
        }
        f.next_check = now + FOLLOW_INTERVAL;
        let live = &mut self.live;
        if f.info.is_none() {
            f.info = RunInfo::read(&f.run_dir);
        }
        if let Some(info) = &f.info {
            live.info = info.clone();
        }
        let read_ok = match f.tail.read_new() {
            Ok(read) => {
                if read.restarted {
                    live.metrics.clear();
                }
                for row in &read.rows {
                    live.metrics.push(row);
                }
                true
            }
            Err(e) => {
                live.status = format!("cannot read {}: {e}", f.tail.path().display());
                false
            }
        };
        live.step = live.metrics.last_step().unwrap_or(0);
        live.loss = live.metrics.latest_f64("loss");
        live.images_per_sec = live.metrics.latest_f64("images_per_sec");
        live.eta_secs = match (live.images_per_sec, live.info.images_per_step) {
            (Some(ips), per_step) if ips > 0.0 && per_step > 0.0 => {
                Some(live.info.total_steps.saturating_sub(live.step) as f64 * per_step / ips)
            }
            _ => None,
        };
        if let Some((step, path)) = newest_preview(&f.run_dir) {
            live.preview_step = Some(step);
            live.preview = Some(path);
        }
        live.last_checkpoint = RunDir::new(&f.run_dir).latest_checkpoint().map(|c| c.0);
        if read_ok {
            live.status = followed_status(&f.run_dir, live.step, live.info.total_steps);
        }
    }

    /// Applies one message of the training thread.
    pub(crate) fn handle(&mut self, message: WorkerMsg, outcomes: &mut Vec<TrainingOutcome>) {
        let live = &mut self.live;
        match message {
            WorkerMsg::Device(device) => live.device = Some(device),
            WorkerMsg::Event(event) => match event {
                TrainEvent::Started {
                    total_steps,
                    resumed_from,
                    ..
                } => {
                    live.info.total_steps = total_steps;
                    live.resumed_from = resumed_from;
                    live.status = match resumed_from {
                        Some(step) => format!("training (resumed from step {step})"),
                        None => "training".into(),
                    };
                    if let (Some(step), Some(run_dir)) = (resumed_from, &live.run_dir) {
                        // Show the run's history: the trainer has just cut it at the checkpoint.
                        live.step = step;
                        live.metrics.clear();
                        if let Ok(read) = MetricsTail::new(run_dir.join(METRICS)).read_new() {
                            for row in &read.rows {
                                live.metrics.push(row);
                            }
                        }
                        if let Some((step, path)) = newest_preview(run_dir) {
                            live.preview_step = Some(step);
                            live.preview = Some(path);
                        }
                        live.last_checkpoint = Some(step);
                    }
                }
                TrainEvent::Progress {
                    step,
                    total_steps,
                    loss,
                    images_per_sec,
                    eta_secs,
                } => {
                    live.step = step;
                    live.info.total_steps = total_steps;
                    live.loss = Some(loss);
                    live.images_per_sec = Some(images_per_sec);
                    live.eta_secs = Some(eta_secs);
                }
                TrainEvent::Metrics(row) => {
                    live.metrics.push(&row);
                }
                TrainEvent::Preview { step, path } => {
                    live.preview_step = Some(step);
                    live.preview = Some(path);
                }
                TrainEvent::Checkpoint { step, .. } => live.last_checkpoint = Some(step),
                TrainEvent::SkippedFiles(files) => live.skipped = files,
                TrainEvent::Stopped { .. } | TrainEvent::Finished { .. } => {}
                // The error arrives with `Done`.
                TrainEvent::Failed { .. } => {}
            },
            WorkerMsg::Done(result) => {
                let Some(job) = self.job.take() else { return };
                self.probe = ResumeProbe::default();
                match result {
                    Ok(outcome) => {
                        let step = outcome.step;
                        live.step = step;
                        live.status = match (outcome.stopped, job.pausing) {
                            (true, true) => {
                                format!("paused at step {step}: Resume continues this run")
                            }
                            (true, false) => format!(
                                "stopped at step {step} (checkpoint written; Resume continues it)"
                            ),
                            (false, _) => format!(
                                "finished at step {step}; model in {}",
                                outcome.model_dir.display()
                            ),
                        };
                        outcomes.push(match job.kind {
                            JobKind::FineTune { base } if !outcome.stopped => {
                                TrainingOutcome::FineTuned {
                                    base,
                                    tuned: outcome.model_dir,
                                }
                            }
                            _ => TrainingOutcome::RunEnded {
                                model_dir: outcome.model_dir,
                                stopped: outcome.stopped,
                                paused: outcome.stopped && job.pausing,
                            },
                        });
                    }
                    Err(message) => {
                        live.status = format!("failed: {message}");
                        live.failed = true;
                        let what = match job.kind {
                            JobKind::Train => "Training failed",
                            JobKind::FineTune { .. } => "Fine-tuning failed",
                        };
                        self.report(Err(format!("{what}: {message}")));
                    }
                }
            }
        }
    }

    /// The step of the newest checkpoint in the settings' run folder, if any.
    pub(crate) fn resumable_step(&mut self) -> Option<u64> {
        let dir = self.settings.run_dir.clone()?;
        let stale = self.probe.dir.as_ref() != Some(&dir)
            || self
                .probe
                .checked
                .is_none_or(|t| t.elapsed() > FOLLOW_INTERVAL);
        if stale {
            self.probe = ResumeProbe {
                step: RunDir::new(&dir).latest_checkpoint().map(|c| c.0),
                dir: Some(dir),
                checked: Some(Instant::now()),
            };
        }
        self.probe.step
    }

    pub(crate) fn finetune_base(&self) -> PathBuf {
        self.settings
            .finetune_base
            .clone()
            .unwrap_or_else(crate::assets::default_model_dir)
    }

    // ---- drawing ----
}

/// The newest `previews/step_<N>.png` of a run folder.
pub(crate) fn newest_preview(run_dir: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(RunDir::new(run_dir).previews_dir())
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name
                .strip_prefix("step_")?
                .strip_suffix(".png")?
                .parse()
                .ok()?;
            Some((step, entry.path()))
        })
        .max_by_key(|(step, _)| *step)
}

/// How a followed run looks from its files.
pub(crate) fn followed_status(run_dir: &Path, step: u64, total: u64) -> String {
    if total > 0 && step >= total {
        return "finished".into();
    }
    let modified = std::fs::metadata(run_dir.join(METRICS))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    match modified {
        None => "waiting for the first metrics…".into(),
        Some(age) if age < Duration::from_secs(120) => "running (followed live)".into(),
        Some(age) => format!(
            "no new metrics for {}: stopped, paused or slow",
            format_duration(age.as_secs_f64())
        ),
    }
}

#[cfg(test)]
mod tests;
