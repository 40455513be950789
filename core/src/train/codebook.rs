//! The teacher's codebook during training: initialised from encoder outputs and updated as an
//! exponential moving average of the encoder outputs assigned to each code (van den Oord et al.,
//! VQ-VAE, 2017, appendix; Razavi et al., VQ-VAE-2, 2019), instead of by gradient descent.
//!
//! Why: with the official `VectorQuantizer` initialisation (uniform in +-1/V) and a gradient
//! codebook loss at the VQGAN's learning rate, the codes move about `lr` per step while the
//! commitment term pulls the encoder's outputs towards them. Every code then sits within 1e-3 of
//! the origin, the decoder receives nearly the same vector at every position, and the teacher
//! learns one blurred blob per dataset: 14 codes of 512 used and a training PSNR of 13 dB, below
//! the image's own mean colour (measured, docs/teacher.md). Starting the codes at encoder outputs
//! (k-means on the first batch) and moving each code to the running mean of what it quantizes
//! keeps the codes where the data is from the first step.
//!
//! The result is still a plain table of vectors: the model that is saved and loaded is the
//! MaskGIT-VQGAN's `quantize.embedding.weight`, unchanged, so the inference architecture (and the
//! official teacher's weights) are untouched. The trainer writes [`CodebookEma::vectors`] into
//! that parameter after every optimiser step; the gradient codebook loss is then left out.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Running per-code statistics. `sums[k] / counts[k]` is code k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodebookEma {
    pub decay: f64,
    pub dim: usize,
    /// Exponentially weighted number of encoder outputs assigned to each code.
    pub counts: Vec<f64>,
    /// Exponentially weighted sum of those outputs, `[V * dim]`.
    pub sums: Vec<f64>,
}

impl CodebookEma {
    /// Codes from k-means on `latents` (rows of `dim`): k-means++ seeding, then a few Lloyd
    /// iterations. With fewer distinct rows than codes, the remaining codes copy random rows
    /// (plus a tiny jitter) and are restarted later if they stay unused.
    pub fn from_latents(
        latents: &[f32],
        dim: usize,
        codebook_size: usize,
        decay: f64,
        rng: &mut impl Rng,
    ) -> Self {
        let centres = kmeans(latents, dim, codebook_size, 10, rng);
        CodebookEma {
            decay,
            dim,
            counts: vec![1.0; codebook_size],
            sums: centres.iter().map(|&v| v as f64).collect(),
        }
    }

    pub fn codebook_size(&self) -> usize {
        self.counts.len()
    }

    /// One update with the codes assigned to `latents` (one row of `dim` per code).
    /// Codes that received nothing keep their vector: their count and sum decay together.
    pub fn update(&mut self, codes: &[i64], latents: &[f32]) {
        let v = self.codebook_size();
        let d = self.dim;
        let mut n = vec![0.0f64; v];
        let mut s = vec![0.0f64; v * d];
        for (row, &code) in latents.chunks_exact(d).zip(codes) {
            let Ok(k) = usize::try_from(code) else {
                continue;
            };
            if k >= v {
                continue;
            }
            n[k] += 1.0;
            for (acc, &x) in s[k * d..(k + 1) * d].iter_mut().zip(row) {
                *acc += x as f64;
            }
        }
        let keep = self.decay;
        for k in 0..v {
            self.counts[k] = keep * self.counts[k] + (1.0 - keep) * n[k];
            for j in 0..d {
                self.sums[k * d + j] = keep * self.sums[k * d + j] + (1.0 - keep) * s[k * d + j];
            }
            // Far below any real count: renormalise so the ratio never meets f64's underflow.
            if self.counts[k] < 1e-200 {
                let scale = 1.0 / self.counts[k];
                self.counts[k] = 1.0;
                for j in 0..d {
                    self.sums[k * d + j] *= scale;
                }
            }
        }
    }

    /// Moves each code of `dead` onto a random row of `latents`, with the weight of one average
    /// assignment, so it is pulled to what it wins from the next update on.
    pub fn restart(&mut self, dead: &[usize], latents: &[f32], rng: &mut impl Rng) {
        let d = self.dim;
        let rows = latents.len() / d.max(1);
        if rows == 0 {
            return;
        }
        let live: Vec<f64> = self.counts.iter().copied().filter(|&c| c > 0.0).collect();
        let weight = (live.iter().sum::<f64>() / live.len().max(1) as f64).max(1e-3);
        for &k in dead {
            if k >= self.codebook_size() {
                continue;
            }
            let r = rng.random_range(0..rows);
            self.counts[k] = weight;
            for j in 0..d {
                self.sums[k * d + j] = latents[r * d + j] as f64 * weight;
            }
        }
    }

    /// The codebook `[V * dim]`, row-major.
    pub fn vectors(&self) -> Vec<f32> {
        let d = self.dim;
        let mut out = vec![0.0f32; self.sums.len()];
        for (k, &c) in self.counts.iter().enumerate() {
            let c = c.max(1e-300);
            for j in 0..d {
                out[k * d + j] = (self.sums[k * d + j] / c) as f32;
            }
        }
        out
    }
}

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means (k-means++ seeding, `iterations` Lloyd steps) on rows of `dim`; returns `[k * dim]`.
pub fn kmeans(
    data: &[f32],
    dim: usize,
    k: usize,
    iterations: usize,
    rng: &mut impl Rng,
) -> Vec<f32> {
    let rows = data.len() / dim.max(1);
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut centres = vec![0.0f32; k * dim];
    if rows == 0 || dim == 0 {
        return centres;
    }
    // k-means++: each new centre drawn with probability proportional to the squared distance to
    // the nearest centre so far.
    let first = rng.random_range(0..rows);
    centres[..dim].copy_from_slice(row(first));
    let mut nearest: Vec<f32> = (0..rows)
        .map(|i| squared_distance(row(i), row(first)))
        .collect();
    for c in 1..k {
        let total: f64 = nearest.iter().map(|&x| x as f64).sum();
        let pick = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = rows - 1;
            for (i, &w) in nearest.iter().enumerate() {
                target -= w as f64;
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.random_range(0..rows)
        };
        let src = row(pick).to_vec();
        for (j, &x) in src.iter().enumerate() {
            // A duplicate row (fewer distinct rows than codes) gets a jitter so codes differ.
            let jitter = if total > 0.0 {
                0.0
            } else {
                (rng.random::<f32>() - 0.5) * 1e-3
            };
            centres[c * dim + j] = x + jitter;
        }
        for (i, n) in nearest.iter_mut().enumerate() {
            *n = n.min(squared_distance(row(i), &centres[c * dim..(c + 1) * dim]));
        }
    }
    // Lloyd iterations; a centre that wins nothing stays where it is.
    let mut assign = vec![0usize; rows];
    for _ in 0..iterations {
        for (i, a) in assign.iter_mut().enumerate() {
            let x = row(i);
            let mut best = (f32::INFINITY, 0);
            for c in 0..k {
                let dist = squared_distance(x, &centres[c * dim..(c + 1) * dim]);
                if dist < best.0 {
                    best = (dist, c);
                }
            }
            *a = best.1;
        }
        let mut sums = vec![0.0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &a) in assign.iter().enumerate() {
            counts[a] += 1;
            for (j, &x) in row(i).iter().enumerate() {
                sums[a * dim + j] += x as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for j in 0..dim {
                    centres[c * dim + j] = (sums[c * dim + j] / counts[c] as f64) as f32;
                }
            }
        }
    }
    centres
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn kmeans_finds_separated_clusters() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut data = Vec::new();
        for i in 0..300 {
            let c = (i % 3) as f32 * 10.0;
            data.extend([
                c + rng.random::<f32>() * 0.1,
                -c + rng.random::<f32>() * 0.1,
            ]);
        }
        let centres = kmeans(&data, 2, 3, 10, &mut rng);
        let mut xs: Vec<f32> = centres.chunks(2).map(|c| c[0]).collect();
        xs.sort_by(f32::total_cmp);
        for (x, want) in xs.iter().zip([0.05, 10.05, 20.05]) {
            assert!((x - want).abs() < 0.1, "{xs:?}");
        }
    }

    #[test]
    fn update_moves_used_codes_to_the_running_mean_and_keeps_unused_ones() {
        let mut ema = CodebookEma {
            decay: 0.5,
            dim: 2,
            counts: vec![1.0, 1.0],
            sums: vec![0.0, 0.0, 5.0, 5.0],
        };
        // Code 0 gets two outputs at (2, 4); code 1 nothing.
        ema.update(&[0, 0], &[2.0, 4.0, 2.0, 4.0]);
        let v = ema.vectors();
        // counts0 = 0.5 + 0.5 * 2 = 1.5; sums0 = 0.5 * (4, 8) = (2, 4) -> (1.333, 2.667)
        assert!(
            (v[0] - 2.0 / 1.5).abs() < 1e-6 && (v[1] - 4.0 / 1.5).abs() < 1e-6,
            "{v:?}"
        );
        assert_eq!(&v[2..], &[5.0, 5.0]);
        // Many updates with nothing assigned: the vector stays, no underflow.
        for _ in 0..5000 {
            ema.update(&[0], &[2.0, 4.0]);
        }
        assert_eq!(&ema.vectors()[2..], &[5.0, 5.0]);
        assert!((ema.vectors()[0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn restart_moves_dead_codes_onto_latents() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut ema = CodebookEma {
            decay: 0.9,
            dim: 2,
            counts: vec![2.0, 0.0],
            sums: vec![2.0, 2.0, 0.0, 0.0],
        };
        ema.restart(&[1], &[7.0, 8.0], &mut rng);
        assert_eq!(ema.vectors(), vec![1.0, 1.0, 7.0, 8.0]);
    }
}
