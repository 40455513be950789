//! The reconstruct view: original | current step | teacher, a scrubber over steps 0..T, the
//! proxy-code grid, the confidence heatmap, PSNR per step, and the latent tokens (editable).

use egui::{Color32, RichText, Sense, Stroke, TextureHandle, Vec2, pos2, vec2};
use egui_plot::{Line, Plot, PlotPoints, Points, VLine};

use crate::gui::app::{Messages, StudioApp};
use crate::gui::model_worker::{Slot, TraceKey};
use crate::gui::token_grid::{GridCells, cell_at, cell_rect, paint_grid};
use crate::gui::trace_data::CodeState;

/// Displayed side of the model's images (they are small; drawn magnified, pixel-exact).
pub const IMAGE_SIDE: f32 = 224.0;

pub fn view_ui(app: &mut StudioApp, ui: &mut egui::Ui) {
    model_picker_ui(app, ui, Slot::A, "Model");
    ui.separator();
    let Some(image_id) = app.gallery.selected else {
        ui.label("Open an image (or add the samples) to reconstruct it.");
        return;
    };
    // The scrubber may change T: the trace to show is the one for T after it.
    scrubber_ui(app, ui);
    let key = app.current_key(image_id);
    app.request_trace(Slot::A, &key);
    ui.separator();
    let ctx = ui.ctx().clone();
    let step = app.scrub.step.min(app.settings.steps);
    let heatmap = app.settings.show_heatmap;
    let gpu = app.gpu_grid;
    let crop_texture = crop_preview(app, image_id, &ctx);
    let Some(cached) = app.traces.get_mut(Slot::A, &key) else {
        status_of_trace(app, ui, Slot::A, &key);
        return;
    };
    let textures = cached.textures(&ctx);
    let (original, steps, teacher) = (
        textures.original.clone(),
        textures.steps.clone(),
        textures.teacher.clone(),
    );
    let data = cached.data.clone();
    // Never past the steps this trace has (T and the trace can differ for one frame).
    let step = step.min(data.num_steps()).min(steps.len());
    if step > 0 && steps[step - 1].is_none() {
        app.prefer_step(Slot::A, &key, step);
    }

    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            ui.label("Original (model input)");
            image_ui(ui, &original);
            if let Some((tex, crop)) = &crop_texture {
                crop_overlay_ui(ui, tex, *crop);
            }
        });
        ui.vertical(|ui| {
            ui.label(if step == 0 {
                "Step 0: every proxy code masked".to_string()
            } else {
                match data.steps[step - 1].psnr_db {
                    Some(db) => format!("Step {step}/{}: {db:.2} dB", data.num_steps()),
                    None => format!("Step {step}/{}: decoding...", data.num_steps()),
                }
            });
            let response = match (step, steps.get(step.wrapping_sub(1))) {
                (0, _) => blank_ui(ui),
                (_, Some(Some(texture))) => image_ui(ui, texture),
                _ => decoding_ui(ui),
            };
            if heatmap && step > 0 {
                let s = &data.steps[step - 1];
                let cells = GridCells {
                    grid: data.grid,
                    states: &s.states,
                    confidences: &s.confidences,
                };
                if !(gpu
                    && crate::gui::gpu_grid::paint_grid_gpu(
                        ui.painter(),
                        response.rect,
                        &cells,
                        true,
                    ))
                {
                    paint_grid(ui.painter(), response.rect, &cells, true);
                }
            }
            ui.checkbox(&mut app.settings.show_heatmap, "Confidence heatmap");
            if heatmap && step > 0 {
                crate::gui::token_grid::heat_scale_ui(ui, &data.steps[step - 1].confidences);
            }
        });
        ui.vertical(|ui| match (&teacher, data.teacher_psnr_db) {
            (Some(t), Some(p)) => {
                ui.label(format!("Teacher: {p:.2} dB"));
                image_ui(ui, t);
            }
            _ if data.teacher_pending => {
                ui.label("Teacher: decoding...");
                decoding_ui(ui);
            }
            _ => {
                ui.label("Teacher: not in this model directory");
            }
        });
    });
    ui.separator();
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            ui.label("Proxy codes");
            grid_ui(ui, &data, step, gpu);
            legend_ui(ui);
        });
        ui.vertical(|ui| {
            ui.label("PSNR per step");
            psnr_plot_ui(
                ui,
                "psnr-a",
                &[("A", &data.psnr_curve())],
                step,
                data.teacher_psnr_db,
                &data.block_psnr_db,
            );
            if let Some(acc) = data.proxy_accuracy() {
                ui.label(format!(
                    "proxy codes equal to the teacher's after the last step: {:.1}%",
                    100.0 * acc
                ));
            }
        });
    });
    ui.separator();
    latent_strip_ui(app, ui, image_id, &data.latent_ids, data.latent_codebook);
}

/// Shows a model slot and a button to load another model directory into it.
pub fn model_picker_ui(app: &mut StudioApp, ui: &mut egui::Ui, slot: Slot, label: &str) {
    ui.horizontal(|ui| {
        ui.strong(format!("{label}:"));
        let s = app.slot(slot);
        match (&s.loading, &s.info) {
            (Some(dir), _) => {
                ui.spinner();
                ui.label(format!("loading {}", dir.display()));
            }
            (None, Some(info)) => {
                ui.label(info.dir.display().to_string())
                    .on_hover_text(format!(
                        "{} model, {} px, {} latent tokens, {}x{} proxy codes, teacher: {}",
                        info.name,
                        info.image_size,
                        info.latent_tokens,
                        info.grid,
                        info.grid,
                        if info.has_teacher { "yes" } else { "no" }
                    ));
            }
            (None, None) => {
                ui.label("no model");
            }
        }
        if ui
            .button(format!("Load model into {}...", slot.name()))
            .clicked()
        {
            match crate::gui::dialogs::run(|| rfd::FileDialog::new().pick_folder()) {
                Ok(Some(dir)) => app.load_model(slot, dir),
                Ok(None) => {}
                Err(e) => app.messages.push_error(e),
            }
        }
    });
}

/// "1 step", "8 steps".
fn steps_label(t: usize) -> String {
    crate::words::count_noun(t, "step")
}

/// T, the step slider, play/pause and step buttons.
pub fn scrubber_ui(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.label("Steps T:");
        let before = app.settings.steps;
        egui::ComboBox::from_id_salt("steps-t")
            .selected_text(steps_label(app.settings.steps))
            .show_ui(ui, |ui| {
                for t in [1, 2, 4, 8, 12, 16, 24, 32] {
                    ui.selectable_value(&mut app.settings.steps, t, steps_label(t));
                }
            });
        if app.settings.steps != before {
            app.scrub.step = app.settings.steps;
        }
        let t = app.settings.steps;
        if ui.button("|<").on_hover_text("First step").clicked() {
            app.scrub.step = 0;
        }
        if ui.button("<").on_hover_text("Previous step").clicked() {
            app.scrub.step = app.scrub.step.saturating_sub(1);
        }
        let play = if app.scrub.playing { "Pause" } else { "Play" };
        if ui.button(play).clicked() {
            app.scrub.playing = !app.scrub.playing;
            app.scrub.last_advance = std::time::Instant::now();
        }
        if ui.button(">").on_hover_text("Next step").clicked() {
            app.scrub.step = (app.scrub.step + 1).min(t);
        }
        if ui.button(">|").on_hover_text("Last step").clicked() {
            app.scrub.step = t;
        }
        app.scrub.step = app.scrub.step.min(t);
        ui.add(egui::Slider::new(&mut app.scrub.step, 0..=t).text("step"));
    });
}

/// A spinner or the error for a trace that is not there yet.
pub fn status_of_trace(app: &StudioApp, ui: &mut egui::Ui, slot: Slot, key: &TraceKey) {
    if let Some(e) = app.traces.failure(slot, key) {
        ui.colored_label(ui.visuals().error_fg_color, e);
    } else if app.slot(slot).info.is_none() {
        ui.label(format!("Load a model into {} to reconstruct.", slot.name()));
    } else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!("reconstructing in {} steps...", key.steps));
        });
    }
}

pub fn image_ui(ui: &mut egui::Ui, texture: &TextureHandle) -> egui::Response {
    ui.add(egui::Image::new(texture).fit_to_exact_size(Vec2::splat(IMAGE_SIDE)))
}

/// An image's place with a note in it: before any step ("nothing decoded yet"), or while the
/// worker still decodes the image (it wakes the UI when the image arrives).
fn placeholder_ui(ui: &mut egui::Ui, note: &str) -> egui::Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(IMAGE_SIDE), Sense::hover());
    ui.painter().rect_filled(rect, 0.0, Color32::from_gray(40));
    ui.painter().text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        note,
        egui::FontId::proportional(14.0),
        Color32::from_gray(160),
    );
    response
}

fn blank_ui(ui: &mut egui::Ui) -> egui::Response {
    placeholder_ui(ui, "nothing decoded yet")
}

/// The place of an image the worker is still decoding.
pub fn decoding_ui(ui: &mut egui::Ui) -> egui::Response {
    placeholder_ui(ui, "decoding this step...")
}

/// The full original with the square that the model sees outlined.
fn crop_overlay_ui(ui: &mut egui::Ui, texture: &TextureHandle, crop: [u32; 4]) {
    let [w, h] = texture.size();
    let scale = 120.0 / w.max(h) as f32;
    let response = ui
        .add(egui::Image::new(texture).fit_to_exact_size(vec2(w as f32 * scale, h as f32 * scale)));
    let r = response.rect;
    let crop_rect = egui::Rect::from_min_size(
        pos2(
            r.min.x + crop[0] as f32 * scale,
            r.min.y + crop[1] as f32 * scale,
        ),
        vec2(crop[2] as f32 * scale, crop[3] as f32 * scale),
    );
    ui.painter().rect_stroke(
        crop_rect,
        0.0,
        Stroke::new(2.0, Color32::from_rgb(255, 196, 0)),
        egui::StrokeKind::Inside,
    );
    response.on_hover_text("the whole image; the outlined square is what the model sees");
}

/// The original image as a texture and its centre crop (cached in egui's memory per image).
fn crop_preview(
    app: &StudioApp,
    image_id: u64,
    ctx: &egui::Context,
) -> Option<(TextureHandle, [u32; 4])> {
    let im = app.gallery.get(image_id)?;
    let id = egui::Id::unique(("crop-preview", image_id));
    if let Some(v) = ctx.data(|d| d.get_temp::<(TextureHandle, [u32; 4])>(id)) {
        return Some(v);
    }
    let (w, h) = im.image.dimensions();
    let short = w.min(h);
    let crop = [(w - short) / 2, (h - short) / 2, short, short];
    let scale = 240.0 / w.max(h) as f32;
    let small = image::imageops::thumbnail(
        &im.image,
        ((w as f32 * scale) as u32).max(1),
        ((h as f32 * scale) as u32).max(1),
    );
    let tex = ctx.load_texture(
        format!("full-{image_id}"),
        crate::gui::gallery::rgb_to_color_image(&small),
        egui::TextureOptions::LINEAR,
    );
    // The crop is in the original's pixels; the overlay scales by the texture's size.
    let k = small.width() as f32 / w as f32;
    let crop_small = crop.map(|v| (v as f32 * k).round() as u32);
    ctx.data_mut(|d| d.insert_temp(id, (tex.clone(), crop_small)));
    Some((tex, crop_small))
}

/// The grid of proxy codes at `step`, with a tooltip per cell.
fn grid_ui(ui: &mut egui::Ui, data: &crate::gui::trace_data::TraceData, step: usize, gpu: bool) {
    let side = 200.0;
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(side), Sense::hover());
    let states = data.states_at(step);
    let confidences = if step == 0 {
        vec![0.0; states.len()]
    } else {
        data.steps[step - 1].confidences.clone()
    };
    let cells = GridCells {
        grid: data.grid,
        states: &states,
        confidences: &confidences,
    };
    if !(gpu && crate::gui::gpu_grid::paint_grid_gpu(ui.painter(), rect, &cells, false)) {
        paint_grid(ui.painter(), rect, &cells, false);
    }
    if let Some(pos) = response.hover_pos()
        && let Some(i) = cell_at(rect, data.grid, pos)
    {
        ui.painter().rect_stroke(
            cell_rect(rect, data.grid, i),
            0.0,
            Stroke::new(2.0, Color32::WHITE),
            egui::StrokeKind::Inside,
        );
        let (row, col) = (i / data.grid, i % data.grid);
        let text = if step == 0 || states[i] == CodeState::Masked {
            format!("position {i} (row {row}, col {col}): masked")
        } else {
            let s = &data.steps[step - 1];
            let conf = s.confidences[i];
            format!(
                "position {i} (row {row}, col {col}): code {}{}, {}",
                s.ids[i],
                if conf.is_finite() {
                    format!(", confidence (logit) {conf:.2}")
                } else {
                    String::new()
                },
                if states[i] == CodeState::RevealedNow {
                    "revealed at this step"
                } else {
                    "revealed before"
                }
            )
        };
        response.on_hover_text(text);
    }
    if step > 0 {
        ui.label(format!(
            "{} revealed at this step, {} masked",
            data.steps[step - 1].revealed_now,
            states.iter().filter(|s| **s == CodeState::Masked).count()
        ));
    }
}

fn legend_ui(ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        for (colour, label) in [
            (crate::gui::token_grid::MASKED, "masked"),
            (crate::gui::token_grid::REVEALED_NOW, "revealed now"),
            (crate::gui::token_grid::REVEALED_BEFORE, "revealed before"),
        ] {
            let (rect, _) = ui.allocate_exact_size(vec2(12.0, 12.0), Sense::hover());
            ui.painter().rect_filled(rect, 2.0, colour);
            ui.label(label);
        }
    });
}

/// The models' colours in the PSNR plot: A blue, B orange (the teacher and the references are
/// grey or dashed).
const SERIES_COLOURS: [Color32; 2] = [
    crate::gui::palette::CATEGORY[0],
    crate::gui::palette::CATEGORY[1],
];

/// PSNR against steps, one line per series, the current step marked.
pub fn psnr_plot_ui(
    ui: &mut egui::Ui,
    id: &str,
    series: &[(&str, &Vec<[f64; 2]>)],
    step: usize,
    teacher_db: Option<f64>,
    block_db: &[(u32, f64)],
) {
    // Whole step numbers on the x axis: every step up to T = 16, then every 5th or 10th.
    let last = series_len(series).max(1);
    let (x_from, x_to) = reference_span(last);
    let tick = if last <= 16 {
        1.0
    } else if last <= 40 {
        5.0
    } else {
        10.0
    };
    Plot::new(id.to_string())
        .width(360.0)
        .height(200.0)
        .x_axis_label("step")
        .y_axis_label("PSNR (dB)")
        .x_grid_spacer(egui_plot::uniform_grid_spacer(move |_| {
            [tick, 2.0 * tick, 4.0 * tick]
        }))
        .x_axis_formatter(|mark, _| {
            if mark.value >= 1.0 && mark.value.fract() == 0.0 {
                format!("{}", mark.value as i64)
            } else {
                String::new()
            }
        })
        // Room above the highest line for the legend (the models only) in the upper left; the
        // reference lines are labelled where they end instead of in the legend.
        .include_y(headroom_top(series, teacher_db, block_db))
        .include_x(x_from)
        .include_x(x_to)
        .legend(egui_plot::Legend::default().position(egui_plot::Corner::LeftTop))
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .show(ui, |plot| {
            // One colour per model for its line and its points, one legend entry for both.
            for (i, (name, points)) in series.iter().enumerate() {
                let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
                plot.line(
                    Line::new(name.to_string(), PlotPoints::from((*points).clone())).color(colour),
                );
                plot.points(
                    Points::new(name.to_string(), PlotPoints::from((*points).clone()))
                        .color(colour)
                        .radius(3.0),
                );
            }
            let end = x_to;
            let label = |plot: &mut egui_plot::PlotUi<'_>, y: f64, text: String, colour| {
                plot.text(
                    egui_plot::Text::new("", egui_plot::PlotPoint::new(end, y), text)
                        .color(colour)
                        .anchor(egui::Align2::RIGHT_BOTTOM),
                );
            };
            if let Some(t) = teacher_db {
                let colour = Color32::from_rgb(200, 90, 90);
                plot.line(
                    Line::new("", PlotPoints::from(vec![[x_from, t], [end, t]]))
                        .color(colour)
                        .style(egui_plot::LineStyle::dashed_loose()),
                );
                label(plot, t, "teacher".into(), colour);
            }
            for &(block, db) in block_db {
                let colour = if block == 4 {
                    Color32::from_gray(150)
                } else {
                    Color32::from_gray(110)
                };
                plot.line(
                    Line::new("", PlotPoints::from(vec![[x_from, db], [end, db]]))
                        .color(colour)
                        .style(egui_plot::LineStyle::dashed_dense()),
                );
                label(plot, db, format!("{block}x{block} block means"), colour);
            }
            if step > 0 {
                plot.vline(VLine::new("", step as f64).color(Color32::from_gray(160)));
            }
        });
}

/// A y value a little above every line of the PSNR plot, so that the legend has room.
fn headroom_top(
    series: &[(&str, &Vec<[f64; 2]>)],
    teacher_db: Option<f64>,
    block_db: &[(u32, f64)],
) -> f64 {
    let values = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p[1]))
        .chain(teacher_db)
        .chain(block_db.iter().map(|&(_, db)| db))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if hi.is_finite() {
        hi + 0.35 * (hi - lo).max(1.0)
    } else {
        0.0
    }
}

/// The last step of the series (the final step's point is always there, while earlier steps'
/// points arrive as their images are decoded).
/// Where the reference lines run: from step 1 to step T, or, at T = 1, half a step either side
/// of the one point (a line from 1 to 1 has no length and would leave only its label).
fn reference_span(last_step: usize) -> (f64, f64) {
    if last_step > 1 {
        (1.0, last_step as f64)
    } else {
        (0.5, 1.5)
    }
}

fn series_len(series: &[(&str, &Vec<[f64; 2]>)]) -> usize {
    series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|point| point[0] as usize))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The 1-D latent tokens as a strip of ids; click one to give it another code.
fn latent_strip_ui(
    app: &mut StudioApp,
    ui: &mut egui::Ui,
    image_id: u64,
    latent_ids: &[i64],
    codebook: usize,
) {
    ui.horizontal(|ui| {
        ui.strong("Latent tokens");
        ui.label("(click one to edit its code)");
        if app.edit.edited.contains_key(&image_id) && ui.button("Reset edits").clicked() {
            app.edit.edited.remove(&image_id);
            app.edit.selected = None;
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = vec2(2.0, 2.0);
        for (i, id) in latent_ids.iter().enumerate() {
            let selected = app.edit.selected == Some(i);
            let response = ui
                .add(
                    egui::Button::new(RichText::new(id.to_string()).monospace()).selected(selected),
                )
                .on_hover_text(format!("latent token {i}: code {id}"));
            if response.clicked() {
                app.edit.selected = Some(i);
                app.edit.new_code = *id;
            }
        }
    });
    if let Some(i) = app.edit.selected.filter(|&i| i < latent_ids.len()) {
        ui.horizontal(|ui| {
            ui.label(format!("token {i}: code"));
            ui.add(egui::DragValue::new(&mut app.edit.new_code).range(0..=codebook as i64 - 1));
            if ui.button("Apply edit").clicked() {
                let mut ids = latent_ids.to_vec();
                ids[i] = app.edit.new_code;
                app.edit.edited.insert(image_id, ids);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lines_have_length_at_one_step_too() {
        assert_eq!(reference_span(8), (1.0, 8.0));
        let (from, to) = reference_span(1);
        assert!(from < 1.0 && to > 1.0, "{from}..{to}");
        assert_eq!(steps_label(1), "1 step");
        assert_eq!(steps_label(16), "16 steps");
    }
}
