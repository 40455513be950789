//! Parity of the rFID pieces with pytorch-fid, on reference data written by a Python script
//! (pytorch-fid's `InceptionV3` with seeded random weights saved as a `.pth`, two 64×64 images
//! and their pool3 features; feature sets with pytorch-fid's `calculate_frechet_distance`).
//! Prints the largest feature difference and the distances side by side, with timings.
//!
//! ```sh
//! cargo run --release --example fid_parity -- --data /path/to/data
//! ```
//! The folder holds `fid_random.pth`, `images.f32`, `features_torch.f32` (little-endian f32) and
//! `meta.json`, plus `<case>_a.f32` / `<case>_b.f32` feature rows for each Fréchet case in it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use sftok_core::eval::frechet::{FeatureAccumulator, frechet_distance};
use sftok_core::eval::inception::{FEATURE_DIM, FidInception};

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = args
        .iter()
        .position(|a| a == "--data")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("data"), PathBuf::from);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("meta.json")).expect("meta.json in the data folder"),
    )
    .expect("valid meta.json");
    let device = Device::flex();

    let start = Instant::now();
    let net = FidInception::from_file(&data.join("fid_random.pth"), &device)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("loaded the .pth in {:.2?}", start.elapsed());
    let images = read_f32(&data.join("images.f32"));
    let batch = images.len() / (3 * 64 * 64);
    let x = Tensor::<4>::from_data(TensorData::new(images, [batch, 3, 64, 64]), &device);
    let start = Instant::now();
    let ours = net
        .features(x)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 features");
    println!("features of {batch} images in {:.2?}", start.elapsed());
    let torch = read_f32(&data.join("features_torch.f32"));
    assert_eq!(ours.len(), torch.len());
    assert_eq!(ours.len(), batch * FEATURE_DIM);
    let max_abs = ours
        .iter()
        .zip(&torch)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let max_ref = torch.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    println!(
        "pool3 features: max |ours − pytorch-fid| = {max_abs:.3e} (largest |value| {max_ref:.3})"
    );

    for case in meta["frechet"].as_array().into_iter().flatten() {
        let name = case["name"].as_str().expect("case name");
        let dim = case["dim"].as_u64().expect("dim") as usize;
        let stats = |side: &str| {
            let mut acc = FeatureAccumulator::new(dim);
            acc.push_rows(&read_f32(&data.join(format!("{name}_{side}.f32"))))
                .expect("feature rows");
            acc.stats().expect("statistics")
        };
        let start = Instant::now();
        let (a, b) = (stats("a"), stats("b"));
        let t_stats = start.elapsed();
        let start = Instant::now();
        let ours = frechet_distance(&a, &b).expect("distance");
        let t_fd = start.elapsed();
        let reference = case["fid"].as_f64().expect("fid");
        let eigh = case["fid_eigh"].as_f64().expect("fid_eigh");
        println!(
            "{name} ({} + {} rows): ours {ours:.10} ({t_fd:.2?}; statistics {t_stats:.2?}), \
             pytorch-fid {reference:.10} (diff {:.2e}), numpy eigh route {eigh:.10} (diff {:.2e})",
            a.count,
            b.count,
            ours - reference,
            ours - eigh
        );
    }
}
