//! The compare view: two models (by default the bundled SFVR and vanilla) on the same image with
//! one scrubber, their PSNR curves on one plot, and the difference of their images at the step.

use egui::TextureOptions;

use super::reconstruct::{
    decoding_ui, image_ui, model_picker_ui, psnr_plot_ui, scrubber_ui, status_of_trace,
};
use crate::gui::app::{Messages, StudioApp};
use crate::gui::gallery::rgb_to_color_image;
use crate::gui::model_worker::Slot;
use crate::gui::trace_data::{difference_gain, difference_image};

pub fn view_ui(app: &mut StudioApp, ui: &mut egui::Ui) {
    model_picker_ui(app, ui, Slot::A, "A");
    model_picker_ui(app, ui, Slot::B, "B");
    finetune_button_ui(app, ui);
    ui.separator();
    let Some(image_id) = app.gallery.selected else {
        ui.label("Open an image (or add the samples) to compare the models on it.");
        return;
    };
    // The scrubber may change T: the traces to show are the ones for T after it.
    scrubber_ui(app, ui);
    let key = app.current_key(image_id);
    for slot in Slot::BOTH {
        app.request_trace(slot, &key);
    }
    ui.separator();
    let step = app.scrub.step.min(app.settings.steps);
    let ctx = ui.ctx().clone();

    let mut shown = Vec::new();
    ui.horizontal(|ui| {
        // The input first, so that both reconstructions are read against it.
        let original = Slot::BOTH.iter().find_map(|&slot| {
            app.traces
                .get_mut(slot, &key)
                .map(|cached| cached.textures(&ctx).original.clone())
        });
        if let Some(original) = original {
            ui.vertical(|ui| {
                ui.label("Original");
                image_ui(ui, &original);
            });
        }
        for slot in Slot::BOTH {
            ui.vertical(|ui| {
                let Some(cached) = app.traces.get_mut(slot, &key) else {
                    ui.label(format!("Model {}", slot.name()));
                    status_of_trace(app, ui, slot, &key);
                    return;
                };
                let textures = cached.textures(&ctx);
                let (original, steps) = (textures.original.clone(), textures.steps.clone());
                let data = cached.data.clone();
                let step = step.min(data.num_steps()).min(steps.len());
                match step {
                    0 => {
                        ui.label(format!("{}: step 0 (all masked)", slot.name()));
                        image_ui(ui, &original);
                    }
                    k => match (&steps[k - 1], data.steps[k - 1].psnr_db) {
                        (Some(texture), Some(db)) => {
                            ui.label(format!("{}: step {k}, {db:.2} dB", slot.name()));
                            image_ui(ui, texture);
                        }
                        _ => {
                            ui.label(format!("{}: step {k}, decoding...", slot.name()));
                            decoding_ui(ui);
                            app.prefer_step(slot, &key, k);
                        }
                    },
                }
                shown.push((slot, data));
            });
        }
        if let [(_, a), (_, b)] = shown.as_slice()
            && step > 0
            && let (Some(ia), Some(ib)) = (a.step_image(step), b.step_image(step))
            && a.original.dimensions() == b.original.dimensions()
        {
            ui.vertical(|ui| {
                // One texture per (models, image, T, step), kept in egui's memory: the difference
                // is computed once, and scrubbing back is free. Its gain adapts to the pair
                // (the 99th percentile of the difference is white) and is shown.
                let models: Vec<_> = Slot::BOTH
                    .iter()
                    .map(|&s| app.slot(s).info.as_ref().map(|i| i.dir.clone()))
                    .collect();
                let id = egui::Id::unique(("diff", models, key.clone(), step));
                let (texture, gain) = ctx
                    .data(|d| d.get_temp::<(egui::TextureHandle, f32)>(id))
                    .unwrap_or_else(|| {
                        let gain = difference_gain(ia, ib);
                        let diff = difference_image(ia, ib, gain);
                        let t = ctx.load_texture(
                            "diff",
                            rgb_to_color_image(&diff),
                            TextureOptions::NEAREST,
                        );
                        ctx.data_mut(|d| d.insert_temp(id, (t.clone(), gain)));
                        (t, gain)
                    });
                ui.label(format!("|A - B| x{gain:.1}"))
                    .on_hover_text("the difference of the two images at this step, amplified so that its largest 1 % is white");
                image_ui(ui, &texture);
            });
        }
    });
    ui.separator();
    let curves: Vec<(String, Vec<[f64; 2]>)> = shown
        .iter()
        .map(|(slot, d)| (slot.name().to_string(), d.psnr_curve()))
        .collect();
    let series: Vec<(&str, &Vec<[f64; 2]>)> = curves.iter().map(|(n, c)| (n.as_str(), c)).collect();
    let teacher = shown.iter().find_map(|(_, d)| d.teacher_psnr_db);
    let blocks = shown
        .first()
        .map(|(_, d)| d.block_psnr_db.clone())
        .unwrap_or_default();
    ui.horizontal(|ui| {
        psnr_plot_ui(ui, "psnr-compare", &series, step, teacher, &blocks);
        ui.vertical(|ui| {
            for (slot, d) in &shown {
                if let Some(acc) = d.proxy_accuracy() {
                    ui.label(format!(
                        "{}: {:.1}% of the proxy codes equal the teacher's",
                        slot.name(),
                        100.0 * acc
                    ));
                }
            }
        });
    });
}

/// One click: fine-tune model A on the gallery's images; the result opens here beside A.
pub fn finetune_button_ui(app: &mut StudioApp, ui: &mut egui::Ui) {
    let base = app.slot(Slot::A).info.as_ref().map(|i| i.dir.clone());
    let images = app.gallery.paths();
    ui.horizontal(|ui| {
        let enabled = base.is_some() && !images.is_empty() && !app.training.is_running();
        let clicked = ui
            .add_enabled(enabled, egui::Button::new("Fine-tune A on the gallery"))
            .on_hover_text("a short decoder fine-tuning (stage 3) of model A on the images in the gallery; the result opens as B")
            .clicked();
        if app.training.is_running() {
            ui.spinner();
            ui.label("training... (see the Train view)");
        }
        if clicked && let Some(base) = base {
            let ctx = ui.ctx().clone();
            if let Err(e) = app.training.start_finetune(base, images, &ctx) {
                app.messages.push_error(e);
            }
        }
    });
}
