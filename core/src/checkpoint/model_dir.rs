//! Model directories: `config.json` + `model.safetensors` (+ `teacher.safetensors`), loadable
//! with one call, and the conversion of official checkpoints into one.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::files::{read_weights, write_atomic, write_safetensors};
use super::state::{StateDict, StoredTensor, load_state_dict, state_dict};
use crate::config::SftokConfig;
use crate::error::{Result, SftokError};
use crate::model::{Sftok, Vqgan};

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const TEACHER_FILE: &str = "teacher.safetensors";

/// A model loaded from a directory.
#[derive(Debug)]
pub struct LoadedModel {
    pub dir: PathBuf,
    pub config: SftokConfig,
    pub model: Sftok,
    /// The teacher (MaskGIT-VQGAN), when the directory has one.
    pub teacher: Option<Vqgan>,
}

/// The model directory `path` stands for: `path` itself when it holds a model, else the
/// `model/` a training run publishes when there is one, else `path`.
pub fn published_model_dir(path: &Path) -> PathBuf {
    let published = path.join("model");
    if !path.join(MODEL_FILE).is_file() && published.join(MODEL_FILE).is_file() {
        published
    } else {
        path.to_path_buf()
    }
}

/// Whether `path` (a model directory or a run folder) carries a teacher.
pub fn carries_teacher(path: &Path) -> bool {
    path.join(TEACHER_FILE).is_file() || path.join("model").join(TEACHER_FILE).is_file()
}

/// Which kind of model a directory was asked to hold (for the messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Tokenizer,
    Generator,
}

impl ModelKind {
    fn noun(self) -> &'static str {
        match self {
            ModelKind::Tokenizer => "model",
            ModelKind::Generator => "generator",
        }
    }

    /// How a person gets a directory of this kind.
    fn how_to_make(self) -> &'static str {
        match self {
            ModelKind::Tokenizer => "make one with `sftok import` or `sftok train`",
            ModelKind::Generator => {
                "make one with `sftok train generator` or `sftok import-generator`; the bundled \
                 one is assets/models/generator"
            }
        }
    }
}

/// What is wrong with a folder given as a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error(
        "{} is a file, not a {} directory (a folder with {CONFIG_FILE} and {MODEL_FILE}); official weights are converted into one with `sftok import{}`",
        path.display(), kind.noun(),
        if *kind == ModelKind::Generator { "-generator" } else { " --weights FILE --out DIR" }
    )]
    IsAFile { path: PathBuf, kind: ModelKind },
    #[error(
        "{} directory {} does not exist; a {0} directory holds {CONFIG_FILE} and {MODEL_FILE} ({})",
        kind.noun(), path.display(), kind.how_to_make()
    )]
    Missing { path: PathBuf, kind: ModelKind },
    #[error(
        "{} has no {file}; a {} directory holds {CONFIG_FILE} and {MODEL_FILE}",
        path.display(), kind.noun()
    )]
    Lacks {
        path: PathBuf,
        kind: ModelKind,
        file: &'static str,
    },
    /// The teacher alone (as `assets/models/teacher`): the one folder a user is likely to try.
    #[error(
        "{} holds only a teacher ({TEACHER_FILE}), not a {}; pass a tokenizer model directory such as assets/models/sfvr (it carries its teacher: the strip's last image is the teacher's own reconstruction)",
        path.display(), kind.noun()
    )]
    OnlyTeacher { path: PathBuf, kind: ModelKind },
}

/// Checks that `dir` is a folder holding a configuration and weights.
pub fn check_model_dir(dir: &Path, kind: ModelKind) -> std::result::Result<(), ModelDirError> {
    let path = dir.to_path_buf();
    if dir.is_file() {
        return Err(ModelDirError::IsAFile { path, kind });
    }
    if !dir.is_dir() {
        return Err(ModelDirError::Missing { path, kind });
    }
    match missing_model_file(dir) {
        Some(MODEL_FILE) if dir.join(TEACHER_FILE).is_file() => {
            Err(ModelDirError::OnlyTeacher { path, kind })
        }
        Some(file) => Err(ModelDirError::Lacks { path, kind, file }),
        None => Ok(()),
    }
}

/// The first of the files every model directory holds ([`CONFIG_FILE`], [`MODEL_FILE`]) that
/// `dir` lacks.
pub fn missing_model_file(dir: &Path) -> Option<&'static str> {
    [CONFIG_FILE, MODEL_FILE]
        .into_iter()
        .find(|file| !dir.join(file).is_file())
}

/// Loads `dir/config.json`, `dir/model.safetensors` and, if present, `dir/teacher.safetensors`.
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<LoadedModel> {
    // A training run's folder stands for the model it publishes in `model/`.
    let dir = &published_model_dir(dir);
    check_model_dir(dir, ModelKind::Tokenizer)?;
    let config_path = dir.join(CONFIG_FILE);
    let config = SftokConfig::from_file(&config_path)?;
    let model_path = dir.join(MODEL_FILE);
    let teacher_path = dir.join(TEACHER_FILE);
    let teacher = if teacher_path.is_file() {
        Some(build_teacher(
            &config,
            read_weights(&teacher_path)?,
            device,
            &teacher_path,
        )?)
    } else {
        None
    };
    let model = build_sftok(&config, read_weights(&model_path)?, device, &model_path)?;
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        model,
        teacher,
    })
}

/// Builds an SFTok from official-named tensors: accepts the older key
/// `decoder.embedding_positional_embedding` and a DDP `module.` prefix, and fills a missing
/// `quantize.index_offset` (a constant 0 for one group).
pub fn build_sftok(
    config: &SftokConfig,
    tensors: StateDict,
    device: &Device,
    source: &Path,
) -> Result<Sftok> {
    config.validate()?;
    let tensors = normalize_official_keys(tensors);
    // One codebook group: its offset is 0. Anything else is not a model this program runs (and
    // a huge value would not even fit the integer type the backend stores it in).
    if let Some(t) = tensors.get("quantize.index_offset")
        && let super::state::Values::I64(values) = &t.values
        && let Some(bad) = values.iter().find(|&&v| v != 0)
    {
        return Err(SftokError::Weights {
            path: source.to_path_buf(),
            message: format!(
                "quantize.index_offset is {bad}; this model has one codebook group, whose offset is 0"
            ),
        });
    }
    load_state_dict(Sftok::new(config, device), tensors, device, source)
}

/// Builds the teacher from `encoder.*`, `decoder.*`, `quantize.embedding.weight`.
pub fn build_teacher(
    config: &SftokConfig,
    tensors: StateDict,
    device: &Device,
    source: &Path,
) -> Result<Vqgan> {
    let tensors = strip_prefix(tensors, "module.");
    load_state_dict(Vqgan::new(&config.vqgan, device), tensors, device, source)
}

fn strip_prefix(tensors: StateDict, prefix: &str) -> StateDict {
    if tensors.keys().all(|k| k.starts_with(prefix)) {
        tensors
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect()
    } else {
        tensors
    }
}

fn normalize_official_keys(tensors: StateDict) -> StateDict {
    let mut tensors = strip_prefix(tensors, "module.");
    if let Some(t) = tensors.remove("decoder.embedding_positional_embedding") {
        tensors
            .entry("decoder.learnable_embedding_positional_embedding".into())
            .or_insert(t);
    }
    tensors
        .entry("quantize.index_offset".into())
        .or_insert_with(|| StoredTensor {
            shape: vec![1],
            values: super::state::Values::I64(vec![0]),
        });
    tensors
}

/// Copies the teacher's codebook and decoder into the `pixel_quantize.*` / `pixel_decoder.*`
/// keys where they are missing: official stage-1/2 checkpoints have no pixel parts, and training
/// starts them as copies of the teacher's.
pub fn fill_pixel_parts_from_teacher(tensors: &mut StateDict, teacher: &StateDict) {
    let has_pixel = tensors
        .keys()
        .any(|k| k.starts_with("pixel_decoder.") || k.starts_with("pixel_quantize."));
    if has_pixel {
        return;
    }
    for (k, v) in teacher {
        if let Some(rest) = k.strip_prefix("decoder.") {
            tensors.insert(format!("pixel_decoder.{rest}"), v.clone());
        } else if let Some(rest) = k.strip_prefix("quantize.") {
            tensors.insert(format!("pixel_quantize.{rest}"), v.clone());
        }
    }
}

/// Writes a model directory. Each file is written atomically; the config goes first so that a
/// directory with weights always has the config that builds them.
pub fn save_model_dir(
    dir: &Path,
    config: &SftokConfig,
    model: &Sftok,
    teacher: Option<&Vqgan>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SftokError::write(dir, e))?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())?;
    if let Some(teacher) = teacher {
        write_safetensors(&dir.join(TEACHER_FILE), &state_dict(teacher))?;
    }
    write_safetensors(&dir.join(MODEL_FILE), &state_dict(model))
}

/// A file an import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportInput {
    /// The official weights (`pytorch_model.bin` or `.safetensors`).
    Weights,
    /// The official configuration (`config.json`).
    Config,
    /// The teacher's weights.
    Teacher,
}

impl std::fmt::Display for ImportInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImportInput::Weights => "weights file",
            ImportInput::Config => "configuration file",
            ImportInput::Teacher => "teacher weights file",
        })
    }
}

/// What is wrong with a file given to an import. The messages name the file, not a command-line
/// flag: the command line adds its flag ([`ImportInput`] says which).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the {input} {} does not exist", path.display())]
    Missing { input: ImportInput, path: PathBuf },
    #[error("the {input} {} is a folder; give the file itself", path.display())]
    IsAFolder { input: ImportInput, path: PathBuf },
    #[error(
        "{} holds no pytorch_model.bin or model.safetensors; give the checkpoint file (the official one is ema_model/pytorch_model.bin)",
        path.display()
    )]
    NoCheckpointInFolder { path: PathBuf },
}

impl ImportError {
    /// The input the error is about.
    pub fn input(&self) -> ImportInput {
        match self {
            ImportError::Missing { input, .. } | ImportError::IsAFolder { input, .. } => *input,
            ImportError::NoCheckpointInFolder { .. } => ImportInput::Weights,
        }
    }
}

/// `path` is a file, or the error that says what it is instead.
pub fn check_import_file(input: ImportInput, path: &Path) -> std::result::Result<(), ImportError> {
    let path_buf = path.to_path_buf();
    if path.is_file() {
        Ok(())
    } else if path.is_dir() {
        Err(ImportError::IsAFolder {
            input,
            path: path_buf,
        })
    } else {
        Err(ImportError::Missing {
            input,
            path: path_buf,
        })
    }
}

/// `sftok import`: official weights (`pytorch_model.bin` or `.safetensors`), an optional official
/// `config.json` (else `fallback_config`), and an optional teacher file, into a model directory.
pub fn import_official(
    weights: &Path,
    config_file: Option<&Path>,
    fallback_config: &SftokConfig,
    teacher_file: Option<&Path>,
    out: &Path,
    device: &Device,
) -> Result<LoadedModel> {
    // Every input is checked before any is read (the weights can be hundreds of MB).
    for (input, path) in [
        (ImportInput::Weights, Some(weights)),
        (ImportInput::Config, config_file),
        (ImportInput::Teacher, teacher_file),
    ] {
        if let Some(path) = path {
            check_import_file(input, path)?;
        }
    }
    let config = match config_file {
        Some(path) => SftokConfig::from_file(path)?,
        None => fallback_config.clone(),
    };
    let mut tensors = read_weights(weights)?;
    let stripped =
        |k: &str| tensors.contains_key(k) || tensors.contains_key(&format!("module.{k}"));
    if stripped("quantize.embedding.weight") && !stripped("latent_tokens") {
        return Err(SftokError::Other(format!(
            "{} looks like a MaskGIT-VQGAN teacher (it has quantize.embedding.weight and no \
             latent_tokens): pass it as --teacher, and the SFTok weights as --weights",
            weights.display()
        )));
    }
    let teacher = match teacher_file {
        Some(path) => {
            let teacher_tensors = strip_prefix(read_weights(path)?, "module.");
            fill_pixel_parts_from_teacher(&mut tensors, &teacher_tensors);
            Some(build_teacher(&config, teacher_tensors, device, path)?)
        }
        None => None,
    };
    let model = build_sftok(&config, tensors, device, weights)?;
    save_model_dir(out, &config, &model, teacher.as_ref())?;
    // The directory is replaced as a whole: a teacher left from an earlier import into the same
    // folder would otherwise be loaded with these weights.
    if teacher.is_none() {
        let stale = out.join(TEACHER_FILE);
        if stale.is_file() {
            std::fs::remove_file(&stale).map_err(|e| SftokError::write(&stale, e))?;
        }
    }
    Ok(LoadedModel {
        dir: out.to_path_buf(),
        config,
        model,
        teacher,
    })
}
