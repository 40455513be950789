//! The pre-LN transformer block shared by the TiTok encoder and the multi-step decoder
//! (`ResidualAttentionBlock` in the official `blocks.py` / `blocks_multistep.py`).
//!
//! Field names equal the official state-dict keys (`ln_1`, `attn.in_proj_weight`, `mlp.c_fc`, ...),
//! so checkpoints map onto this struct tree one to one.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::config::VitConfig;
use crate::kernels::layer_norm as layer_norm_forward;

/// The initialiser of the official `_init_weights` for linear layers (truncated normal, std 0.02;
/// a plain normal here: truncation at 2 sigma changes nothing that matters for training).
pub(crate) fn official_linear_init() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: 0.02,
    }
}

pub(crate) fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_initializer(official_linear_init())
        .init(device)
}

pub(crate) fn layer_norm(width: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(width).with_epsilon(eps).init(device)
}

/// `torch.nn.MultiheadAttention` with packed q, k, v projections (rows q, then k, then v).
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    /// `[3W, W]`, PyTorch layout (output rows).
    pub in_proj_weight: Param<Tensor<2>>,
    /// `[3W]`
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl MultiheadAttention {
    pub fn new(width: usize, num_heads: usize, device: &Device) -> Self {
        // PyTorch initialises in_proj with xavier_uniform and a zero bias; the official
        // `_init_weights` does not touch it (it is not an nn.Linear).
        let in_proj_weight = Initializer::XavierUniform { gain: 1.0 }.init_with(
            [3 * width, width],
            Some(width),
            Some(3 * width),
            device,
        );
        MultiheadAttention {
            in_proj_weight,
            in_proj_bias: Param::from_tensor(Tensor::zeros([3 * width], device)),
            out_proj: linear(width, width, device),
            num_heads,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, width]` -> `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, w] = x.dims();
        let h = self.num_heads;
        let hd = w / h;
        let qkv = crate::kernels::linear(
            x,
            self.in_proj_weight.val().transpose(),
            Some(self.in_proj_bias.val()),
        ); // [b, s, 3w]
        if let Some(out) = crate::kernels::attention(&qkv, h) {
            return crate::kernels::linear_layer(&self.out_proj, out);
        }
        let heads = |t: Tensor<3>| t.reshape([b, s, h, hd]).swap_dims(1, 2); // [b, h, s, hd]
        let q = heads(qkv.clone().narrow(2, 0, w));
        let k = heads(qkv.clone().narrow(2, w, w));
        let v = heads(qkv.narrow(2, 2 * w, w));
        let scale = (hd as f64).powf(-0.5);
        let attn = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3); // [b, h, s, s]
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, s, w]);
        self.out_proj.forward(out)
    }
}

/// `mlp`: `c_fc` -> exact GELU -> `c_proj`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        use crate::kernels::{gelu, linear_layer};
        linear_layer(&self.c_proj, gelu(linear_layer(&self.c_fc, x)))
    }
}

/// One pre-LN block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: MultiheadAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
    /// The layer norms' epsilon (burn keeps its own private; the CPU kernels need it).
    pub layernorm_eps: f64,
}

impl ResidualAttentionBlock {
    pub fn new(cfg: &VitConfig, eps: f64, device: &Device) -> Self {
        ResidualAttentionBlock {
            ln_1: layer_norm(cfg.width, eps, device),
            attn: MultiheadAttention::new(cfg.width, cfg.heads, device),
            ln_2: layer_norm(cfg.width, eps, device),
            mlp: Mlp {
                c_fc: linear(cfg.width, cfg.mlp_width(), device),
                c_proj: linear(cfg.mlp_width(), cfg.width, device),
            },
            layernorm_eps: eps,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, width]` -> `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let eps = self.layernorm_eps;
        let x = x.clone() + self.attn.forward(layer_norm_forward(&self.ln_1, x, eps));
        x.clone() + self.mlp.forward(layer_norm_forward(&self.ln_2, x, eps))
    }
}

/// A stack of blocks, named `transformer.<i>` as in the official code.
pub fn blocks(cfg: &VitConfig, eps: f64, device: &Device) -> Vec<ResidualAttentionBlock> {
    (0..cfg.depth)
        .map(|_| ResidualAttentionBlock::new(cfg, eps, device))
        .collect()
}

/// Random `scale * N(0, 1)` parameter, as the official code draws its embeddings.
pub(crate) fn scaled_randn<const D: usize>(
    shape: [usize; D],
    scale: f64,
    device: &Device,
) -> Param<Tensor<D>> {
    Param::from_tensor(
        Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), device)
            .mul_scalar(scale),
    )
}
