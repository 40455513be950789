//! A small line-plot rasteriser for the `eval` report: metric against steps, one line per model,
//! the teachers as dashed horizontal lines. Drawn straight into an `RgbImage` with a built-in 5x7
//! bitmap font, so the CLI needs no font files and no plotting stack.

use image::{Rgb, RgbImage};

/// One curve: `(x, y)` points, drawn in order.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed and without markers (a reference level).
    pub dashed: bool,
    pub colour: [u8; 3],
}

/// One panel of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    /// The x values that get a tick and a label (drawn on a log2 axis when all are positive).
    pub x_ticks: Vec<f64>,
    pub series: Vec<Series>,
    /// Decimals of the y tick labels.
    pub y_decimals: usize,
}

/// Distinct colours for up to eight models (then they repeat).
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

const PANEL_W: u32 = 520;
const PANEL_H: u32 = 360;
const MARGIN_L: u32 = 70;
const MARGIN_R: u32 = 16;
const MARGIN_T: u32 = 36;
const MARGIN_B: u32 = 48;
const LEGEND_ROW: u32 = 18;

/// Draws the panels side by side with one shared legend underneath.
pub fn render(panels: &[Panel]) -> RgbImage {
    let mut legend: Vec<(String, [u8; 3], bool)> = Vec::new();
    for p in panels {
        for s in &p.series {
            if !legend.iter().any(|(l, _, _)| *l == s.label) {
                legend.push((s.label.clone(), s.colour, s.dashed));
            }
        }
    }
    let width = PANEL_W * panels.len().max(1) as u32;
    let height = PANEL_H + 12 + LEGEND_ROW * legend.len() as u32;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut img, i as u32 * PANEL_W, p);
    }
    for (i, (label, colour, dashed)) in legend.iter().enumerate() {
        let y = PANEL_H + 6 + i as u32 * LEGEND_ROW + 7;
        let x = MARGIN_L as i64;
        if *dashed {
            dashed_line(&mut img, (x, y as i64), (x + 30, y as i64), *colour, 2);
        } else {
            line(&mut img, (x, y as i64), (x + 30, y as i64), *colour, 2);
            marker(&mut img, (x + 15, y as i64), *colour);
        }
        text(&mut img, x + 40, y as i64 - 7, label, [0, 0, 0], 2);
    }
    img
}

fn draw_panel(img: &mut RgbImage, x0: u32, p: &Panel) {
    let (left, right) = ((x0 + MARGIN_L) as f64, (x0 + PANEL_W - MARGIN_R) as f64);
    let (top, bottom) = (MARGIN_T as f64, (PANEL_H - MARGIN_B) as f64);
    let log_x = p.x_ticks.iter().all(|&x| x > 0.0)
        && p.series
            .iter()
            .flat_map(|s| &s.points)
            .all(|&(x, _)| x > 0.0);
    let fx = |x: f64| if log_x { x.log2() } else { x };
    let xs: Vec<f64> = p
        .x_ticks
        .iter()
        .copied()
        .chain(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0)))
        .map(fx)
        .collect();
    let ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.1))
        .filter(|y| y.is_finite())
        .collect();
    let (xmin, xmax) = range(&xs, 0.0);
    let (ymin, ymax) = range(&ys, 0.08);
    let px = |x: f64| left + (fx(x) - xmin) / (xmax - xmin) * (right - left);
    let py = |y: f64| bottom - (y - ymin) / (ymax - ymin) * (bottom - top);

    // Frame, grid and ticks.
    let grey = [225, 225, 225];
    for k in 0..=4 {
        let v = ymin + (ymax - ymin) * k as f64 / 4.0;
        let y = py(v) as i64;
        line(img, (left as i64, y), (right as i64, y), grey, 1);
        let label = format!("{v:.*}", p.y_decimals);
        let w = text_width(&label, 2);
        text(img, left as i64 - 6 - w, y - 7, &label, [60, 60, 60], 2);
    }
    for &t in &p.x_ticks {
        let x = px(t) as i64;
        line(img, (x, top as i64), (x, bottom as i64), grey, 1);
        let label = format_number(t);
        text(
            img,
            x - text_width(&label, 2) / 2,
            bottom as i64 + 6,
            &label,
            [60, 60, 60],
            2,
        );
    }
    let black = [0, 0, 0];
    line(
        img,
        (left as i64, bottom as i64),
        (right as i64, bottom as i64),
        black,
        1,
    );
    line(
        img,
        (left as i64, top as i64),
        (left as i64, bottom as i64),
        black,
        1,
    );
    let title_w = text_width(&p.title, 2);
    text(
        img,
        x0 as i64 + (PANEL_W as i64 - title_w) / 2,
        10,
        &p.title,
        black,
        2,
    );
    let xl_w = text_width(&p.x_label, 2);
    text(
        img,
        ((left + right) / 2.0) as i64 - xl_w / 2,
        bottom as i64 + 26,
        &p.x_label,
        black,
        2,
    );

    for s in &p.series {
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|q| q.1.is_finite())
            .map(|&(x, y)| (px(x) as i64, py(y) as i64))
            .collect();
        for w in pts.windows(2) {
            if s.dashed {
                dashed_line(img, w[0], w[1], s.colour, 2);
            } else {
                line(img, w[0], w[1], s.colour, 2);
            }
        }
        if !s.dashed {
            for &q in &pts {
                marker(img, q, s.colour);
            }
        }
    }
}

/// `[min, max]` of the values, widened by `pad` of the span (and never empty).
fn range(values: &[f64], pad: f64) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !min.is_finite() || !max.is_finite() {
        return (0.0, 1.0);
    }
    let span = (max - min).max(1e-6 * max.abs().max(1.0));
    (min - pad * span, max + pad * span)
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: [u8; 3], thickness: i64) {
    let r = thickness / 2;
    for dy in -r..thickness - r {
        for dx in -r..thickness - r {
            let (xx, yy) = (x + dx, y + dy);
            if xx >= 0 && yy >= 0 && (xx as u32) < img.width() && (yy as u32) < img.height() {
                img.put_pixel(xx as u32, yy as u32, Rgb(colour));
            }
        }
    }
}

fn line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), colour: [u8; 3], thickness: i64) {
    segment(img, a, b, colour, thickness, None);
}

fn dashed_line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), colour: [u8; 3], thickness: i64) {
    segment(img, a, b, colour, thickness, Some(8));
}

/// Bresenham; with `dash = Some(n)`, drawn in runs of n pixels with gaps of n.
fn segment(
    img: &mut RgbImage,
    (mut x, mut y): (i64, i64),
    (x1, y1): (i64, i64),
    colour: [u8; 3],
    thickness: i64,
    dash: Option<i64>,
) {
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    let mut n = 0i64;
    loop {
        if dash.is_none_or(|d| (n / d) % 2 == 0) {
            put(img, x, y, colour, thickness);
        }
        n += 1;
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn marker(img: &mut RgbImage, (x, y): (i64, i64), colour: [u8; 3]) {
    put(img, x, y, colour, 7);
}

/// Width in pixels of `s` at `scale`.
pub fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 6 * scale
}

/// Draws `s` with its top-left corner at `(x, y)`; lower case is drawn as upper case and
/// characters without a glyph as a box.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, colour: [u8; 3], scale: i64) {
    for (i, c) in s.chars().enumerate() {
        let rows = glyph(c.to_ascii_uppercase());
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let px = x + (i as i64 * 6 + col) * scale + sx;
                            let py = y + r as i64 * scale + sy;
                            if px >= 0
                                && py >= 0
                                && (px as u32) < img.width()
                                && (py as u32) < img.height()
                            {
                                img.put_pixel(px as u32, py as u32, Rgb(colour));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 5x7 glyphs (one byte per row, the low five bits, leftmost pixel in bit 4).
fn glyph(c: char) -> [u8; 7] {
    match c {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_series_in_its_colour() {
        let red = [214, 39, 40];
        let blue = [31, 119, 180];
        let panel = Panel {
            title: "PSNR (dB)".into(),
            x_label: "steps".into(),
            x_ticks: vec![1.0, 2.0, 4.0, 8.0],
            series: vec![
                Series {
                    label: "sfvr".into(),
                    points: vec![(1.0, 20.0), (2.0, 21.0), (4.0, 21.5), (8.0, 22.0)],
                    dashed: false,
                    colour: red,
                },
                Series {
                    label: "teacher".into(),
                    points: vec![(1.0, 23.0), (8.0, 23.0)],
                    dashed: true,
                    colour: blue,
                },
            ],
            y_decimals: 1,
        };
        let img = render(&[panel.clone(), panel]);
        assert_eq!(img.width(), 2 * PANEL_W);
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count(red) > 200, "the model's line is drawn");
        assert!(count(blue) > 100, "the reference line is drawn");
        assert!(count([0, 0, 0]) > 500, "axes and text are drawn");
    }

    #[test]
    fn empty_or_flat_data_does_not_panic() {
        let panel = Panel {
            title: "SSIM".into(),
            x_label: "steps".into(),
            x_ticks: vec![],
            series: vec![Series {
                label: "flat".into(),
                points: vec![(1.0, 0.5), (2.0, 0.5), (3.0, f64::NAN)],
                dashed: false,
                colour: PALETTE[0],
            }],
            y_decimals: 3,
        };
        let _ = render(&[panel]);
        let _ = render(&[]);
    }
}
