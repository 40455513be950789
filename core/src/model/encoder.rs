//! The TiTok-style ViT encoder (`TiTokEncoder` in the official `blocks.py`): patches and L learned
//! latent tokens go through one transformer; the latents come out as `[B, D, 1, L]`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::vit::{ResidualAttentionBlock, blocks, layer_norm, official_linear_init, scaled_randn};
use crate::config::SftokConfig;
use crate::kernels::{conv2d, layer_norm as layer_norm_forward, pointwise_conv};

#[derive(Module, Debug)]
pub struct TitokEncoder {
    pub patch_embed: Conv2d,
    /// `[1, W]`
    pub class_embedding: Param<Tensor<2>>,
    /// `[g^2 + 1, W]`
    pub positional_embedding: Param<Tensor<2>>,
    /// `[L, W]`
    pub latent_token_positional_embedding: Param<Tensor<2>>,
    pub ln_pre: LayerNorm,
    pub transformer: Vec<ResidualAttentionBlock>,
    pub ln_post: LayerNorm,
    /// 1x1 conv W -> D applied to the raw-reshaped latents.
    pub conv_out: Conv2d,
    pub width: usize,
    pub num_latent_tokens: usize,
    /// `ln_pre` and `ln_post`'s epsilon (burn keeps its own private).
    pub layernorm_eps: f64,
}

impl TitokEncoder {
    pub fn new(cfg: &SftokConfig, device: &Device) -> Self {
        let e = &cfg.encoder;
        let g = cfg.encoder_grid();
        let scale = (e.width as f64).powf(-0.5);
        TitokEncoder {
            patch_embed: Conv2dConfig::new([3, e.width], [e.patch_size, e.patch_size])
                .with_stride([e.patch_size, e.patch_size])
                .with_padding(PaddingConfig2d::Valid)
                .with_initializer(official_linear_init())
                .init(device),
            class_embedding: scaled_randn([1, e.width], scale, device),
            positional_embedding: scaled_randn([g * g + 1, e.width], scale, device),
            latent_token_positional_embedding: scaled_randn(
                [cfg.num_latent_tokens, e.width],
                scale,
                device,
            ),
            ln_pre: layer_norm(e.width, cfg.layernorm_eps, device),
            transformer: blocks(e, cfg.layernorm_eps, device),
            ln_post: layer_norm(e.width, cfg.layernorm_eps, device),
            conv_out: Conv2dConfig::new([e.width, cfg.quantizer.token_size], [1, 1])
                .with_initializer(official_linear_init())
                .init(device),
            width: e.width,
            num_latent_tokens: cfg.num_latent_tokens,
            layernorm_eps: cfg.layernorm_eps,
        }
    }

    /// The `ln_post` output for the latent tokens, before the legacy reshape.
    ///
    /// # Shapes
    /// - pixels: `[B, 3, H, W]` in [0, 1]; latent_tokens: `[L, W]` -> `[B, L, W]`
    pub fn forward_tokens(&self, pixels: Tensor<4>, latent_tokens: Tensor<2>) -> Tensor<3> {
        let x = self.patch_embeddings(pixels); // [B, g^2, W]
        let [b, _, w] = x.dims();
        let cls = self
            .class_embedding
            .val()
            .unsqueeze::<3>()
            .expand([b, 1, w]);
        let x = Tensor::cat(vec![cls, x], 1) + self.positional_embedding.val().unsqueeze();
        let l = self.num_latent_tokens;
        let latents = (latent_tokens + self.latent_token_positional_embedding.val())
            .unsqueeze::<3>()
            .expand([b, l, w]);
        let eps = self.layernorm_eps;
        let mut x = layer_norm_forward(&self.ln_pre, Tensor::cat(vec![x, latents], 1), eps);
        for block in &self.transformer {
            x = block.forward(x);
        }
        let seq = x.dims()[1];
        layer_norm_forward(&self.ln_post, x.narrow(1, seq - l, l), eps)
    }

    /// `patch_embed` (a `p x p` convolution with stride `p`) as a product: each patch's `3 p p`
    /// values in the weight's (channel, row, column) order, one row per patch in raster order.
    ///
    /// # Shapes
    /// - pixels: `[B, 3, H, W]` -> `[B, (H/p) (W/p), W_model]`
    fn patch_embeddings(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let [p, _] = self.patch_embed.kernel_size;
        let (gh, gw) = (h / p, w / p);
        let patches = pixels
            .narrow(2, 0, gh * p)
            .narrow(3, 0, gw * p)
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        pointwise_conv(&self.patch_embed, patches)
    }

    /// # Shapes
    /// - pixels: `[B, 3, H, W]`; latent_tokens: `[L, W]` -> `[B, D, 1, L]`
    pub fn forward(&self, pixels: Tensor<4>, latent_tokens: Tensor<2>) -> Tensor<4> {
        let tokens = self.forward_tokens(pixels, latent_tokens);
        self.tokens_to_latents(tokens)
    }

    /// The official legacy path: a raw reshape `[B, L, W] -> [B, W, L, 1]` (not a transpose, so
    /// channel c of latent l is element `c * L + l` of the flattened tokens), then the 1x1 conv.
    pub fn tokens_to_latents(&self, tokens: Tensor<3>) -> Tensor<4> {
        let [b, l, w] = tokens.dims();
        let z = conv2d(&self.conv_out, tokens.reshape([b, w, l, 1]), None); // [B, D, L, 1]
        let d = z.dims()[1];
        z.reshape([b, d, 1, l])
    }
}
