//! `sftok reconstruct`: one image, T steps, a PNG strip and per-step PSNR.

use std::path::PathBuf;

use anyhow::Context;
use sftok_core::checkpoint::load_model_dir;
use sftok_core::image_io::{
    center_crop_resize, hstack, images_to_tensor, load_rgb, psnr, save_png, tensor_to_images,
};
use sftok_core::reconstruct::{ReconstructOptions, reconstruct};
use sftok_core::{AssignmentMode, DeviceChoice};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to reconstruct (JPEG, PNG, WebP or BMP).
    pub image: PathBuf,
    /// Model directory (config.json + model.safetensors [+ teacher.safetensors]); default: the bundled model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Number of decoding steps (1 to 32).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub steps: u16,
    /// Output PNG; default: `<image stem>_recon.png` in the current folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto (a real GPU if there is one, else the CPU), cpu or wgpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Gumbel temperature of the sampling (0: deterministic argmax, the default).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Seed of the sampling noise (used when --temperature > 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the token ids as JSON: the latent tokens' OptVQ ids, then per step the proxy
    /// ids fed in, sampled and committed, the final ids and the teacher's own codes.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// OptVQ assignment: sinkhorn-per-image (default), sinkhorn-batch (official) or nearest.
    #[arg(long, default_value = "sinkhorn-per-image")]
    pub assignment: AssignmentMode,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.temperature.is_finite() || !(0.0..=100.0).contains(&args.temperature) {
        anyhow::bail!(
            "--temperature {}: give a number from 0 (deterministic, the default) to 100; about 1 \
             samples in proportion to the model's probabilities",
            args.temperature
        );
    }
    if let Some(out) = &args.out {
        super::check_writable_file("--out", out)?;
    }
    if let Some(tokens) = &args.tokens {
        super::check_writable_file("--tokens", tokens)?;
    }
    // The image first: a wrong path is said before a (possibly large) model is read.
    let image = load_rgb(&args.image)?;
    let chosen = super::device(args.device)?;
    let model_dir = args.model.clone().unwrap_or_else(super::default_model_dir);
    let loaded = load_model_dir(&model_dir, &chosen.device)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    eprintln!(
        "model {} ({}, {} px, {} latent tokens, {} proxy codes) on {}",
        model_dir.display(),
        loaded.config.name,
        loaded.config.image_size,
        loaded.config.num_latent_tokens,
        loaded.config.num_proxy_codes(),
        chosen.description
    );
    let (input, _) = center_crop_resize(&image, loaded.config.image_size as u32);
    let pixels = images_to_tensor(std::slice::from_ref(&input), &chosen.device);
    let opts = ReconstructOptions {
        steps: args.steps as usize,
        temperature: args.temperature,
        seed: args.seed,
        assignment: args.assignment,
        step_images: true,
        keep_logits: false,
    };
    let trace = reconstruct(&loaded.model, loaded.teacher.as_ref(), pixels, &opts);

    let mut strip = vec![input.clone()];
    println!("step  revealed  psnr_db");
    for (i, step) in trace.steps.iter().enumerate() {
        let image =
            tensor_to_images(step.image.clone().expect("step images were asked for")).remove(0);
        let revealed = step.kept[0].iter().filter(|&&k| k).count()
            - step.input_ids[0]
                .iter()
                .filter(|&&id| id != loaded.model.mask_token_id as i64)
                .count();
        println!(
            "{:>4}  {:>8}  {:>7.2}",
            i + 1,
            revealed,
            psnr(&input, &image)
        );
        strip.push(image);
    }
    if let Some(teacher) = &trace.teacher_reconstruction {
        let image = tensor_to_images(teacher.clone()).remove(0);
        println!("teacher           {:>7.2}", psnr(&input, &image));
        strip.push(image);
    }
    let out = args.out.unwrap_or_else(|| {
        let stem = args
            .image
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("{stem}_recon.png"))
    });
    // The strip: original | step 1 .. step T | teacher, 2 px white gaps between them.
    save_png(&hstack(&strip, 2), &out)?;
    eprintln!("wrote {}", out.display());
    if let Some(path) = &args.tokens {
        let steps: Vec<serde_json::Value> = trace
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "step": i + 1,
                    "input_ids": s.input_ids[0],
                    "sampled_ids": s.sampled_ids[0],
                    "committed_ids": s.output_ids[0],
                    "kept": s.kept[0],
                })
            })
            .collect();
        let json = serde_json::json!({
            "image": args.image.to_string_lossy(),
            "model": model_dir.to_string_lossy(),
            "mask_token_id": loaded.model.mask_token_id,
            "latent_ids": trace.latent_ids[0],
            "steps": steps,
            "final_ids": trace.final_ids[0],
            "teacher_ids": trace.teacher_ids.as_ref().map(|t| t[0].clone()),
        });
        sftok_core::checkpoint::files::write_atomic(
            path,
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
