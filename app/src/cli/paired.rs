//! `sftok paired`: compares training recipes (groups of models, e.g. seeds) from one `sftok eval`
//! JSON report, image by image, with 95% confidence intervals; writes a Markdown report and a
//! plot. `scripts/experiments.sh` uses it for docs/experiments.md.

use std::path::PathBuf;

use anyhow::Context;
use sftok_core::eval::EvalReport;
use sftok_core::eval::paired::{Figure, Group, group_figure, group_per_image, paired};
use sftok_core::eval::plot::{PALETTE, Panel, Series, render};
use sftok_core::image_io::save_png;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The JSON report of `sftok eval` holding every model of the groups.
    #[arg(long)]
    pub eval: PathBuf,
    /// A recipe: NAME=MODEL,MODEL,... (the model labels as in the report, i.e. as given to eval).
    #[arg(long = "group", required = true)]
    pub groups: Vec<String>,
    /// A comparison A:B of two group names (A - B is reported); repeat for several.
    #[arg(long = "versus")]
    pub versus: Vec<String>,
    /// Markdown output (it is always printed).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// PNG plot: PSNR against steps per group, and each comparison's difference with its interval.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn parse_group(text: &str) -> anyhow::Result<Group> {
    let (name, models) = text
        .split_once('=')
        .with_context(|| format!("--group {text}: write NAME=MODEL,MODEL,..."))?;
    let models: Vec<String> = models
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    if name.is_empty() || models.is_empty() {
        anyhow::bail!("--group {text}: write NAME=MODEL,MODEL,...");
    }
    Ok(Group {
        name: name.to_string(),
        models,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.eval)
        .with_context(|| format!("cannot read {}", args.eval.display()))?;
    let report: EvalReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report written by `sftok eval --json`",
            args.eval.display()
        )
    })?;
    let groups: Vec<Group> = args
        .groups
        .iter()
        .map(|g| parse_group(g))
        .collect::<anyhow::Result<_>>()?;
    let find = |name: &str| {
        groups
            .iter()
            .find(|g| g.name == name)
            .with_context(|| format!("--versus names `{name}`, which no --group defines"))
    };
    let mut comparisons = Vec::new();
    for v in &args.versus {
        let (a, b) = v
            .split_once(':')
            .with_context(|| format!("--versus {v}: write A:B with two group names"))?;
        comparisons.push((find(a)?, find(b)?));
    }
    if let Some(md) = &args.markdown {
        super::check_writable_file("--markdown", md)?;
    }
    if let Some(plot) = &args.plot {
        super::check_writable_file("--plot", plot)?;
    }
    let steps = report.steps.clone();
    let has_accuracy = report
        .results
        .values()
        .flat_map(|rows| rows.values())
        .all(|m| !m.per_image_proxy_accuracy.is_empty());

    let mut md = format!(
        "{} images of `{}`; each recipe's figure per image is the mean over its models; \
         intervals are 95% Student-t intervals over the images of the per-image differences.\n\n",
        report.images, report.data
    );
    // The step sweep.
    for (figure, title, scale, unit) in [
        (Figure::Psnr, "PSNR (dB)", 1.0, ""),
        (Figure::ProxyAccuracy, "proxy-code accuracy (%)", 100.0, ""),
    ] {
        if figure == Figure::ProxyAccuracy && !has_accuracy {
            continue;
        }
        md += &format!(
            "### {title} by decoding steps (mean over models; min-max of the models' means)\n\n| recipe | models |"
        );
        for s in &steps {
            md += &format!(" {s} |");
        }
        md += "\n|---|---|";
        md += &"---|".repeat(steps.len());
        md += "\n";
        for g in &groups {
            md += &format!("| {} | {} |", g.name, g.models.len());
            for &s in &steps {
                let f = group_figure(&report, g, s, figure)?;
                md += &format!(
                    " {:.2}{unit} ({:.2}-{:.2}) |",
                    f.mean * scale,
                    f.model_min * scale,
                    f.model_max * scale
                );
            }
            md += "\n";
        }
        md += "\n";
    }
    // The comparisons.
    let mut diff_series = Vec::new();
    for (i, (a, b)) in comparisons.iter().enumerate() {
        md += &format!(
            "### {} - {} (per-image paired differences)\n\n| steps | {} PSNR | {} PSNR | difference (dB) [95% CI] | images where {} is better |{}\n|---|---|---|---|---|{}\n",
            a.name,
            b.name,
            a.name,
            b.name,
            a.name,
            if has_accuracy {
                " accuracy difference (points) [95% CI] |"
            } else {
                ""
            },
            if has_accuracy { "---|" } else { "" },
        );
        let (mut mean, mut low, mut high) = (Vec::new(), Vec::new(), Vec::new());
        for &s in &steps {
            let pa = group_per_image(&report, a, s, Figure::Psnr)?;
            let pb = group_per_image(&report, b, s, Figure::Psnr)?;
            let d = paired(&pa, &pb);
            let better = pa.iter().zip(&pb).filter(|(x, y)| x > y).count();
            let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            md += &format!(
                "| {s} | {:.2} | {:.2} | {:+.3} [{:+.3}, {:+.3}] | {better} of {} |",
                avg(&pa),
                avg(&pb),
                d.mean,
                d.low,
                d.high,
                pa.len()
            );
            if has_accuracy {
                let aa = group_per_image(&report, a, s, Figure::ProxyAccuracy)?;
                let ab = group_per_image(&report, b, s, Figure::ProxyAccuracy)?;
                let da = paired(&aa, &ab);
                md += &format!(
                    " {:+.2} [{:+.2}, {:+.2}] |",
                    da.mean * 100.0,
                    da.low * 100.0,
                    da.high * 100.0
                );
            }
            md += "\n";
            mean.push((s as f64, d.mean));
            low.push((s as f64, d.low));
            high.push((s as f64, d.high));
        }
        md += "\n";
        let colour = PALETTE[(groups.len() + i) % PALETTE.len()];
        let label = format!("{} - {}", a.name, b.name);
        diff_series.push(Series {
            label: label.clone(),
            points: mean,
            dashed: false,
            colour,
        });
        diff_series.push(Series {
            label: format!("{label}: 95 % CI"),
            points: low,
            dashed: true,
            colour,
        });
        diff_series.push(Series {
            label: format!("{label}: 95 % CI"),
            points: high,
            dashed: true,
            colour,
        });
    }
    println!("{md}");
    if let Some(path) = &args.markdown {
        sftok_core::checkpoint::files::write_atomic(path, md.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let ticks: Vec<f64> = steps.iter().map(|&s| s as f64).collect();
        let mut sweep = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let points = steps
                .iter()
                .map(|&s| Ok((s as f64, group_figure(&report, g, s, Figure::Psnr)?.mean)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            sweep.push(Series {
                label: g.name.clone(),
                points,
                dashed: false,
                colour: PALETTE[i % PALETTE.len()],
            });
        }
        let mut panels = vec![Panel {
            title: "PSNR (dB), mean over models".into(),
            x_label: "decoding steps".into(),
            x_ticks: ticks.clone(),
            series: sweep,
            y_decimals: 2,
        }];
        if !diff_series.is_empty() {
            // Zero as a reference: an interval that crosses it shows no difference.
            let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
            diff_series.push(Series {
                label: "no difference".into(),
                points: vec![(first, 0.0), (last, 0.0)],
                dashed: true,
                colour: [160, 160, 160],
            });
            panels.push(Panel {
                title: "PSNR difference (dB), 95 % CI".into(),
                x_label: "decoding steps".into(),
                x_ticks: ticks,
                series: diff_series,
                y_decimals: 2,
            });
        }
        save_png(&render(&panels)?, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
