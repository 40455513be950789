//! The whole SFTok tokenizer (`modeling/sftok.py`, `finetune_decoder=True` layout): encoder,
//! OptVQ, multi-step decoder, and the pixel head (a soft lookup in the pixel codebook, then a
//! MaskGIT-VQGAN decoder).

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};

use super::decoder::MultiStepDecoder;
use super::encoder::TitokEncoder;
use super::quantizer::{OptVq, Quantized};
use super::vit::scaled_randn;
use super::vqgan::{VqganDecoder, VqganQuantizer};
use crate::config::{AssignmentMode, SftokConfig};

#[derive(Module, Debug)]
pub struct Sftok {
    /// `[L, We]`, a top-level parameter (not under `encoder.`).
    pub latent_tokens: Param<Tensor<2>>,
    pub encoder: TitokEncoder,
    pub decoder: MultiStepDecoder,
    pub quantize: OptVq,
    /// The pixel codebook `[V, Zc]`; starts as a copy of the teacher's.
    pub pixel_quantize: VqganQuantizer,
    /// Starts as a copy of the teacher's decoder.
    pub pixel_decoder: VqganDecoder,
    pub mask_token_id: usize,
}

impl Sftok {
    /// A randomly initialised model, drawn as the official constructor draws it.
    pub fn new(cfg: &SftokConfig, device: &Device) -> Self {
        Sftok {
            latent_tokens: scaled_randn(
                [cfg.num_latent_tokens, cfg.encoder.width],
                (cfg.encoder.width as f64).powf(-0.5),
                device,
            ),
            encoder: TitokEncoder::new(cfg, device),
            decoder: MultiStepDecoder::new(cfg, device),
            quantize: OptVq::new(&cfg.quantizer, device),
            pixel_quantize: VqganQuantizer::new(&cfg.vqgan, device),
            pixel_decoder: VqganDecoder::new(&cfg.vqgan, device),
            mask_token_id: cfg.mask_token_id(),
        }
    }

    /// Continuous latents before quantization, `[B, D, 1, L]`.
    pub fn encode_continuous(&self, pixels: Tensor<4>) -> Tensor<4> {
        self.encoder.forward(pixels, self.latent_tokens.val())
    }

    /// Encoder + OptVQ.
    pub fn encode(&self, pixels: Tensor<4>, mode: AssignmentMode) -> Quantized {
        self.quantize.forward(self.encode_continuous(pixels), mode)
    }

    /// Decoder logits `[B, N, V]` for proxy ids `[B, N]` and latents `[B, D, 1, L]`.
    pub fn decode_logits(&self, ids: Tensor<2, Int>, z_quantized: Tensor<4>) -> Tensor<3> {
        self.decoder.forward(ids, z_quantized)
    }

    /// All positions masked: `[B, N]` filled with the mask id.
    pub fn all_masked_ids(
        &self,
        batch: usize,
        num_codes: usize,
        device: &Device,
    ) -> Tensor<2, Int> {
        Tensor::full([batch, num_codes], self.mask_token_id as i64, device)
    }

    /// The pixel head: `softmax(logits) @ pixel codebook`, then the pixel decoder. Not clamped.
    ///
    /// # Shapes
    /// - logits: `[B, N, V]` -> `[B, 3, H, W]`
    pub fn pixels_from_logits(&self, logits: Tensor<3>) -> Tensor<4> {
        self.pixel_decoder
            .forward(self.pixel_quantize.soft_lookup(logits))
    }
}
