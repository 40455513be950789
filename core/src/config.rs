//! One configuration type that describes an SFTok model of any size, with presets for the official
//! SFTok-B / SFTok-L and for small models a CPU can run and train, plus readers for the two
//! configuration formats made by the official code (the nested OmegaConf `config.json` shipped with
//! the checkpoints, and the `flat` section of the parity fixtures).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, SftokError};

/// A ViT (encoder or decoder) size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Patch size in pixels; the token grid is `image_size / patch_size` on a side.
    pub patch_size: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl VitConfig {
    /// The official `small` / `base` / `large` table of `modeling/modules/blocks.py`.
    pub fn official(size: &str, patch_size: usize) -> Option<Self> {
        let (width, depth, heads) = match size {
            "small" => (512, 8, 8),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            _ => return None,
        };
        Some(VitConfig {
            patch_size,
            width,
            depth,
            heads,
            mlp_ratio: 4.0,
        })
    }

    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

/// How OptVQ turns continuous latents into ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentMode {
    /// Sinkhorn over every token of the batch, as the official code does: an image's ids depend
    /// on its batch-mates.
    SinkhornBatch,
    /// Sinkhorn over one image's tokens at a time: ids depend on the image alone.
    #[default]
    SinkhornPerImage,
    /// Plain nearest codebook entry.
    Nearest,
}

impl std::str::FromStr for AssignmentMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sinkhorn-batch" => Ok(Self::SinkhornBatch),
            "sinkhorn-per-image" => Ok(Self::SinkhornPerImage),
            "nearest" => Ok(Self::Nearest),
            _ => Err(format!(
                "unknown assignment mode `{s}`: use sinkhorn-batch, sinkhorn-per-image or nearest"
            )),
        }
    }
}

/// The OptVQ quantizer (`modeling/quantizer/optvq.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizerConfig {
    pub codebook_size: usize,
    /// Dimension D of a latent token and of a code.
    pub token_size: usize,
    #[serde(default = "default_commitment")]
    pub commitment_cost: f64,
    #[serde(default = "default_sinkhorn_iters")]
    pub sinkhorn_iters: usize,
    #[serde(default = "default_sinkhorn_epsilon")]
    pub sinkhorn_epsilon: f64,
}

fn default_commitment() -> f64 {
    0.25
}
fn default_sinkhorn_iters() -> usize {
    5
}
fn default_sinkhorn_epsilon() -> f64 {
    10.0
}

/// The MaskGIT-VQGAN (`modeling/modules/maskgit_vqgan.py`): the teacher, and the architecture of
/// SFTok's pixel decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqganConfig {
    pub hidden_channels: usize,
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    /// Codebook size V: the teacher's vocabulary, whose ids are SFTok's proxy codes.
    pub num_embeddings: usize,
    #[serde(default = "default_groups")]
    pub groupnorm_groups: usize,
    #[serde(default = "default_gn_eps")]
    pub groupnorm_eps: f64,
    #[serde(default = "default_commitment")]
    pub commitment_cost: f64,
}

fn default_groups() -> usize {
    32
}
fn default_gn_eps() -> f64 {
    1e-6
}

impl VqganConfig {
    /// The official MaskGIT-VQGAN (f16, 1024 codes of 256 channels), hard-coded in `sftok.py`.
    pub fn official() -> Self {
        VqganConfig {
            hidden_channels: 128,
            channel_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 256,
            num_embeddings: 1024,
            groupnorm_groups: 32,
            groupnorm_eps: 1e-6,
            commitment_cost: 0.25,
        }
    }

    pub fn num_resolutions(&self) -> usize {
        self.channel_mult.len()
    }

    /// The spatial down-sampling factor: 2^(levels - 1).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.num_resolutions().saturating_sub(1))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.channel_mult.is_empty() {
            return Err("vqgan.channel_mult must not be empty".into());
        }
        if self.num_res_blocks == 0 {
            return Err("vqgan.num_res_blocks must be at least 1".into());
        }
        for &m in &self.channel_mult {
            let c = self.hidden_channels * m;
            if c == 0 || !c.is_multiple_of(self.groupnorm_groups) {
                return Err(format!(
                    "vqgan channel count {c} (hidden {} x mult {m}) is not a multiple of the {} GroupNorm groups",
                    self.hidden_channels, self.groupnorm_groups
                ));
            }
        }
        Ok(())
    }
}

/// A whole SFTok model: encoder, quantizer, multi-step decoder, pixel head, and the VQGAN whose
/// codes the decoder predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftokConfig {
    /// A name for people (the preset's, or "imported").
    #[serde(default)]
    pub name: String,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Number L of 1-D latent tokens.
    pub num_latent_tokens: usize,
    pub encoder: VitConfig,
    pub decoder: VitConfig,
    pub quantizer: QuantizerConfig,
    pub vqgan: VqganConfig,
    #[serde(default = "default_ln_eps")]
    pub layernorm_eps: f64,
}

fn default_ln_eps() -> f64 {
    1e-5
}

impl SftokConfig {
    /// Tokens on a side of the encoder's patch grid.
    pub fn encoder_grid(&self) -> usize {
        self.image_size / self.encoder.patch_size
    }
    /// Tokens on a side of the decoder's proxy-code grid.
    pub fn decoder_grid(&self) -> usize {
        self.image_size / self.decoder.patch_size
    }
    /// Number N of proxy codes (the teacher's tokens) the decoder predicts.
    pub fn num_proxy_codes(&self) -> usize {
        self.decoder_grid() * self.decoder_grid()
    }
    /// The decoder's mask token id: one past the teacher's vocabulary.
    pub fn mask_token_id(&self) -> usize {
        self.vqgan.num_embeddings
    }

    /// Checks that the sizes fit together, with a message that names the offending values.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(SftokError::InvalidConfig(m));
        // Bounds far past any published model (SFTok-L: 256 px, 64 tokens, 8192 codes, ViT-L
        // 24 x 1024): a config beyond them is a typo or a hostile file, and building it would
        // allocate until the process is killed (issue 17: `image_size` 1000000 and
        // `codebook_size` 1e12 aborted in the allocator, depth 1e6 ate all memory, token_size 0
        // panicked inside the backend).
        let bounds: [(&str, usize, usize, usize); 14] = [
            ("image_size", self.image_size, 8, 4096),
            ("num_latent_tokens", self.num_latent_tokens, 1, 4096),
            ("encoder.width", self.encoder.width, 1, 8192),
            ("encoder.depth", self.encoder.depth, 1, 256),
            ("encoder.heads", self.encoder.heads, 1, 256),
            ("decoder.width", self.decoder.width, 1, 8192),
            ("decoder.depth", self.decoder.depth, 1, 256),
            ("decoder.heads", self.decoder.heads, 1, 256),
            (
                "quantizer.codebook_size",
                self.quantizer.codebook_size,
                1,
                1 << 20,
            ),
            ("quantizer.token_size", self.quantizer.token_size, 1, 4096),
            (
                "quantizer.sinkhorn_iters",
                self.quantizer.sinkhorn_iters,
                0,
                1000,
            ),
            ("vqgan.hidden_channels", self.vqgan.hidden_channels, 1, 4096),
            (
                "vqgan.num_embeddings",
                self.vqgan.num_embeddings,
                1,
                1 << 20,
            ),
            ("vqgan.z_channels", self.vqgan.z_channels, 1, 4096),
        ];
        for (name, value, low, high) in bounds {
            if !(low..=high).contains(&value) {
                return err(format!(
                    "{name} is {value}; this program accepts {low} to {high} (is the configuration file damaged?)"
                ));
            }
        }
        if self.vqgan.num_res_blocks > 64 || self.vqgan.channel_mult.len() > 12 {
            return err(format!(
                "vqgan has {} levels of {} blocks; this program accepts at most 12 levels of 64",
                self.vqgan.channel_mult.len(),
                self.vqgan.num_res_blocks
            ));
        }
        if let Some(&m) = self.vqgan.channel_mult.iter().find(|&&m| m > 64) {
            return err(format!(
                "vqgan.channel_mult holds {m}; at most 64 is accepted"
            ));
        }
        let ratio_ok = |r: f64| r > 0.0 && r <= 64.0;
        if !(ratio_ok(self.encoder.mlp_ratio) && ratio_ok(self.decoder.mlp_ratio)) {
            return err("mlp_ratio must be above 0 and at most 64".into());
        }
        for (what, vit) in [("encoder", &self.encoder), ("decoder", &self.decoder)] {
            if vit.patch_size == 0 || !self.image_size.is_multiple_of(vit.patch_size) {
                return err(format!(
                    "{what}.patch_size {} does not divide image_size {}",
                    vit.patch_size, self.image_size
                ));
            }
            if vit.heads == 0 || vit.width % vit.heads != 0 {
                return err(format!(
                    "{what}.width {} is not a multiple of {what}.heads {}",
                    vit.width, vit.heads
                ));
            }
        }
        if self.num_latent_tokens == 0 || self.quantizer.codebook_size == 0 {
            return err("num_latent_tokens and quantizer.codebook_size must be positive".into());
        }
        self.vqgan.validate().map_err(SftokError::InvalidConfig)?;
        let f = self.vqgan.downsample_factor();
        if !self.image_size.is_multiple_of(f) || self.image_size / f != self.decoder_grid() {
            return err(format!(
                "the teacher's code grid ({} / {f} = {}) must equal the decoder's grid ({} / {} = {})",
                self.image_size,
                self.image_size / f.max(1),
                self.image_size,
                self.decoder.patch_size,
                self.decoder_grid()
            ));
        }
        Ok(())
    }

    /// The official SFTok-B: ViT-B/16 encoder and decoder, 64 tokens, OptVQ 8192 x 32.
    pub fn sftok_b() -> Self {
        Self::official("sftok-b", "base", "base", 16, 16, 256, 64, 8192, 32)
    }

    /// The official SFTok-L: ViT-B/16 encoder, ViT-L decoder (as the README says; no yaml ships).
    pub fn sftok_l() -> Self {
        Self::official("sftok-l", "base", "large", 16, 16, 256, 64, 8192, 32)
    }

    #[allow(clippy::too_many_arguments)]
    fn official(
        name: &str,
        enc: &str,
        dec: &str,
        enc_patch: usize,
        dec_patch: usize,
        image_size: usize,
        latents: usize,
        codebook: usize,
        token_size: usize,
    ) -> Self {
        SftokConfig {
            name: name.into(),
            image_size,
            num_latent_tokens: latents,
            encoder: VitConfig::official(enc, enc_patch).expect("known size"),
            decoder: VitConfig::official(dec, dec_patch).expect("known size"),
            quantizer: QuantizerConfig {
                codebook_size: codebook,
                token_size,
                commitment_cost: 0.25,
                sinkhorn_iters: 5,
                sinkhorn_epsilon: 10.0,
            },
            vqgan: VqganConfig::official(),
            layernorm_eps: 1e-5,
        }
    }

    /// A model small enough to train in tests: 32 px images, a 4x4 code grid (f8 teacher).
    pub fn tiny() -> Self {
        SftokConfig {
            name: "tiny".into(),
            image_size: 32,
            num_latent_tokens: 8,
            encoder: vit(8, 32, 1, 2),
            decoder: vit(8, 32, 1, 2),
            quantizer: small_quantizer(64, 8),
            vqgan: small_vqgan(32, vec![1, 1, 1, 1], 1, 8, 64, 32),
            layernorm_eps: 1e-5,
        }
    }

    /// The CPU demo model: 64 px images, 8x8 proxy codes (f8 teacher), 32 latent tokens.
    pub fn demo() -> Self {
        SftokConfig {
            name: "demo".into(),
            image_size: 64,
            num_latent_tokens: 32,
            encoder: vit(8, 128, 4, 4),
            decoder: vit(8, 128, 4, 4),
            quantizer: small_quantizer(1024, 12),
            // 8 groups: at 32 channels the official 32 groups would normalise each channel on
            // its own over the image (an instance norm), which erases every channel's mean: the
            // image's colour then cannot pass the encoder's or the decoder's last norm. The
            // official teacher has 4 channels per group at its first level; so does this one.
            vqgan: small_vqgan(32, vec![1, 2, 2, 4], 1, 32, 512, 8),
            layernorm_eps: 1e-5,
        }
    }

    /// The preset names `preset` understands.
    pub const PRESETS: &'static [&'static str] = &["tiny", "demo", "sftok-b", "sftok-l"];

    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "demo" => Ok(Self::demo()),
            "sftok-b" | "b" | "B" => Ok(Self::sftok_b()),
            "sftok-l" | "l" | "L" => Ok(Self::sftok_l()),
            _ => Err(SftokError::InvalidConfig(format!(
                "unknown preset `{name}`; known presets: {}",
                Self::PRESETS.join(", ")
            ))),
        }
    }

    /// Reads a configuration file in any of the formats this project knows: its own, the
    /// official nested OmegaConf dump (`model.vq_model` / `model.decoder`), or a parity
    /// fixture's `config.json` (its `flat` section).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SftokError::io(path, e))?;
        let value: Value =
            serde_json::from_str(&python_json_to_json(&text)).map_err(|e| SftokError::Config {
                path: path.into(),
                message: if looks_like_yaml(&text) {
                    format!(
                        "it looks like YAML (the official training configs are YAML), and a \
                         config.json is needed. Convert it once with Python: python3 -c \
                         \"import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), \
                         open(sys.argv[2], 'w'))\" {} config.json, or use the config.json that \
                         comes with the official weights",
                        path.display()
                    )
                } else {
                    format!("not JSON ({e})")
                },
            })?;
        Self::from_json_value(&value).map_err(|message| SftokError::Config {
            path: path.into(),
            message,
        })
    }

    /// See [`SftokConfig::from_file`].
    pub fn from_json_value(value: &Value) -> std::result::Result<Self, String> {
        let config = if let Some(flat) = value.get("flat") {
            Self::from_parity_flat(flat)?
        } else if value.pointer("/model/vq_model").is_some() {
            Self::from_official(value)?
        } else {
            serde_json::from_value::<SftokConfig>(value.clone()).map_err(|e| {
                // serde's message names the type, not the field; NaN and Infinity (written by
                // Python's json) arrive here as null.
                match first_null(value, String::new()) {
                    Some(field) => {
                        format!("{field} is NaN, Infinity or null; give it a finite number ({e})")
                    }
                    None => e.to_string(),
                }
            })?
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The `flat` section written by the parity fixture generator.
    fn from_parity_flat(flat: &Value) -> std::result::Result<Self, String> {
        let vit_of = |v: &Value, what: &str| -> std::result::Result<VitConfig, String> {
            Ok(VitConfig {
                patch_size: get_usize(v, "patch_size", what)?,
                width: get_usize(v, "width", what)?,
                depth: get_usize(v, "depth", what)?,
                heads: get_usize(v, "heads", what)?,
                mlp_ratio: v.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0),
            })
        };
        let q = field(flat, "quantizer")?;
        let g = field(flat, "vqgan")?;
        Ok(SftokConfig {
            name: "parity".into(),
            image_size: get_usize(flat, "image_size", "flat")?,
            num_latent_tokens: get_usize(flat, "num_latent_tokens", "flat")?,
            encoder: vit_of(field(flat, "encoder")?, "encoder")?,
            decoder: vit_of(field(flat, "decoder")?, "decoder")?,
            quantizer: QuantizerConfig {
                codebook_size: get_usize(q, "codebook_size", "quantizer")?,
                token_size: get_usize(q, "token_size", "quantizer")?,
                commitment_cost: q
                    .get("commitment_cost")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.25),
                sinkhorn_iters: q
                    .get("sinkhorn_n_iters")
                    .and_then(Value::as_u64)
                    .map_or(5, |v| v as usize),
                sinkhorn_epsilon: q
                    .get("sinkhorn_epsilon")
                    .and_then(Value::as_f64)
                    .unwrap_or(10.0),
            },
            vqgan: VqganConfig {
                hidden_channels: get_usize(g, "hidden_channels", "vqgan")?,
                channel_mult: get_usize_list(g, "channel_mult", "vqgan")?,
                num_res_blocks: get_usize(g, "num_res_blocks", "vqgan")?,
                z_channels: get_usize(g, "z_channels", "vqgan")?,
                num_embeddings: get_usize(g, "num_embeddings", "vqgan")?,
                groupnorm_groups: g
                    .get("groupnorm_groups")
                    .and_then(Value::as_u64)
                    .map_or(32, |v| v as usize),
                groupnorm_eps: g
                    .get("groupnorm_eps")
                    .and_then(Value::as_f64)
                    .unwrap_or(1e-6),
                commitment_cost: 0.25,
            },
            layernorm_eps: flat
                .get("layernorm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
        })
    }

    /// The official nested config (`configs/*.yaml` as JSON): sizes by name, the MaskGIT-VQGAN fixed
    /// as in `sftok.py`. A fixture's `parity_sizes` / `parity_vqgan` tables, when present, extend the
    /// size names and replace the VQGAN exactly as the fixture generator's patches did.
    fn from_official(value: &Value) -> std::result::Result<Self, String> {
        let vq = value
            .pointer("/model/vq_model")
            .ok_or("missing model.vq_model")?;
        let dec = value
            .pointer("/model/decoder")
            .ok_or("missing model.decoder")?;
        let image_size = value
            .pointer("/dataset/preprocessing/crop_size")
            .and_then(Value::as_u64)
            .map_or(256, |v| v as usize);
        let sizes = value.get("parity_sizes");
        let vit_of = |size: &str, patch: usize| -> std::result::Result<VitConfig, String> {
            if let Some(v) = VitConfig::official(size, patch) {
                return Ok(v);
            }
            let lookup = |table: &str| {
                sizes
                    .and_then(|s| s.get(table))
                    .and_then(|t| t.get(size))
                    .and_then(Value::as_u64)
                    .map(|v| v as usize)
            };
            match (lookup("width"), lookup("num_layers"), lookup("num_heads")) {
                (Some(width), Some(depth), Some(heads)) => Ok(VitConfig {
                    patch_size: patch,
                    width,
                    depth,
                    heads,
                    mlp_ratio: 4.0,
                }),
                _ => Err(format!(
                    "unknown model size `{size}` (expected small, base or large)"
                )),
            }
        };
        let enc_size = vq
            .get("vit_enc_model_size")
            .and_then(Value::as_str)
            .ok_or("missing model.vq_model.vit_enc_model_size")?;
        let dec_size = dec
            .get("vit_dec_model_size")
            .and_then(Value::as_str)
            .ok_or("missing model.decoder.vit_dec_model_size")?;
        let vqgan = match value.get("parity_vqgan") {
            Some(p) => {
                let conf = field(p, "conf")?;
                VqganConfig {
                    hidden_channels: get_usize(conf, "hidden_channels", "parity_vqgan.conf")?,
                    channel_mult: get_usize_list(conf, "channel_mult", "parity_vqgan.conf")?,
                    num_res_blocks: get_usize(conf, "num_res_blocks", "parity_vqgan.conf")?,
                    z_channels: get_usize(conf, "z_channels", "parity_vqgan.conf")?,
                    num_embeddings: get_usize(p, "num_embeddings", "parity_vqgan")?,
                    ..VqganConfig::official()
                }
            }
            None => VqganConfig::official(),
        };
        let config = SftokConfig {
            name: "imported".into(),
            image_size,
            num_latent_tokens: get_usize(vq, "num_latent_tokens", "model.vq_model")?,
            encoder: vit_of(
                enc_size,
                get_usize(vq, "vit_enc_patch_size", "model.vq_model")?,
            )?,
            decoder: vit_of(
                dec_size,
                get_usize(dec, "vit_dec_patch_size", "model.decoder")?,
            )?,
            quantizer: QuantizerConfig {
                codebook_size: get_usize(vq, "codebook_size", "model.vq_model")?,
                token_size: get_usize(vq, "token_size", "model.vq_model")?,
                commitment_cost: vq
                    .get("commitment_cost")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.25),
                sinkhorn_iters: 5,
                sinkhorn_epsilon: 10.0,
            },
            vqgan,
            layernorm_eps: 1e-5,
        };
        if let Some(v) = dec.get("codebook_size").and_then(Value::as_u64)
            && v as usize != config.vqgan.num_embeddings
        {
            return Err(format!(
                "model.decoder.codebook_size is {v} but the teacher has {} codes",
                config.vqgan.num_embeddings
            ));
        }
        Ok(config)
    }

    /// Writes the configuration as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }
}

/// Python's `json.dump` writes `NaN`, `Infinity` and `-Infinity`, which JSON does not have (the
/// parity fixtures' diagnostics contain them); outside strings they become `null`.
pub fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .iter()
            .find(|t| rest.starts_with(**t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn vit(patch_size: usize, width: usize, depth: usize, heads: usize) -> VitConfig {
    VitConfig {
        patch_size,
        width,
        depth,
        heads,
        mlp_ratio: 4.0,
    }
}

fn small_quantizer(codebook_size: usize, token_size: usize) -> QuantizerConfig {
    QuantizerConfig {
        codebook_size,
        token_size,
        commitment_cost: 0.25,
        sinkhorn_iters: 5,
        sinkhorn_epsilon: 10.0,
    }
}

fn small_vqgan(
    hidden: usize,
    mult: Vec<usize>,
    res_blocks: usize,
    z: usize,
    vocab: usize,
    groups: usize,
) -> VqganConfig {
    VqganConfig {
        hidden_channels: hidden,
        channel_mult: mult,
        num_res_blocks: res_blocks,
        z_channels: z,
        num_embeddings: vocab,
        groupnorm_groups: groups,
        groupnorm_eps: 1e-6,
        commitment_cost: 0.25,
    }
}

fn field<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("missing `{key}`"))
}

fn get_usize(v: &Value, key: &str, ctx: &str) -> std::result::Result<usize, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| format!("missing or non-integer `{ctx}.{key}`"))
}

fn get_usize_list(v: &Value, key: &str, ctx: &str) -> std::result::Result<Vec<usize>, String> {
    v.get(key)
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("missing or malformed list `{ctx}.{key}`"))
}

/// The dotted path of the first null in `value` (depth first).
fn first_null(value: &Value, path: String) -> Option<String> {
    match value {
        Value::Null => Some(if path.is_empty() {
            "the value".into()
        } else {
            path
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            first_null(v, p)
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_null(v, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// A YAML mapping rather than JSON: the first meaningful line is `key:` or `key: value`.
fn looks_like_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && l != &"---")
        .is_some_and(|l| {
            !l.starts_with('{')
                && l.split_once(':').is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_special_floats_become_null_outside_strings() {
        let t = r#"{"a": Infinity, "b": -Infinity, "c": [NaN, 1], "d": "NaN \" Infinity"}"#;
        let v: Value = serde_json::from_str(&python_json_to_json(t)).unwrap();
        assert!(v["a"].is_null() && v["b"].is_null() && v["c"][0].is_null());
        assert_eq!(v["d"], "NaN \" Infinity");
    }

    #[test]
    fn presets_validate() {
        for name in SftokConfig::PRESETS {
            SftokConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn official_b_has_256_proxy_codes() {
        let c = SftokConfig::sftok_b();
        assert_eq!(c.num_proxy_codes(), 256);
        assert_eq!(c.mask_token_id(), 1024);
    }

    #[test]
    fn json_round_trip() {
        let c = SftokConfig::demo();
        let back =
            SftokConfig::from_json_value(&serde_json::from_str(&c.to_json()).unwrap()).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn mismatched_teacher_grid_is_refused() {
        let mut c = SftokConfig::tiny();
        c.decoder.patch_size = 16;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("teacher's code grid"), "{e}");
    }

    #[test]
    fn absurd_sizes_are_refused_with_the_field_named() {
        type Spoil = fn(&mut SftokConfig);
        let cases: [(&str, Spoil); 5] = [
            ("image_size", |c| c.image_size = 1_000_000),
            ("codebook_size", |c| {
                c.quantizer.codebook_size = 1_000_000_000_000
            }),
            ("num_latent_tokens", |c| c.num_latent_tokens = 1_000_000_000),
            ("decoder.depth", |c| c.decoder.depth = 1_000_000),
            ("token_size", |c| c.quantizer.token_size = 0),
        ];
        for (field, spoil) in cases {
            let mut c = SftokConfig::demo();
            spoil(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        for preset in SftokConfig::PRESETS {
            SftokConfig::preset(preset).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn unknown_preset_names_the_known_ones() {
        let e = SftokConfig::preset("huge").unwrap_err().to_string();
        assert!(e.contains("sftok-b"), "{e}");
    }

    #[test]
    fn a_yaml_config_gets_the_conversion_command() {
        let dir = std::env::temp_dir().join(format!("sftok-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sftok_b.yaml");
        std::fs::write(
            &path,
            "# official\nmodel:\n  vq_model:\n    codebook_size: 8192\n",
        )
        .unwrap();
        let msg = SftokConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            msg.contains("YAML") && msg.contains("yaml.safe_load"),
            "{msg}"
        );
        std::fs::write(&path, "[1, 2").unwrap();
        let msg = SftokConfig::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("not JSON") && !msg.contains("YAML"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_nan_in_a_config_names_its_field() {
        let mut value = serde_json::to_value(SftokConfig::tiny()).unwrap();
        value["encoder"]["mlp_ratio"] = Value::Null;
        let msg = SftokConfig::from_json_value(&value).unwrap_err();
        assert!(msg.contains("encoder.mlp_ratio is NaN"), "{msg}");
    }
}
