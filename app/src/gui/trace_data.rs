//! A reconstruction trace on the host, in the form the views draw: per step the decoder's current
//! image, which proxy codes are masked / revealed now / revealed before, their confidences and the
//! PSNR against the original. Built once per (model, image, T) by the model worker, which sends
//! the final step's image first and each earlier step's image (and the teacher's) as it decodes
//! them; the UI only reads it, so scrubbing never touches the device.

use image::RgbImage;
use sftok_core::image_io::{psnr, tensor_to_images};
use sftok_core::reconstruct::Trace;

/// State of one proxy-code position after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    Masked,
    /// Committed at this step.
    RevealedNow,
    /// Committed at an earlier step.
    RevealedBefore,
}

/// One step of the trace (step k = 1..=T).
#[derive(Debug, Clone)]
pub struct StepData {
    /// What the pixel head makes of this step's logits, 8-bit; `None` until the worker has
    /// decoded it (the last step's comes with the trace, the others after it).
    pub image: Option<RgbImage>,
    pub states: Vec<CodeState>,
    /// Confidence of each position's sampled id (`+inf` where it was already known).
    pub confidences: Vec<f32>,
    /// Ids after the step (the mask id where still masked).
    pub ids: Vec<i64>,
    pub revealed_now: usize,
    /// PSNR of `image` against the original, once the image is there.
    pub psnr_db: Option<f64>,
}

/// A whole trace for one image.
#[derive(Debug, Clone)]
pub struct TraceData {
    /// The model's input: the centre crop, resized.
    pub original: RgbImage,
    pub steps: Vec<StepData>,
    /// The teacher's own reconstruction of the input.
    pub teacher: Option<RgbImage>,
    pub teacher_psnr_db: Option<f64>,
    /// The model has a teacher whose reconstruction has not arrived yet.
    pub teacher_pending: bool,
    /// PSNR of the image's own 4x4 and 8x8 block means (`eval::references`): what a model must
    /// beat to have learnt anything beyond coarse colour.
    pub block_psnr_db: Vec<(u32, f64)>,
    /// The teacher's codes of the input (to compare the committed ids with).
    pub teacher_ids: Option<Vec<i64>>,
    /// The 1-D latent tokens' OptVQ ids.
    pub latent_ids: Vec<i64>,
    /// Side of the proxy-code grid.
    pub grid: usize,
    pub mask_id: i64,
    /// Size of the OptVQ codebook (the range a latent token can be edited in).
    pub latent_codebook: usize,
}

impl TraceData {
    /// Converts image 0 of a core trace. Steps without an image (a trace made without
    /// `step_images`) get theirs later through [`TraceData::set_step_image`].
    pub fn from_trace(
        trace: &Trace,
        original: RgbImage,
        grid: usize,
        mask_id: i64,
        latent_codebook: usize,
    ) -> Self {
        let mut steps = Vec::with_capacity(trace.steps.len());
        let mut committed_before = vec![false; grid * grid];
        for step in &trace.steps {
            let image = step.image.clone().map(|t| tensor_to_images(t).remove(0));
            let kept = &step.kept[0];
            let states: Vec<CodeState> = kept
                .iter()
                .zip(&committed_before)
                .map(|(&k, &before)| match (k, before) {
                    (_, true) => CodeState::RevealedBefore,
                    (true, false) => CodeState::RevealedNow,
                    (false, false) => CodeState::Masked,
                })
                .collect();
            let revealed_now = states
                .iter()
                .filter(|s| **s == CodeState::RevealedNow)
                .count();
            for (c, &k) in committed_before.iter_mut().zip(kept) {
                *c |= k;
            }
            steps.push(StepData {
                psnr_db: image.as_ref().map(|im| psnr(&original, im)),
                image,
                states,
                confidences: step.confidences[0].clone(),
                ids: step.output_ids[0].clone(),
                revealed_now,
            });
        }
        let teacher = trace
            .teacher_reconstruction
            .clone()
            .map(|t| tensor_to_images(t).remove(0));
        TraceData {
            teacher_psnr_db: teacher.as_ref().map(|t| psnr(&original, t)),
            teacher_pending: false,
            block_psnr_db: [4, 8]
                .into_iter()
                .map(|b| {
                    let reference = sftok_core::eval::references::block_means(&original, b);
                    (b, psnr(&original, &reference))
                })
                .collect(),
            teacher,
            teacher_ids: trace.teacher_ids.as_ref().map(|ids| ids[0].clone()),
            latent_ids: trace.latent_ids.first().cloned().unwrap_or_default(),
            original,
            steps,
            grid,
            mask_id,
            latent_codebook,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// The image of step `step` (1-based) has been decoded.
    pub fn set_step_image(&mut self, step: usize, image: RgbImage) {
        if let Some(s) = step.checked_sub(1).and_then(|i| self.steps.get_mut(i)) {
            s.psnr_db = Some(psnr(&self.original, &image));
            s.image = Some(image);
        }
    }

    /// The teacher's reconstruction and codes have arrived.
    pub fn set_teacher(&mut self, image: RgbImage, ids: Vec<i64>) {
        self.teacher_psnr_db = Some(psnr(&self.original, &image));
        self.teacher = Some(image);
        self.teacher_ids = Some(ids);
        self.teacher_pending = false;
    }

    /// The image of step `step` (1-based), if decoded.
    pub fn step_image(&self, step: usize) -> Option<&RgbImage> {
        step.checked_sub(1)
            .and_then(|i| self.steps.get(i))
            .and_then(|s| s.image.as_ref())
    }

    /// Whether every step's image and the teacher's (if any) are here.
    pub fn is_complete(&self) -> bool {
        !self.teacher_pending && self.steps.iter().all(|s| s.image.is_some())
    }

    /// Code states after `step` (0: before any step, all masked).
    pub fn states_at(&self, step: usize) -> Vec<CodeState> {
        match step {
            0 => vec![CodeState::Masked; self.grid * self.grid],
            k => self.steps[k.min(self.steps.len()) - 1].states.clone(),
        }
    }

    /// PSNR per step, `(step, dB)` for the steps 1..=T decoded so far.
    pub fn psnr_curve(&self) -> Vec<[f64; 2]> {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some([(i + 1) as f64, s.psnr_db?.min(100.0)]))
            .collect()
    }

    /// Fraction of committed proxy codes equal to the teacher's after the last step.
    pub fn proxy_accuracy(&self) -> Option<f64> {
        let truth = self.teacher_ids.as_ref()?;
        let last = self.steps.last()?;
        Some(sftok_core::eval::metrics::accuracy(&last.ids, truth))
    }
}

/// `|a - b|` per channel, scaled by `gain` (differences are small; 4x makes them visible).
/// The gain that maps the 99th percentile of `|a - b|` to full white (at least 1, at most 16):
/// a fixed gain either saturates most of the image (x4 turned 36 % of one pair pure white) or
/// shows nothing when the models nearly agree.
pub fn difference_gain(a: &RgbImage, b: &RgbImage) -> f32 {
    let mut diffs: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    if diffs.is_empty() {
        return 1.0;
    }
    let k = (diffs.len() * 99 / 100).min(diffs.len() - 1);
    let (_, p99, _) = diffs.select_nth_unstable(k);
    (255.0 / (*p99).max(1) as f32).clamp(1.0, 16.0)
}

pub fn difference_image(a: &RgbImage, b: &RgbImage, gain: f32) -> RgbImage {
    RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
        image::Rgb(std::array::from_fn(|c| {
            ((p[c] as f32 - q[c] as f32).abs() * gain).min(255.0) as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pair differing by 10 levels everywhere gets a gain of 25.5, capped at 16; identical
    /// images get 16 too (nothing to amplify), a pair differing by 200 gets about 1.3, and then
    /// at most 1 % of the difference image is saturated.
    #[test]
    fn difference_gain_keeps_the_difference_visible_without_saturating_it() {
        let grey = |v: u8| RgbImage::from_pixel(16, 16, image::Rgb([v, v, v]));
        assert_eq!(difference_gain(&grey(100), &grey(110)), 16.0);
        assert_eq!(difference_gain(&grey(100), &grey(100)), 16.0);
        let g = difference_gain(&grey(20), &grey(220));
        assert!((g - 255.0 / 200.0).abs() < 1e-4, "{g}");
        let ramp = RgbImage::from_fn(32, 32, |x, y| {
            let v = ((x + 32 * y) % 256) as u8 / 4;
            image::Rgb([v, v, v])
        });
        let black = RgbImage::new(32, 32);
        let gain = difference_gain(&ramp, &black);
        let diff = difference_image(&ramp, &black, gain);
        let white = diff.as_raw().iter().filter(|&&v| v == 255).count();
        assert!(white * 100 <= diff.as_raw().len() * 2, "{white}");
    }
}
