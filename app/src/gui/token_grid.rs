//! The proxy-code grid and the confidence heatmap, drawn with egui's painter. This is the path for
//! every renderer; with wgpu the same picture is drawn by `shaders/token_grid.wgsl` (see
//! [`super::gpu_grid`]), and the colours here follow the shader's.

use egui::{Color32, Rect, Stroke, pos2, vec2};

use super::trace_data::CodeState;

/// The cells of one step.
pub struct GridCells<'a> {
    pub grid: usize,
    pub states: &'a [CodeState],
    pub confidences: &'a [f32],
}

pub const MASKED: Color32 = Color32::from_rgb(58, 58, 64);
pub const REVEALED_NOW: Color32 = Color32::from_rgb(255, 196, 0);
pub const REVEALED_BEFORE: Color32 = Color32::from_rgb(38, 166, 154);

/// Confidences mapped to 0..1 per step: the finite ones from their min..max, `+inf` (ids known
/// before the step) to 1. The raw values are logits, whose scale varies from step to step.
pub fn normalised_confidences(confidences: &[f32]) -> Vec<f32> {
    let finite = confidences.iter().copied().filter(|c| c.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), c| {
        (l.min(c), h.max(c))
    });
    confidences
        .iter()
        .map(|&c| {
            if c.is_infinite() && c > 0.0 {
                1.0
            } else if !c.is_finite() || hi <= lo {
                0.5
            } else {
                (c - lo) / (hi - lo)
            }
        })
        .collect()
}

/// A compact "inferno"-like colour map (the same control points as the shader's).
pub fn heat_colour(t: f32) -> Color32 {
    const STOPS: [[f32; 3]; 5] = [
        [0.001, 0.000, 0.014],
        [0.258, 0.039, 0.406],
        [0.578, 0.148, 0.404],
        [0.865, 0.317, 0.226],
        [0.988, 0.998, 0.645],
    ];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f32;
    let c: [f32; 3] = std::array::from_fn(|k| STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f);
    Color32::from_rgb(
        (c[0] * 255.0) as u8,
        (c[1] * 255.0) as u8,
        (c[2] * 255.0) as u8,
    )
}

/// Colour of a cell in "states" mode.
pub fn state_colour(state: CodeState) -> Color32 {
    match state {
        CodeState::Masked => MASKED,
        CodeState::RevealedNow => REVEALED_NOW,
        CodeState::RevealedBefore => REVEALED_BEFORE,
    }
}

/// The rect of cell `i` inside `rect`.
pub fn cell_rect(rect: Rect, grid: usize, i: usize) -> Rect {
    let cell = vec2(rect.width() / grid as f32, rect.height() / grid as f32);
    let (row, col) = (i / grid, i % grid);
    Rect::from_min_size(
        pos2(
            rect.min.x + col as f32 * cell.x,
            rect.min.y + row as f32 * cell.y,
        ),
        cell,
    )
}

/// The heatmap's colour scale: a gradient bar from the least to the most confident cell of
/// this step, with the logit range it spans (the heatmap normalises each step on its own).
pub fn heat_scale_ui(ui: &mut egui::Ui, confidences: &[f32]) {
    let finite = confidences.iter().copied().filter(|c| c.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), c| {
        (l.min(c), h.max(c))
    });
    ui.horizontal(|ui| {
        ui.small("least confident");
        let (rect, _) = ui.allocate_exact_size(egui::vec2(120.0, 10.0), egui::Sense::hover());
        const SLICES: usize = 24;
        for k in 0..SLICES {
            let x0 = rect.left() + rect.width() * k as f32 / SLICES as f32;
            let x1 = rect.left() + rect.width() * (k + 1) as f32 / SLICES as f32;
            let slice =
                Rect::from_min_max(egui::pos2(x0, rect.top()), egui::pos2(x1, rect.bottom()));
            let level = (k as f32 + 0.5) / SLICES as f32;
            ui.painter().rect_filled(slice, 0.0, heat_colour(level));
        }
        ui.small("most (known ids too)");
    });
    if lo.is_finite() && hi > lo {
        ui.small(format!("this step: logits {lo:.1} to {hi:.1}"));
    }
}

/// Draws the grid: states (opaque) or the heatmap (semi-transparent, to lay over the image).
pub fn paint_grid(painter: &egui::Painter, rect: Rect, cells: &GridCells, heatmap: bool) {
    let n = cells.grid * cells.grid;
    if cells.states.len() < n {
        return;
    }
    let levels = normalised_confidences(cells.confidences);
    for i in 0..n {
        let r = cell_rect(rect, cells.grid, i);
        if heatmap {
            let level = levels.get(i).copied().unwrap_or(0.0);
            painter.rect_filled(r, 0.0, heat_colour(level).gamma_multiply(0.6));
        } else {
            painter.rect_filled(r.shrink(0.5), 1.0, state_colour(cells.states[i]));
        }
    }
    if !heatmap {
        painter.rect_stroke(
            rect,
            0.0,
            Stroke::new(1.0, Color32::from_gray(90)),
            egui::StrokeKind::Inside,
        );
    }
}

/// The cell under `pos`, if any.
pub fn cell_at(rect: Rect, grid: usize, pos: egui::Pos2) -> Option<usize> {
    if !rect.contains(pos) || grid == 0 {
        return None;
    }
    let col = (((pos.x - rect.min.x) / rect.width()) * grid as f32) as usize;
    let row = (((pos.y - rect.min.y) / rect.height()) * grid as f32) as usize;
    Some(row.min(grid - 1) * grid + col.min(grid - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidences_normalise_per_step_with_known_ids_at_one() {
        let n = normalised_confidences(&[1.0, 3.0, f32::INFINITY, 2.0]);
        assert_eq!(n, vec![0.0, 1.0, 1.0, 0.5]);
        assert_eq!(normalised_confidences(&[f32::INFINITY; 2]), vec![1.0, 1.0]);
        assert_eq!(normalised_confidences(&[4.0, 4.0]), vec![0.5, 0.5]);
    }

    #[test]
    fn cells_are_found_under_the_pointer() {
        let rect = Rect::from_min_size(pos2(10.0, 10.0), vec2(80.0, 80.0));
        assert_eq!(cell_at(rect, 4, pos2(11.0, 11.0)), Some(0));
        assert_eq!(cell_at(rect, 4, pos2(89.0, 89.0)), Some(15));
        assert_eq!(cell_at(rect, 4, pos2(50.0, 15.0)), Some(2));
        assert_eq!(cell_at(rect, 4, pos2(5.0, 15.0)), None);
        assert_eq!(cell_rect(rect, 4, 5).min, pos2(30.0, 30.0));
    }

    #[test]
    fn the_colour_map_runs_dark_to_bright() {
        let lum = |c: Color32| c.r() as u32 + c.g() as u32 + c.b() as u32;
        assert!(lum(heat_colour(0.0)) < lum(heat_colour(0.5)));
        assert!(lum(heat_colour(0.5)) < lum(heat_colour(1.0)));
    }
}
