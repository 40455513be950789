//! Subcommands, one file each.

mod eval;
mod fid;
mod import;
mod reconstruct;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sftok_core::{ChosenDevice, DeviceChoice};

#[derive(Debug, Parser)]
#[command(
    name = "sftok",
    version,
    about = "SFTok Studio: a discrete image tokenizer you can watch work"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconstruct an image step by step and write a PNG strip (original | step 1 .. step N | teacher).
    Reconstruct(reconstruct::Args),
    /// Convert official SFTok weights (pytorch_model.bin or .safetensors) into a model directory.
    Import(import::Args),
    /// Evaluate models at several step counts: PSNR, SSIM, proxy-code accuracy, codebook use, rFID.
    Eval(eval::Args),
    /// Train a stage: teacher, stage1 (warm-up), stage2 (SFVR or --vanilla), stage3 (decoder fine-tuning).
    Train(train::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Reconstruct(args) => reconstruct::run(args),
        Command::Import(args) => import::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
    }
}

/// The folder of bundled assets: `$SFTOK_ASSETS`, else `assets/` of the source tree.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("SFTOK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")))
}

/// The model used when none is named: the bundled SFVR demo model, or the small random-weight
/// model when the demo models are not there.
pub fn default_model_dir() -> PathBuf {
    let models = assets_dir().join("models");
    let sfvr = models.join("sfvr");
    if sfvr.join("config.json").is_file() {
        sfvr
    } else {
        models.join("default")
    }
}

/// The models compared when none are named: the bundled SFVR and vanilla demo models.
pub fn bundled_pair() -> Vec<PathBuf> {
    let models = assets_dir().join("models");
    let pair = [models.join("sfvr"), models.join("vanilla")];
    if pair.iter().all(|d| d.join("config.json").is_file()) {
        pair.to_vec()
    } else {
        vec![default_model_dir()]
    }
}

pub fn device(choice: DeviceChoice) -> anyhow::Result<ChosenDevice> {
    Ok(sftok_core::choose_device(choice)?)
}
