//! `sftok eval`: PSNR, SSIM, proxy-code accuracy, codebook use (and rFID when the Inception
//! weights are given) per model and step count; a Markdown table, a JSON file and a plot.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sftok_core::checkpoint::load_model_dir;
use sftok_core::eval::{EvalOptions, evaluate};
use sftok_core::image_io::save_png;
use sftok_core::{AssignmentMode, DeviceChoice};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory to evaluate; repeat for several (default: the bundled SFVR and vanilla models).
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Folder of evaluation images (searched recursively).
    #[arg(long)]
    pub data: PathBuf,
    /// Step counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub steps: Vec<usize>,
    /// Resolution of the metrics in pixels (default: each model's image size).
    #[arg(long)]
    pub size: Option<u32>,
    /// JSON output: `results[<model dir as given>][<steps>]`.
    #[arg(long, default_value = "eval.json")]
    pub json: PathBuf,
    /// PNG plot of PSNR and SSIM against steps (default: the JSON path with .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the Markdown table to this file (it is always printed).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for rFID.
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// OptVQ assignment: sinkhorn-per-image (default), sinkhorn-batch (official) or nearest.
    #[arg(long, default_value = "sinkhorn-per-image")]
    pub assignment: AssignmentMode,
    /// auto, cpu or wgpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.steps.is_empty() || args.steps.iter().any(|&s| s == 0 || s > 64) {
        anyhow::bail!("--steps takes step counts from 1 to 64, e.g. --steps 1,2,4,8");
    }
    if let Some(size) = args.size
        && !(16..=2048).contains(&size)
    {
        anyhow::bail!(
            "--size {size}: the metrics need images of 16 to 2048 pixels (SSIM's 11-pixel window \
             needs room; at 0 or 4 pixels every image is trivially 'perfect')"
        );
    }
    // The outputs are checked before the (long) evaluation, not after it.
    let plot_path = args
        .plot
        .clone()
        .unwrap_or_else(|| args.json.with_extension("png"));
    for (flag, path) in [
        ("--json", Some(&args.json)),
        ("--plot", Some(&plot_path)),
        ("--markdown", args.markdown.as_ref()),
    ] {
        if let Some(path) = path {
            super::check_writable_file(flag, path)?;
        }
    }
    let chosen = super::device(args.device)?;
    let models = if args.models.is_empty() {
        super::bundled_pair()
    } else {
        args.models.clone()
    };
    let mut loaded = Vec::new();
    for dir in &models {
        let model = load_model_dir(dir, &chosen.device)
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        loaded.push((dir.display().to_string(), model));
    }
    let (fid, rfid_status) = super::fid::load(args.inception.as_deref(), &chosen.device)?;
    eprintln!(
        "evaluating {} model(s) on {} at steps {:?}; rFID: {rfid_status}",
        loaded.len(),
        chosen.description,
        args.steps
    );
    let opts = EvalOptions {
        steps: args.steps.clone(),
        size: args.size,
        batch_size: args.batch_size,
        assignment: args.assignment,
        limit: args.limit,
    };
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]")
            .expect("valid template"),
    );
    let report = evaluate(
        &loaded,
        &args.data,
        &opts,
        fid.as_ref()
            .map(|f| f as &dyn sftok_core::eval::FidFeatures),
        &rfid_status,
        &chosen.device,
        &mut |done, total, msg| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(msg.to_string());
        },
    )?;
    bar.finish_and_clear();
    for (path, why) in &report.skipped {
        eprintln!("skipped {path}: {why}");
    }
    let table = report.markdown();
    println!("{table}");
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    sftok_core::checkpoint::files::write_atomic(&args.json, json.as_bytes())?;
    let plot = plot_path;
    save_png(&report.plot()?, &plot)?;
    if let Some(md) = &args.markdown {
        sftok_core::checkpoint::files::write_atomic(md, table.as_bytes())?;
    }
    eprintln!("wrote {} and {}", args.json.display(), plot.display());
    Ok(())
}
