//! `sftok import-generator`: the official MaskGIT generator checkpoint into a generator directory.

use std::path::PathBuf;

use sftok_core::DeviceChoice;
use sftok_core::generator::import_official_generator;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The official weights: `ema_model/pytorch_model.bin` (read without running any pickle code),
    /// a `.safetensors` file, or the checkpoint folder holding either.
    #[arg(long)]
    pub weights: PathBuf,
    /// The official `configs/sftok_maskgit.yaml` converted to JSON, or a generator config.json;
    /// without it, the full-size preset (24 layers of 768 over SFTok-B's 64 tokens of 8192).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The generator directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        anyhow::bail!(
            "--out {} is a file; --out names the generator directory to create (config.json and \
             model.safetensors go inside it)",
            args.out.display()
        );
    }
    let device = super::device(DeviceChoice::Cpu)?;
    let loaded = import_official_generator(
        &args.weights,
        args.config.as_deref(),
        &args.out,
        &device.device,
    )
    .map_err(|e| super::import_error(e, &args.weights))?;
    let c = &loaded.config;
    eprintln!(
        "wrote {} (generator: {} layers of {}, {} classes, {} tokens of {} codes)",
        args.out.display(),
        c.num_hidden_layers,
        c.hidden_size,
        c.condition_num_classes,
        c.image_seq_len,
        c.codebook_size
    );
    Ok(())
}
