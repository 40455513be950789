//! Measurements on held-out images during training (`--eval-data`): what a learning curve is
//! read from. The training loss alone can fall while the model learns nothing that carries over
//! (a collapsed teacher's MSE fell to 0.05 and stayed there, at 13 dB, below each image's mean
//! colour); these numbers are the ones `sftok eval` reports, on the same centre crops.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use image::RgbImage;

use crate::config::AssignmentMode;
use crate::error::Result;
use crate::eval::metrics::accuracy;
use crate::eval::report::load_eval_images;
use crate::image_io::{images_to_tensor, psnr, tensor_to_images};
use crate::model::{Sftok, Vqgan};
use crate::reconstruct::{ReconstructOptions, reconstruct, rows_i64};

use super::teacher_step::perplexity;

/// Held-out images, centre-cropped to the model's size once.
#[derive(Debug, Clone)]
pub struct HeldOut {
    pub images: Vec<RgbImage>,
}

/// How many held-out images at most (the measurement runs on the training thread).
pub const MAX_IMAGES: usize = 64;

impl HeldOut {
    pub fn load(dir: &Path, image_size: usize) -> Result<Self> {
        let (images, _skipped) = load_eval_images(dir, Some(MAX_IMAGES), image_size as u32)?;
        Ok(HeldOut {
            images: images.into_iter().map(|(_, im)| im).collect(),
        })
    }

    fn mean_psnr(&self, recon: &[RgbImage]) -> f64 {
        let values: Vec<f64> = self
            .images
            .iter()
            .zip(recon)
            .map(|(a, b)| psnr(a, b).min(100.0))
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    }

    /// The teacher's reconstruction PSNR and the perplexity of its codes on these images.
    pub fn teacher(&self, teacher: &Vqgan, device: &Device) -> (f64, f64) {
        let pixels = images_to_tensor(&self.images, device);
        let codes = teacher.encode(pixels);
        let ids: Vec<i64> = rows_i64(codes.clone()).into_iter().flatten().collect();
        let recon = tensor_to_images(teacher.decode(codes));
        (
            self.mean_psnr(&recon),
            perplexity(&ids, teacher.quantize.embedding.weight.dims()[0]),
        )
    }

    /// A tokenizer's PSNR after `steps` decoding steps, and its proxy-code accuracy against the
    /// teacher after 1 step and after `steps`.
    pub fn tokenizer(
        &self,
        model: &Sftok,
        teacher: Option<&Vqgan>,
        steps: usize,
        device: &Device,
    ) -> TokenizerHeldOut {
        let pixels = images_to_tensor(&self.images, device);
        let run = |steps: usize| {
            let options = ReconstructOptions {
                steps,
                assignment: AssignmentMode::SinkhornPerImage,
                step_images: false,
                keep_logits: false,
                ..ReconstructOptions::default()
            };
            reconstruct(model, teacher, pixels.clone(), &options)
        };
        let mean_accuracy = |trace: &crate::reconstruct::Trace| {
            let truth = trace.teacher_ids.clone()?;
            let values: Vec<f64> = trace
                .final_ids
                .iter()
                .zip(&truth)
                .map(|(p, t)| accuracy(p, t))
                .collect();
            Some(values.iter().sum::<f64>() / values.len().max(1) as f64)
        };
        let one = run(1);
        let many = run(steps);
        let recon = tensor_to_images(many.pixels.clone());
        TokenizerHeldOut {
            psnr: self.mean_psnr(&recon),
            proxy_accuracy_1: mean_accuracy(&one),
            proxy_accuracy: mean_accuracy(&many),
        }
    }
}

/// What [`HeldOut::tokenizer`] measures.
#[derive(Debug, Clone, Copy)]
pub struct TokenizerHeldOut {
    pub psnr: f64,
    /// Against the teacher's codes (`None` without a teacher).
    pub proxy_accuracy_1: Option<f64>,
    pub proxy_accuracy: Option<f64>,
}

/// The held-out measurements of a teacher or a tokenizer (live and EMA weights) as metric
/// entries: `heldout_psnr`, `heldout_psnr_ema`, ...
pub fn teacher_entries(
    held: &HeldOut,
    live: &Vqgan,
    ema: &Vqgan,
    device: &Device,
) -> Vec<(String, f64)> {
    let (psnr_live, ppl_live) = held.teacher(&live.valid(), device);
    let (psnr_ema, ppl_ema) = held.teacher(&ema.valid(), device);
    vec![
        ("heldout_psnr".into(), psnr_live),
        ("heldout_psnr_ema".into(), psnr_ema),
        ("heldout_perplexity".into(), ppl_live),
        ("heldout_perplexity_ema".into(), ppl_ema),
    ]
}

/// See [`teacher_entries`]; the tokenizer is measured at 8 decoding steps.
pub fn tokenizer_entries(
    held: &HeldOut,
    live: &Sftok,
    ema: &Sftok,
    teacher: Option<&Vqgan>,
    device: &Device,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (suffix, model) in [("", live), ("_ema", ema)] {
        let m = held.tokenizer(&model.valid(), teacher, 8, device);
        out.push((format!("heldout_psnr{suffix}"), m.psnr));
        if let (Some(many), Some(one)) = (m.proxy_accuracy, m.proxy_accuracy_1) {
            out.push((format!("heldout_proxy_accuracy{suffix}"), many));
            out.push((format!("heldout_proxy_accuracy_1step{suffix}"), one));
        }
    }
    out
}
