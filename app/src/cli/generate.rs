//! `sftok generate`: class to image with the MaskGIT generator and the tokenizer's decoder; a
//! grid PNG (one row per class) and, on request, the trace of both.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sftok_core::DeviceChoice;
use sftok_core::checkpoint::files::write_atomic;
use sftok_core::checkpoint::load_model_dir;
use sftok_core::generator::{
    GenerateOptions, GuidanceDecay, SeededNoise, check_pairing, generate_images, load_generator_dir,
};
use sftok_core::image_io::{
    center_crop_resize, grid, hstack, load_rgb, psnr, save_png, tensor_to_images,
};
use sftok_core::reconstruct::ReconstructOptions;

use crate::words::count_noun;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Generator directory (config.json with "model_type": "maskgit" + model.safetensors);
    /// default: the bundled one, assets/models/generator.
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// Tokenizer model directory that decodes the tokens; default: the bundled model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Class to generate, by number or name; repeat for several; `none` for unconditional.
    /// Default: the generator's first 8 classes.
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// Images per class (one row of the grid each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub count: u16,
    /// Generator steps (default: the generator's own, 8 for the official one).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub steps: Option<u16>,
    /// Tokenizer decoding steps.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub decoder_steps: u16,
    /// Classifier-free guidance scale (0: none); default: the generator's own.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// How guidance changes over the steps: constant, linear or power-cosine.
    #[arg(long)]
    pub guidance_decay: Option<String>,
    /// Gumbel temperature of the first step, falling to 0 at the last (0: deterministic);
    /// default: the generator's own.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Seed of the sampling noise: the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output grid PNG.
    #[arg(long, default_value = "generated.png")]
    pub out: PathBuf,
    /// Also write the trace as JSON here (the tokens committed at each generator step with their
    /// probabilities, then the decoder's steps), and the decoder's step images beside it as PNG.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Training images to compare with: each sample is shown beside its nearest one (by PSNR
    /// on the tokenizer's centre crop), so a reader sees how much the generator copies.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// FID Inception weights (pt_inception-2015-12-05-6726825d.pth): with --reference, the FID
    /// of the generated images against the reference images.
    #[arg(long, requires = "reference")]
    pub inception: Option<PathBuf>,
    /// auto (a real GPU if there is one, else the CPU), cpu or wgpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

/// The bundled demo generator.
pub fn default_generator_dir() -> PathBuf {
    crate::assets::generator_dir(&super::assets_dir())
}

fn check_number(flag: &str, value: Option<f64>, max: f64) -> anyhow::Result<()> {
    if let Some(v) = value
        && (!v.is_finite() || !(0.0..=max).contains(&v))
    {
        anyhow::bail!("{flag} {v}: give a number from 0 to {max}");
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    check_number("--guidance", args.guidance, 100.0)?;
    check_number("--temperature", args.temperature, 100.0)?;
    let decay = args
        .guidance_decay
        .as_deref()
        .map(GuidanceDecay::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--guidance-decay: {e}"))?;
    super::check_writable_file("--out", &args.out)?;
    if let Some(trace) = &args.trace {
        super::check_writable_file("--trace", trace)?;
        if trace
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        {
            anyhow::bail!(
                "--trace {} names the JSON file (e.g. trace.json); the decoder's step images are                  written beside it as a PNG of the same name",
                trace.display()
            );
        }
    }
    let chosen = super::device(args.device)?;
    let generator_dir = args.generator.clone().unwrap_or_else(default_generator_dir);
    let generator = load_generator_dir(&generator_dir, &chosen.device)
        .with_context(|| format!("loading the generator in {}", generator_dir.display()))?;
    let tokenizer_dir = args
        .tokenizer
        .clone()
        .unwrap_or_else(super::default_model_dir);
    let tokenizer = load_model_dir(&tokenizer_dir, &chosen.device)
        .with_context(|| format!("loading the tokenizer in {}", tokenizer_dir.display()))?;
    check_pairing(&generator.config, &tokenizer.config)?;
    let gcfg = &generator.config;

    let classes: Vec<Option<usize>> = if args.classes.is_empty() {
        (0..gcfg.condition_num_classes.min(8)).map(Some).collect()
    } else {
        args.classes
            .iter()
            .map(|c| {
                if c.trim().eq_ignore_ascii_case("none") {
                    Ok(None)
                } else {
                    gcfg.class_from_text(c).map(Some)
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--class: {e}"))?
    };
    let count = args.count as usize;
    let batch: Vec<Option<usize>> = classes
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, count))
        .collect();
    let mut opts = GenerateOptions::from(&gcfg.sampling);
    if let Some(s) = args.steps {
        opts.steps = s as usize;
    }
    if let Some(g) = args.guidance {
        opts.guidance_scale = g;
    }
    if let Some(d) = decay {
        opts.guidance_decay = d;
    }
    if let Some(t) = args.temperature {
        opts.randomize_temperature = t;
    }
    let decode = ReconstructOptions {
        steps: args.decoder_steps as usize,
        step_images: args.trace.is_some(),
        ..ReconstructOptions::default()
    };
    eprintln!(
        "generator {} ({} layers, {} classes) and tokenizer {} on {}: {}, {} generator \
         steps, guidance {} ({}), temperature {}, seed {}",
        generator.dir.display(),
        gcfg.num_hidden_layers,
        gcfg.condition_num_classes,
        tokenizer.dir.display(),
        chosen.description,
        count_noun(batch.len(), "image"),
        opts.steps,
        opts.guidance_scale,
        opts.guidance_decay.name(),
        opts.randomize_temperature,
        args.seed
    );
    let started = std::time::Instant::now();
    let out = generate_images(
        &tokenizer.model,
        &generator.model,
        &batch,
        &opts,
        &decode,
        &mut SeededNoise::new(args.seed),
    );
    let images = tensor_to_images(out.decoding.pixels.clone());
    let reference = match &args.reference {
        Some(dir) => Some(reference_images(dir, tokenizer.config.image_size as u32)?),
        None => None,
    };
    match &reference {
        None => save_png(&grid(&images, count, 2), &args.out)?,
        Some(reference) => {
            // Each sample beside its nearest reference image.
            let mut cells = Vec::new();
            let mut total = 0.0;
            for (i, image) in images.iter().enumerate() {
                let (name, nearest, db) = reference
                    .iter()
                    .map(|(name, r)| (name, r, psnr(image, r)))
                    .max_by(|a, b| a.2.total_cmp(&b.2))
                    .expect("at least one reference image");
                println!(
                    "sample {} ({}): nearest reference {name}, {db:.2} dB",
                    i + 1,
                    batch[i].map_or("unconditional".into(), |c| gcfg.class_label(c))
                );
                total += db;
                cells.push(image.clone());
                cells.push(nearest.clone());
            }
            println!(
                "mean PSNR of a sample to its nearest reference image: {:.2} dB (a copy would \
                 score as high as the tokenizer's reconstructions do)",
                total / images.len() as f64
            );
            save_png(&grid(&cells, 2 * count, 2), &args.out)?;
        }
    }
    if let (Some(weights), Some(reference)) = (&args.inception, &reference) {
        let (fid, _) = super::fid::load(Some(weights), &chosen.device)?;
        let fid = fid.expect("weights were given");
        let reference: Vec<_> = reference.iter().map(|(_, r)| r.clone()).collect();
        let distance = sftok_core::eval::FidFeatures::distance(&fid, &reference, &images)?;
        println!(
            "FID of the {} generated images against the {} reference images: {distance:.2} \
             (few images: compare such numbers only at equal counts)",
            images.len(),
            reference.len()
        );
    }
    eprintln!(
        "wrote {} ({}: {}) in {:.1} s",
        args.out.display(),
        count_noun(classes.len(), "row"),
        classes
            .iter()
            .map(|c| c.map_or("unconditional".into(), |c| gcfg.class_label(c)))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.trace {
        write_trace(path, &out, &batch, gcfg)?;
    }
    Ok(())
}

/// The reference folder's images, centre-cropped to `size`, with their file names.
fn reference_images(dir: &Path, size: u32) -> anyhow::Result<Vec<(String, image::RgbImage)>> {
    let folder = sftok_core::data::ImageFolder::scan(dir)
        .map_err(|e| anyhow::anyhow!("--reference: {e}"))?;
    let mut out = Vec::new();
    for path in folder.paths() {
        match load_rgb(path) {
            Ok(image) => out.push((
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                center_crop_resize(&image, size).0,
            )),
            Err(e) => eprintln!("skipped {}: {e}", path.display()),
        }
    }
    if out.is_empty() {
        anyhow::bail!("--reference {}: no readable images", dir.display());
    }
    Ok(out)
}

fn write_trace(
    path: &Path,
    out: &sftok_core::generator::GeneratedImages,
    batch: &[Option<usize>],
    gcfg: &sftok_core::generator::GeneratorConfig,
) -> anyhow::Result<()> {
    let samples: Vec<serde_json::Value> = (0..batch.len())
        .map(|i| {
            let steps: Vec<serde_json::Value> = out
                .generation
                .steps
                .iter()
                .enumerate()
                .map(|(s, step)| {
                    serde_json::json!({
                        "step": s + 1,
                        "input_ids": step.input_ids[i],
                        "sampled_ids": step.sampled_ids[i],
                        "probabilities": step.probabilities[i],
                        "committed_ids": step.output_ids[i],
                        "guidance": step.cfg_scale,
                        "temperature": step.annealed_temp,
                    })
                })
                .collect();
            let decoder: Vec<serde_json::Value> = out
                .decoding
                .steps
                .iter()
                .enumerate()
                .map(|(s, step)| serde_json::json!({"step": s + 1, "committed_ids": step.output_ids[i]}))
                .collect();
            serde_json::json!({
                "class": batch[i],
                "class_name": batch[i].map(|c| gcfg.class_label(c)),
                "generator_steps": steps,
                "latent_ids": out.generation.ids[i],
                "decoder_steps": decoder,
            })
        })
        .collect();
    let json = serde_json::json!({
        "mask_token_id": gcfg.mask_token_id(),
        "samples": samples,
    });
    write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    // One row per sample: the decoder's step images, left to right.
    let per_step: Vec<Vec<_>> = out
        .decoding
        .steps
        .iter()
        .filter_map(|s| s.image.clone().map(tensor_to_images))
        .collect();
    let rows: Vec<_> = (0..batch.len())
        .map(|i| {
            hstack(
                &per_step.iter().map(|s| s[i].clone()).collect::<Vec<_>>(),
                2,
            )
        })
        .collect();
    let png = path.with_extension("png");
    save_png(&grid(&rows, 1, 2), &png)?;
    eprintln!("wrote {} and {}", path.display(), png.display());
    Ok(())
}
