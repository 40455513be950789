//! Multi-step reconstruction with a full trace: what the scrubber of the app shows, and what the
//! parity fixtures check step by step.
//!
//! The loop is the official `MultiStepDecoder.generate` (temperature 0 and no guidance by default):
//! every step runs the decoder on the current ids, samples an id at each masked position, and
//! re-masks the `mask_len` least confident of them (arccos schedule); the last step keeps all.
//! The per-step selection runs on the host: it is a sort over N values per image, and keeping it
//! in plain Rust makes its semantics (ties, +inf for known tokens) exact and easy to read.

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::AssignmentMode;
use crate::device::on_compute_pool;
use crate::model::{Sftok, Vqgan};
use crate::schedule::mask_len;

/// Options of a reconstruction.
#[derive(Debug, Clone)]
pub struct ReconstructOptions {
    /// Number of decoding steps T (1 ..= 32 is what the tools offer; any T >= 1 works).
    pub steps: usize,
    /// Gumbel temperature, annealed by `(1 - r)`; 0 (the default) is deterministic. The official
    /// `generate_codes` default when its config has no `generator` section is 2.0.
    pub temperature: f64,
    /// Seed of the Gumbel noise.
    pub seed: u64,
    /// How OptVQ assigns ids.
    pub assignment: AssignmentMode,
    /// Also decode the pixel head's image at every step (the "current guess"), not just the last.
    pub step_images: bool,
    /// Keep every step's logits in the trace.
    pub keep_logits: bool,
}

impl Default for ReconstructOptions {
    fn default() -> Self {
        ReconstructOptions {
            steps: 8,
            temperature: 0.0,
            seed: 0,
            assignment: AssignmentMode::SinkhornPerImage,
            step_images: true,
            keep_logits: false,
        }
    }
}

/// One decoding step for a batch. Outer vectors are over images, inner over the N positions.
#[derive(Debug, Clone)]
pub struct StepTrace {
    /// Ids fed to the decoder (the mask id where unknown).
    pub input_ids: Vec<Vec<i64>>,
    /// Argmax (or Gumbel sample) at masked positions, merged with the known ids.
    pub sampled_ids: Vec<Vec<i64>>,
    /// Confidence of each sampled id: its logit (plus noise), `+inf` for ids already known.
    pub confidences: Vec<Vec<f32>>,
    /// Ids after re-masking: what the next step sees (all kept at the last step).
    pub output_ids: Vec<Vec<i64>>,
    /// Whether the position holds a committed id after this step.
    pub kept: Vec<Vec<bool>>,
    /// Number of positions re-masked after this step (the official `mask_len`; for the last step,
    /// the value computed though not used).
    pub mask_len: usize,
    /// This step's logits `[B, N, V]`, if asked for.
    pub logits: Option<Tensor<3>>,
    /// The pixel head's image from this step's logits, `[B, 3, H, W]`, unclamped, if asked for.
    pub image: Option<Tensor<4>>,
}

/// A whole reconstruction.
#[derive(Debug, Clone)]
pub struct Trace {
    /// OptVQ ids of the latent tokens, `[B][L]`.
    pub latent_ids: Vec<Vec<i64>>,
    pub steps: Vec<StepTrace>,
    /// Committed proxy codes after the last step, `[B][N]`.
    pub final_ids: Vec<Vec<i64>>,
    /// Logits of the last step `[B, N, V]`.
    pub final_logits: Tensor<3>,
    /// The reconstruction: the pixel head on the last step's logits, `[B, 3, H, W]`, unclamped.
    pub pixels: Tensor<4>,
    /// The teacher's own reconstruction of the input (encode, decode), when a teacher was given.
    pub teacher_reconstruction: Option<Tensor<4>>,
    /// The teacher's codes of the input, `[B][N]`, when a teacher was given.
    pub teacher_ids: Option<Vec<Vec<i64>>>,
}

/// Encodes images and decodes them in `opts.steps` steps.
pub fn reconstruct(
    model: &Sftok,
    teacher: Option<&Vqgan>,
    pixels: Tensor<4>,
    opts: &ReconstructOptions,
) -> Trace {
    // On the CPU, on a thread of rayon's pool (why: the doc of `on_compute_pool`).
    on_compute_pool(&pixels.device(), || {
        reconstruct_here(model, teacher, pixels, opts)
    })
}

fn reconstruct_here(
    model: &Sftok,
    teacher: Option<&Vqgan>,
    pixels: Tensor<4>,
    opts: &ReconstructOptions,
) -> Trace {
    let quantized = model.encode(pixels.clone(), opts.assignment);
    let latent_ids = rows_i64(quantized.indices.clone());
    // Decode from the exact codebook vectors, as the official `decode_tokens` does.
    let zq = model.quantize.codebook_entries(quantized.indices);
    let mut trace = generate_here(model, zq, opts);
    trace.latent_ids = latent_ids;
    if let Some(teacher) = teacher {
        let (image, ids) = teacher_reconstruction(teacher, pixels);
        trace.teacher_reconstruction = Some(image);
        trace.teacher_ids = Some(ids);
    }
    trace
}

/// The pixel head's image of one step's logits `[B, N, V]` (kept with
/// [`ReconstructOptions::keep_logits`]): what a trace made without `step_images` leaves to decode
/// later, when something shows that step.
pub fn step_pixels(model: &Sftok, logits: Tensor<3>) -> Tensor<4> {
    on_compute_pool(&logits.device(), || model.pixels_from_logits(logits))
}

/// The teacher's own reconstruction of `pixels` and its codes `[B][N]` (what [`reconstruct`]
/// adds to a trace when it is given a teacher).
pub fn teacher_reconstruction(teacher: &Vqgan, pixels: Tensor<4>) -> (Tensor<4>, Vec<Vec<i64>>) {
    on_compute_pool(&pixels.device(), || {
        let codes = teacher.encode(pixels);
        (teacher.decode(codes.clone()), rows_i64(codes))
    })
}

/// The official `decode_tokens`: latent token ids `[B][L]` (OptVQ indices, e.g. a generator's
/// output) to pixels, through the exact codebook vectors and the multi-step decoder.
pub fn decode_tokens(model: &Sftok, latent_ids: &[Vec<i64>], opts: &ReconstructOptions) -> Trace {
    let device = model.latent_tokens.val().device();
    let ids = ids_tensor(latent_ids, &device);
    let mut trace = generate(model, model.quantize.codebook_entries(ids), opts);
    trace.latent_ids = latent_ids.to_vec();
    trace
}

/// The decoding loop from quantized latents `[B, D, 1, L]`.
pub fn generate(model: &Sftok, zq: Tensor<4>, opts: &ReconstructOptions) -> Trace {
    on_compute_pool(&zq.device(), || generate_here(model, zq, opts))
}

fn generate_here(model: &Sftok, zq: Tensor<4>, opts: &ReconstructOptions) -> Trace {
    let device = zq.device();
    let steps = opts.steps.max(1);
    let b = zq.dims()[0];
    let n = model.decoder.grid * model.decoder.grid;
    let mask = model.mask_token_id as i64;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut ids = vec![vec![mask; n]; b];
    let mut trace_steps = Vec::with_capacity(steps);
    let mut last_logits = None;

    for step in 0..steps {
        let ratio = (step + 1) as f64 / steps as f64;
        let temperature = opts.temperature * (1.0 - ratio);
        let logits = model.decode_logits(ids_tensor(&ids, &device), zq.clone()); // [B, N, V]
        let v = logits.dims()[2];
        let host = logits
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();

        let mut sampled = ids.clone();
        let mut confidences = vec![vec![f32::INFINITY; n]; b];
        for bi in 0..b {
            for pos in 0..n {
                if ids[bi][pos] != mask {
                    continue;
                }
                let row = &host[(bi * n + pos) * v..(bi * n + pos + 1) * v];
                let best = if temperature > 0.0 {
                    argmax_by(row.len(), |i| {
                        row[i] as f64 + temperature * gumbel(&mut rng)
                    })
                } else {
                    argmax_by(row.len(), |i| row[i] as f64)
                };
                sampled[bi][pos] = best as i64;
                let mut conf = row[best] as f64;
                if temperature > 0.0 {
                    conf += temperature * gumbel(&mut rng);
                }
                confidences[bi][pos] = conf as f32;
            }
        }

        // The official code clamps with the masked count of the first image only.
        let masked_first = ids[0].iter().filter(|&&id| id == mask).count();
        let len = mask_len(n, step, steps, masked_first);
        let last = step + 1 == steps;
        let output = if last {
            sampled.clone()
        } else {
            (0..b)
                .map(|bi| {
                    let mut sorted = confidences[bi].clone();
                    sorted.sort_by(|x, y| x.total_cmp(y));
                    let cut = sorted[len.min(n) - 1];
                    (0..n)
                        .map(|p| {
                            if confidences[bi][p] <= cut {
                                mask
                            } else {
                                sampled[bi][p]
                            }
                        })
                        .collect()
                })
                .collect::<Vec<Vec<i64>>>()
        };
        let image = (opts.step_images || last).then(|| model.pixels_from_logits(logits.clone()));
        trace_steps.push(StepTrace {
            input_ids: ids.clone(),
            kept: output
                .iter()
                .map(|row| row.iter().map(|&id| id != mask).collect())
                .collect(),
            sampled_ids: sampled,
            confidences,
            output_ids: output.clone(),
            mask_len: len,
            logits: opts.keep_logits.then(|| logits.clone()),
            image,
        });
        ids = output;
        last_logits = Some(logits);
    }

    let final_logits = last_logits.expect("at least one step");
    let pixels = trace_steps
        .last()
        .and_then(|s| s.image.clone())
        .expect("the last step always has its image");
    Trace {
        latent_ids: Vec::new(),
        steps: trace_steps,
        final_ids: ids,
        final_logits,
        pixels,
        teacher_reconstruction: None,
        teacher_ids: None,
    }
}

/// `-log(-log(u))` with the official clamping of both logarithms at 1e-20.
fn gumbel(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random();
    -(-(u.max(1e-20)).ln()).max(1e-20).ln()
}

/// Index of the first maximum of `f(0..len)`.
fn argmax_by(len: usize, mut f: impl FnMut(usize) -> f64) -> usize {
    let mut best = 0;
    let mut best_value = f64::NEG_INFINITY;
    for i in 0..len {
        let value = f(i);
        if value > best_value || i == 0 {
            best = i;
            best_value = value;
        }
    }
    best
}

/// `[B][N]` ids as an Int tensor.
pub fn ids_tensor(ids: &[Vec<i64>], device: &burn::tensor::Device) -> Tensor<2, Int> {
    let b = ids.len();
    let n = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, n]), device)
}

/// An Int tensor `[B, N]` as rows.
pub fn rows_i64(t: Tensor<2, Int>) -> Vec<Vec<i64>> {
    let [_, n] = t.dims();
    let flat = t
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default();
    flat.chunks(n.max(1)).map(<[i64]>::to_vec).collect()
}
