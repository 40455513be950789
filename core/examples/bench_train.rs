//! Benchmark: training throughput of each stage (forward, backward, grad-norm clipping, AdamW;
//! no data loading, no EMA) on random images, printing one JSON line per stage, to compare with
//! `bench/pytorch_train.py` running the official code at the same sizes.
//!
//! ```sh
//! cargo run --release --example bench_train -- --preset demo --batch 16 --steps 10 --stage stage1
//! ```
//!
//! `--device cpu|wgpu|auto` picks the backend (default cpu); each step ends with a device sync.
//! The steps run on a thread of rayon's pool as the trainer's do; `--caller-thread` runs them on
//! the main thread instead, to measure what that costs.

mod common;

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use rand::SeedableRng;
use sftok_core::config::SftokConfig;
use sftok_core::device::{DeviceChoice, choose_device};
use sftok_core::model::{Sftok, Vqgan};
use sftok_core::reconstruct::rows_i64;
use sftok_core::train::masking::MaskDraw;
use sftok_core::train::optim::{AdamW, AdamWConfig, clip_coefficient, grad_norm};
use sftok_core::train::pixel_step::stage3_forward;
use sftok_core::train::sfvr::Stage2Inputs;
use sftok_core::train::stages::pixel::freeze_for_stage3;
use sftok_core::train::teacher_step::teacher_forward;
use sftok_core::train::token_step::{TokenStage, token_step};

use common::{arg, median, peak_rss_mib};

fn main() {
    // As the `sftok` binary does (why: the doc of `keep_freed_memory`).
    sftok_core::device::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let preset: String = arg(&args, "--preset", "demo".to_string());
    let stage: String = arg(&args, "--stage", "stage1".to_string());
    let batch: usize = arg(&args, "--batch", 16);
    let steps: usize = arg(&args, "--steps", 10);
    let warmup: usize = arg(&args, "--warmup", 2);
    let device_choice: DeviceChoice = arg(&args, "--device", DeviceChoice::Cpu);
    let config = SftokConfig::preset(&preset).expect("known preset");
    let chosen = choose_device(device_choice).expect("device");
    eprintln!(
        "{preset}, {stage}, batch {batch}, on {}",
        chosen.description
    );
    let plain = chosen.device.clone();
    let ad = plain.clone().autodiff();
    let s = config.image_size;
    let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Uniform(0.0, 1.0), &ad);
    let teacher = Vqgan::new(&config.vqgan, &plain);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut optim = AdamW::new(AdamWConfig::default());
    let mut times = Vec::new();
    let mut last_loss = f64::NAN;
    let scalar =
        |t: &Tensor<1>| t.clone().inner().into_data().try_to_vec::<f32>().unwrap()[0] as f64;

    #[allow(clippy::large_enum_variant)]
    enum M {
        Tok(Sftok),
        Teach(Vqgan),
    }
    let mut model = match stage.as_str() {
        "teacher" => M::Teach(Vqgan::new(&config.vqgan, &ad)),
        "stage3" => M::Tok(freeze_for_stage3(Sftok::new(&config, &ad))),
        _ => M::Tok(Sftok::new(&config, &ad)),
    };
    // Where the time of a stage-1/2/3 step goes (sums over the timed steps); the forward pass is
    // the rest of the step.
    #[derive(Default)]
    struct Parts {
        teacher: f64,
        backward: f64,
        update: f64,
    }
    let mut parts = Parts::default();
    let body = || {
        for i in 0..warmup + steps {
            let t = Instant::now();
            if i == warmup {
                parts = Parts::default(); // only the timed steps
            }
            let draw = MaskDraw::sample(&mut rng, batch, config.num_proxy_codes());
            model = match model {
                M::Teach(m) => {
                    let out = teacher_forward(&m, x.clone(), 0.25);
                    let loss = (out.reconstruction - x.clone()).powi_scalar(2).mean()
                        + out.codebook_loss
                        + out.commitment_loss;
                    last_loss = scalar(&loss);
                    let mut g = GradientsParams::from_grads(loss.backward(), &m);
                    let c = clip_coefficient(grad_norm(&m, &g), 1.0);
                    M::Teach(optim.step(m, &mut g, 1e-4, c))
                }
                M::Tok(m) => {
                    let loss = match stage.as_str() {
                        "stage3" => (stage3_forward(&m, x.clone(), &draw, false).0 - x.clone())
                            .powi_scalar(2)
                            .mean(),
                        _ => {
                            let t_teacher = Instant::now();
                            let proxy = rows_i64(teacher.encode(x.clone().inner()));
                            parts.teacher += t_teacher.elapsed().as_secs_f64() * 1000.0;
                            let st = if stage == "stage1" {
                                TokenStage::WarmUp
                            } else {
                                TokenStage::Stage2(Stage2Inputs::SelfForcing { replace_prob: 1.0 })
                            };
                            token_step(&m, x.clone(), &proxy, st, &draw).total_loss
                        }
                    };
                    last_loss = scalar(&loss);
                    let t_backward = Instant::now();
                    let mut g = GradientsParams::from_grads(loss.backward(), &m);
                    let t_update = Instant::now();
                    let c = clip_coefficient(grad_norm(&m, &g), 1.0);
                    let m = optim.step(m, &mut g, 1e-4, c);
                    parts.backward += (t_update - t_backward).as_secs_f64() * 1000.0;
                    parts.update += t_update.elapsed().as_secs_f64() * 1000.0;
                    M::Tok(m)
                }
            };
            plain.sync().ok();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            eprintln!("step {i}: {ms:.0} ms, loss {last_loss:.4}");
            if i >= warmup {
                times.push(ms);
            }
        }
    };
    // As the trainer runs its steps (why: the doc of `on_compute_pool`); `--caller-thread`
    // measures the difference.
    if args.iter().any(|a| a == "--caller-thread") {
        body();
    } else {
        sftok_core::device::on_compute_pool(&plain, body);
    }
    if parts.backward > 0.0 {
        let n = steps as f64;
        let total: f64 = times.iter().sum::<f64>() / n;
        let (teacher_ms, backward, update) =
            (parts.teacher / n, parts.backward / n, parts.update / n);
        eprintln!(
            "mean per step: {total:.0} ms = frozen teacher {teacher_ms:.0} + forward and loss {:.0} + backward {backward:.0} + clipping and AdamW {update:.0}",
            total - teacher_ms - backward - update
        );
    }
    let median = median(&mut times);
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-burn",
            "device": chosen.description,
            "stage": stage,
            "model": preset,
            "batch": batch,
            "steps": steps,
            "ms_per_step_median": median,
            "images_per_sec": batch as f64 * 1000.0 / median,
            "final_loss": last_loss,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
}
