//! The app state and its frame: top bar, gallery, the current view, messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sftok_core::DeviceChoice;

use super::gallery::{Gallery, is_image_path, sample_paths};
use super::model_worker::{ModelCommand, ModelEvent, ModelInfo, ModelWorker, Slot, TraceKey};
use super::settings::{STORAGE_KEY, Settings, View};
use super::textures::TraceCache;
use super::training::{TrainingOutcome, TrainingPanel};

/// Scrubber state shared by the reconstruct and compare views.
pub struct Scrubber {
    /// 0 = before the first step, T = done.
    pub step: usize,
    pub playing: bool,
    pub last_advance: Instant,
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber {
            step: 8,
            playing: false,
            last_advance: Instant::now(),
        }
    }
}

/// Edits to the latent tokens of the selected image (the token editor).
#[derive(Default)]
pub struct TokenEdit {
    /// The token being edited and the code typed for it.
    pub selected: Option<usize>,
    pub new_code: i64,
    /// The latent ids in force per image (absent: the encoder's).
    pub edited: std::collections::HashMap<u64, Vec<i64>>,
}

#[derive(Default)]
pub struct ModelSlot {
    pub info: Option<ModelInfo>,
    pub loading: Option<PathBuf>,
}

pub struct StudioApp {
    pub settings: Settings,
    pub gallery: Gallery,
    pub worker: ModelWorker,
    pub traces: TraceCache,
    pub slots: [ModelSlot; 2],
    pub scrub: Scrubber,
    pub edit: TokenEdit,
    pub training: TrainingPanel,
    /// The Generate view's generator and its last result.
    pub generation: super::views::generate::GenerateState,
    /// Messages for the user (errors say what to do), newest last.
    pub messages: Vec<Message>,
    pub device: String,
    pub gpu_grid: bool,
    close_dialog: bool,
    /// Close the window once the training has stopped.
    quit_when_idle: bool,
    announced_first_trace: bool,
    assets: PathBuf,
    /// The typed path of the "Open path" row (shown after a click on *Type a path...* or when
    /// no file dialog could be shown); `None` while the row is hidden.
    pub path_entry: Option<String>,
}

impl StudioApp {
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, STORAGE_KEY))
            .unwrap_or_default();
        let gpu_grid = match &cc.wgpu_render_state {
            Some(rs) => {
                super::gpu_grid::install(rs);
                true
            }
            None => false,
        };
        let mut app = Self::with_settings(&cc.egui_ctx, settings, crate::assets::assets_dir());
        app.gpu_grid = gpu_grid;
        app
    }

    /// The app without a window (tests drive it through egui_kittest).
    pub fn with_settings(ctx: &egui::Context, settings: Settings, assets: PathBuf) -> Self {
        let worker = ModelWorker::spawn(DeviceChoice::Auto, ctx.clone());
        let training = TrainingPanel::new(settings.train.clone());
        let mut app = StudioApp {
            settings,
            gallery: Gallery::default(),
            worker,
            traces: TraceCache::default(),
            slots: [ModelSlot::default(), ModelSlot::default()],
            scrub: Scrubber::default(),
            edit: TokenEdit::default(),
            training,
            generation: Default::default(),
            messages: Vec::new(),
            device: "starting...".into(),
            gpu_grid: false,
            close_dialog: false,
            quit_when_idle: false,
            announced_first_trace: false,
            assets,
            path_entry: None,
        };
        app.scrub.step = app.settings.steps;
        // Models: the last ones used, else the bundled SFVR and vanilla pair.
        let bundled = bundled_models(&app.assets);
        let a = app
            .settings
            .model_a
            .clone()
            .filter(|d| d.is_dir())
            .unwrap_or(bundled.0);
        let b = app
            .settings
            .model_b
            .clone()
            .filter(|d| d.is_dir())
            .unwrap_or(bundled.1);
        app.load_model(Slot::A, a);
        app.load_model(Slot::B, b);
        // Images: those open last time, else the samples.
        let previous: Vec<PathBuf> = app
            .settings
            .images
            .iter()
            .filter(|p| p.is_file())
            .cloned()
            .collect();
        let images = if previous.is_empty() {
            sample_paths(&app.assets)
        } else {
            previous
        };
        app.gallery.open(images, ctx);
        app
    }

    /// The folder of bundled assets (samples, models).
    pub fn assets(&self) -> &Path {
        &self.assets
    }

    pub fn slot(&self, slot: Slot) -> &ModelSlot {
        &self.slots[slot as usize]
    }

    pub fn load_model(&mut self, slot: Slot, dir: PathBuf) {
        self.slots[slot as usize].loading = Some(dir.clone());
        self.traces.clear_slot(slot);
        self.worker.send(ModelCommand::Load { slot, dir });
    }

    /// The trace key of the selected image at the current T (with its edited tokens, if any).
    pub fn current_key(&self, image_id: u64) -> TraceKey {
        TraceKey {
            image_id,
            steps: self.settings.steps,
            latent_override: self.edit.edited.get(&image_id).cloned(),
        }
    }

    /// Asks the worker for a trace unless it is cached or on its way.
    pub fn request_trace(&mut self, slot: Slot, key: &TraceKey) {
        if self.slot(slot).info.is_none() {
            return;
        }
        let Some(image) = self.gallery.get(key.image_id) else {
            return;
        };
        if self.traces.mark_pending(slot, key) {
            self.worker.send(ModelCommand::Reconstruct {
                slot,
                key: key.clone(),
                image: image.image.clone(),
            });
        }
    }

    /// Asks the worker to decode this step of a shown trace next, once per step.
    pub fn prefer_step(&mut self, slot: Slot, key: &TraceKey, step: usize) {
        if self.traces.mark_preferred(slot, key, step) {
            self.worker.send(ModelCommand::PreferStep {
                slot,
                key: key.clone(),
                step,
            });
        }
    }

    fn handle_model_events(&mut self) {
        for event in self.worker.poll() {
            match event {
                ModelEvent::DeviceReady(d) => self.device = d,
                ModelEvent::DeviceFailed(e) => {
                    self.device = "none".into();
                    self.messages
                        .push_error(format!("No device for the models: {e}"));
                }
                ModelEvent::Loaded { slot, info } => {
                    let s = &mut self.slots[slot as usize];
                    s.loading = None;
                    match slot {
                        Slot::A => self.settings.model_a = Some(info.dir.clone()),
                        Slot::B => self.settings.model_b = Some(info.dir.clone()),
                    }
                    eprintln!(
                        "sftok: model {} loaded from {}",
                        slot.name(),
                        info.dir.display()
                    );
                    s.info = Some(info);
                    self.traces.clear_slot(slot);
                }
                ModelEvent::LoadFailed { slot, dir, message } => {
                    self.slots[slot as usize].loading = None;
                    self.messages.push_error(format!(
                        "Model {} could not be loaded from {}: {message}. Choose a model directory (config.json + model.safetensors) made by `sftok import` or `sftok train`.",
                        slot.name(),
                        dir.display()
                    ));
                }
                ModelEvent::Trace { slot, key, trace } => {
                    if !self.announced_first_trace {
                        // The window test waits for this line before its screenshot.
                        eprintln!("sftok: first reconstruction ready");
                        self.announced_first_trace = true;
                    }
                    self.traces.insert(slot, key, *trace);
                }
                ModelEvent::GeneratorLoaded(info) => {
                    self.generation.loading = None;
                    self.settings.generator = Some(info.dir.clone());
                    self.generation.info = Some(info);
                    self.generation.result = None;
                }
                ModelEvent::GeneratorLoadFailed { dir, message } => {
                    self.generation.loading = None;
                    let text = format!(
                        "No generator could be loaded from {}: {message}. Train one with `sftok \
                         train generator --data DIR --tokenizer MODEL --out RUN`, then Load \
                         generator... and pick the run.",
                        dir.display()
                    );
                    self.generation.load_error = Some(text.clone());
                    self.messages.push_error(text);
                }
                ModelEvent::Generated(data) => {
                    if self.generation.result.is_none() {
                        // The window test waits for this line before its screenshot.
                        eprintln!("sftok: first generation ready");
                    }
                    self.generation.show(*data);
                }
                ModelEvent::GenerateFailed(message) => {
                    self.generation.busy = false;
                    self.messages
                        .push_error(format!("Generation failed: {message}"));
                }
                ModelEvent::StepImage {
                    slot,
                    key,
                    step,
                    image,
                } => self
                    .traces
                    .update(slot, &key, |t| t.set_step_image(step, image)),
                ModelEvent::Teacher {
                    slot,
                    key,
                    image,
                    ids,
                } => self
                    .traces
                    .update(slot, &key, |t| t.set_teacher(image, ids)),
                ModelEvent::TraceFailed { slot, key, message } => {
                    self.messages
                        .push_error(format!("Reconstruction failed: {message}"));
                    self.traces.fail(slot, key, message);
                }
            }
        }
    }

    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        let mut files = Vec::new();
        for path in dropped {
            if path.is_dir() {
                if let Err(e) = self.gallery.open_folder(&path, ctx) {
                    self.messages.push_error(e);
                }
            } else if is_image_path(&path) {
                files.push(path);
            } else {
                self.messages.push_error(format!(
                    "{} is not an image this app reads (JPEG, PNG, WebP or BMP)",
                    path.display()
                ));
            }
        }
        self.gallery.open(files, ctx);
    }

    /// Opens `tuned` beside `base` in the compare view, and says which model B it replaced (so
    /// that the swap is never silent, and the user knows what to load back).
    pub fn show_comparison(&mut self, base: PathBuf, tuned: PathBuf) {
        let previous_b = self.slot(Slot::B).info.as_ref().map(|i| i.dir.clone());
        let note = match previous_b {
            Some(old) if old != tuned => format!(
                "The fine-tuned model is in {} and now open as B beside its base (A); B was {}                  (load it again into B to go back).",
                tuned.display(),
                old.display()
            ),
            _ => format!(
                "The fine-tuned model is in {} and now open as B beside its base (A).",
                tuned.display()
            ),
        };
        self.messages.push_info(note);
        self.load_model(Slot::A, base);
        self.load_model(Slot::B, tuned);
        self.settings.view = View::Compare;
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.heading("SFTok Studio");
            ui.separator();
            for (view, label) in [
                (View::Reconstruct, "Reconstruct"),
                (View::Compare, "Compare"),
                (View::Generate, "Generate"),
                (View::Train, "Train"),
            ] {
                ui.selectable_value(&mut self.settings.view, view, label);
            }
            ui.separator();
            if ui.button("Open images...").clicked() {
                let mut dialog = rfd::FileDialog::new()
                    .add_filter("images", &["png", "jpg", "jpeg", "webp", "bmp"]);
                if let Some(dir) = &self.settings.last_image_dir {
                    dialog = dialog.set_directory(dir);
                }
                match super::dialogs::run(|| dialog.pick_files()) {
                    Ok(Some(files)) => {
                        self.settings.last_image_dir = files
                            .first()
                            .and_then(|f| f.parent())
                            .map(Path::to_path_buf);
                        self.gallery.open(files, ui.ctx());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.messages.push_error(e);
                        self.path_entry.get_or_insert_default();
                    }
                }
            }
            if ui.button("Open folder...").clicked() {
                match super::dialogs::run(|| rfd::FileDialog::new().pick_folder()) {
                    Ok(Some(dir)) => {
                        self.settings.last_image_dir = Some(dir.clone());
                        if let Err(e) = self.gallery.open_folder(&dir, ui.ctx()) {
                            self.messages.push_error(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.messages.push_error(e);
                        self.path_entry.get_or_insert_default();
                    }
                }
            }
            if ui
                .button("Type a path")
                .on_hover_text("open an image or a folder of images by its path, without a dialog")
                .clicked()
            {
                self.path_entry.get_or_insert_default();
            }
            if ui.button("Add samples").clicked() {
                self.gallery.open(sample_paths(&self.assets), ui.ctx());
            }
            ui.separator();
            // One line whatever the window's width: cut with an ellipsis, the whole on hover.
            let device = format!("device: {}", self.device);
            ui.add(egui::Label::new(device.as_str()).truncate())
                .on_hover_text(device);
        });
    }

    /// The path row: a text field for a file or folder, for desktops where no dialog appears.
    fn path_entry_ui(&mut self, ui: &mut egui::Ui) {
        let Some(mut text) = self.path_entry.take() else {
            return;
        };
        let mut keep = true;
        ui.horizontal(|ui| {
            ui.label("Image or folder path:");
            let field = ui.add(
                egui::TextEdit::singleline(&mut text)
                    .hint_text("/home/me/photos or /home/me/cat.jpg")
                    .desired_width(420.0),
            );
            let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Open path").clicked() || entered {
                match self.open_typed_path(&text, ui.ctx()) {
                    Ok(()) => keep = false,
                    Err(e) => self.messages.push_error(e),
                }
            }
            if ui.button("Close").clicked() {
                keep = false;
            }
        });
        if keep {
            self.path_entry = Some(text);
        }
    }

    /// Opens a typed path: a folder (recursively) or one image; `~/` is the home folder.
    pub fn open_typed_path(&mut self, text: &str, ctx: &egui::Context) -> Result<(), String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("Type the path of an image or of a folder of images first.".into());
        }
        let path = match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(text),
        };
        if path.is_dir() {
            self.settings.last_image_dir = Some(path.clone());
            return self.gallery.open_folder(&path, ctx).map(|_| ());
        }
        if !path.exists() {
            return Err(format!(
                "{} does not exist: check the path (it is read from the folder the app was                  started in unless it starts with /).",
                path.display()
            ));
        }
        if !is_image_path(&path) {
            return Err(format!(
                "{} is not an image this app reads (JPEG, PNG, WebP or BMP), nor a folder.",
                path.display()
            ));
        }
        self.settings.last_image_dir = path.parent().map(Path::to_path_buf);
        self.gallery.open(vec![path], ctx);
        Ok(())
    }

    fn messages_ui(&mut self, ui: &mut egui::Ui) {
        let mut dismiss = None;
        for (i, m) in self.messages.iter().enumerate().rev().take(3) {
            // Wrapped, with Dismiss first: a long path must not push the button out of a small
            // window.
            ui.horizontal_wrapped(|ui| {
                if ui.small_button("Dismiss").clicked() {
                    dismiss = Some(i);
                }
                // Failures in the error colour, news (a finished run) in the normal text colour.
                let colour = if m.error {
                    ui.visuals().error_fg_color
                } else {
                    ui.visuals().strong_text_color()
                };
                // (Words, not symbols: egui's bundled fonts have no warning sign.)
                ui.colored_label(
                    colour,
                    egui::RichText::new(if m.error { "Problem:" } else { "Done:" }).strong(),
                );
                ui.colored_label(colour, &m.text);
            });
        }
        if let Some(i) = dismiss {
            self.messages.remove(i);
        }
    }

    fn close_dialog_ui(&mut self, ui: &mut egui::Ui) {
        if !self.close_dialog {
            return;
        }
        egui::Window::new("A training is running")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ui.ctx(), |ui| {
                ui.label("Closing the window stops the training after it writes a checkpoint; resume it later from the Train view or with `sftok train ... --resume`.");
                ui.horizontal(|ui| {
                    if ui.button("Stop with a checkpoint and quit").clicked() {
                        self.training.request_stop();
                        self.close_dialog = false;
                        // Closing resumes in `logic` once the run has ended.
                        self.quit_when_idle = true;
                    }
                    if ui.button("Keep training").clicked() {
                        self.close_dialog = false;
                    }
                });
            });
    }
}

impl eframe::App for StudioApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.handle_model_events();
        for e in self.gallery.poll() {
            self.messages.push_error(e);
        }
        self.handle_dropped_files(ctx);
        for outcome in self.training.poll(ctx) {
            match outcome {
                TrainingOutcome::FineTuned { base, tuned } => self.show_comparison(base, tuned),
                TrainingOutcome::RunEnded {
                    model_dir,
                    stopped,
                    paused,
                } => self.messages.push_info(format!(
                    "Training {}; its model is in {} (load it into A or B to look at it).",
                    if paused {
                        "paused (Resume continues it)"
                    } else if stopped {
                        "stopped"
                    } else {
                        "finished"
                    },
                    model_dir.display()
                )),
            }
        }
        if self.training.take_started() {
            // What kept a run from starting is fixed now: its problems would only mislead.
            self.messages.retain(|m| !m.from_training);
        }
        if let Some(e) = self.training.take_error() {
            self.messages.push(Message {
                text: e,
                error: true,
                from_training: true,
            });
        }
        // Never lose a running training to a closed window.
        if ctx.input(|i| i.viewport().close_requested()) && self.training.is_running() {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.close_dialog = true;
        }
        if self.quit_when_idle {
            if self.training.is_running() {
                ctx.request_repaint_after(Duration::from_millis(200));
            } else {
                self.quit_when_idle = false;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
        }
        // Playback of the scrubber.
        if self.scrub.playing {
            let period = Duration::from_millis(600);
            if self.scrub.last_advance.elapsed() >= period {
                self.scrub.last_advance = Instant::now();
                if self.scrub.step >= self.settings.steps {
                    self.scrub.step = 0;
                } else {
                    self.scrub.step += 1;
                }
            }
            ctx.request_repaint_after(period);
        }
        self.settings.train = self.training.settings();
        self.settings.images = self.gallery.paths();
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("top").show(ui, |ui| {
            self.top_bar(ui);
            self.path_entry_ui(ui);
        });
        if !self.messages.is_empty() {
            egui::Panel::bottom("messages").show(ui, |ui| self.messages_ui(ui));
        }
        egui::Panel::left("gallery")
            .resizable(true)
            .default_size(190.0)
            .show(ui, |ui| {
                ui.strong("Images");
                self.gallery.ui(ui);
            });
        // Reconstruct and Compare scroll: at 1000x700 the token editor sat below the window's
        // edge with no way to reach it (issue 18).
        egui::CentralPanel::default().show(ui, |ui| match self.settings.view {
            View::Reconstruct => {
                egui::ScrollArea::both()
                    .id_salt("reconstruct-scroll")
                    .show(ui, |ui| super::views::reconstruct::view_ui(self, ui));
            }
            View::Compare => {
                egui::ScrollArea::both()
                    .id_salt("compare-scroll")
                    .show(ui, |ui| super::views::compare::view_ui(self, ui));
            }
            View::Generate => {
                egui::ScrollArea::both()
                    .id_salt("generate-scroll")
                    .show(ui, |ui| super::views::generate::view_ui(self, ui));
            }
            View::Train => {
                let paths = self.gallery.paths();
                self.training.ui(ui, &paths);
            }
        });
        self.close_dialog_ui(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.settings);
    }
}

/// The bundled SFVR and vanilla models, or the small default model for both when they are absent.
pub fn bundled_models(assets: &Path) -> (PathBuf, PathBuf) {
    let models = assets.join("models");
    let (sfvr, vanilla) = (models.join("sfvr"), models.join("vanilla"));
    if sfvr.join("config.json").is_file() && vanilla.join("config.json").is_file() {
        (sfvr, vanilla)
    } else {
        (models.join("default"), models.join("default"))
    }
}

/// A line in the message bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub text: String,
    /// A failure (shown in the error colour) rather than news.
    pub error: bool,
    /// A problem the training panel reported (cleared when a run starts).
    pub from_training: bool,
}

/// Pushing messages by kind.
pub trait Messages {
    fn push_error(&mut self, text: impl Into<String>);
    fn push_info(&mut self, text: impl Into<String>);
}

impl Messages for Vec<Message> {
    fn push_error(&mut self, text: impl Into<String>) {
        self.push(Message {
            text: text.into(),
            error: true,
            from_training: false,
        });
    }
    fn push_info(&mut self, text: impl Into<String>) {
        self.push(Message {
            text: text.into(),
            error: false,
            from_training: false,
        });
    }
}
