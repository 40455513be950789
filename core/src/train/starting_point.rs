//! Where a stage starts: the teacher it learns from, the weights it starts from (`--init`), and
//! the model configuration of a run or model directory.

use std::path::Path;

use super::config::TrainConfig;
use super::plan::PlanError;
use crate::checkpoint::files::read_weights;
use crate::checkpoint::model_dir::{fill_pixel_parts_from_teacher, published_model_dir};
use crate::checkpoint::state::state_dict;
use crate::checkpoint::{CONFIG_FILE, MODEL_FILE, TEACHER_FILE, build_sftok, build_teacher};
use crate::config::SftokConfig;
use crate::error::{Result, SftokError};
use crate::model::{Sftok, Vqgan};
use burn::tensor::Device;

/// Reads the teacher from a model directory (with `teacher.safetensors`) or a run directory
/// (its `model/` folder), with the configuration found there.
pub fn load_teacher(path: &Path, device: &Device) -> Result<(SftokConfig, Vqgan)> {
    let dir = if path.join("model").join(TEACHER_FILE).is_file() {
        path.join("model")
    } else {
        path.to_path_buf()
    };
    let weights = dir.join(TEACHER_FILE);
    if !weights.is_file() {
        return Err(PlanError::NoTeacher {
            path: path.to_path_buf(),
        }
        .into());
    }
    let config = SftokConfig::from_file(&dir.join(CONFIG_FILE))?;
    let teacher = build_teacher(&config, read_weights(&weights)?, device, &weights)?;
    Ok((config, teacher))
}

/// The model configuration of a run directory (its `model/` or its run config) or of a model
/// directory.
pub fn model_config_of(path: &Path) -> Result<SftokConfig> {
    let published = path.join("model").join(CONFIG_FILE);
    if published.is_file() {
        return SftokConfig::from_file(&published);
    }
    let file = path.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| SftokError::io(&file, e))?;
    if let Ok(run) = serde_json::from_str::<TrainConfig>(&text) {
        return Ok(run.model);
    }
    SftokConfig::from_file(&file).map_err(|_| {
        SftokError::Other(format!(
            "{} is neither a run directory (made by `sftok train`) nor a model directory (config.json + model.safetensors)",
            path.display()
        ))
    })
}

/// The tokenizer weights of a run directory (its published model) or a model directory, built
/// with the run's model configuration.
pub fn load_tokenizer(path: &Path, config: &TrainConfig, ad: &Device) -> Result<Sftok> {
    let dir = published_model_dir(path);
    let weights = dir.join(MODEL_FILE);
    if !weights.is_file() {
        return Err(PlanError::CannotStart {
            path: path.to_path_buf(),
            stage: config.stage,
        }
        .into());
    }
    build_sftok(&config.model, read_weights(&weights)?, ad, &weights)
}

/// A fresh tokenizer whose pixel codebook and pixel decoder start as the teacher's.
pub fn fresh_tokenizer(
    config: &TrainConfig,
    teacher: Option<&Vqgan>,
    ad: &Device,
) -> Result<Sftok> {
    let fresh = Sftok::new(&config.model, ad);
    let mut tensors = state_dict(&fresh);
    if let Some(t) = teacher {
        tensors.retain(|k, _| !k.starts_with("pixel_"));
        fill_pixel_parts_from_teacher(&mut tensors, &state_dict(t));
    }
    build_sftok(&config.model, tensors, ad, Path::new("(fresh model)"))
}
