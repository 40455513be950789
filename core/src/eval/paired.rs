//! Paired comparisons of training recipes from `sftok eval` reports: each recipe is a group of
//! models (e.g. the stage-2 seeds), each image's figure is averaged over the group's models, and
//! two recipes are compared by the per-image differences, with a 95% Student-t confidence
//! interval over the images. This is what `sftok paired` and `scripts/experiments.sh` report.
//!
//! Why paired: the eval photos differ far more from each other (PSNR from about 10 to 25 dB)
//! than two recipes differ on one photo, so comparing the two means alone would hide a
//! consistent difference in the spread between images.

use serde::Serialize;

use crate::error::{Result, SftokError};
use crate::eval::report::EvalReport;

/// A recipe: a name and the model labels (as in the report) trained with it.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub models: Vec<String>,
}

/// Mean and 95% confidence interval of a sample.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// The two-sided 97.5% quantile of Student's t with `df` degrees of freedom (tabled to 30, then
/// `1.96 + 2.4 / df`, within 0.003 of the exact value).
pub fn t_quantile_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.96 + 2.4 / df as f64,
    }
}

/// Mean with its 95% t-interval (infinite for fewer than two values).
pub fn interval(values: &[f64]) -> Interval {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Interval {
            mean,
            low: f64::NEG_INFINITY,
            high: f64::INFINITY,
            n,
        };
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t_quantile_975(n - 1) * (var / n as f64).sqrt();
    Interval {
        mean,
        low: mean - half,
        high: mean + half,
        n,
    }
}

/// Which per-image figure to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Psnr,
    ProxyAccuracy,
}

/// Each image's figure at `steps`, averaged over the group's models.
pub fn group_per_image(
    report: &EvalReport,
    group: &Group,
    steps: usize,
    figure: Figure,
) -> Result<Vec<f64>> {
    let mut sum = vec![0.0; report.image_names.len()];
    for label in &group.models {
        let m = report
            .results
            .get(label)
            .and_then(|rows| rows.get(&steps.to_string()))
            .ok_or_else(|| {
                SftokError::Other(format!(
                    "the report has no results for model {label} at {steps} steps (group {})",
                    group.name
                ))
            })?;
        let values = match figure {
            Figure::Psnr => &m.per_image_psnr,
            Figure::ProxyAccuracy => &m.per_image_proxy_accuracy,
        };
        if values.len() != sum.len() {
            return Err(SftokError::Other(format!(
                "model {label} has {} per-image values for {} images (a report from an older \
                 `sftok eval`, or one without a teacher?)",
                values.len(),
                sum.len()
            )));
        }
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v / group.models.len() as f64;
        }
    }
    Ok(sum)
}

/// `a - b` per image and its interval.
pub fn paired(a: &[f64], b: &[f64]) -> Interval {
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    interval(&diffs)
}

/// One recipe's figure at one step count: the mean over images of the group mean, and the
/// spread of the group's models (each model's own mean), which is the seed-to-seed variation.
#[derive(Debug, Clone, Serialize)]
pub struct GroupFigure {
    pub mean: f64,
    pub model_min: f64,
    pub model_max: f64,
}

pub fn group_figure(
    report: &EvalReport,
    group: &Group,
    steps: usize,
    figure: Figure,
) -> Result<GroupFigure> {
    let per_model: Vec<f64> = group
        .models
        .iter()
        .map(|label| {
            group_per_image(
                report,
                &Group {
                    name: group.name.clone(),
                    models: vec![label.clone()],
                },
                steps,
                figure,
            )
            .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
        })
        .collect::<Result<_>>()?;
    Ok(GroupFigure {
        mean: per_model.iter().sum::<f64>() / per_model.len().max(1) as f64,
        model_min: per_model.iter().copied().fold(f64::INFINITY, f64::min),
        model_max: per_model.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_matches_a_hand_computation() {
        // mean 2, sample sd 1, n 4: half width = 3.182 * 1 / 2.
        let i = interval(&[1.0, 2.0, 2.0, 3.0]);
        let sd = (2.0f64 / 3.0).sqrt();
        assert!((i.mean - 2.0).abs() < 1e-12);
        assert!((i.high - (2.0 + 3.182 * sd / 2.0)).abs() < 1e-9, "{i:?}");
        assert!((i.low - (2.0 - 3.182 * sd / 2.0)).abs() < 1e-9, "{i:?}");
        assert!(interval(&[5.0]).high.is_infinite());
    }

    #[test]
    fn t_quantiles_approach_the_normal() {
        assert!((t_quantile_975(20) - 2.086).abs() < 1e-9);
        assert!((t_quantile_975(60) - 2.000).abs() < 0.003);
        assert!((t_quantile_975(1000) - 1.962).abs() < 0.003);
    }

    #[test]
    fn a_consistent_small_difference_is_found_among_large_image_differences() {
        // Images from 10 to 30 dB; recipe A is 0.1 dB better on every one (plus tiny noise).
        let b: Vec<f64> = (0..21).map(|i| 10.0 + i as f64).collect();
        let a: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.1 + 0.01 * ((i % 3) as f64 - 1.0))
            .collect();
        let d = paired(&a, &b);
        assert!(d.low > 0.09 && d.high < 0.11, "{d:?}");
    }
}
