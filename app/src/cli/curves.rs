//! `sftok curves`: learning curves of one or more runs as a PNG, from their `metrics.jsonl`
//! (e.g. held-out PSNR of the live and EMA weights against steps), without a plotting stack.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sftok_core::eval::plot::{PALETTE, Panel, Series, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folders (or their metrics.jsonl files).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Metrics to plot, one panel each (a metric's `_ema` twin is drawn dashed beside it).
    /// Default: heldout_psnr, heldout_perplexity, heldout_proxy_accuracy (a generator run's:
    /// heldout_loss, heldout_masked_accuracy) where present, else loss.
    #[arg(long = "metric")]
    pub metrics: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `(step, row)` of every row of a run's metrics.
fn read_rows(run: &Path) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let path = if run.is_dir() {
        run.join("metrics.jsonl")
    } else {
        run.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: pass a run folder made by `sftok train`",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.as_object().cloned())
        .collect())
}

fn points(rows: &[serde_json::Map<String, serde_json::Value>], metric: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| {
            let step = r.get("step")?.as_f64()?;
            let v = r.get(metric)?.as_f64()?;
            v.is_finite().then_some((step, v))
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runs: Vec<(String, Vec<_>)> = args
        .runs
        .iter()
        .map(|r| Ok((run_label(r), read_rows(r)?)))
        .collect::<anyhow::Result<_>>()?;
    let metrics = if args.metrics.is_empty() {
        let present = |m: &str| runs.iter().any(|(_, rows)| !points(rows, m).is_empty());
        let found: Vec<String> = [
            "heldout_psnr",
            "heldout_perplexity",
            "heldout_proxy_accuracy",
            // A generator run's.
            "heldout_loss",
            "heldout_masked_accuracy",
        ]
        .into_iter()
        .filter(|m| present(m))
        .map(String::from)
        .collect();
        if found.is_empty() {
            vec!["loss".to_string()]
        } else {
            found
        }
    } else {
        args.metrics.clone()
    };
    let last_step = runs
        .iter()
        .flat_map(|(_, rows)| rows.iter().filter_map(|r| r.get("step")?.as_f64()))
        .fold(0.0f64, f64::max);
    // Ticks from 0 (which also keeps the step axis linear).
    let tick = nice_step(last_step / 5.0);
    let ticks: Vec<f64> = (0..=((last_step / tick).ceil() as usize))
        .map(|i| i as f64 * tick)
        .collect();
    let mut panels = Vec::new();
    for metric in &metrics {
        let mut series = Vec::new();
        for (i, (label, rows)) in runs.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let name = |m: &str| {
                if runs.len() == 1 {
                    m.to_string()
                } else {
                    format!("{label}: {m}")
                }
            };
            let live = points(rows, metric);
            if !live.is_empty() {
                series.push(Series {
                    label: name(metric),
                    points: live,
                    dashed: false,
                    colour,
                });
            }
            let ema = points(rows, &format!("{metric}_ema"));
            if !ema.is_empty() {
                series.push(Series {
                    label: name(&format!("{metric}_ema")),
                    points: ema,
                    dashed: true,
                    colour,
                });
            }
        }
        if series.is_empty() {
            bail!(
                "no run has the metric `{metric}` in its metrics.jsonl (held-out metrics need `sftok train ... --eval-data DIR`)"
            );
        }
        panels.push(Panel {
            title: metric.replace('_', " "),
            x_label: "step".into(),
            x_ticks: ticks.clone(),
            series,
            // Accuracies live in the first percent or two: two decimals would print 0.01 twice.
            y_decimals: if metric.contains("accuracy") { 4 } else { 2 },
        });
    }
    let image = render(&panels)?;
    sftok_core::image_io::save_png(&image, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// A short name for a run in the legend: the run folder's name, or the metrics file's stem.
fn run_label(run: &Path) -> String {
    let named = if run.is_dir() {
        run.file_name()
    } else {
        run.file_stem()
    };
    named.map_or_else(
        || run.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(500.0), 500.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn plots_a_run_and_refuses_a_missing_metric() {
        let dir = std::env::temp_dir().join(format!("sftok-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = (1..=4)
            .map(|s| {
                format!(
                    "{{\"step\":{},\"loss\":{},\"heldout_psnr\":{},\"heldout_psnr_ema\":{}}}\n",
                    s * 10,
                    1.0 / s as f64,
                    10 + s,
                    9 + s
                )
            })
            .collect::<String>();
        std::fs::write(dir.join("metrics.jsonl"), rows).unwrap();
        let out = dir.join("c.png");
        run(Args {
            runs: vec![dir.clone()],
            metrics: vec![],
            out: out.clone(),
        })
        .unwrap();
        let image = image::open(&out).unwrap();
        assert!(image.width() >= 400);
        let e = run(Args {
            runs: vec![dir.clone()],
            metrics: vec!["heldout_proxy_accuracy".into()],
            out,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--eval-data"), "{e}");
    }
}
