//! The Generate view: class, guidance, temperature, seed and count; the samples; for the chosen
//! one, the latent-token strip filling in over the generator's steps (each token coloured by the
//! probability it was sampled with), then the decoder's steps as a scrubber over its images.
//! The generation itself runs on the model worker ([`crate::gui::generation_data`]).

use std::path::PathBuf;
use std::sync::Arc;

use egui::{Color32, RichText, Sense, TextureHandle, TextureOptions, Vec2, vec2};

use crate::gui::app::{Messages, StudioApp};
use crate::gui::gallery::rgb_to_color_image;
use crate::gui::generation_data::{GenerateRequest, GenerationData, TokenState};
use crate::gui::model_worker::{GeneratorInfo, ModelCommand, Slot};
use crate::gui::token_grid::heat_colour;

/// Side of a sample's thumbnail and of the decoder's step image, in points.
const THUMB: f32 = 96.0;
const LARGE: f32 = 224.0;

/// Textures of one generation, uploaded the first time the view shows it.
struct GenerationTextures {
    samples: Vec<TextureHandle>,
    /// `[sample][decoder step]`.
    decoder_steps: Vec<Vec<TextureHandle>>,
}

/// What the Generate view holds between frames.
#[derive(Default)]
pub struct GenerateState {
    pub info: Option<GeneratorInfo>,
    pub loading: Option<PathBuf>,
    /// Set when loading failed (the view offers to load another).
    pub load_error: Option<String>,
    pub busy: bool,
    pub result: Option<Arc<GenerationData>>,
    textures: Option<GenerationTextures>,
    pub selected: usize,
    /// 1..=T of the generator, then the decoder's 1..=T.
    pub generator_step: usize,
    pub decoder_step: usize,
    /// Whether the view has generated once by itself (on first showing).
    pub auto_generated: bool,
}

impl GenerateState {
    /// A new result: every scrubber at its end, the first sample chosen.
    pub fn show(&mut self, data: GenerationData) {
        self.generator_step = data.samples.first().map_or(0, |s| s.generator_steps.len());
        self.decoder_step = data.samples.first().map_or(0, |s| s.decoder_images.len());
        self.selected = 0;
        self.textures = None;
        self.result = Some(Arc::new(data));
        self.busy = false;
    }
}

pub fn load_generator(app: &mut StudioApp, dir: PathBuf) {
    app.generation.loading = Some(dir.clone());
    app.generation.load_error = None;
    app.worker.send(ModelCommand::LoadGenerator { dir });
}

/// Asks the worker for images with the form's settings.
pub fn request_generation(app: &mut StudioApp) {
    let g = &app.settings.generate;
    let request = GenerateRequest {
        class: g.class,
        count: g.count.clamp(1, 32),
        guidance: g.guidance,
        temperature: g.temperature,
        seed: g.seed,
        steps: g.steps.max(1),
        decoder_steps: g.decoder_steps.max(1),
    };
    app.generation.busy = true;
    app.worker.send(ModelCommand::Generate(request));
}

pub fn view_ui(app: &mut StudioApp, ui: &mut egui::Ui) {
    if app.generation.info.is_none()
        && app.generation.loading.is_none()
        && app.generation.load_error.is_none()
    {
        let dir = app
            .settings
            .generator
            .clone()
            .filter(|d| d.is_dir())
            .unwrap_or_else(|| crate::assets::generator_dir(app.assets()));
        load_generator(app, dir);
    }
    generator_line_ui(app, ui);
    let Some(info) = app.generation.info.clone() else {
        return;
    };
    // The first time the view has a generator and a tokenizer, it shows something at once.
    if !app.generation.auto_generated && app.slot(Slot::A).info.is_some() {
        app.generation.auto_generated = true;
        if app.generation.result.is_none() && !app.generation.busy {
            request_generation(app);
        }
    }
    form_ui(app, ui, &info);
    ui.separator();
    let Some(data) = app.generation.result.clone() else {
        if !app.generation.busy {
            ui.label("Press \"Generate images\" to make images of the chosen class.");
        }
        return;
    };
    results_ui(app, ui, &data);
}

fn generator_line_ui(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        ui.strong("Generator:");
        match (&app.generation.info, &app.generation.loading) {
            (_, Some(dir)) => {
                ui.spinner();
                ui.label(format!("loading {}...", dir.display()));
            }
            (Some(info), None) => {
                ui.label(format!(
                    "{} ({} layers, {} classes, {} tokens of {} codes)",
                    info.dir.display(),
                    info.layers,
                    info.classes.len(),
                    info.image_seq_len,
                    info.codebook_size
                ));
            }
            (None, None) => {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    app.generation
                        .load_error
                        .clone()
                        .unwrap_or_else(|| "none loaded".into()),
                );
            }
        }
        if ui.button("Load generator...").clicked() {
            match crate::gui::dialogs::run(|| rfd::FileDialog::new().pick_folder()) {
                Ok(Some(dir)) => load_generator(app, dir),
                Ok(None) => {}
                Err(e) => app.messages.push_error(e),
            }
        }
    });
    if let Some(a) = &app.slot(Slot::A).info {
        ui.label(format!(
            "Its tokens are decoded by model A: {} ({} tokens of {} codes).",
            a.dir.display(),
            a.latent_tokens,
            a.latent_codebook
        ));
    }
}

fn form_ui(app: &mut StudioApp, ui: &mut egui::Ui, info: &GeneratorInfo) {
    let g = &mut app.settings.generate;
    if g.class.is_some_and(|c| c >= info.classes.len()) {
        g.class = Some(0);
    }
    let mut generate = false;
    ui.horizontal_wrapped(|ui| {
        ui.label("Class:");
        let label =
            |c: Option<usize>| c.map_or("unconditional".to_string(), |c| info.classes[c].clone());
        egui::ComboBox::from_id_salt("generate-class")
            .selected_text(label(g.class))
            .show_ui(ui, |ui| {
                for c in (0..info.classes.len()).map(Some).chain([None]) {
                    ui.selectable_value(&mut g.class, c, label(c));
                }
            });
        ui.add(egui::Slider::new(&mut g.guidance, 0.0..=10.0).text("guidance"))
            .on_hover_text(
                "Classifier-free guidance: how much more the class counts than no class (0: none)",
            );
        ui.add(egui::Slider::new(&mut g.temperature, 0.0..=5.0).text("temperature"))
            .on_hover_text(
                "Randomness of the sampling at the first step (0: always the most likely token)",
            );
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("Seed:");
        ui.add(egui::DragValue::new(&mut g.seed));
        ui.label("Images:");
        ui.add(egui::DragValue::new(&mut g.count).range(1..=32));
        ui.label("Generator steps:");
        ui.add(egui::DragValue::new(&mut g.steps).range(1..=32));
        ui.label("Decoder steps:");
        ui.add(egui::DragValue::new(&mut g.decoder_steps).range(1..=32));
        let busy = app.generation.busy;
        if ui
            .add_enabled(!busy, egui::Button::new("Generate images"))
            .clicked()
        {
            generate = true;
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Regenerate"))
            .on_hover_text("The same settings with the next seed")
            .clicked()
        {
            g.seed = g.seed.wrapping_add(1);
            generate = true;
        }
        if busy {
            ui.spinner();
            ui.label("generating...");
        }
    });
    if generate {
        request_generation(app);
    }
}

fn results_ui(app: &mut StudioApp, ui: &mut egui::Ui, data: &GenerationData) {
    let state = &mut app.generation;
    let textures = state.textures.get_or_insert_with(|| {
        let ctx = ui.ctx();
        let load = |name: String, im: &image::RgbImage| {
            ctx.load_texture(name, rgb_to_color_image(im), TextureOptions::NEAREST)
        };
        GenerationTextures {
            samples: data
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| load(format!("generated-{i}"), &s.image))
                .collect(),
            decoder_steps: data
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.decoder_images
                        .iter()
                        .enumerate()
                        .map(|(k, im)| load(format!("generated-{i}-step-{k}"), im))
                        .collect()
                })
                .collect(),
        }
    });
    let r = &data.request;
    ui.horizontal_wrapped(|ui| {
        ui.strong(format!(
            "{} samples of {}",
            data.samples.len(),
            data.class_label
        ));
        ui.label(format!(
            "(guidance {}, temperature {}, seed {}; click one to follow it)",
            r.guidance, r.temperature, r.seed
        ));
    });
    let mut save = false;
    ui.horizontal_wrapped(|ui| {
        for (i, texture) in textures.samples.iter().enumerate() {
            let image = egui::Image::new(texture).fit_to_exact_size(Vec2::splat(THUMB));
            let response = ui
                .add(egui::Button::image(image).selected(state.selected == i))
                .on_hover_text(format!("sample {}", i + 1));
            if response.clicked() {
                state.selected = i;
            }
        }
        if ui.button("Save grid...").clicked() {
            save = true;
        }
    });
    let i = state.selected.min(data.samples.len().saturating_sub(1));
    let sample = &data.samples[i];
    ui.separator();
    ui.strong(format!("Sample {}: the generator's steps", i + 1));
    let t_gen = sample.generator_steps.len();
    ui.horizontal(|ui| {
        ui.add(
            egui::Slider::new(&mut state.generator_step, 1..=t_gen.max(1))
                .text(format!("generator step (of {t_gen})")),
        );
    });
    let step = state.generator_step.clamp(1, t_gen.max(1));
    if let Some(tokens) = sample.generator_steps.get(step - 1) {
        let known = tokens.iter().filter(|t| t.id.is_some()).count();
        let new = tokens.iter().filter(|t| t.new).count();
        ui.label(format!(
            "Latent tokens after step {step}: {known} of {} known, {new} committed now (outlined). \
             Colour: the probability the token was sampled with.",
            tokens.len()
        ));
        token_strip_ui(ui, tokens);
    }
    ui.separator();
    let t_dec = sample.decoder_images.len();
    ui.strong(format!("Sample {}: the decoder's steps", i + 1));
    ui.add(
        egui::Slider::new(&mut state.decoder_step, 1..=t_dec.max(1))
            .text(format!("decoder step (of {t_dec})")),
    );
    let k = state.decoder_step.clamp(1, t_dec.max(1));
    ui.horizontal(|ui| {
        if let Some(texture) = textures.decoder_steps[i].get(k - 1) {
            ui.vertical(|ui| {
                ui.label(format!("after decoder step {k}"));
                ui.add(egui::Image::new(texture).fit_to_exact_size(Vec2::splat(LARGE)));
            });
        }
        ui.vertical(|ui| {
            ui.label("final");
            ui.add(egui::Image::new(&textures.samples[i]).fit_to_exact_size(Vec2::splat(LARGE)));
        });
    });
    if save {
        let dialog = rfd::FileDialog::new()
            .set_file_name("generated.png")
            .add_filter("PNG", &["png"]);
        match crate::gui::dialogs::run(|| dialog.save_file()) {
            Ok(Some(path)) => match sftok_core::image_io::save_png(&data.grid(), &path) {
                Ok(()) => app.messages.push_info(format!("Saved {}", path.display())),
                Err(e) => app
                    .messages
                    .push_error(format!("Could not save the grid: {e}")),
            },
            Ok(None) => {}
            Err(e) => app.messages.push_error(e),
        }
    }
}

/// The latent tokens as a strip of cells: grey while masked, else coloured by probability with
/// the id written in; those committed at this step are outlined.
fn token_strip_ui(ui: &mut egui::Ui, tokens: &[TokenState]) {
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = vec2(2.0, 2.0);
        for (j, t) in tokens.iter().enumerate() {
            let (rect, response) = ui.allocate_exact_size(vec2(34.0, 22.0), Sense::hover());
            let painter = ui.painter();
            let (fill, text, text_colour) = match t.id {
                None => (
                    Color32::from_gray(60),
                    "?".to_string(),
                    Color32::from_gray(170),
                ),
                Some(id) => {
                    let fill = heat_colour(t.probability);
                    let dark = t.probability > 0.6;
                    let ink = if dark { Color32::BLACK } else { Color32::WHITE };
                    (fill, id.to_string(), ink)
                }
            };
            painter.rect_filled(rect, 2.0, fill);
            if t.new {
                painter.rect_stroke(
                    rect,
                    2.0,
                    egui::Stroke::new(2.0, Color32::from_rgb(80, 200, 255)),
                    egui::StrokeKind::Inside,
                );
            }
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                &text,
                egui::FontId::monospace(11.0),
                text_colour,
            );
            response.on_hover_text(match t.id {
                None => format!("token {j}: still masked"),
                Some(id) => format!(
                    "token {j}: code {id}, sampled with probability {:.2}{}",
                    t.probability,
                    if t.new {
                        " (committed at this step)"
                    } else {
                        ""
                    }
                ),
            });
        }
    });
    ui.horizontal(|ui| {
        ui.label(RichText::new("probability").small());
        for p in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let (rect, _) = ui.allocate_exact_size(vec2(28.0, 12.0), Sense::hover());
            ui.painter().rect_filled(rect, 0.0, heat_colour(p));
            ui.label(RichText::new(format!("{p}")).small());
        }
    });
}
