//! The multi-step MaskGIT-style decoder (`MultiStepDecoder` in the official `blocks_multistep.py`):
//! given the quantized latents and a grid of proxy-code ids (some of them the mask id V), it
//! predicts logits over the teacher's V codes at every grid position.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear};
use burn::tensor::{Device, Int, Tensor};

use super::vit::{
    ResidualAttentionBlock, blocks, layer_norm, linear, official_linear_init, scaled_randn,
};
use crate::config::SftokConfig;
use crate::kernels::{layer_norm as layer_norm_forward, pointwise_conv, tanh};

#[derive(Module, Debug)]
pub struct MultiStepDecoder {
    /// D -> W
    pub decoder_embed: Linear,
    /// `[L, W]`
    pub condition_positional_embedding: Param<Tensor<2>>,
    /// `[1, W]`
    pub class_embedding: Param<Tensor<2>>,
    /// `V + 1` rows; the last is the mask token.
    pub learnable_embedding: Embedding,
    /// `[N + 1, W]` (older checkpoints call it `embedding_positional_embedding`).
    pub learnable_embedding_positional_embedding: Param<Tensor<2>>,
    pub ln_pre: LayerNorm,
    pub transformer: Vec<ResidualAttentionBlock>,
    pub ln_post: LayerNorm,
    /// `ffn.0`: 1x1 conv W -> 2W (followed by tanh, `ffn.1`).
    pub ffn_expand: Conv2d,
    /// `ffn.2`: 1x1 conv 2W -> V.
    pub ffn_logits: Conv2d,
    pub grid: usize,
    /// `ln_pre` and `ln_post`'s epsilon (burn keeps its own private).
    pub layernorm_eps: f64,
}

impl MultiStepDecoder {
    pub fn new(cfg: &SftokConfig, device: &Device) -> Self {
        let d = &cfg.decoder;
        let w = d.width;
        let scale = (w as f64).powf(-0.5);
        let v = cfg.vqgan.num_embeddings;
        let conv1x1 = |c_in: usize, c_out: usize| {
            Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_initializer(official_linear_init())
                .init(device)
        };
        MultiStepDecoder {
            decoder_embed: linear(cfg.quantizer.token_size, w, device),
            condition_positional_embedding: scaled_randn([cfg.num_latent_tokens, w], scale, device),
            class_embedding: scaled_randn([1, w], scale, device),
            // The official code draws `scale * randn` and then `_init_weights` overwrites every
            // nn.Embedding with N(0, 0.02).
            learnable_embedding: EmbeddingConfig::new(v + 1, w)
                .with_initializer(official_linear_init())
                .init(device),
            learnable_embedding_positional_embedding: scaled_randn(
                [cfg.num_proxy_codes() + 1, w],
                scale,
                device,
            ),
            ln_pre: layer_norm(w, cfg.layernorm_eps, device),
            transformer: blocks(d, cfg.layernorm_eps, device),
            ln_post: layer_norm(w, cfg.layernorm_eps, device),
            ffn_expand: conv1x1(w, 2 * w),
            ffn_logits: conv1x1(2 * w, v),
            grid: cfg.decoder_grid(),
            layernorm_eps: cfg.layernorm_eps,
        }
    }

    /// The decoder's final hidden states for the proxy positions (after `ln_post`).
    ///
    /// # Shapes
    /// - ids: `[B, N]` (mask id = V); z_quantized: `[B, D, 1, L]` -> `[B, N, W]`
    pub fn forward_hidden(&self, ids: Tensor<2, Int>, z_quantized: Tensor<4>) -> Tensor<3> {
        let [b, d, h, l] = z_quantized.dims();
        let [_, n] = ids.dims();
        let cond = z_quantized.reshape([b, d * h, l]).swap_dims(1, 2); // [B, L, D]
        let cond = self.decoder_embed.forward(cond)
            + self.condition_positional_embedding.val().unsqueeze(); // [B, L, W]
        let tokens = self.learnable_embedding.forward(ids); // [B, N, W]
        let w = tokens.dims()[2];
        let cls = self
            .class_embedding
            .val()
            .unsqueeze::<3>()
            .expand([b, 1, w]);
        let tokens = Tensor::cat(vec![cls, tokens], 1)
            + self
                .learnable_embedding_positional_embedding
                .val()
                .unsqueeze();
        let eps = self.layernorm_eps;
        let mut x = layer_norm_forward(&self.ln_pre, Tensor::cat(vec![tokens, cond], 1), eps);
        for block in &self.transformer {
            x = block.forward(x);
        }
        layer_norm_forward(&self.ln_post, x.narrow(1, 1, n), eps)
    }

    /// Logits over the V teacher codes.
    ///
    /// # Shapes
    /// - ids: `[B, N]`; z_quantized: `[B, D, 1, L]` -> `[B, N, V]`
    pub fn forward(&self, ids: Tensor<2, Int>, z_quantized: Tensor<4>) -> Tensor<3> {
        let x = self.forward_hidden(ids, z_quantized);
        self.logits_from_hidden(x)
    }

    /// `ffn` on the hidden states. The official code lays them out as a `g x g` image for its two
    /// 1x1 convolutions; per position those are linear layers, applied here to `[B, N, W]` as is.
    pub fn logits_from_hidden(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = tanh(pointwise_conv(&self.ffn_expand, x));
        pointwise_conv(&self.ffn_logits, hidden) // [B, N, V]
    }
}
