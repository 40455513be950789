//! Benchmark: T-step reconstruction (encode with the official batch Sinkhorn, 8 decoder steps,
//! the pixel decoder once on the last logits — what the official `decode_tokens(encode(x))` does)
//! with random weights, printing one JSON line with the median time and the peak memory.
//!
//! ```sh
//! cargo run --release --example bench_reconstruct -- --preset sftok-b --batch 1 --iters 3
//! ```
//! See BENCHMARKS.md for the side-by-side figures with the official PyTorch code.

mod common;

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use sftok_core::config::{AssignmentMode, SftokConfig};
use sftok_core::model::Sftok;
use sftok_core::reconstruct::{ReconstructOptions, generate};
use sftok_core::{DeviceChoice, choose_device};

use common::{arg, median, peak_rss_mib};

fn main() {
    // As the `sftok` binary does (why: the doc of `keep_freed_memory`).
    sftok_core::device::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let preset: String = arg(&args, "--preset", "sftok-b".to_string());
    let batch: usize = arg(&args, "--batch", 1);
    let iters: usize = arg(&args, "--iters", 3);
    let steps: usize = arg(&args, "--steps", 8);
    let device_choice: DeviceChoice = arg(&args, "--device", DeviceChoice::Cpu);
    let config = SftokConfig::preset(&preset).expect("known preset");
    let chosen = choose_device(device_choice).expect("device");
    let device = chosen.device.clone();
    eprintln!(
        "{preset}, batch {batch}, {steps} steps, on {}",
        chosen.description
    );

    let model = Sftok::new(&config, &device);
    let s = config.image_size;
    let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Uniform(0.0, 1.0), &device);
    let opts = ReconstructOptions {
        steps,
        step_images: false,
        ..Default::default()
    };
    let run = || {
        let t = Instant::now();
        // On rayon's pool, as `reconstruct` runs (why: the doc of `on_compute_pool`).
        let pixels = sftok_core::device::on_compute_pool(&device, || {
            let q = model.encode(x.clone(), AssignmentMode::SinkhornBatch);
            let zq = model.quantize.codebook_entries(q.indices);
            let trace = generate(&model, zq, &opts);
            // Reading the pixels back waits for every queued kernel.
            trace.pixels.into_data()
        });
        assert_eq!(pixels.num_elements(), batch * 3 * s * s);
        t.elapsed().as_secs_f64() * 1000.0
    };
    if args.iter().any(|a| a == "--breakdown") {
        sftok_core::device::on_compute_pool(&device, || breakdown(&model, &x, &config));
    }
    let warm = run();
    eprintln!("warm-up: {warm:.0} ms");
    let mut times: Vec<f64> = (0..iters)
        .map(|i| {
            let ms = run();
            eprintln!("iteration {i}: {ms:.0} ms");
            ms
        })
        .collect();
    let median = median(&mut times);
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-burn",
            "device": chosen.description,
            "model": preset,
            "batch": batch,
            "steps": steps,
            "iters": iters,
            "ms_per_batch_median": median,
            "ms_per_image_median": median / batch as f64,
            "ms_per_batch_min": times[0],
            "warmup_ms": warm,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
}

/// Times the parts once each (after a warm-up of each), to see where the time goes.
fn breakdown(model: &Sftok, x: &Tensor<4>, config: &SftokConfig) {
    let time = |what: &str, f: &dyn Fn() -> usize| {
        f();
        let t = Instant::now();
        let n = f();
        eprintln!("{what}: {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
        n
    };
    let b = x.dims()[0];
    let n = config.num_proxy_codes();
    let z = model.encode_continuous(x.clone());
    time("encoder", &|| {
        model
            .encode_continuous(x.clone())
            .into_data()
            .num_elements()
    });
    time("quantizer (batch Sinkhorn)", &|| {
        model
            .quantize
            .forward(z.clone(), AssignmentMode::SinkhornBatch)
            .indices
            .into_data()
            .num_elements()
    });
    let zq = model.quantize.codebook_entries(
        model
            .quantize
            .forward(z.clone(), AssignmentMode::SinkhornBatch)
            .indices,
    );
    let ids = model.all_masked_ids(b, n, &x.device());
    time("decoder forward (one step)", &|| {
        model
            .decode_logits(ids.clone(), zq.clone())
            .into_data()
            .num_elements()
    });
    let logits = model.decode_logits(ids.clone(), zq.clone());
    time("pixel head + pixel decoder", &|| {
        model
            .pixels_from_logits(logits.clone())
            .into_data()
            .num_elements()
    });
}
