//! The Train view: the form for a run (stage, model size, folders, steps), its buttons (start,
//! pause, resume, stop, open a run), the one-click fine-tune, and the live part: status, losses,
//! learning rate and held-out curves, the latest preview. What happens when a button is pressed
//! is the controller's ([`crate::gui::training::TrainingPanel`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use egui_plot::{Corner, Legend, Line, Plot};
use sftok_core::SftokConfig;
use sftok_core::train::StageKind;

use crate::gui::training::labels::{metric_colour, metric_label};
use crate::gui::training::setup::FINETUNE_STEPS;
use crate::gui::training::tail::is_loss_term;
use crate::gui::training::{FOLLOW_INTERVAL, JobKind, MAX_PLOT_POINTS, TrainingPanel};
use crate::words::count_noun;

impl TrainingPanel {
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
                let picked = crate::gui::dialogs::run(|| {
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
            "{FINETUNE_STEPS} steps of stage 3 (the decoder learns; encoder and quantizer stay frozen) on the {}. When it ends, the tuned model opens beside the base in Compare.",
            count_noun(gallery.len(), "gallery image")
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
                    "{} skipped; latest: {} ({reason})",
                    count_noun(live.skipped.len(), "unreadable image"),
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

/// The preview image as a texture, reloaded only when its path changes.
#[derive(Default)]
pub(crate) struct PreviewTexture {
    shown: Option<PathBuf>,
    pub(crate) texture: Option<egui::TextureHandle>,
    failed: Option<(PathBuf, Instant)>,
}

impl PreviewTexture {
    pub(crate) fn update(&mut self, ctx: &egui::Context, want: Option<&Path>) {
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
pub(crate) fn thin(points: &[[f64; 2]], max: usize) -> Vec<[f64; 2]> {
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

pub(crate) fn format_duration(secs: f64) -> String {
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
