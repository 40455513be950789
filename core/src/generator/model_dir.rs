//! Generator directories (`config.json` with `"model_type": "maskgit"` + `model.safetensors`),
//! and the conversion of the official checkpoint (`ema_model/pytorch_model.bin`) into one.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::bert::ImageBert;
use super::config::GeneratorConfig;
use crate::checkpoint::files::{read_weights, write_atomic, write_safetensors};
use crate::checkpoint::model_dir::{
    CONFIG_FILE, ImportError, ImportInput, MODEL_FILE, ModelKind, check_import_file,
    check_model_dir, published_model_dir,
};
use crate::checkpoint::state::{StateDict, load_state_dict, state_dict};
use crate::error::{Result, SftokError};

/// A generator loaded from a directory.
#[derive(Debug)]
pub struct LoadedGenerator {
    pub dir: PathBuf,
    pub config: GeneratorConfig,
    pub model: ImageBert,
}

/// Builds the generator from official-named tensors. Accepts a DDP `module.` prefix and drops
/// the `model.embeddings.position_ids` buffer that transformers before 4.31 saved.
pub fn build_generator(
    config: &GeneratorConfig,
    tensors: StateDict,
    device: &Device,
    source: &Path,
) -> Result<ImageBert> {
    config.validate()?;
    let mut tensors: StateDict = if tensors.keys().all(|k| k.starts_with("module.")) {
        tensors
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect()
    } else {
        tensors
    };
    tensors.remove("model.embeddings.position_ids");
    tensors.remove("model.embeddings.token_type_ids");
    if tensors.contains_key("latent_tokens") || tensors.contains_key("encoder.ln_pre.weight") {
        return Err(SftokError::Weights {
            path: source.to_path_buf(),
            message: "these are a tokenizer's weights (they have latent_tokens), not a \
                      generator's; give them as the tokenizer"
                .into(),
        });
    }
    load_state_dict(ImageBert::new(config, device), tensors, device, source)
}

/// Loads `dir/config.json` and `dir/model.safetensors` (a training run's folder stands for the
/// model it publishes in `model/`).
pub fn load_generator_dir(dir: &Path, device: &Device) -> Result<LoadedGenerator> {
    let dir = &published_model_dir(dir);
    check_model_dir(dir, ModelKind::Generator)?;
    let config_path = dir.join(CONFIG_FILE);
    let config = GeneratorConfig::from_file(&config_path)?;
    let model_path = dir.join(MODEL_FILE);
    let model = build_generator(&config, read_weights(&model_path)?, device, &model_path)?;
    Ok(LoadedGenerator {
        dir: dir.to_path_buf(),
        config,
        model,
    })
}

/// Writes a generator directory, each file atomically, the config first.
pub fn save_generator_dir(dir: &Path, config: &GeneratorConfig, model: &ImageBert) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SftokError::write(dir, e))?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())?;
    write_safetensors(&dir.join(MODEL_FILE), &state_dict(model))
}

/// The weights file `path` stands for: the file itself, or the official names inside a folder
/// (`ema_model/` or a checkpoint folder holding `pytorch_model.bin` or `model.safetensors`).
fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        for candidate in [
            "pytorch_model.bin",
            "model.safetensors",
            "ema_model/pytorch_model.bin",
            "ema_model/model.safetensors",
        ] {
            let file = path.join(candidate);
            if file.is_file() {
                return Ok(file);
            }
        }
        return Err(ImportError::NoCheckpointInFolder {
            path: path.to_path_buf(),
        }
        .into());
    }
    Err(ImportError::Missing {
        input: ImportInput::Weights,
        path: path.to_path_buf(),
    }
    .into())
}

/// `sftok import-generator`: official generator weights and an optional config (the official
/// yaml converted to JSON, or this project's) into a generator directory. Without a config the
/// full-size preset (`configs/sftok_maskgit.yaml` over SFTok-B) is assumed.
pub fn import_official_generator(
    weights: &Path,
    config_file: Option<&Path>,
    out: &Path,
    device: &Device,
) -> Result<LoadedGenerator> {
    let weights = weights_file(weights)?;
    if let Some(path) = config_file {
        check_import_file(ImportInput::Config, path)?;
    }
    let config = match config_file {
        Some(path) => GeneratorConfig::from_file(path)?,
        None => GeneratorConfig::sftok_b(),
    };
    let model = build_generator(&config, read_weights(&weights)?, device, &weights)?;
    save_generator_dir(out, &config, &model)?;
    Ok(LoadedGenerator {
        dir: out.to_path_buf(),
        config,
        model,
    })
}
