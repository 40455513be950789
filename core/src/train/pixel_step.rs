//! Stage 3 (decoder fine-tuning) forward pass: the frozen encoder and quantizer give the latents,
//! the decoder sees its own first-step prediction M1 under a random arccos mask (the official
//! `masking_tokens` with `finetune_decoder=True` puts M1 at every unmasked position), and the
//! pixel head's image is compared with the input in pixel space.

use burn::module::Module;
use burn::tensor::Tensor;

use super::masking::MaskDraw;
use super::sfvr::{Stage2Inputs, stage2_inputs};
use super::token_step::first_step_prediction;
use crate::config::AssignmentMode;
use crate::model::Sftok;
use crate::reconstruct::ids_tensor;

/// The reconstruction of a stage-3 step `[B, 3, H, W]` (unclamped; gradients reach the decoder,
/// the pixel codebook and the pixel decoder only), and with `train_encoder` (not the paper's
/// recipe) also the encoder: then the quantizer loss is returned too.
pub fn stage3_forward(
    model: &Sftok,
    pixels: Tensor<4>,
    draw: &MaskDraw,
    train_encoder: bool,
) -> (Tensor<4>, Option<Tensor<1>>) {
    let device = pixels.device();
    let m1 = first_step_prediction(model, pixels.clone());
    let inputs = stage2_inputs(
        &m1,
        &m1,
        draw,
        Stage2Inputs::SelfForcing { replace_prob: 1.0 },
        model.mask_token_id as i64,
    );
    let (zq, quantizer_loss) = if train_encoder {
        let q = model.encode(pixels, AssignmentMode::SinkhornBatch);
        (q.z_st, Some(q.loss))
    } else {
        // The encoder and quantizer are frozen: their output is a constant for this step.
        let frozen = model.valid();
        let zq = frozen
            .encode(pixels.inner(), AssignmentMode::SinkhornBatch)
            .z_st
            .autodiff();
        (zq, None)
    };
    let logits = model.decode_logits(ids_tensor(&inputs.ids, &device), zq);
    (model.pixels_from_logits(logits), quantizer_loss)
}
