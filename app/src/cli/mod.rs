//! Subcommands, one file each.

mod curves;
mod eval;
mod fid;
pub mod generate;
mod import;
mod import_generator;
mod paired;
mod reconstruct;
pub mod train;

use clap::{Parser, Subcommand};
use sftok_core::{ChosenDevice, DeviceChoice};

#[derive(Debug, Parser)]
#[command(
    name = "sftok",
    version,
    about = "SFTok Studio: a discrete image tokenizer you can watch work",
    long_about = "SFTok Studio: a discrete image tokenizer you can watch work.\n\nWithout a subcommand, opens the desktop app."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconstruct an image step by step and write a PNG strip (original | step 1 .. step N | teacher).
    Reconstruct(reconstruct::Args),
    /// Convert official SFTok weights (pytorch_model.bin or .safetensors) into a model directory.
    Import(import::Args),
    /// Convert the official MaskGIT generator checkpoint (ema_model/pytorch_model.bin) into a generator directory.
    ImportGenerator(import_generator::Args),
    /// Generate images of a class: the MaskGIT generator's tokens, decoded step by step by the tokenizer.
    Generate(generate::Args),
    /// Open the desktop app (the same as no subcommand), optionally on a given view.
    App(AppArgs),
    /// Evaluate models at several step counts: PSNR, SSIM, proxy-code accuracy, codebook use, rFID.
    Eval(eval::Args),
    /// Train a stage: teacher, stage1 (warm-up), stage2 (SFVR or --vanilla), stage3 (decoder fine-tuning).
    Train(train::Args),
    /// Plot learning curves (held-out PSNR, perplexity, proxy accuracy, loss) of runs as a PNG.
    Curves(curves::Args),
    /// Compare recipes (groups of models, e.g. seeds) from an eval report, image by image, with 95% intervals.
    Paired(paired::Args),
}

#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The view to open: reconstruct, compare, generate or train (default: the last one used).
    #[arg(long)]
    pub view: Option<crate::gui::settings::View>,
    /// The window's size in points, WIDTHxHEIGHT (default 1280x820; at least 720x480).
    #[arg(long)]
    pub window: Option<WindowSize>,
}

/// `WIDTHxHEIGHT`, e.g. `1000x700`.
#[derive(Debug, Clone, Copy)]
pub struct WindowSize(pub [f32; 2]);

impl std::str::FromStr for WindowSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s}: write the size as WIDTHxHEIGHT, e.g. 1000x700");
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let (w, h): (f32, f32) = (
            w.trim().parse().map_err(|_| bad())?,
            h.trim().parse().map_err(|_| bad())?,
        );
        if !(720.0..=8192.0).contains(&w) || !(480.0..=8192.0).contains(&h) {
            return Err(format!("{s}: the window needs 720x480 to 8192x8192"));
        }
        Ok(WindowSize([w, h]))
    }
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Reconstruct(args) => reconstruct::run(args),
        Command::Import(args) => import::run(args),
        Command::ImportGenerator(args) => import_generator::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Curves(args) => curves::run(args),
        Command::Paired(args) => paired::run(args),
        Command::App(args) => crate::gui::run_with(args.view, args.window.map(|w| w.0)),
    }
}

pub use crate::assets::{assets_dir, bundled_pair, default_model_dir};

/// A library error of an import, with the flag of the file it is about.
pub fn import_error(e: sftok_core::SftokError, importing: &std::path::Path) -> anyhow::Error {
    use sftok_core::checkpoint::model_dir::ImportInput;
    match e {
        sftok_core::SftokError::Import(e) => {
            let flag = match e.input() {
                ImportInput::Weights => "--weights",
                ImportInput::Config => "--config",
                ImportInput::Teacher => "--teacher",
            };
            anyhow::anyhow!("{e}: check {flag}")
        }
        other => anyhow::Error::from(other).context(format!("importing {}", importing.display())),
    }
}

pub fn device(choice: DeviceChoice) -> anyhow::Result<ChosenDevice> {
    Ok(sftok_core::choose_device(choice)?)
}

/// Refuses an output path that cannot be written (a folder, or inside a folder that does not
/// exist) before any long work starts, naming the flag.
pub fn check_writable_file(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!(
            "{flag} {} is a folder; give a file name, e.g. {}",
            path.display(),
            path.join("out").display()
        );
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if parent.exists() && !parent.is_dir() {
        anyhow::bail!(
            "{flag} {}: {} is a file, not a folder",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}
