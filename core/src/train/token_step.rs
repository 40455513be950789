//! One training step of stages 1 and 2 (warm-up, SFVR, vanilla): the forward pass and every loss
//! term exactly as the official trainer computes them (`train_utils.train_one_epoch` l.442-522 and
//! `ReconstructionLoss_MLMStage1`), with the random draws passed in.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::masking::{MaskDraw, loss_weights};
use super::sfvr::{MaskedInputs, Stage2Inputs, stage2_inputs};
use crate::config::AssignmentMode;
use crate::model::Sftok;
use crate::reconstruct::{ids_tensor, rows_i64};

/// Which token stage a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenStage {
    /// Stage 1: every position masked.
    WarmUp,
    /// Stage 2: random arccos masking; unmasked positions per [`Stage2Inputs`].
    Stage2(Stage2Inputs),
}

/// Weight of the CE on unmasked positions (`loss_weight_unmasked_token`).
pub const UNMASKED_WEIGHT: f32 = 0.1;

/// Everything one step computes.
#[derive(Debug, Clone)]
pub struct TokenStepOutput {
    pub total_loss: Tensor<1>,
    pub recon_loss: Tensor<1>,
    pub quantizer_loss: Tensor<1>,
    pub commitment_loss: Tensor<1>,
    pub codebook_loss: Tensor<1>,
    /// Per-token CE `[B, N]`.
    pub ce: Tensor<2>,
    pub logits: Tensor<3>,
    pub inputs: MaskedInputs,
    /// The first-step prediction (stage 2 only).
    pub m1: Option<Vec<Vec<i64>>>,
    pub latent_ids: Vec<Vec<i64>>,
}

/// `ce[b, n] = logsumexp(logits[b, n]) - logits[b, n, target]`.
pub fn token_cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    let [b, n, _] = logits.dims();
    // On the CPU backend in training, one recorded operation (rows in parallel, no softmax
    // materialised forward); burn's log_softmax is several single-threaded passes each way.
    if logits.is_require_grad()
        && let Some(ce) = crate::kernels::cross_entropy_rows(&logits, &targets)
    {
        return ce;
    }
    let picked = log_softmax(logits, 2).gather(2, targets.reshape([b, n, 1]));
    picked.reshape([b, n]).neg()
}

/// `sum(ce * w) / (sum(w) + 1e-8)`: normalised by the weight sum of the whole batch.
pub fn weighted_mean(ce: Tensor<2>, weights: Tensor<2>) -> Tensor<1> {
    (ce * weights.clone()).sum() / (weights.sum() + 1e-8)
}

/// The first-step prediction M1 without gradients: encode, decode with every position masked,
/// argmax (`generate_guided_mask`).
pub fn first_step_prediction(model: &Sftok, pixels: Tensor<4>) -> Vec<Vec<i64>> {
    let model = model.valid();
    let pixels = pixels.inner();
    let b = pixels.dims()[0];
    let q = model.encode(pixels, AssignmentMode::SinkhornBatch);
    let n = model.decoder.grid * model.decoder.grid;
    let device = q.z_st.device();
    let logits = model.decode_logits(model.all_masked_ids(b, n, &device), q.z_st);
    rows_i64(logits.argmax(2).reshape([b, n]))
}

/// One stage-1 / stage-2 step. `proxy` are the teacher's codes `[B][N]` (always the CE target).
/// The quantizer assigns over the whole batch, as the official trainer does.
pub fn token_step(
    model: &Sftok,
    pixels: Tensor<4>,
    proxy: &[Vec<i64>],
    stage: TokenStage,
    draw: &MaskDraw,
) -> TokenStepOutput {
    let device: Device = pixels.device();
    let b = proxy.len();
    let n = proxy.first().map_or(0, Vec::len);
    let mask_id = model.mask_token_id as i64;
    let (inputs, m1) = match stage {
        TokenStage::WarmUp => (
            MaskedInputs {
                ids: vec![vec![mask_id; n]; b],
                mask: vec![vec![true; n]; b],
                num_masked: vec![n; b],
                should_replace: vec![vec![false; n]; b],
            },
            None,
        ),
        TokenStage::Stage2(mode) => {
            let m1 = match mode {
                Stage2Inputs::SelfForcing { .. } => first_step_prediction(model, pixels.clone()),
                Stage2Inputs::Vanilla => proxy.to_vec(),
            };
            let inputs = stage2_inputs(proxy, &m1, draw, mode, mask_id);
            let m1 = matches!(mode, Stage2Inputs::SelfForcing { .. }).then_some(m1);
            (inputs, m1)
        }
    };
    let q = model.encode(pixels, AssignmentMode::SinkhornBatch);
    let latent_ids = rows_i64(q.indices.clone());
    let logits = model.decode_logits(ids_tensor(&inputs.ids, &device), q.z_st);
    let ce = token_cross_entropy(logits.clone(), ids_tensor(proxy, &device));
    let weights = loss_weights(&inputs.mask, UNMASKED_WEIGHT);
    let weights = Tensor::<2>::from_data(
        TensorData::new(weights.into_iter().flatten().collect::<Vec<f32>>(), [b, n]),
        &device,
    );
    let recon = weighted_mean(ce.clone(), weights);
    let total = recon.clone() + q.loss.clone();
    TokenStepOutput {
        total_loss: total,
        recon_loss: recon,
        quantizer_loss: q.loss,
        commitment_loss: q.commitment_loss,
        codebook_loss: q.codebook_loss,
        ce,
        logits,
        inputs,
        m1,
        latent_ids,
    }
}

/// The soft-embedding loss, a training aid beside the official CE (not in the paper):
/// `|| softmax(logits) E - E[proxy] ||^2`, averaged over positions and channels and divided by
/// the codebook's own mean squared deviation from its mean vector (so 1.0 is the loss of always
/// predicting the average code). `E` is the pixel codebook, held fixed here.
///
/// Why: at inference the pixel decoder receives exactly `softmax(logits) E` (the official soft
/// lookup), so this term trains the decoder's distribution for what the image is made from. The CE
/// alone rewards only the exact one of V codes; with a few hundred photos the model then spends
/// thousands of steps near chance (held-out proxy accuracy 1.6 % after 1000 demo steps) and its
/// near-uniform distribution decodes to one grey average for every input. The regression target
/// shares what similar codes have in common.
pub fn soft_embedding_loss(model: &Sftok, logits: Tensor<3>, proxy: &[Vec<i64>]) -> Tensor<1> {
    let [b, n, _] = logits.dims();
    let device = logits.device();
    let codebook = model.pixel_quantize.embedding.weight.val().detach(); // [V, C]
    let c = codebook.dims()[1];
    // The codebook's mean squared deviation from its mean vector (a constant: `E` is detached).
    let centred = codebook.clone() - codebook.clone().mean_dim(0);
    let spread = centred.powi_scalar(2).mean().clamp_min(1e-12);
    let probs = burn::tensor::activation::softmax(logits, 2);
    let soft = probs.matmul(codebook.clone().unsqueeze::<3>()); // [B, N, C]
    let flat: Vec<i64> = proxy.iter().flatten().copied().collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * n]), &device);
    let target = codebook.select(0, index).reshape([b, n, c]);
    (soft - target).powi_scalar(2).mean() / spread
}

/// Share of positions where the argmax of `logits` equals the proxy code.
pub fn proxy_accuracy(logits: &Tensor<3>, proxy: &[Vec<i64>]) -> f64 {
    let [b, n, _] = logits.dims();
    let predicted = rows_i64(logits.clone().inner().argmax(2).reshape([b, n]));
    let total = (b * n).max(1) as f64;
    predicted
        .iter()
        .flatten()
        .zip(proxy.iter().flatten())
        .filter(|(a, b)| a == b)
        .count() as f64
        / total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SftokConfig;

    /// Confident and right: about 0. Uniform over every code, with each code once as the target:
    /// exactly the codebook's spread, i.e. 1.
    #[test]
    fn soft_embedding_loss_is_zero_when_sure_and_one_for_the_average_code() {
        let device = Device::flex();
        let model = Sftok::new(&SftokConfig::tiny(), &device);
        let v = model.pixel_quantize.embedding.weight.dims()[0];
        let targets: Vec<Vec<i64>> = vec![(0..v as i64).collect()];
        let sure: Vec<f32> = (0..v)
            .flat_map(|n| (0..v).map(move |k| if k == n { 60.0 } else { 0.0 }))
            .collect();
        let logits = Tensor::<3>::from_data(TensorData::new(sure, [1, v, v]), &device);
        let loss = soft_embedding_loss(&model, logits, &targets).into_scalar::<f32>();
        assert!(loss.abs() < 1e-4, "{loss}");
        let uniform = Tensor::<3>::zeros([1, v, v], &device);
        let loss = soft_embedding_loss(&model, uniform, &targets).into_scalar::<f32>();
        assert!((loss - 1.0).abs() < 1e-3, "{loss}");
    }
}
