//! Benchmark: how long the app's model worker takes to show a reconstruction, against the work
//! that reconstruction needs (one encode, T decoder steps and one pixel decode, timed in this
//! process on the same device), with random weights at an official size.
//!
//! The worker sends the trace with the last step's image first and decodes the earlier steps'
//! images and the teacher's reconstruction after it (`gui::model_worker`); this prints the time
//! to that first trace, the time until every image is there, and the reference, as one JSON line.
//!
//! ```sh
//! cargo run --release -p sftok-app --example bench_first_image -- --preset sftok-b --iters 3
//! ```
//! See BENCHMARKS.md for the figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::tensor::{Distribution, Tensor};
use image::RgbImage;
use sftok_app::gui::model_worker::{ModelCommand, ModelEvent, ModelWorker, Slot, TraceKey};
use sftok_core::checkpoint::save_model_dir;
use sftok_core::config::{AssignmentMode, SftokConfig};
use sftok_core::model::{Sftok, Vqgan};
use sftok_core::reconstruct::{ReconstructOptions, generate};
use sftok_core::{DeviceChoice, choose_device};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    sftok_core::device::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let preset: String = arg(&args, "--preset", "sftok-b".to_string());
    let iters: usize = arg(&args, "--iters", 3).max(1);
    let steps: usize = arg(&args, "--steps", 8).max(1);
    let dir: PathBuf = arg(
        &args,
        "--dir",
        std::env::temp_dir().join(format!("sftok-bench-{preset}")),
    );
    let config = SftokConfig::preset(&preset)?;
    let chosen = choose_device(DeviceChoice::Cpu)?;
    let device = chosen.device.clone();
    eprintln!("{preset}, {steps} steps, on {}", chosen.description);

    // A random model with a random teacher, as a model directory the worker loads.
    let model = Sftok::new(&config, &device);
    if !dir.join("model.safetensors").is_file() {
        let teacher = Vqgan::new(&config.vqgan, &device);
        save_model_dir(&dir, &config, &model, Some(&teacher))?;
    }
    let s = config.image_size;

    // The reference: encode, T decoder steps, one pixel decode (what `bench_reconstruct` times).
    let opts = ReconstructOptions {
        steps,
        step_images: false,
        ..Default::default()
    };
    let mut reference = Vec::new();
    for _ in 0..=iters {
        let x = Tensor::<4>::random([1, 3, s, s], Distribution::Uniform(0.0, 1.0), &device);
        let t = Instant::now();
        let pixels = sftok_core::device::on_compute_pool(&device, || {
            let q = model.encode(x, AssignmentMode::SinkhornPerImage);
            let zq = model.quantize.codebook_entries(q.indices);
            generate(&model, zq, &opts).pixels.into_data()
        });
        assert_eq!(pixels.num_elements(), 3 * s * s);
        reference.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    reference.remove(0); // warm-up
    drop(model);

    // The app's worker, as the window drives it.
    let worker = ModelWorker::spawn(DeviceChoice::Cpu, egui::Context::default());
    worker.send(ModelCommand::Load {
        slot: Slot::A,
        dir: dir.clone(),
    });
    wait_for(&worker, |e| match e {
        ModelEvent::Loaded { .. } => Some(Ok(())),
        ModelEvent::LoadFailed { message, .. } => Some(Err(message.clone())),
        _ => None,
    })
    .map_err(anyhow::Error::msg)?;
    let (mut first, mut whole) = (Vec::new(), Vec::new());
    for i in 0..=iters {
        let image = RgbImage::from_fn(s as u32, s as u32, |x, y| {
            image::Rgb([(x * 7 + i as u32) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        });
        let key = TraceKey {
            image_id: i as u64,
            steps,
            latent_override: None,
        };
        let t = Instant::now();
        worker.send(ModelCommand::Reconstruct {
            slot: Slot::A,
            key: key.clone(),
            image,
        });
        let mut remaining = None;
        let mut first_ms = f64::NAN;
        // The trace, then T - 1 step images and the teacher's.
        while remaining != Some(0) {
            for event in worker.poll() {
                match event {
                    ModelEvent::Trace { key: k, trace, .. } if k == key => {
                        first_ms = t.elapsed().as_secs_f64() * 1000.0;
                        let missing = trace.steps.iter().filter(|s| s.image.is_none()).count();
                        remaining = Some(missing + usize::from(trace.teacher_pending));
                    }
                    ModelEvent::StepImage { key: k, .. } | ModelEvent::Teacher { key: k, .. }
                        if k == key =>
                    {
                        remaining = remaining.map(|r: usize| r.saturating_sub(1));
                    }
                    ModelEvent::TraceFailed { message, .. } => anyhow::bail!(message),
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if i > 0 {
            first.push(first_ms);
            whole.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (reference, first, whole) = (median(reference), median(first), median(whole));
    println!(
        "{}",
        serde_json::json!({
            "bench": "first_image",
            "preset": preset,
            "steps": steps,
            "iters": iters,
            "reference_ms": reference,
            "app_first_image_ms": first,
            "app_all_images_ms": whole,
            "first_over_reference": first / reference,
        })
    );
    Ok(())
}

/// Polls the worker until `pick` returns something.
fn wait_for<T>(worker: &ModelWorker, pick: impl Fn(&ModelEvent) -> Option<T>) -> T {
    loop {
        for event in worker.poll() {
            if let Some(v) = pick(&event) {
                return v;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
