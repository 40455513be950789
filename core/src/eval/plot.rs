//! Line plots for the reports (`sftok eval`, `sftok curves`, `sftok paired`): a metric against
//! steps, one line per model, references as dashed horizontal lines, one shared legend under the
//! panels. Drawn with `plotters` into an `RgbImage`; the text uses the font egui bundles
//! (`epaint_default_fonts`, already in the app's tree), so no system font is needed.
//!
//! The project drew these with its own rasteriser and 5x7 bitmap font until 2026-12-07
//! (issue 15; `bench/plotters_check` and docs/crates.md compare the two).

use std::sync::OnceLock;

use image::RgbImage;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor;
use plotters::style::{FontStyle, register_font};

use crate::error::{Result, SftokError};

/// One curve: `(x, y)` points, drawn in order; points whose y is not finite are left out.
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
    /// The x values that get a tick and a label (drawn on a log2 axis when all x are positive).
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

pub const PANEL_W: u32 = 520;
const PANEL_H: u32 = 360;
const LEGEND_ROW: u32 = 20;
/// The name the bundled font is registered under.
const FONT: &str = "sans-serif";

/// Registers the bundled font once per process; plotters looks fonts up by name.
fn font() -> Result<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT).is_ok()
    });
    if ok {
        Ok(FONT)
    } else {
        Err(SftokError::Plot(
            "the bundled font (Ubuntu Light) could not be loaded".into(),
        ))
    }
}

fn plot_error(e: impl std::fmt::Display) -> SftokError {
    SftokError::Plot(e.to_string())
}

fn rgb([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

/// Draws the panels side by side with one shared legend underneath (each label once).
pub fn render(panels: &[Panel]) -> Result<RgbImage> {
    let font = font()?;
    let mut legend: Vec<(&str, [u8; 3], bool)> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !legend.iter().any(|(l, _, _)| *l == s.label) {
            legend.push((&s.label, s.colour, s.dashed));
        }
    }
    let width = PANEL_W * panels.len().max(1) as u32;
    let height = PANEL_H + 12 + LEGEND_ROW * legend.len() as u32;
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let (plots, legend_area) = root.split_vertically(PANEL_H + 6);
        if !panels.is_empty() {
            for (area, panel) in plots.split_evenly((1, panels.len())).iter().zip(panels) {
                draw_panel(area, panel, font)?;
            }
        }
        for (i, (label, colour, dashed)) in legend.iter().enumerate() {
            let y = i as i32 * LEGEND_ROW as i32 + LEGEND_ROW as i32 / 2;
            let (x, colour) = (70, rgb(*colour));
            let swatch = vec![(x, y), (x + 30, y)];
            if *dashed {
                legend_area
                    .draw(&DashedPathElement::new(
                        swatch,
                        6,
                        4,
                        colour.stroke_width(2),
                    ))
                    .map_err(plot_error)?;
            } else {
                legend_area
                    .draw(&PathElement::new(swatch, colour.stroke_width(2)))
                    .map_err(plot_error)?;
                legend_area
                    .draw(&Circle::new((x + 15, y), 3, colour.filled()))
                    .map_err(plot_error)?;
            }
            let style = TextStyle::from((font, 16).into_font()).pos(text_anchor::Pos::new(
                text_anchor::HPos::Left,
                text_anchor::VPos::Center,
            ));
            legend_area
                .draw(&Text::new(label.to_string(), (x + 40, y), style))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| plot_error("the plot's buffer has the wrong size"))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    p: &Panel,
    font: &str,
) -> Result<()> {
    // Each series' points with a finite x and y, once.
    let finite: Vec<Vec<(f64, f64)>> = p
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    // A log2 axis when every x is positive: the decoding steps 1, 2, 4, 8, 16 spread evenly.
    let log_x = p.x_ticks.iter().all(|&x| x > 0.0) && finite.iter().flatten().all(|q| q.0 > 0.0);
    let fx = move |x: f64| if log_x { x.log2() } else { x };
    let xs: Vec<f64> = p
        .x_ticks
        .iter()
        .copied()
        .chain(finite.iter().flatten().map(|q| q.0))
        .map(fx)
        .collect();
    let ys: Vec<f64> = finite.iter().flatten().map(|q| q.1).collect();
    let (xmin, xmax) = range(&xs, 0.02);
    let (ymin, ymax) = range(&ys, 0.08);
    let key_points: Vec<f64> = p.x_ticks.iter().copied().map(fx).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (font, 20))
        .margin(10)
        .margin_right(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(xmin..xmax, ymin..ymax)
        .map_err(plot_error)?;
    let x_label = |v: &f64| format_number(if log_x { v.exp2() } else { *v });
    let y_label = |v: &f64| format!("{v:.*}", p.y_decimals);
    let grid = RGBColor(225, 225, 225);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&p.x_label)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .y_labels(5)
        .label_style((font, 14))
        .axis_desc_style((font, 16))
        .light_line_style(WHITE)
        .bold_line_style(grid);
    if key_points.is_empty() {
        // No ticks asked for: plotters' own.
        mesh.x_labels(6);
    } else {
        // The ticks asked for, drawn below: plotters' custom key points (`with_key_points`)
        // have no label formatter for f64 axes.
        mesh.x_labels(0).disable_x_mesh();
    }
    mesh.draw().map_err(plot_error)?;
    if !key_points.is_empty() {
        let base = area.get_base_pixel();
        let style = TextStyle::from((font, 14).into_font())
            .color(&RGBColor(60, 60, 60))
            .pos(text_anchor::Pos::new(
                text_anchor::HPos::Center,
                text_anchor::VPos::Top,
            ));
        for &t in &key_points {
            chart
                .draw_series(LineSeries::new([(t, ymin), (t, ymax)], grid))
                .map_err(plot_error)?;
            let (x, y) = chart.backend_coord(&(t, ymin));
            area.draw(&Text::new(
                x_label(&t),
                (x - base.0, y - base.1 + 6),
                style.clone(),
            ))
            .map_err(plot_error)?;
        }
    }
    for (s, points) in p.series.iter().zip(finite) {
        let colour = rgb(s.colour);
        let line: Vec<(f64, f64)> = points.into_iter().map(|(x, y)| (fx(x), y)).collect();
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(line, 8, 6, colour.stroke_width(2)))
                .map_err(plot_error)?;
        } else {
            chart
                .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(plot_error)?;
            chart
                .draw_series(line.into_iter().map(|q| Circle::new(q, 3, colour.filled())))
                .map_err(plot_error)?;
        }
    }
    Ok(())
}

/// The span of `values` with `pad` of it added on each side; never empty (a flat or single value
/// gets a span of a tenth of its magnitude, at least 0.1), `(0, 1)` when there is nothing.
fn range(values: &[f64], pad: f64) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !min.is_finite() || !max.is_finite() {
        return (0.0, 1.0);
    }
    let span = max - min;
    if span <= 1e-9 * max.abs().max(1.0) {
        let half = 0.05 * max.abs().max(1.0);
        return (min - half, max + half);
    }
    (min - pad * span, max + pad * span)
}

/// A tick label: integers without decimals (8, not 8.0 or 7.9999999 from 2^log2(8)).
fn format_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 * v.abs().max(1.0) {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(red: [u8; 3], blue: [u8; 3]) -> Panel {
        Panel {
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
        }
    }

    /// Pixels within a small distance of `c` (anti-aliased text and lines blend at the edges).
    fn count_near(img: &RgbImage, c: [u8; 3], within: i32) -> usize {
        img.pixels()
            .filter(|p| (0..3).all(|k| (p.0[k] as i32 - c[k] as i32).abs() <= within))
            .count()
    }

    #[test]
    fn draws_each_series_in_its_colour_where_its_values_are() {
        let (red, blue) = ([214, 39, 40], [31, 119, 180]);
        let img = render(&[panel(red, blue), panel(red, blue)]).unwrap();
        assert_eq!(img.width(), 2 * PANEL_W);
        assert_eq!(img.height(), PANEL_H + 12 + 2 * LEGEND_ROW);
        assert!(count_near(&img, red, 0) > 400, "the model's line is drawn");
        assert!(
            count_near(&img, blue, 0) > 150,
            "the reference line is drawn"
        );
        assert!(
            count_near(&img, [0, 0, 0], 60) > 300,
            "axes and text are drawn"
        );
        // The teacher (23 dB) is the top of the data and the model starts lowest (20 dB): in the
        // first panel the dashed line's pixels lie above the model's first points.
        let rows = |c: [u8; 3]| -> Vec<u32> {
            img.enumerate_pixels()
                .filter(|(x, y, p)| *x < PANEL_W && *y < PANEL_H && p.0 == c)
                .map(|(_, y, _)| y)
                .collect()
        };
        let (blue_rows, red_rows) = (rows(blue), rows(red));
        let blue_mean = blue_rows.iter().sum::<u32>() as f64 / blue_rows.len() as f64;
        let red_max = *red_rows.iter().max().unwrap() as f64;
        let red_min = *red_rows.iter().min().unwrap() as f64;
        assert!(
            blue_mean < red_min,
            "the 23 dB line is above every model point"
        );
        assert!(
            red_max - red_min > 100.0,
            "the model's 2 dB rise spans the panel"
        );
        // The legend rows under the panels hold both colours.
        let legend_has = |c: [u8; 3]| {
            img.enumerate_pixels()
                .any(|(_, y, p)| y >= PANEL_H + 6 && p.0 == c)
        };
        assert!(
            legend_has(red) && legend_has(blue),
            "both are in the legend"
        );
    }

    #[test]
    fn ticks_read_as_the_steps() {
        assert_eq!(format_number(2f64.log2().exp2()), "2");
        assert_eq!(format_number(16f64.log2().exp2()), "16");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(1500.0), "1500");
    }

    #[test]
    fn empty_flat_or_nan_data_does_not_panic() {
        let flat = Panel {
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
        let single = Panel {
            x_ticks: vec![8.0],
            series: vec![Series {
                points: vec![(8.0, 17.4)],
                ..flat.series[0].clone()
            }],
            ..flat.clone()
        };
        let empty = Panel {
            series: vec![],
            ..flat.clone()
        };
        for panels in [vec![flat], vec![single], vec![empty], vec![]] {
            let img = render(&panels).unwrap();
            assert!(img.width() >= PANEL_W);
        }
    }
}
