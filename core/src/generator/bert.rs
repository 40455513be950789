//! `ImageBert` (`modeling/maskgit.py`): a post-LN BERT over `[class token, L image tokens]`
//! whose head predicts each image token's codebook id.
//!
//! The module tree follows the official state dict (`model.embeddings.word_embeddings.weight`,
//! `model.encoder.layer.<i>.attention.self.query.weight`, `model.lm_head.weight`, ...): two names
//! that Rust cannot spell are mapped in [`crate::checkpoint::state::official_key`] (`self` is a
//! keyword, so the field is `self_attention`; `LayerNorm` is `layer_norm`).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::GeneratorConfig;
use crate::kernels::{gelu, layer_norm, linear_layer};
use crate::model::vit::{layer_norm as new_layer_norm, linear};

/// BERT's `post_init` draws embeddings from N(0, 0.02), as its linear layers.
fn embedding(rows: usize, width: usize, device: &Device) -> Embedding {
    EmbeddingConfig::new(rows, width)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
}

/// Word, position and token-type embeddings, summed and layer-normed.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// `[K + C + 2, H]`: image tokens, mask, classes, class-drop.
    pub word_embeddings: Embedding,
    /// `[L + 1, H]`.
    pub position_embeddings: Embedding,
    /// `[2, H]`; only row 0 is used (every token has type 0).
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
}

/// The query, key and value projections (`attention.self`).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
}

/// Attention's output projection, residual and layer norm (`attention.output`).
#[derive(Module, Debug)]
pub struct BertSelfOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct BertAttention {
    pub self_attention: BertSelfAttention,
    pub output: BertSelfOutput,
}

/// The MLP's first layer (`intermediate.dense`, followed by exact GELU).
#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: Linear,
}

/// The MLP's second layer, residual and layer norm (`output`).
#[derive(Module, Debug)]
pub struct BertOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

/// One post-LN layer: `h = LN(h + attn(h))`, then `h = LN(h + mlp(h))`.
#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertOutput,
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

/// `ImageBert.model`: the BERT trunk plus the head the official code attaches to it.
#[derive(Module, Debug)]
pub struct BertTrunk {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    /// `[K, H]` (PyTorch layout in files): hidden state -> codebook logits.
    pub lm_head: Linear,
}

/// The MaskGIT generator over SFTok's latent tokens.
#[derive(Module, Debug)]
pub struct ImageBert {
    pub model: BertTrunk,
    pub codebook_size: usize,
    pub num_classes: usize,
    pub num_heads: usize,
    pub layer_norm_eps: f64,
}

impl BertLayer {
    fn new(cfg: &GeneratorConfig, device: &Device) -> Self {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        BertLayer {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: linear(h, h, device),
                    key: linear(h, h, device),
                    value: linear(h, h, device),
                },
                output: BertSelfOutput {
                    dense: linear(h, h, device),
                    layer_norm: new_layer_norm(h, eps, device),
                },
            },
            intermediate: BertIntermediate {
                dense: linear(h, i, device),
            },
            output: BertOutput {
                dense: linear(i, h, device),
                layer_norm: new_layer_norm(h, eps, device),
            },
        }
    }

    /// # Shapes
    /// - h: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    fn forward(&self, h: Tensor<3>, heads: usize, eps: f64) -> Tensor<3> {
        let sa = &self.attention.self_attention;
        // The fast attention kernel takes q, k and v packed along the features.
        let qkv = Tensor::cat(
            vec![
                linear_layer(&sa.query, h.clone()),
                linear_layer(&sa.key, h.clone()),
                linear_layer(&sa.value, h.clone()),
            ],
            2,
        );
        let context = match crate::kernels::attention(&qkv, heads) {
            Some(context) => context,
            None => explicit_attention(qkv, heads),
        };
        let out = &self.attention.output;
        let h = layer_norm(&out.layer_norm, linear_layer(&out.dense, context) + h, eps);
        let mlp = linear_layer(
            &self.output.dense,
            gelu(linear_layer(&self.intermediate.dense, h.clone())),
        );
        layer_norm(&self.output.layer_norm, mlp + h, eps)
    }
}

/// `softmax(q k^T / sqrt(d)) v` per head, for backends without the fused kernel.
fn explicit_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, s, w3] = qkv.dims();
    let w = w3 / 3;
    let hd = w / heads;
    let split = |t: Tensor<3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
    let q = split(qkv.clone().narrow(2, 0, w));
    let k = split(qkv.clone().narrow(2, w, w));
    let v = split(qkv.narrow(2, 2 * w, w));
    let scale = (hd as f64).powf(-0.5);
    let attn = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
    attn.matmul(v).swap_dims(1, 2).reshape([b, s, w])
}

impl ImageBert {
    /// A randomly initialised generator, drawn as the official constructor draws it: BERT's
    /// N(0, 0.02) for embeddings and linear layers, and PyTorch's default for the head (the
    /// official constructor replaces the head after `post_init`).
    pub fn new(cfg: &GeneratorConfig, device: &Device) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        ImageBert {
            model: BertTrunk {
                embeddings: BertEmbeddings {
                    word_embeddings: embedding(cfg.vocab_size(), h, device),
                    position_embeddings: embedding(cfg.image_seq_len + 1, h, device),
                    token_type_embeddings: embedding(2, h, device),
                    layer_norm: new_layer_norm(h, eps, device),
                },
                encoder: BertEncoder {
                    layer: (0..cfg.num_hidden_layers)
                        .map(|_| BertLayer::new(cfg, device))
                        .collect(),
                },
                lm_head: LinearConfig::new(h, cfg.codebook_size).init(device),
            },
            codebook_size: cfg.codebook_size,
            num_classes: cfg.condition_num_classes,
            num_heads: cfg.num_attention_heads,
            layer_norm_eps: eps,
        }
    }

    pub fn device(&self) -> Device {
        self.model.lm_head.weight.val().device()
    }

    /// The mask token's id (`K`).
    pub fn mask_token_id(&self) -> usize {
        self.codebook_size
    }

    /// The condition token for each image: `K + 1 + class`, or the class-drop token
    /// `K + C + 1` where `dropped` (or where there is no class).
    pub fn condition_tokens(&self, classes: &[Option<usize>], dropped: &[bool]) -> Vec<i64> {
        classes
            .iter()
            .zip(dropped)
            .map(|(class, &drop)| match class {
                Some(c) if !drop => (self.codebook_size + 1 + c) as i64,
                _ => (self.codebook_size + self.num_classes + 1) as i64,
            })
            .collect()
    }

    /// The summed, layer-normed embeddings of `[condition token, image tokens]` rows `[B, L + 1]`
    /// (token type 0 everywhere, positions from 0).
    fn embed(&self, sequence: Tensor<2, Int>) -> Tensor<3> {
        let e = &self.model.embeddings;
        let [_, s] = sequence.dims();
        let words = e.word_embeddings.forward(sequence); // [B, S, H]
        let positions = e.position_embeddings.weight.val().narrow(0, 0, s);
        let token_type = e.token_type_embeddings.weight.val().narrow(0, 0, 1);
        let h = (words + token_type.unsqueeze::<3>()) + positions.unsqueeze::<3>();
        layer_norm(&e.layer_norm, h, self.layer_norm_eps)
    }

    /// The hidden states after the embeddings (index 0) and after each layer, for
    /// `[condition token, image tokens]` rows `[B, L + 1]`.
    pub fn hidden_states(&self, sequence: Tensor<2, Int>) -> Vec<Tensor<3>> {
        let mut h = self.embed(sequence);
        let mut out = vec![h.clone()];
        for layer in &self.model.encoder.layer {
            h = layer.forward(h, self.num_heads, self.layer_norm_eps);
            out.push(h.clone());
        }
        out
    }

    /// Codebook logits `[B, L, K]` for image token ids `[B, L]` (mask = `K`) under the given
    /// condition tokens `[B]` (from [`Self::condition_tokens`]).
    pub fn forward(&self, ids: Tensor<2, Int>, condition_tokens: &[i64]) -> Tensor<3> {
        let [b, l] = ids.dims();
        assert_eq!(condition_tokens.len(), b, "one condition token per image");
        let cond = Tensor::<2, Int>::from_data(
            TensorData::new(condition_tokens.to_vec(), [b, 1]),
            &ids.device(),
        );
        let sequence = Tensor::cat(vec![cond, ids], 1);
        let h = self.trunk(sequence);
        let h = h.narrow(1, 1, l); // the class position's output is discarded
        linear_layer(&self.model.lm_head, h)
    }

    fn trunk(&self, sequence: Tensor<2, Int>) -> Tensor<3> {
        let mut h = self.embed(sequence);
        for layer in &self.model.encoder.layer {
            h = layer.forward(h, self.num_heads, self.layer_norm_eps);
        }
        h
    }

    /// Number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.num_params()
    }
}
