//! The MaskGIT-VQGAN (`modeling/modules/maskgit_vqgan.py`): a convolutional f2^(R-1) autoencoder
//! with a plain nearest-neighbour codebook. SFTok uses it twice: as the frozen teacher whose codes
//! are the decoder's targets ("proxy codes"), and as the architecture of its pixel decoder.
//!
//! Quirks kept from the official code: TF "SAME" padding (all convs have stride 1, so 3x3 pads 1 on
//! every side), bias-free res-block convs, and the `nin_shortcut` applied to the block's *output*
//! (`out = h + nin(h)`) when the channel count changes.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::VqganConfig;
use crate::kernels::{conv2d, group_norm_silu};

fn conv(c_in: usize, c_out: usize, k: usize, bias: bool, device: &Device) -> Conv2d {
    let pad = (k - 1) / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(device)
}

fn group_norm(cfg: &VqganConfig, channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(cfg.groupnorm_groups, channels)
        .with_epsilon(cfg.groupnorm_eps)
        .init(device)
}

#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1, `[out, out]`: present when the block changes the channel count.
    pub nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(cfg: &VqganConfig, c_in: usize, c_out: usize, device: &Device) -> Self {
        ResnetBlock {
            norm1: group_norm(cfg, c_in, device),
            conv1: conv(c_in, c_out, 3, false, device),
            norm2: group_norm(cfg, c_out, device),
            conv2: conv(c_out, c_out, 3, false, device),
            nin_shortcut: (c_in != c_out).then(|| conv(c_out, c_out, 1, false, device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = conv2d(&self.conv1, group_norm_silu(&self.norm1, x.clone()), None);
        let h = group_norm_silu(&self.norm2, h);
        match &self.nin_shortcut {
            Some(nin) => {
                let h = conv2d(&self.conv2, h, None);
                conv2d(nin, h.clone(), Some(h))
            }
            None => conv2d(&self.conv2, h, Some(x)),
        }
    }
}

#[derive(Module, Debug)]
pub struct DownsamplingBlock {
    pub block: Vec<ResnetBlock>,
    pub downsample: bool,
}

#[derive(Module, Debug)]
pub struct UpsamplingBlock {
    pub block: Vec<ResnetBlock>,
    pub upsample_conv: Option<Conv2d>,
}

#[derive(Module, Debug)]
pub struct VqganEncoder {
    pub conv_in: Conv2d,
    pub down: Vec<DownsamplingBlock>,
    pub mid: Vec<ResnetBlock>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl VqganEncoder {
    pub fn new(cfg: &VqganConfig, device: &Device) -> Self {
        let h = cfg.hidden_channels;
        let levels = cfg.num_resolutions();
        let mut down = Vec::with_capacity(levels);
        for i in 0..levels {
            let mut c_in = h * if i == 0 { 1 } else { cfg.channel_mult[i - 1] };
            let c_out = h * cfg.channel_mult[i];
            let mut block = Vec::new();
            for _ in 0..cfg.num_res_blocks {
                block.push(ResnetBlock::new(cfg, c_in, c_out, device));
                c_in = c_out;
            }
            down.push(DownsamplingBlock {
                block,
                downsample: i != levels - 1,
            });
        }
        let mid_c = h * cfg.channel_mult[levels - 1];
        VqganEncoder {
            conv_in: conv(3, h, 3, false, device),
            down,
            mid: (0..cfg.num_res_blocks)
                .map(|_| ResnetBlock::new(cfg, mid_c, mid_c, device))
                .collect(),
            norm_out: group_norm(cfg, mid_c, device),
            conv_out: conv(mid_c, cfg.z_channels, 1, true, device),
        }
    }

    /// # Shapes
    /// - x: `[B, 3, H, W]` in [0, 1] -> `[B, Zc, H/f, W/f]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = conv2d(&self.conv_in, x, None);
        for level in &self.down {
            for block in &level.block {
                h = block.forward(h);
            }
            if level.downsample {
                h = avg_pool_2x2(h);
            }
        }
        for block in &self.mid {
            h = block.forward(h);
        }
        conv2d(&self.conv_out, group_norm_silu(&self.norm_out, h), None)
    }
}

#[derive(Module, Debug)]
pub struct VqganDecoder {
    pub conv_in: Conv2d,
    pub mid: Vec<ResnetBlock>,
    /// `up[i]` works at level i; they run from the last level down to `up[0]`.
    pub up: Vec<UpsamplingBlock>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl VqganDecoder {
    pub fn new(cfg: &VqganConfig, device: &Device) -> Self {
        let h = cfg.hidden_channels;
        let levels = cfg.num_resolutions();
        let top = h * cfg.channel_mult[levels - 1];
        let up = (0..levels)
            .map(|i| {
                let mut c_in = h * cfg.channel_mult[(i + 1).min(levels - 1)];
                let c_out = h * cfg.channel_mult[i];
                let mut block = Vec::new();
                for _ in 0..cfg.num_res_blocks {
                    block.push(ResnetBlock::new(cfg, c_in, c_out, device));
                    c_in = c_out;
                }
                UpsamplingBlock {
                    block,
                    upsample_conv: (i != 0).then(|| conv(c_out, c_out, 3, true, device)),
                }
            })
            .collect();
        VqganDecoder {
            conv_in: conv(cfg.z_channels, top, 3, true, device),
            mid: (0..cfg.num_res_blocks)
                .map(|_| ResnetBlock::new(cfg, top, top, device))
                .collect(),
            up,
            norm_out: group_norm(cfg, h * cfg.channel_mult[0], device),
            conv_out: conv(h * cfg.channel_mult[0], 3, 3, true, device),
        }
    }

    /// # Shapes
    /// - z: `[B, Zc, g, g]` -> `[B, 3, g*f, g*f]`, not clamped
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = conv2d(&self.conv_in, z, None);
        for block in &self.mid {
            h = block.forward(h);
        }
        for level in self.up.iter().rev() {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(conv) = &level.upsample_conv {
                h = conv2d(conv, upsample_nearest_2x(h), None);
            }
        }
        conv2d(&self.conv_out, group_norm_silu(&self.norm_out, h), None)
    }
}

/// The VQGAN codebook (`VectorQuantizer`): `embedding.weight` `[V, Zc]`.
#[derive(Module, Debug)]
pub struct VqganQuantizer {
    pub embedding: Embedding,
}

impl VqganQuantizer {
    pub fn new(cfg: &VqganConfig, device: &Device) -> Self {
        let bound = 1.0 / cfg.num_embeddings as f64;
        VqganQuantizer {
            embedding: EmbeddingConfig::new(cfg.num_embeddings, cfg.z_channels)
                .with_initializer(burn::nn::Initializer::Uniform {
                    min: -bound,
                    max: bound,
                })
                .init(device),
        }
    }

    /// Squared distances `|z|^2 + |e|^2 - 2 z.e` from each position of `z` `[B, Zc, g, g]` to each
    /// code: `[B * g * g, V]`, positions in raster order.
    pub fn distances(&self, z: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = z.dims();
        let flat = z.swap_dims(1, 2).swap_dims(2, 3).reshape([b * h * w, c]);
        let e = self.embedding.weight.val(); // [V, Zc]
        let zz = flat.clone().powi_scalar(2).sum_dim(1); // [n, 1]
        let ee = e.clone().powi_scalar(2).sum_dim(1).transpose(); // [1, V]
        (zz + ee) - flat.matmul(e.transpose()).mul_scalar(2.0)
    }

    /// Nearest code per position: `[B, Zc, g, g]` -> `[B, g*g]`.
    pub fn encode(&self, z: Tensor<4>) -> Tensor<2, Int> {
        let [b, _, h, w] = z.dims();
        let device = z.device();
        let ids = super::quantizer::argmax_rows(self.distances(z).neg());
        Tensor::from_data(TensorData::new(ids, [b, h * w]), &device)
    }

    /// Codebook vectors laid out as an image: `[B, N]` -> `[B, Zc, g, g]` (N = g^2).
    pub fn lookup(&self, ids: Tensor<2, Int>) -> Tensor<4> {
        let [b, n] = ids.dims();
        let g = (n as f64).sqrt().round() as usize;
        let e = self.embedding.forward(ids); // [B, N, Zc]
        let c = e.dims()[2];
        e.swap_dims(1, 2).reshape([b, c, g, g])
    }

    /// The pixel head's soft lookup: `softmax(logits) @ E`, `[B, N, V]` -> `[B, Zc, g, g]`.
    pub fn soft_lookup(&self, logits: Tensor<3>) -> Tensor<4> {
        let [b, n, _] = logits.dims();
        let g = (n as f64).sqrt().round() as usize;
        let probs = burn::tensor::activation::softmax(logits, 2);
        let e = self.embedding.weight.val().unsqueeze::<3>(); // [1, V, Zc]
        let z = probs.matmul(e); // [B, N, Zc]
        let c = z.dims()[2];
        z.swap_dims(1, 2).reshape([b, c, g, g])
    }
}

/// The teacher: a whole MaskGIT-VQGAN (`PretrainedTokenizer`), keys `encoder.*`, `decoder.*`,
/// `quantize.embedding.weight`.
#[derive(Module, Debug)]
pub struct Vqgan {
    pub encoder: VqganEncoder,
    pub decoder: VqganDecoder,
    pub quantize: VqganQuantizer,
}

impl Vqgan {
    pub fn new(cfg: &VqganConfig, device: &Device) -> Self {
        Vqgan {
            encoder: VqganEncoder::new(cfg, device),
            decoder: VqganDecoder::new(cfg, device),
            quantize: VqganQuantizer::new(cfg, device),
        }
    }

    /// Proxy codes of images: `[B, 3, H, W]` -> `[B, N]`.
    pub fn encode(&self, x: Tensor<4>) -> Tensor<2, Int> {
        self.quantize.encode(self.encoder.forward(x))
    }

    /// Images from codes, clamped to [0, 1] as the official `decode` does.
    pub fn decode(&self, ids: Tensor<2, Int>) -> Tensor<4> {
        self.decode_raw(ids).clamp(0.0, 1.0)
    }

    /// Images from codes, not clamped.
    pub fn decode_raw(&self, ids: Tensor<2, Int>) -> Tensor<4> {
        self.decoder.forward(self.quantize.lookup(ids))
    }
}

/// `F.avg_pool2d(x, 2, 2)`.
pub fn avg_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::avg_pool_2x2(x)
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`.
pub fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::upsample_nearest_2x(x)
}
