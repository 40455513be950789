//! The generator's sizes and its sampling settings, as the official `configs/sftok_maskgit.yaml`
//! (`model.img_generator`) holds them, plus the class names of a model trained here.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::python_json_to_json;
use crate::error::{Result, SftokError};

/// How the guidance scale changes over the generator's steps (`guidance_decay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GuidanceDecay {
    /// The same scale at every step; the guided logits are `cond + s (cond - null)`.
    #[default]
    Constant,
    /// Step `j` of `T` uses `(j / T) s`: none at the first step (one forward pass).
    Linear,
    /// `1 + (s - 1) (1 - cos(pi (j / T)^pow)) / 2`, applied as `null + s' (cond - null)`.
    PowerCosine,
}

impl GuidanceDecay {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "power-cosine" | "power_cosine" | "powercosine" | "cosine" => Ok(Self::PowerCosine),
            other => Err(format!(
                "unknown guidance decay `{other}`: use constant, linear or power-cosine"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Linear => "linear",
            Self::PowerCosine => "power-cosine",
        }
    }
}

/// What a generator samples with unless told otherwise (the yaml's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingDefaults {
    pub num_steps: usize,
    pub guidance_scale: f64,
    pub guidance_decay: GuidanceDecay,
    pub guidance_scale_pow: f64,
    pub randomize_temperature: f64,
    pub softmax_temperature_annealing: bool,
}

impl Default for SamplingDefaults {
    /// `configs/sftok_maskgit.yaml` (8 steps, guidance 4.5 constant, temperature 1), with the
    /// `.get` defaults of `generate_images` for the keys it lacks (pow 3, no annealing).
    fn default() -> Self {
        SamplingDefaults {
            num_steps: 8,
            guidance_scale: 4.5,
            guidance_decay: GuidanceDecay::Constant,
            guidance_scale_pow: 3.0,
            randomize_temperature: 1.0,
            softmax_temperature_annealing: false,
        }
    }
}

/// The `ImageBert` generator: a BERT over `[class token, L image tokens]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// Always "maskgit": tells a generator directory from a tokenizer's.
    #[serde(default = "maskgit")]
    pub model_type: String,
    /// A name for people (the preset's, or "imported").
    #[serde(default)]
    pub name: String,
    /// K: the tokenizer's OptVQ codebook size (image token ids `0..K`).
    pub codebook_size: usize,
    /// L: the tokenizer's number of latent tokens.
    pub image_seq_len: usize,
    /// C: number of classes (class token ids `K+1 .. K+C`).
    pub condition_num_classes: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "bert_ln_eps")]
    pub layer_norm_eps: f64,
    /// Probability of replacing the class by the class-drop token in training (for guidance).
    #[serde(default = "default_class_label_dropout")]
    pub class_label_dropout: f64,
    #[serde(default)]
    pub sampling: SamplingDefaults,
    /// Names of the classes, index = class id (empty: the classes have only numbers).
    #[serde(default)]
    pub class_names: Vec<String>,
}

fn maskgit() -> String {
    "maskgit".into()
}

fn bert_ln_eps() -> f64 {
    1e-12
}

fn default_class_label_dropout() -> f64 {
    0.1
}

impl GeneratorConfig {
    /// The mask token's id (`K`).
    pub fn mask_token_id(&self) -> usize {
        self.codebook_size
    }

    /// The token that stands for class `c` (`K + 1 + c`).
    pub fn class_token_id(&self, class: usize) -> usize {
        self.codebook_size + 1 + class
    }

    /// The class-drop ("null") token (`K + C + 1`).
    pub fn drop_token_id(&self) -> usize {
        self.codebook_size + self.condition_num_classes + 1
    }

    /// Every token id: image tokens, mask, classes, null.
    pub fn vocab_size(&self) -> usize {
        self.codebook_size + self.condition_num_classes + 2
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The official full size (`configs/sftok_maskgit.yaml`) over SFTok-B's 64 tokens of 8192.
    pub fn sftok_b() -> Self {
        GeneratorConfig {
            model_type: maskgit(),
            name: "sftok-b-maskgit".into(),
            codebook_size: 8192,
            image_seq_len: 64,
            condition_num_classes: 1000,
            hidden_size: 768,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 3072,
            layer_norm_eps: bert_ln_eps(),
            class_label_dropout: 0.1,
            sampling: SamplingDefaults::default(),
            class_names: Vec::new(),
        }
    }

    /// A small generator for a tokenizer with `codebook_size` codes and `image_seq_len` tokens:
    /// what trains in minutes on two CPU cores over a few hundred photos.
    pub fn demo(codebook_size: usize, image_seq_len: usize, classes: Vec<String>) -> Self {
        GeneratorConfig {
            model_type: maskgit(),
            name: "demo".into(),
            codebook_size,
            image_seq_len,
            condition_num_classes: classes.len().max(1),
            hidden_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            intermediate_size: 1024,
            layer_norm_eps: bert_ln_eps(),
            class_label_dropout: 0.1,
            sampling: SamplingDefaults {
                guidance_scale: 2.0,
                ..SamplingDefaults::default()
            },
            class_names: classes,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SftokError::InvalidConfig(m));
        if self.model_type != "maskgit" {
            return bad(format!(
                "model_type is `{}`; a generator's is `maskgit`",
                self.model_type
            ));
        }
        // Bounds far past any published model (the official: 8192 codes, 64 tokens, 1000
        // classes, 768 wide, 24 layers, 16 heads, 3072 inner), low enough that a hostile
        // config cannot ask for more memory than a machine has.
        for (name, v, max) in [
            ("codebook_size", self.codebook_size, 1 << 20),
            ("image_seq_len", self.image_seq_len, 4096),
            ("condition_num_classes", self.condition_num_classes, 1 << 20),
            ("hidden_size", self.hidden_size, 8192),
            ("num_hidden_layers", self.num_hidden_layers, 256),
            ("num_attention_heads", self.num_attention_heads, 256),
            ("intermediate_size", self.intermediate_size, 65536),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0; it must be at least 1"));
            }
            if v > max {
                return bad(format!(
                    "{name} is {v}, far beyond any real model (at most {max})"
                ));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return bad(format!(
                "layer_norm_eps is {}; use a small positive number (BERT's is 1e-12)",
                self.layer_norm_eps
            ));
        }
        if !(0.0..=1.0).contains(&self.class_label_dropout) {
            return bad(format!(
                "class_label_dropout is {}; it is a probability (0 to 1)",
                self.class_label_dropout
            ));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.condition_num_classes {
            return bad(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.condition_num_classes
            ));
        }
        let s = &self.sampling;
        if s.num_steps == 0 {
            return bad("sampling.num_steps is 0; use at least 1".into());
        }
        for (name, v) in [
            ("guidance_scale", s.guidance_scale),
            ("guidance_scale_pow", s.guidance_scale_pow),
            ("randomize_temperature", s.randomize_temperature),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("sampling.{name} is {v}; use a finite number >= 0"));
            }
        }
        Ok(())
    }

    /// Reads the project's own `config.json`, the official nested config as JSON (the yaml's
    /// `model.img_generator` with `model.vq_model`), or a parity fixture's `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SftokError::io(path, e))?;
        let config_error = |message: String| SftokError::Config {
            path: path.into(),
            message,
        };
        let value: Value = serde_json::from_str(&python_json_to_json(&text)).map_err(|e| {
            config_error(if text.trim_start().starts_with("experiment:") || text.contains("\nmodel:") {
                format!(
                    "it looks like YAML; convert it once with Python: python3 -c \"import sys, json, \
                     yaml; json.dump(yaml.safe_load(open(sys.argv[1])), open(sys.argv[2], 'w'))\" {} \
                     config.json",
                    path.display()
                )
            } else {
                format!("not JSON ({e})")
            })
        })?;
        Self::from_json_value(&value).map_err(config_error)
    }

    /// See [`GeneratorConfig::from_file`].
    pub fn from_json_value(value: &Value) -> std::result::Result<Self, String> {
        let config = if let Some(gen_cfg) = value.pointer("/model/img_generator") {
            Self::from_official(value, gen_cfg)?
        } else if let Some(flat) = value.get("flat") {
            Self::from_parity_flat(flat)?
        } else if value.get("encoder").is_some() && value.get("decoder").is_some() {
            return Err(
                "this is a tokenizer's configuration, not a generator's (a generator's has \
                 model_type \"maskgit\"); give the generator's model directory"
                    .into(),
            );
        } else {
            // serde's message names the type, not the field: say which size is not a count.
            for key in [
                "codebook_size",
                "image_seq_len",
                "condition_num_classes",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            ] {
                if let Some(v) = value.get(key)
                    && v.as_u64().is_none()
                {
                    return Err(format!("{key} is {v}; it must be a whole number from 1 up"));
                }
            }
            serde_json::from_value::<GeneratorConfig>(value.clone()).map_err(|e| e.to_string())?
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn from_official(root: &Value, g: &Value) -> std::result::Result<Self, String> {
        let get = |v: &Value, key: &str, what: &str| -> std::result::Result<usize, String> {
            v.get(key)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| format!("missing {what}.{key}"))
        };
        let vq = root
            .pointer("/model/vq_model")
            .ok_or("missing model.vq_model (the tokenizer's codebook size)")?;
        let f = |key: &str, default: f64| g.get(key).and_then(Value::as_f64).unwrap_or(default);
        let decay = match g.get("guidance_decay").and_then(Value::as_str) {
            Some(d) => GuidanceDecay::parse(d)?,
            None => GuidanceDecay::Constant,
        };
        Ok(GeneratorConfig {
            model_type: maskgit(),
            name: "imported".into(),
            codebook_size: get(vq, "codebook_size", "model.vq_model")?,
            image_seq_len: get(g, "image_seq_len", "model.img_generator")?,
            condition_num_classes: get(g, "condition_num_classes", "model.img_generator")?,
            hidden_size: get(g, "hidden_size", "model.img_generator")?,
            num_hidden_layers: get(g, "num_hidden_layers", "model.img_generator")?,
            num_attention_heads: get(g, "num_attention_heads", "model.img_generator")?,
            intermediate_size: get(g, "intermediate_size", "model.img_generator")?,
            layer_norm_eps: bert_ln_eps(),
            class_label_dropout: f("class_label_dropout", 0.1),
            sampling: SamplingDefaults {
                num_steps: g.get("num_steps").and_then(Value::as_u64).unwrap_or(8) as usize,
                // `generate_images`'s `.get` defaults where the yaml lacks a key.
                guidance_scale: f("guidance_scale", 3.0),
                guidance_decay: decay,
                guidance_scale_pow: f("guidance_scale_pow", 3.0),
                randomize_temperature: f("randomize_temperature", 2.0),
                softmax_temperature_annealing: g
                    .get("softmax_temperature_annealing")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            class_names: Vec::new(),
        })
    }

    fn from_parity_flat(flat: &Value) -> std::result::Result<Self, String> {
        let get = |key: &str| -> std::result::Result<usize, String> {
            flat.get(key)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| format!("missing flat.{key}"))
        };
        Ok(GeneratorConfig {
            model_type: maskgit(),
            name: "parity".into(),
            codebook_size: get("codebook_size")?,
            image_seq_len: get("image_seq_len")?,
            condition_num_classes: get("condition_num_classes")?,
            hidden_size: get("hidden_size")?,
            num_hidden_layers: get("num_hidden_layers")?,
            num_attention_heads: get("num_attention_heads")?,
            intermediate_size: get("intermediate_size")?,
            layer_norm_eps: flat
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
            class_label_dropout: flat
                .get("class_label_dropout")
                .and_then(Value::as_f64)
                .unwrap_or(0.1),
            sampling: SamplingDefaults::default(),
            class_names: Vec::new(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config serialises")
    }

    /// The class id that `text` names: an index, or one of [`Self::class_names`] (case does not
    /// matter).
    pub fn class_from_text(&self, text: &str) -> std::result::Result<usize, String> {
        let text = text.trim();
        if let Ok(i) = text.parse::<usize>() {
            return if i < self.condition_num_classes {
                Ok(i)
            } else {
                Err(format!(
                    "class {i} does not exist: this generator has classes 0 to {}",
                    self.condition_num_classes - 1
                ))
            };
        }
        if let Some(i) = self
            .class_names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(text))
        {
            return Ok(i);
        }
        Err(if self.class_names.is_empty() {
            format!(
                "`{text}` is not a class number, and this generator has no class names: give a \
                 number from 0 to {}",
                self.condition_num_classes - 1
            )
        } else {
            format!(
                "no class named `{text}`; this generator's classes are: {}",
                self.class_names.join(", ")
            )
        })
    }

    /// A class's name for people: its name where the model has names, else its number.
    pub fn class_label(&self, class: usize) -> String {
        self.class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_layout_is_the_official_one() {
        let c = GeneratorConfig::sftok_b();
        assert_eq!(c.mask_token_id(), 8192);
        assert_eq!(c.class_token_id(0), 8193);
        assert_eq!(c.class_token_id(999), 9192);
        assert_eq!(c.drop_token_id(), 9193);
        assert_eq!(c.vocab_size(), 9194);
    }

    #[test]
    fn classes_are_found_by_number_or_name_and_wrong_ones_explained() {
        let c = GeneratorConfig::demo(64, 16, vec!["animals".into(), "Fruit".into()]);
        assert_eq!(c.class_from_text("1"), Ok(1));
        assert_eq!(c.class_from_text("fruit"), Ok(1));
        let e = c.class_from_text("7").unwrap_err();
        assert!(e.contains("0 to 1"), "{e}");
        let e = c.class_from_text("cars").unwrap_err();
        assert!(e.contains("animals, Fruit"), "{e}");
    }

    #[test]
    fn a_tokenizer_config_is_not_taken_for_a_generator() {
        let tokenizer = serde_json::to_value(crate::config::SftokConfig::tiny()).unwrap();
        let e = GeneratorConfig::from_json_value(&tokenizer).unwrap_err();
        assert!(e.contains("tokenizer"), "{e}");
    }

    #[test]
    fn the_official_nested_config_reads() {
        let v = serde_json::json!({
            "model": {
                "vq_model": {"codebook_size": 8192, "num_latent_tokens": 64},
                "img_generator": {"hidden_size": 768, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "intermediate_size": 3072, "num_steps": 8,
                    "class_label_dropout": 0.1, "image_seq_len": 64,
                    "condition_num_classes": 1000, "randomize_temperature": 1.0,
                    "guidance_scale": 4.5, "guidance_decay": "constant"}
            }
        });
        let c = GeneratorConfig::from_json_value(&v).unwrap();
        let mut want = GeneratorConfig::sftok_b();
        want.name = "imported".into();
        assert_eq!(c, want);
    }
}
