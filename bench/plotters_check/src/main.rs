//! The eval report's PSNR panel drawn with plotters 0.3.7 (bitmap backend, ab_glyph text with
//! egui's bundled Ubuntu-Light font), for comparison with the project's own rasteriser
//! (core/src/eval/plot.rs, docs/eval.png). Writes plotters_eval.png here.
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| "the font does not load")?;
    let steps = [1.0, 2.0, 4.0, 8.0, 16.0];
    let sfvr = [17.42, 17.41, 17.41, 17.41, 17.41];
    let vanilla = [17.41, 17.39, 17.39, 17.39, 17.38];
    let references = [
        ("teacher", 19.20, RGBColor(44, 160, 44)),
        ("mean colour", 14.16, RGBColor(127, 127, 127)),
        ("8x8 block means", 19.23, RGBColor(148, 103, 189)),
    ];
    let root = BitMapBackend::new("plotters_eval.png", (520, 430)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("PSNR (dB)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((1f64..16f64).log_scale(), 13.5f64..20.0)?;
    chart
        .configure_mesh()
        .x_desc("decoding steps")
        .x_labels(5)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (label, ys, colour) in [
        ("SFVR", &sfvr, RGBColor(31, 119, 180)),
        ("vanilla", &vanilla, RGBColor(214, 39, 40)),
    ] {
        let points: Vec<(f64, f64)> = steps.iter().copied().zip(ys.iter().copied()).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    for (label, y, colour) in references {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(1.0, y), (16.0, y)],
                6,
                4,
                colour.stroke_width(1),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
