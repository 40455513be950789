//! The Train view: configure and run a training stage (teacher, stage 1, stage 2, stage 3) on a
//! background thread, pause / resume / stop it, watch its losses, learning rate, speed and
//! previews live, follow a run started elsewhere (`sftok train`) by tailing its folder, and
//! fine-tune a model on the gallery's images with one click.
//!
//! The pieces without UI live in submodules: [`setup`] builds run configurations (through the
//! same `RunPlan` as the command line), [`tail`] reads a growing `metrics.jsonl`, [`worker`] is the
//! training thread.

mod labels;
mod setup;
mod tail;
mod worker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_plot::{Corner, Legend, Line, Plot};
use sftok_core::train::run_dir::{METRICS, RUN_CONFIG, RunDir};
use sftok_core::train::{StageKind, TrainConfig, TrainEvent};
use sftok_core::{DeviceChoice, SftokConfig};

use labels::{metric_colour, metric_label};
use setup::{
    FINETUNE_STEPS, check_finetune_base, check_new_run_dir, config_from_settings, default_run_dir,
    finetune_config, finetune_run_dir, gather_images, gui_words, resume_config,
};
use tail::{MetricSeries, MetricsTail, is_loss_term};
use worker::{Worker, WorkerMsg};

/// How often a followed run folder is read.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Points drawn per plotted series (longer series are thinned evenly).
const MAX_PLOT_POINTS: usize = 2000;

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
    fn normalized(mut self) -> Self {
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
struct Job {
    worker: Worker,
    kind: JobKind,
    /// Stopped with Pause (rather than Stop): only the words differ.
    pausing: bool,
}

enum JobKind {
    Train,
    FineTune { base: PathBuf },
}

/// What a run is, for the header and the ETA of a followed run.
#[derive(Debug, Clone, Default)]
struct RunInfo {
    stage: String,
    model: String,
    total_steps: u64,
    images_per_step: f64,
}

impl RunInfo {
    fn of(config: &TrainConfig) -> Self {
        RunInfo {
            stage: config.stage.to_string(),
            model: config.model.name.clone(),
            total_steps: config.steps,
            images_per_step: (config.batch_size * config.grad_accum.max(1)) as f64,
        }
    }

    /// Read loosely from a run's `config.json`, so that runs of other versions still show.
    fn read(run_dir: &Path) -> Option<Self> {
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
struct Follow {
    run_dir: PathBuf,
    tail: MetricsTail,
    info: Option<RunInfo>,
    next_check: Instant,
}

/// What the view shows: the app's own run, or a followed one.
#[derive(Default)]
struct LiveView {
    run_dir: Option<PathBuf>,
    following: bool,
    info: RunInfo,
    step: u64,
    resumed_from: Option<u64>,
    loss: Option<f64>,
    images_per_sec: Option<f64>,
    eta_secs: Option<f64>,
    device: Option<String>,
    status: String,
    failed: bool,
    metrics: MetricSeries,
    preview: Option<PathBuf>,
    preview_step: Option<u64>,
    last_checkpoint: Option<u64>,
    skipped: Vec<(PathBuf, String)>,
}

/// The preview image as a texture, reloaded only when its path changes.
#[derive(Default)]
struct PreviewTexture {
    shown: Option<PathBuf>,
    texture: Option<egui::TextureHandle>,
    failed: Option<(PathBuf, Instant)>,
}

impl PreviewTexture {
    fn update(&mut self, ctx: &egui::Context, want: Option<&Path>) {
        let Some(want) = want else {
            self.shown = None;
            self.texture = None;
            return;
        };
        if self.shown.as_deref() == Some(want) {
            return;
        }
        if let Some((path, at)) = &self.failed
            && path == want
            && at.elapsed() < FOLLOW_INTERVAL
        {
            return;
        }
        match load_color_image(want) {
            Ok(image) => {
                match &mut self.texture {
                    Some(texture) => texture.set(image, egui::TextureOptions::NEAREST),
                    None => {
                        self.texture = Some(ctx.load_texture(
                            "sftok-train-preview",
                            image,
                            egui::TextureOptions::NEAREST,
                        ))
                    }
                }
                self.shown = Some(want.to_path_buf());
                self.failed = None;
            }
            Err(_) => {
                // Probably still being written (previews are not written atomically): retry.
                self.failed = Some((want.to_path_buf(), Instant::now()));
                ctx.request_repaint_after(FOLLOW_INTERVAL);
            }
        }
    }
}

fn load_color_image(path: &Path) -> Result<egui::ColorImage, String> {
    let image = image::open(path).map_err(|e| e.to_string())?.to_rgba8();
    let size = [image.width() as usize, image.height() as usize];
    Ok(egui::ColorImage::from_rgba_unmultiplied(
        size,
        image.as_raw(),
    ))
}

/// Whether the run folder in the settings has a checkpoint (looked up at most once a second).
#[derive(Default)]
struct ResumeProbe {
    dir: Option<PathBuf>,
    step: Option<u64>,
    checked: Option<Instant>,
}

pub struct TrainingPanel {
    settings: TrainSettings,
    job: Option<Job>,
    follow: Option<Follow>,
    live: LiveView,
    error: Option<String>,
    preview: PreviewTexture,
    probe: ResumeProbe,
    device: DeviceChoice,
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

    /// Draws the view. `gallery` = paths of the images currently in the app's gallery.
    pub fn ui(&mut self, ui: &mut egui::Ui, gallery: &[PathBuf]) {
        let ctx = ui.ctx().clone();
        self.preview.update(&ctx, self.live.preview.as_deref());
        egui::ScrollArea::vertical()
            .id_salt("sftok-train-view")
            .auto_shrink(false)
            .show(ui, |ui| {
                ui.heading("Train");
                let idle = self.job.is_none();
                match self.job.as_ref().map(|j| &j.kind) {
                    // The form holds the settings of the user's own runs; greyed out during a
                    // fine-tune it read as that fine-tune's settings (issue 18).
                    Some(JobKind::FineTune { base }) => {
                        ui.label(format!(
                            "Fine-tuning {} on the gallery's images (stage 3, a short \
                             schedule). The form for your own runs comes back when it ends.",
                            base.display()
                        ));
                    }
                    _ => {
                        ui.add_enabled_ui(idle, |ui| self.form_ui(ui));
                    }
                }
                ui.add_space(6.0);
                self.buttons_ui(ui, &ctx);
                ui.separator();
                ui.add_enabled_ui(idle, |ui| self.finetune_ui(ui, gallery, &ctx));
                ui.separator();
                self.live_ui(ui);
            });
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

    // ---- actions ----

    fn report(&mut self, result: Result<(), String>) {
        if let Err(message) = result {
            self.error = Some(match self.error.take() {
                Some(earlier) => format!("{earlier}\n{message}"),
                None => message,
            });
        }
    }

    fn pause(&mut self) {
        if let Some(job) = &mut self.job {
            job.pausing = true;
        }
        self.request_stop();
    }

    /// Starts a new run (or resumes the one in the run folder) from the settings.
    fn start(&mut self, ctx: &egui::Context, resume: bool) -> Result<(), String> {
        if self.job.is_some() {
            return Err("a training is already running: stop it first".into());
        }
        let (run_dir, config) = if resume {
            let run_dir = self
                .settings
                .run_dir
                .clone()
                .ok_or("choose the run folder to resume")?;
            let config = resume_config(&run_dir, self.settings.steps)?;
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

    fn start_finetune_in(
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
        self.launch(config, run_dir, false, JobKind::FineTune { base }, ctx)
    }

    fn check_finetune(&self, base: &Path, images: &[PathBuf]) -> Result<(), String> {
        if self.job.is_some() {
            return Err("a training is already running: stop it before fine-tuning".into());
        }
        if images.is_empty() {
            return Err("the gallery is empty: add the images to fine-tune on first".into());
        }
        check_finetune_base(base)
    }

    fn launch(
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
        Ok(())
    }

    /// Follows a run folder: its metrics, previews and checkpoints, read once a second.
    fn follow(&mut self, run_dir: PathBuf) -> Result<(), String> {
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

    fn unfollow(&mut self) {
        if self.follow.take().is_some() {
            self.live = LiveView::default();
        }
        self.settings.followed = None;
    }

    /// Reads what a followed run wrote since the last look (at most once a second).
    fn tick_follow(&mut self) {
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
    fn handle(&mut self, message: WorkerMsg, outcomes: &mut Vec<TrainingOutcome>) {
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
                        let message = gui_words(&message);
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
    fn resumable_step(&mut self) -> Option<u64> {
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

    fn finetune_base(&self) -> PathBuf {
        self.settings
            .finetune_base
            .clone()
            .unwrap_or_else(crate::assets::default_model_dir)
    }

    // ---- drawing ----

    fn form_ui(&mut self, ui: &mut egui::Ui) {
        let s = &mut self.settings;
        egui::Grid::new("sftok-train-form")
            .num_columns(2)
            .spacing([12.0, 6.0])
            .show(ui, |ui| {
                let label = ui.label("Stage");
                ui.horizontal(|ui| {
                    egui::ComboBox::from_id_salt("sftok-train-stage")
                        .selected_text(stage_title(s.stage))
                        .show_ui(ui, |ui| {
                            for stage in STAGES {
                                ui.selectable_value(&mut s.stage, stage, stage_title(stage))
                                    .on_hover_text(stage_help(stage));
                            }
                        })
                        .response
                        .labelled_by(label.id);
                    ui.weak(stage_help(s.stage));
                });
                ui.end_row();

                if s.stage == StageKind::Stage2 {
                    ui.label("Unmasked inputs");
                    ui.horizontal(|ui| {
                        ui.checkbox(&mut s.vanilla, "Vanilla").on_hover_text(
                            "the ablation: unmasked positions hold the true codes instead of the model's own first prediction",
                        );
                        ui.add_enabled(
                            !s.vanilla,
                            egui::Slider::new(&mut s.replace_prob, 0.0..=1.0)
                                .text("replace probability"),
                        )
                        .on_hover_text(
                            "SFVR: the probability that an unmasked position holds the model's own prediction",
                        );
                    });
                    ui.end_row();
                }

                let label = ui.label("Model size");
                let from_init = matches!(s.stage, StageKind::Stage2 | StageKind::Stage3);
                ui.horizontal(|ui| {
                    ui.add_enabled_ui(!from_init, |ui| {
                        egui::ComboBox::from_id_salt("sftok-train-preset")
                            .selected_text(s.preset.as_str())
                            .show_ui(ui, |ui| {
                                for preset in SftokConfig::PRESETS {
                                    ui.selectable_value(&mut s.preset, preset.to_string(), *preset);
                                }
                            })
                            .response
                            .labelled_by(label.id);
                    });
                    if from_init {
                        ui.weak("taken from the starting checkpoint");
                    } else if s.stage == StageKind::Stage1 && s.teacher.is_some() {
                        ui.weak("the code grid comes from the teacher");
                    }
                });
                ui.end_row();

                path_row(
                    ui,
                    "Data folder",
                    &mut s.data,
                    "the images to train on (searched recursively)",
                    false,
                );
                path_row(ui, "Teacher", &mut s.teacher, teacher_hint(s.stage), true);
                path_row(
                    ui,
                    "Starting checkpoint",
                    &mut s.init,
                    init_hint(s.stage),
                    true,
                );

                let label = ui.label("Steps");
                ui.add(
                    egui::DragValue::new(&mut s.steps)
                        .range(1..=100_000_000)
                        .speed(10),
                )
                .labelled_by(label.id);
                ui.end_row();
                let label = ui.label("Batch size");
                ui.add(egui::DragValue::new(&mut s.batch_size).range(1..=4096))
                    .labelled_by(label.id);
                ui.end_row();

                path_row(
                    ui,
                    "Run folder",
                    &mut s.run_dir,
                    "a new folder under the app's data folder",
                    true,
                );
            });
        ui.collapsing("Advanced", |ui| {
            egui::Grid::new("sftok-train-advanced")
                .num_columns(2)
                .spacing([12.0, 6.0])
                .show(ui, |ui| {
                    let label = ui.label("Log metrics every");
                    ui.add(
                        egui::DragValue::new(&mut s.log_every)
                            .range(1..=100_000)
                            .suffix(" steps"),
                    )
                    .labelled_by(label.id);
                    ui.end_row();
                    let label = ui.label("Preview every");
                    ui.add(
                        egui::DragValue::new(&mut s.preview_every)
                            .range(0..=1_000_000)
                            .suffix(" steps"),
                    )
                    .labelled_by(label.id)
                    .on_hover_text("0: no previews");
                    ui.end_row();
                    let label = ui.label("Checkpoint every");
                    ui.add(
                        egui::DragValue::new(&mut s.checkpoint_every)
                            .range(1..=10_000_000)
                            .suffix(" steps"),
                    )
                    .labelled_by(label.id);
                    ui.end_row();
                    if matches!(s.stage, StageKind::Teacher | StageKind::Stage3) {
                        ui.label("Adversarial loss");
                        // Ticked means on: "off" beside a tick read as the opposite (issue 18).
                        let mut on = !s.no_gan;
                        ui.checkbox(&mut on, "on (GAN)").on_hover_text(
                            "a PatchGAN discriminator from half-way through the run; sharper \
                             images, lower PSNR",
                        );
                        s.no_gan = !on;
                        ui.end_row();
                    }
                });
        });
    }

    fn buttons_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let running = self.job.is_some();
        let stopping = self
            .job
            .as_ref()
            .is_some_and(|job| job.worker.stop_requested());
        let training = self
            .job
            .as_ref()
            .is_some_and(|job| matches!(job.kind, JobKind::Train));
        let resumable = if running { None } else { self.resumable_step() };
        ui.horizontal_wrapped(|ui| {
            if ui
                .add_enabled(!running, egui::Button::new("Start"))
                .on_hover_text("start a new run in the run folder")
                .clicked()
            {
                let result = self.start(ctx, false);
                self.report(result);
            }
            if ui
                .add_enabled(training && !stopping, egui::Button::new("Pause"))
                .on_hover_text(
                    "stop after writing a checkpoint; Resume continues the same run exactly",
                )
                .clicked()
            {
                self.pause();
            }
            let resume_text = match resumable {
                Some(step) => format!("Resume (step {step})"),
                None => "Resume".into(),
            };
            if ui
                .add_enabled(resumable.is_some(), egui::Button::new(resume_text))
                .on_hover_text("continue the run in the run folder from its latest checkpoint")
                .clicked()
            {
                let result = self.start(ctx, true);
                self.report(result);
            }
            if ui
                .add_enabled(
                    running && !stopping,
                    egui::Button::new(
                        egui::RichText::new("Stop").color(ui.visuals().error_fg_color),
                    ),
                )
                .on_hover_text("stop after writing a checkpoint and publish the model")
                .clicked()
            {
                self.request_stop();
            }
            ui.separator();
            if ui
                .add_enabled(!running, egui::Button::new("Open run…"))
                .on_hover_text(
                    "follow a run folder live (for example one started with `sftok train`)",
                )
                .clicked()
            {
                let picked = super::dialogs::run(|| {
                    rfd::FileDialog::new()
                        .set_title("Open a run folder")
                        .pick_folder()
                });
                let result = match picked {
                    Ok(Some(dir)) => self.follow(dir),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                self.report(result);
            }
            if self.follow.is_some() && ui.button("Stop following").clicked() {
                self.unfollow();
            }
            if stopping {
                ui.spinner();
                ui.label("writing a checkpoint…");
            }
        });
    }

    fn finetune_ui(&mut self, ui: &mut egui::Ui, gallery: &[PathBuf], ctx: &egui::Context) {
        ui.strong("Fine-tune on the gallery");
        ui.label(format!(
            "{FINETUNE_STEPS} steps of stage 3 (the decoder learns; encoder and quantizer stay frozen) on the {} gallery image{}. When it ends, the tuned model opens beside the base in Compare.",
            gallery.len(),
            if gallery.len() == 1 { "" } else { "s" }
        ));
        let mut base = Some(self.finetune_base());
        egui::Grid::new("sftok-train-finetune")
            .num_columns(2)
            .spacing([12.0, 6.0])
            .show(ui, |ui| {
                path_row(ui, "Base model", &mut base, "", false);
            });
        if base != Some(self.finetune_base()) {
            self.settings.finetune_base = base.clone();
        }
        if ui
            .add_enabled(!gallery.is_empty(), egui::Button::new("Fine-tune"))
            .on_disabled_hover_text("add images to the gallery first")
            .clicked()
            && let Some(base) = base
        {
            let result = self.start_finetune(base, gallery.to_vec(), ctx);
            self.report(result);
        }
    }

    fn live_ui(&mut self, ui: &mut egui::Ui) {
        let running = self.job.is_some();
        let live = &self.live;
        let Some(run_dir) = &live.run_dir else {
            ui.weak("No run yet: press Start, or Open run… to follow a run folder.");
            return;
        };
        ui.horizontal_wrapped(|ui| {
            ui.strong(if live.following { "Following" } else { "Run" });
            ui.label(run_dir.display().to_string());
        });
        let mut about = Vec::new();
        if !live.info.stage.is_empty() {
            about.push(live.info.stage.clone());
        }
        if !live.info.model.is_empty() {
            about.push(format!("model {}", live.info.model));
        }
        if let Some(device) = &live.device {
            about.push(format!("on {device}"));
        }
        if !about.is_empty() {
            ui.label(about.join(" · "));
        }
        if live.failed {
            ui.colored_label(ui.visuals().error_fg_color, &live.status);
        } else {
            ui.label(&live.status);
        }

        let total = live.info.total_steps;
        let fraction = if total > 0 {
            (live.step as f64 / total as f64).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .text(format!("step {} / {total}", live.step))
                .animate(running && fraction < 1.0),
        );

        let mut stats = Vec::new();
        if let Some(loss) = live.loss {
            stats.push(format!("loss {loss:.4}"));
        }
        if let Some(lr) = live.metrics.latest_f64("lr") {
            stats.push(format!("lr {lr:.2e}"));
        }
        if let Some(ips) = live.images_per_sec {
            stats.push(format!("{ips:.1} images/s"));
        }
        if let Some(eta) = live.eta_secs
            && live.step < total
            && (running || live.following)
        {
            stats.push(format!("ETA {}", format_duration(eta)));
        }
        if let Some(step) = live.last_checkpoint {
            stats.push(format!("checkpoint at step {step}"));
        }
        if !stats.is_empty() {
            ui.label(stats.join("   "));
        }
        let others: Vec<String> = live
            .metrics
            .latest()
            .iter()
            .filter(|(name, _)| {
                !is_loss_term(name)
                    && !matches!(
                        name.as_str(),
                        "step" | "lr" | "images_per_sec" | "images_seen" | "skipped_files"
                    )
            })
            .filter(|(name, _)| !name.starts_with("heldout_"))
            .filter_map(|(name, v)| {
                Some(format!(
                    "{} {}",
                    metric_label(name),
                    format_number(v.as_f64()?)
                ))
            })
            .collect();
        if !others.is_empty() {
            ui.label(others.join("   "));
        }
        if let Some((path, reason)) = live.skipped.last() {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                format!(
                    "{} unreadable image{} skipped; latest: {} ({reason})",
                    live.skipped.len(),
                    if live.skipped.len() == 1 { "" } else { "s" },
                    path.display()
                ),
            );
        }

        if live.metrics.is_empty() {
            ui.weak("No metrics yet: the first row is logged after “log metrics every” steps.");
        } else {
            let losses: Vec<(&str, Vec<[f64; 2]>)> = live
                .metrics
                .loss_names()
                .into_iter()
                .filter_map(|name| Some((name, thin(live.metrics.get(name)?, MAX_PLOT_POINTS))))
                .collect();
            ui.label("Losses");
            // The legend in the lower left: losses fall, so the newest points are on the
            // right and the early ones high; scrolling the page over a plot scrolls the page.
            Plot::new("sftok-train-losses")
                .height(220.0)
                .legend(Legend::default().position(Corner::LeftBottom))
                .allow_scroll(false)
                .x_axis_label("step")
                .show(ui, |plot| {
                    for (name, points) in losses {
                        plot.line(Line::new(metric_label(name), points).color(metric_colour(name)));
                    }
                });
            // The learning curve on the held-out images (`--eval-data`), live and EMA weights.
            let heldout: Vec<(&str, Vec<[f64; 2]>)> = ["heldout_psnr", "heldout_psnr_ema"]
                .into_iter()
                .filter_map(|name| Some((name, thin(live.metrics.get(name)?, MAX_PLOT_POINTS))))
                .collect();
            if !heldout.is_empty() {
                ui.label("Held-out PSNR (dB)");
                Plot::new("sftok-train-heldout")
                    .height(160.0)
                    .legend(Legend::default().position(Corner::LeftTop))
                    .allow_scroll(false)
                    .x_axis_label("step")
                    .show(ui, |plot| {
                        for (name, points) in heldout {
                            plot.line(
                                Line::new(metric_label(name), points).color(metric_colour(name)),
                            );
                        }
                    });
            }
            if let Some(lr) = live.metrics.get("lr") {
                let lr = thin(lr, MAX_PLOT_POINTS);
                ui.label("Learning rate");
                Plot::new("sftok-train-lr")
                    .height(120.0)
                    .allow_scroll(false)
                    .x_axis_label("step")
                    .show(ui, |plot| plot.line(Line::new("lr", lr)));
            }
        }

        if let Some(texture) = &self.preview.texture {
            ui.label(match live.preview_step {
                Some(step) => {
                    format!("Preview at step {step}: originals (top), reconstructions (bottom)")
                }
                None => "Preview: originals (top), reconstructions (bottom)".into(),
            });
            let size = texture.size_vec2();
            let scale = (ui.available_width() / size.x)
                .min(320.0 / size.y)
                .clamp(0.1, 8.0);
            ui.add(egui::Image::new((texture.id(), size * scale)));
        }
    }
}

const STAGES: [StageKind; 4] = [
    StageKind::Teacher,
    StageKind::Stage1,
    StageKind::Stage2,
    StageKind::Stage3,
];

fn stage_title(stage: StageKind) -> &'static str {
    match stage {
        StageKind::Teacher => "Teacher",
        StageKind::Stage1 => "Stage 1: warm-up",
        StageKind::Stage2 => "Stage 2: self-forcing",
        StageKind::Stage3 => "Stage 3: decoder fine-tuning",
    }
}

fn stage_help(stage: StageKind) -> &'static str {
    match stage {
        StageKind::Teacher => "the MaskGIT-VQGAN whose codes the tokenizer learns",
        StageKind::Stage1 => "every position masked; learns the teacher's codes",
        StageKind::Stage2 => "SFVR (or vanilla) masking; starts from the stage-1 run",
        StageKind::Stage3 => "pixel-space decoder fine-tuning; starts from the stage-2 run",
    }
}

fn teacher_hint(stage: StageKind) -> &'static str {
    match stage {
        StageKind::Teacher => "not used by this stage",
        StageKind::Stage1 => "required: a teacher run or an imported official teacher",
        StageKind::Stage2 => "optional: the starting checkpoint carries its teacher",
        StageKind::Stage3 => "optional: copied into the published model",
    }
}

fn init_hint(stage: StageKind) -> &'static str {
    match stage {
        StageKind::Teacher => "optional: continue from a teacher run or model",
        StageKind::Stage1 => "optional: start from an earlier run instead of fresh weights",
        StageKind::Stage2 => "required: the stage-1 run",
        StageKind::Stage3 => "required: the stage-2 run",
    }
}

/// A label, a folder picker and the chosen folder (or a hint), as one row of a grid.
fn path_row(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut Option<PathBuf>,
    hint: &str,
    clearable: bool,
) {
    ui.label(label);
    ui.horizontal(|ui| {
        if ui.button("Choose…").clicked() {
            let mut dialog = rfd::FileDialog::new().set_title(label);
            if let Some(start) = value.as_deref().and_then(Path::parent)
                && start.is_dir()
            {
                dialog = dialog.set_directory(start);
            }
            if let Some(dir) = dialog.pick_folder() {
                *value = Some(dir);
            }
        }
        if clearable && value.is_some() && ui.small_button("×").on_hover_text("clear").clicked() {
            *value = None;
        }
        match value {
            Some(path) => {
                let text = path.display().to_string();
                ui.add(egui::Label::new(&text).truncate())
                    .on_hover_text(text);
            }
            None => {
                ui.weak(hint);
            }
        }
    });
    ui.end_row();
}

/// At most `max` points, evenly spaced, always keeping the last.
fn thin(points: &[[f64; 2]], max: usize) -> Vec<[f64; 2]> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max - 1);
    let mut out: Vec<[f64; 2]> = points.iter().step_by(stride).copied().collect();
    if let Some(last) = points.last()
        && out.last() != Some(last)
    {
        out.push(*last);
    }
    out
}

/// The newest `previews/step_<N>.png` of a run folder.
fn newest_preview(run_dir: &Path) -> Option<(u64, PathBuf)> {
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
fn followed_status(run_dir: &Path, step: u64, total: u64) -> String {
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

fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn format_number(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests;
