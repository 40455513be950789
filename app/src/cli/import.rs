//! `sftok import`: official weights into a model directory.

use std::path::PathBuf;

use sftok_core::checkpoint::import_official;
use sftok_core::{DeviceChoice, SftokConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The official weights: `pytorch_model.bin` (read without running any pickle code) or `.safetensors`.
    #[arg(long)]
    pub weights: PathBuf,
    /// The official `config.json` (nested `model.vq_model` / `model.decoder`); without it, --preset is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Preset used when no --config is given: sftok-b or sftok-l.
    #[arg(long, default_value = "sftok-b")]
    pub preset: String,
    /// The teacher, `maskgit-vqgan-imagenet-f16-256.bin` (or .safetensors).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The model directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        anyhow::bail!(
            "--out {} is a file; --out names the model directory to create (config.json and \
             model.safetensors go inside it)",
            args.out.display()
        );
    }
    let preset = SftokConfig::preset(&args.preset)?;
    let device = super::device(DeviceChoice::Cpu)?;
    let loaded = import_official(
        &args.weights,
        args.config.as_deref(),
        &preset,
        args.teacher.as_deref(),
        &args.out,
        &device.device,
    )
    .map_err(|e| super::import_error(e, &args.weights))?;
    eprintln!(
        "wrote {} ({} model, {} px{})",
        args.out.display(),
        loaded.config.name,
        loaded.config.image_size,
        if loaded.teacher.is_some() {
            ", with its teacher"
        } else {
            ", no teacher: pass --teacher to include it"
        }
    );
    Ok(())
}
