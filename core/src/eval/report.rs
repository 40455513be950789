//! `sftok eval`: every model at every step count over a folder of images, with the teacher's own
//! reconstruction as the reference. The result is one [`EvalReport`], written as Markdown, JSON
//! (`results[<model dir as given>][<steps>]`) and a plot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use image::RgbImage;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use crate::checkpoint::LoadedModel;
use crate::config::AssignmentMode;
use crate::data::ImageFolder;
use crate::error::{Result, SftokError};
use crate::eval::metrics::{CodeHistogram, accuracy, psnr, ssim};
use crate::image_io::{center_crop_resize, images_to_tensor, load_rgb, tensor_to_images};
use crate::reconstruct::{ReconstructOptions, generate, rows_i64};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Step counts T to decode with.
    pub steps: Vec<usize>,
    /// Resolution at which the metrics are computed; `None`: each model's own image size.
    pub size: Option<u32>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// OptVQ assignment (per image by default, so that a result does not depend on batch-mates).
    pub assignment: AssignmentMode,
    /// Evaluate at most this many images (in sorted order).
    pub limit: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            steps: vec![1, 2, 4, 8, 16],
            size: None,
            batch_size: 8,
            assignment: AssignmentMode::SinkhornPerImage,
            limit: None,
        }
    }
}

/// Figures of one model at one step count (means over the images, and each image's own values in
/// the order of [`EvalReport::image_names`], for paired comparisons between models).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub psnr: f64,
    pub ssim: f64,
    /// Fraction of proxy codes equal to the teacher's codes of the same image.
    pub proxy_accuracy: Option<f64>,
    #[serde(default)]
    pub per_image_psnr: Vec<f64>,
    /// Empty without a teacher.
    #[serde(default)]
    pub per_image_proxy_accuracy: Vec<f64>,
    /// Of the OptVQ codebook, over all latent tokens of the evaluated images.
    pub codebook_utilisation: f64,
    pub codebook_perplexity: f64,
    /// Frechet Inception distance of the reconstructions to the originals, when available.
    pub rfid: Option<f64>,
}

/// The teacher's own reconstruction (encode, decode): the reference a model is measured against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherMetrics {
    pub psnr: f64,
    pub ssim: f64,
    pub codebook_utilisation: f64,
    pub codebook_perplexity: f64,
    pub rfid: Option<f64>,
}

/// A trivial reference (`eval::references`): no model, just the image's mean colour or its
/// block means, on the same crops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceMetrics {
    pub name: String,
    pub psnr: f64,
    pub ssim: f64,
}

/// Paths are kept as text (non-UTF-8 bytes replaced) so that any file name can be written to the
/// JSON report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub data: String,
    pub images: usize,
    /// The evaluated files, in the order of every `per_image_*` list.
    #[serde(default)]
    pub image_names: Vec<String>,
    /// Files that could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
    pub steps: Vec<usize>,
    /// `results[<model dir as given>][<steps>]`.
    pub results: BTreeMap<String, BTreeMap<String, StepMetrics>>,
    /// The teacher of each model, keyed like `results`.
    pub teacher: BTreeMap<String, TeacherMetrics>,
    /// The trivial references at the first model's metric size (mean colour, block means).
    #[serde(default)]
    pub references: Vec<ReferenceMetrics>,
    /// "on", or why rFID was not computed.
    pub rfid: String,
    /// Model labels in the order given (JSON maps are sorted; tables and plots keep this order).
    pub order: Vec<String>,
}

/// Feature extractor and statistics for rFID; implemented over the FID Inception network.
pub trait FidFeatures {
    /// Distance between the feature statistics of `reference` and `candidate` image sets.
    fn distance(&self, reference: &[RgbImage], candidate: &[RgbImage]) -> Result<f64>;
}

/// Progress of an evaluation: `(done, total)` units of work.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Images that were read, each with its path: the centre square, already at the size asked for.
pub type LoadedImages = Vec<(PathBuf, RgbImage)>;
/// Files that could not be read, each with the reason.
pub type SkippedImages = Vec<(PathBuf, String)>;

/// Loads the evaluation images as centre squares of `keep_size` pixels (the largest size any
/// model or metric needs; smaller ones are resized from it). Only these small crops are kept, so
/// memory does not grow with the photos' resolution. Unreadable files are skipped and returned
/// with the reason.
pub fn load_eval_images(
    data: &Path,
    limit: Option<usize>,
    keep_size: u32,
) -> Result<(LoadedImages, SkippedImages)> {
    let folder = ImageFolder::scan(data).map_err(SftokError::from)?;
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for path in folder.paths() {
        if limit.is_some_and(|l| images.len() >= l) {
            break;
        }
        match load_rgb(path) {
            Ok(image) => images.push((path.clone(), center_crop_resize(&image, keep_size).0)),
            Err(e) => skipped.push((path.clone(), e.to_string())),
        }
    }
    if images.is_empty() {
        return Err(SftokError::Other(format!(
            "no readable image in {} ({} skipped); eval needs at least one JPEG, PNG, WebP or BMP",
            data.display(),
            skipped.len()
        )));
    }
    Ok((images, skipped))
}

/// `image` (a square) at `size` pixels.
fn square_at(image: &RgbImage, size: u32) -> RgbImage {
    if image.width() == size {
        image.clone()
    } else {
        image::imageops::resize(image, size, size, FilterType::CatmullRom)
    }
}

/// Evaluates `models` (label, loaded model) on the images of `data`.
pub fn evaluate(
    models: &[(String, LoadedModel)],
    data: &Path,
    opts: &EvalOptions,
    fid: Option<&dyn FidFeatures>,
    rfid_status: &str,
    device: &Device,
    progress: Progress,
) -> Result<EvalReport> {
    if opts.steps.is_empty() || opts.steps.contains(&0) {
        return Err(SftokError::InvalidConfig(
            "the step counts to evaluate must be at least 1, e.g. 1,2,4,8".into(),
        ));
    }
    let keep_size = models
        .iter()
        .map(|(_, m)| m.config.image_size as u32)
        .chain(opts.size)
        .max()
        .unwrap_or(256);
    let (images, skipped) = load_eval_images(data, opts.limit, keep_size)?;
    let batch = opts.batch_size.max(1);
    let batches = images.len().div_ceil(batch);
    let total = models.len() * batches * (opts.steps.len() + 1);
    let mut done = 0;
    let mut report = EvalReport {
        data: data.to_string_lossy().into_owned(),
        images: images.len(),
        image_names: images
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect(),
        skipped: skipped
            .into_iter()
            .map(|(p, why)| (p.to_string_lossy().into_owned(), why))
            .collect(),
        steps: opts.steps.clone(),
        results: BTreeMap::new(),
        teacher: BTreeMap::new(),
        references: Vec::new(),
        rfid: rfid_status.to_string(),
        order: models.iter().map(|(l, _)| l.clone()).collect(),
    };

    for (label, loaded) in models {
        let model_size = loaded.config.image_size as u32;
        let metric_size = opts.size.unwrap_or(model_size);
        let references: Vec<RgbImage> = images
            .iter()
            .map(|(_, im)| square_at(im, metric_size))
            .collect();
        let to_metric = |im: RgbImage| {
            if metric_size == model_size {
                im
            } else {
                image::imageops::resize(&im, metric_size, metric_size, FilterType::CatmullRom)
            }
        };
        if report.references.is_empty() {
            report.references = reference_metrics(&references);
        }
        let mut latent_use = CodeHistogram::new(loaded.config.quantizer.codebook_size);
        let mut teacher_use = CodeHistogram::new(loaded.config.vqgan.num_embeddings);
        // Reconstructions are measured as they come and kept only when rFID needs them all.
        let keep_recons = fid.is_some();
        let mut recons: Vec<Vec<RgbImage>> = vec![Vec::new(); opts.steps.len()];
        let mut psnrs: Vec<Vec<f64>> = vec![Vec::new(); opts.steps.len()];
        let mut ssims: Vec<Vec<f64>> = vec![Vec::new(); opts.steps.len()];
        let mut accuracies: Vec<Vec<f64>> = vec![Vec::new(); opts.steps.len()];
        let mut teacher_recons = Vec::new();
        let (mut teacher_psnr, mut teacher_ssim) = (Vec::new(), Vec::new());
        let mut first_image = 0;

        for (b, chunk) in images.chunks(batch).enumerate() {
            let inputs: Vec<RgbImage> = chunk
                .iter()
                .map(|(_, im)| square_at(im, model_size))
                .collect();
            let truths = &references[first_image..first_image + chunk.len()];
            first_image += chunk.len();
            let pixels = images_to_tensor(&inputs, device);
            let quantized = loaded.model.encode(pixels.clone(), opts.assignment);
            for row in rows_i64(quantized.indices.clone()) {
                latent_use.add(&row);
            }
            let zq = loaded.model.quantize.codebook_entries(quantized.indices);
            let teacher_ids = loaded.teacher.as_ref().map(|t| {
                let codes = t.encode(pixels.clone());
                let decoded: Vec<RgbImage> = tensor_to_images(t.decode(codes.clone()))
                    .into_iter()
                    .map(to_metric)
                    .collect();
                measure(truths, &decoded, &mut teacher_psnr, &mut teacher_ssim);
                if keep_recons {
                    teacher_recons.extend(decoded);
                }
                rows_i64(codes)
            });
            if let Some(ids) = &teacher_ids {
                for row in ids {
                    teacher_use.add(row);
                }
            }
            done += 1;
            progress(
                done,
                total,
                &format!("{label}: batch {}/{batches} teacher", b + 1),
            );
            for (k, &steps) in opts.steps.iter().enumerate() {
                let options = ReconstructOptions {
                    steps,
                    assignment: opts.assignment,
                    step_images: false,
                    keep_logits: false,
                    ..ReconstructOptions::default()
                };
                let trace = generate(&loaded.model, zq.clone(), &options);
                if let Some(truth) = &teacher_ids {
                    for (pred, t) in trace.final_ids.iter().zip(truth) {
                        accuracies[k].push(accuracy(pred, t));
                    }
                }
                let decoded: Vec<RgbImage> = tensor_to_images(trace.pixels)
                    .into_iter()
                    .map(to_metric)
                    .collect();
                measure(truths, &decoded, &mut psnrs[k], &mut ssims[k]);
                if keep_recons {
                    recons[k].extend(decoded);
                }
                done += 1;
                progress(
                    done,
                    total,
                    &format!("{label}: batch {}/{batches}, T={steps}", b + 1),
                );
            }
        }
        let latent = latent_use.usage();
        let mut per_steps = BTreeMap::new();
        for (k, &steps) in opts.steps.iter().enumerate() {
            let rfid = match fid {
                Some(f) => Some(f.distance(&references, &recons[k])?),
                None => None,
            };
            per_steps.insert(
                steps.to_string(),
                StepMetrics {
                    psnr: mean(&psnrs[k]),
                    ssim: mean(&ssims[k]),
                    proxy_accuracy: (!accuracies[k].is_empty()).then(|| mean(&accuracies[k])),
                    per_image_psnr: std::mem::take(&mut psnrs[k]),
                    per_image_proxy_accuracy: std::mem::take(&mut accuracies[k]),
                    codebook_utilisation: latent.utilisation,
                    codebook_perplexity: latent.perplexity,
                    rfid,
                },
            );
        }
        report.results.insert(label.clone(), per_steps);
        if !teacher_psnr.is_empty() {
            let used = teacher_use.usage();
            let rfid = match fid {
                Some(f) => Some(f.distance(&references, &teacher_recons)?),
                None => None,
            };
            report.teacher.insert(
                label.clone(),
                TeacherMetrics {
                    psnr: mean(&teacher_psnr),
                    ssim: mean(&teacher_ssim),
                    codebook_utilisation: used.utilisation,
                    codebook_perplexity: used.perplexity,
                    rfid,
                },
            );
        }
    }
    Ok(report)
}

/// PSNR and SSIM of each trivial reference, averaged over `images`.
pub fn reference_metrics(images: &[RgbImage]) -> Vec<ReferenceMetrics> {
    let per_image: Vec<Vec<(String, RgbImage)>> = images
        .iter()
        .map(crate::eval::references::references)
        .collect();
    let Some(first) = per_image.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|k| {
            let recon: Vec<RgbImage> = per_image.iter().map(|r| r[k].1.clone()).collect();
            ReferenceMetrics {
                name: first[k].0.clone(),
                psnr: mean_pairwise(images, &recon, psnr),
                ssim: mean_pairwise(images, &recon, ssim),
            }
        })
        .collect()
}

/// Appends each image's PSNR (capped like [`mean_pairwise`]) and SSIM.
fn measure(truths: &[RgbImage], recons: &[RgbImage], psnrs: &mut Vec<f64>, ssims: &mut Vec<f64>) {
    for (t, r) in truths.iter().zip(recons) {
        psnrs.push(psnr(t, r).min(100.0));
        ssims.push(ssim(t, r));
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Mean of a pairwise metric; PSNR of identical pairs (infinite) is capped at 100 dB so that one
/// perfect image does not make the mean infinite.
fn mean_pairwise(a: &[RgbImage], b: &[RgbImage], metric: fn(&RgbImage, &RgbImage) -> f64) -> f64 {
    let values: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| metric(x, y).min(100.0))
        .collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

impl EvalReport {
    /// The table: one row per model and step count, then the teacher rows.
    pub fn markdown(&self) -> String {
        let fid = self.rfid == "on";
        let mut s = format!(
            "Evaluated on {} images of `{}`{}.\n\n| model | steps | PSNR (dB) | SSIM | proxy acc. | codebook use | perplexity |{}\n|---|---|---|---|---|---|---|{}\n",
            self.images,
            self.data,
            if self.skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} unreadable files skipped)", self.skipped.len())
            },
            if fid { " rFID |" } else { "" },
            if fid { "---|" } else { "" },
        );
        for label in &self.order {
            let Some(rows) = self.results.get(label) else {
                continue;
            };
            for steps in &self.steps {
                let Some(m) = rows.get(&steps.to_string()) else {
                    continue;
                };
                s += &format!(
                    "| {label} | {steps} | {:.2} | {:.4} | {} | {:.3} | {:.1} |{}\n",
                    m.psnr,
                    m.ssim,
                    m.proxy_accuracy.map_or("-".into(), |a| format!("{:.3}", a)),
                    m.codebook_utilisation,
                    m.codebook_perplexity,
                    fmt_fid(fid, m.rfid),
                );
            }
        }
        for label in &self.order {
            if let Some(t) = self.teacher.get(label) {
                s += &format!(
                    "| teacher of {label} | - | {:.2} | {:.4} | - | {:.3} | {:.1} |{}\n",
                    t.psnr,
                    t.ssim,
                    t.codebook_utilisation,
                    t.codebook_perplexity,
                    fmt_fid(fid, t.rfid),
                );
            }
        }
        for r in &self.references {
            s += &format!(
                "| reference: {} | - | {:.2} | {:.4} | - | - | - |{}\n",
                r.name,
                r.psnr,
                r.ssim,
                if fid { " - |" } else { "" },
            );
        }
        if !fid {
            s += &format!("\nrFID: {}\n", self.rfid);
        }
        s
    }
}

fn fmt_fid(on: bool, v: Option<f64>) -> String {
    if !on {
        String::new()
    } else {
        format!(" {} |", v.map_or("-".into(), |v| format!("{v:.2}")))
    }
}

impl EvalReport {
    /// PSNR and SSIM against steps, one line per model, each model's teacher dashed in its colour.
    pub fn plot(&self) -> crate::error::Result<image::RgbImage> {
        use crate::eval::plot::{PALETTE, Panel, Series, render};
        let ticks: Vec<f64> = self.steps.iter().map(|&s| s as f64).collect();
        let (first, last) = (
            ticks.iter().copied().fold(f64::INFINITY, f64::min),
            ticks.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let panel = |title: &str,
                     decimals: usize,
                     pick: fn(&StepMetrics) -> f64,
                     teacher: fn(&TeacherMetrics) -> f64,
                     reference: fn(&ReferenceMetrics) -> f64| {
            let mut series = Vec::new();
            // The references in greys, darker for the better ones.
            for (i, r) in self.references.iter().enumerate() {
                let grey = (200 - 40 * i.min(4)) as u8;
                series.push(Series {
                    label: format!("reference: {}", r.name),
                    points: vec![(first, reference(r)), (last, reference(r))],
                    dashed: true,
                    colour: [grey, grey, grey],
                });
            }
            for (i, label) in self.order.iter().enumerate() {
                let colour = PALETTE[i % PALETTE.len()];
                if let Some(rows) = self.results.get(label) {
                    series.push(Series {
                        label: label.clone(),
                        points: self
                            .steps
                            .iter()
                            .filter_map(|s| rows.get(&s.to_string()).map(|m| (*s as f64, pick(m))))
                            .collect(),
                        dashed: false,
                        colour,
                    });
                }
                if let Some(t) = self.teacher.get(label) {
                    series.push(Series {
                        label: format!("teacher of {label}"),
                        points: vec![(first, teacher(t)), (last, teacher(t))],
                        dashed: true,
                        colour,
                    });
                }
            }
            Panel {
                title: title.into(),
                x_label: "decoding steps".into(),
                x_ticks: ticks.clone(),
                series,
                y_decimals: decimals,
            }
        };
        render(&[
            panel("PSNR (dB)", 2, |m| m.psnr, |t| t.psnr, |r| r.psnr),
            panel("SSIM", 3, |m| m.ssim, |t| t.ssim, |r| r.ssim),
        ])
    }
}
