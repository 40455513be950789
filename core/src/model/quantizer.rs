//! OptVQ (`modeling/quantizer/optvq.py`): l2-normalised latents are assigned to an l2-normalised,
//! linearly mapped codebook by Sinkhorn optimal transport (eps 10, 5 iterations), at inference too.
//!
//! The official assignment runs over every token of the batch at once, so an image's ids depend on
//! its batch-mates; [`AssignmentMode`] makes that a setting.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{AssignmentMode, QuantizerConfig};

#[derive(Module, Debug)]
pub struct OptVq {
    /// `[1, K, D]` (one group), a raw parameter as in the official code.
    pub embedding: Param<Tensor<3>>,
    pub shared_linear: Linear,
    /// `[1]`, always 0 for one group; kept because official checkpoints carry it.
    pub index_offset: Param<Tensor<1, Int>>,
    pub codebook_size: usize,
    pub token_size: usize,
    pub commitment_cost: f64,
    pub sinkhorn_iters: usize,
    pub sinkhorn_epsilon: f64,
}

/// What quantizing a batch gives.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Straight-through output `zn + sg(q - zn)`, `[B, D, 1, L]`: values of q, gradients of zn.
    pub z_st: Tensor<4>,
    /// `[B, L]` code ids.
    pub indices: Tensor<2, Int>,
    /// `commitment + codebook`.
    pub loss: Tensor<1>,
    /// `cost * mean((sg(q) - zn)^2)`
    pub commitment_loss: Tensor<1>,
    /// `mean((q - sg(zn))^2)`
    pub codebook_loss: Tensor<1>,
}

impl OptVq {
    pub fn new(cfg: &QuantizerConfig, device: &Device) -> Self {
        let k = cfg.codebook_size;
        let d = cfg.token_size;
        let bound = 1.0 / k as f64;
        // Official init: embedding U(-1/K, 1/K), shared_linear = identity with zero bias.
        let shared_linear = Linear {
            weight: Param::from_tensor(Tensor::eye(d, device)),
            bias: Some(Param::from_tensor(Tensor::zeros([d], device))),
        };
        OptVq {
            embedding: Param::from_tensor(Tensor::random(
                [1, k, d],
                burn::tensor::Distribution::Uniform(-bound, bound),
                device,
            )),
            shared_linear,
            index_offset: Param::initialized(
                burn::module::ParamId::new(),
                Tensor::zeros([1], device),
            ),
            codebook_size: k,
            token_size: d,
            commitment_cost: cfg.commitment_cost,
            sinkhorn_iters: cfg.sinkhorn_iters,
            sinkhorn_epsilon: cfg.sinkhorn_epsilon,
        }
    }

    /// `normalize(shared_linear(embedding))`, `[K, D]`.
    pub fn normalized_codebook(&self) -> Tensor<2> {
        let e = self
            .embedding
            .val()
            .reshape([self.codebook_size, self.token_size]);
        l2_normalize(self.shared_linear.forward(e))
    }

    /// Codebook vectors for ids (`get_codebook_entry`): `[B, L]` -> `[B, D, 1, L]`.
    pub fn codebook_entries(&self, indices: Tensor<2, Int>) -> Tensor<4> {
        let [b, l] = indices.dims();
        let q = self
            .normalized_codebook()
            .select(0, indices.reshape([b * l]))
            .reshape([b, l, self.token_size]);
        q.swap_dims(1, 2).unsqueeze_dim(2)
    }

    /// Quantizes `z` `[B, D, 1, L]`.
    pub fn forward(&self, z: Tensor<4>, mode: AssignmentMode) -> Quantized {
        let [b, d, h, l] = z.dims();
        let s = h * l;
        let zn = l2_normalize(z.swap_dims(1, 2).swap_dims(2, 3).reshape([b * s, d])); // [BS, D]
        let codebook = self.normalized_codebook();
        let ids = self.assign(zn.clone().detach(), codebook.clone().detach(), b, mode);
        let device = zn.device();
        let ids_t = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * s]), &device);
        let q = codebook.select(0, ids_t.clone()); // [BS, D]
        let commitment = (q.clone().detach() - zn.clone())
            .powi_scalar(2)
            .mean()
            .mul_scalar(self.commitment_cost);
        let codebook_loss = (q.clone() - zn.clone().detach()).powi_scalar(2).mean();
        let z_st = zn.clone() + (q - zn).detach();
        let z_st = z_st.reshape([b, h, l, d]).swap_dims(2, 3).swap_dims(1, 2);
        Quantized {
            z_st,
            indices: ids_t.reshape([b, s]),
            loss: commitment.clone() + codebook_loss.clone(),
            commitment_loss: commitment,
            codebook_loss,
        }
    }

    /// Ids for normalised tokens `zn` `[B*S, D]` (batch-major) against the normalised codebook.
    fn assign(
        &self,
        zn: Tensor<2>,
        codebook: Tensor<2>,
        batch: usize,
        mode: AssignmentMode,
    ) -> Vec<i64> {
        match mode {
            AssignmentMode::SinkhornBatch => self.sinkhorn_ids(zn, codebook),
            AssignmentMode::SinkhornPerImage => {
                let per = zn.dims()[0] / batch.max(1);
                (0..batch)
                    .flat_map(|i| {
                        self.sinkhorn_ids(zn.clone().narrow(0, i * per, per), codebook.clone())
                    })
                    .collect()
            }
            AssignmentMode::Nearest => argmax_rows(cdist(zn, codebook).neg()),
        }
    }

    /// `find_indices` with Sinkhorn: global-min shift of the distances, `Q = exp(-eps d)`, then the
    /// official row/column normalisations with their `1e-8` terms, and the argmax per token.
    fn sinkhorn_ids(&self, zn: Tensor<2>, codebook: Tensor<2>) -> Vec<i64> {
        let d = cdist(zn, codebook); // [n, K]
        let (eps, iters) = (self.sinkhorn_epsilon, self.sinkhorn_iters);
        match crate::kernels::cpu_values(&d) {
            Some(values) => {
                let dims = d.dims();
                sinkhorn_host(crate::kernels::f32s(&values), dims, eps as f32, iters)
            }
            None => sinkhorn_tensor(d, eps, iters),
        }
    }
}

/// [`OptVq::sinkhorn_ids`]'s iterations as tensor operations, for distances `d` `[n, K]`.
fn sinkhorn_tensor(d: Tensor<2>, eps: f64, iters: usize) -> Vec<i64> {
    let [n, k] = d.dims();
    // The official `d - (d - d.mean()) / (d.std() + 1e-8)` discards its result: a no-op.
    let d = d.clone() - d.min().unsqueeze();
    let mut q = d.mul_scalar(-eps).exp().transpose(); // [K, n]
    q = q.clone() / (q.clone().sum().unsqueeze() + 1e-8);
    for _ in 0..iters {
        q = q.clone() / (q.clone().sum_dim(1) + 1e-8);
        q = q.div_scalar(k as f64);
        q = q.clone() / (q.clone().sum_dim(0) + 1e-8);
        q = q.div_scalar(n as f64);
    }
    argmax_rows(q.mul_scalar(n as f64).transpose())
}

/// [`OptVq::sinkhorn_ids`]'s iterations on the host for distances `d` (`[n][K]`, token-major):
/// the same operations in the same order as the tensor version, with the token-major matrix
/// standing for the official `[K, n]` one (its row sums are this one's column sums). Sums are
/// taken in f64, in parallel.
///
/// Why: on the CPU backend the tensor version is about twenty single-threaded passes over the
/// `n x K` matrix, twice per SFVR training step, during which the second thread idled.
fn sinkhorn_host(d: &[f32], [n, k]: [usize; 2], eps: f32, iters: usize) -> Vec<i64> {
    use rayon::prelude::*;
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let min = d.par_iter().copied().reduce(|| f32::INFINITY, f32::min);
    let mut q: Vec<f32> = d.par_iter().map(|&v| ((v - min) * -eps).exp()).collect();
    let total = q.par_iter().map(|&v| v as f64).sum::<f64>() as f32;
    q.par_iter_mut().for_each(|v| *v /= total + 1e-8);
    let (kf, nf) = (k as f32, n as f32);
    for _ in 0..iters {
        // Per code (the official rows): sum over tokens.
        let code_sums: Vec<f32> = q
            .par_chunks(k)
            .fold(
                || vec![0.0f64; k],
                |mut acc, row| {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
                    acc
                },
            )
            .reduce(
                || vec![0.0f64; k],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            )
            .into_iter()
            .map(|v| v as f32)
            .collect();
        // Per token (the official columns): normalise by the code sums, then by its own sum.
        q.par_chunks_mut(k).for_each(|row| {
            row.iter_mut()
                .zip(&code_sums)
                .for_each(|(v, &s)| *v = *v / (s + 1e-8) / kf);
            let sum = row.iter().map(|&v| v as f64).sum::<f64>() as f32;
            row.iter_mut().for_each(|v| *v = *v / (sum + 1e-8) / nf);
        });
    }
    // argmax of q * n per token, the first maximum winning.
    q.par_chunks(k)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v * nf > row[best] * nf {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

/// `F.normalize(x, dim=-1)`: `x / max(|x|, 1e-12)`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// `torch.cdist(x, y)` as the CPU computes it: the matmul form
/// `sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 0))` when either side has more than 25 rows, else the direct
/// difference form.
pub fn cdist(x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let [k, _] = y.dims();
    if n > 25 || k > 25 {
        let xx = x.clone().powi_scalar(2).sum_dim(1); // [n, 1]
        let yy = y.clone().powi_scalar(2).sum_dim(1).transpose(); // [1, k]
        let xy = x.matmul(y.transpose());
        (xx + yy - xy.mul_scalar(2.0)).clamp_min(0.0).sqrt()
    } else {
        let diff = x.reshape([n, 1, d]) - y.reshape([1, k, d]);
        diff.powi_scalar(2).sum_dim(2).reshape([n, k]).sqrt()
    }
}

/// Row-wise argmax on the host: `[n, k]` -> n ids (first maximum wins, as in torch).
pub fn argmax_rows(x: Tensor<2>) -> Vec<i64> {
    let [_, k] = x.dims();
    let values = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    values
        .chunks(k)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The host iterations pick the same codes as the tensor ones, on distances of normalised
    /// random tokens and codes (the quantizer's own case) at a few sizes.
    #[test]
    fn host_sinkhorn_matches_the_tensor_version() {
        let device = Device::flex();
        for (n, k, dim) in [(64, 1024, 12), (33, 17, 4), (5, 300, 8)] {
            let unit = |rows| {
                l2_normalize(Tensor::<2>::random(
                    [rows, dim],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                ))
            };
            let d = cdist(unit(n), unit(k));
            let values = d.clone().into_data().convert::<f32>();
            let values = values.as_slice::<f32>().unwrap();
            let host = sinkhorn_host(values, [n, k], 10.0, 5);
            let tensor = sinkhorn_tensor(d, 10.0, 5);
            assert_eq!(host, tensor, "n {n} K {k}");
        }
    }
}
