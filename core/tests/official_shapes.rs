//! The official SFTok-B / SFTok-L presets produce exactly the state-dict names, shapes and dtypes
//! of the official models (lists dumped from the official code: `official_shapes_*.json`, from
//! `../shared/parity/` or the copies in `tests/data/parity/`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::Value;
use sftok_core::checkpoint::state_dict_shapes;
use sftok_core::config::SftokConfig;
use sftok_core::model::{Sftok, Vqgan};

fn shapes_file(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/parity").join(name);
    if shared.is_file() {
        shared
    } else {
        manifest.join("tests/data/parity").join(name)
    }
}

fn official(list: &Value) -> Vec<(String, Vec<usize>, String)> {
    let mut out: Vec<_> = list
        .as_array()
        .expect("a list of tensors")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                e["dtype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn ours(list: Vec<(String, Vec<usize>, &'static str)>) -> Vec<(String, Vec<usize>, String)> {
    let mut out: Vec<_> = list
        .into_iter()
        .map(|(n, s, d)| (n, s, d.to_string()))
        .collect();
    out.sort();
    out
}

fn assert_same(
    what: &str,
    got: Vec<(String, Vec<usize>, String)>,
    want: Vec<(String, Vec<usize>, String)>,
) {
    let missing: Vec<_> = want.iter().filter(|e| !got.contains(e)).collect();
    let extra: Vec<_> = got.iter().filter(|e| !want.contains(e)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} official entries missing or different: {:?}\n{} entries not official: {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(10).collect::<Vec<_>>()
    );
}

fn check(preset: SftokConfig, file: &str) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(shapes_file(file)).unwrap()).unwrap();
    // Parameters are lazily initialised: listing names and shapes allocates next to nothing.
    let device = Device::flex();
    let model = Sftok::new(&preset, &device);
    let got = ours(state_dict_shapes(&model));
    let want = official(&json["state_dict"]);
    assert_eq!(got.len(), json["num_tensors"].as_u64().unwrap() as usize);
    let elements: usize = got
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(elements as u64, json["num_elements"].as_u64().unwrap());
    assert_same(file, got, want);
    let teacher = ours(state_dict_shapes(&Vqgan::new(&preset.vqgan, &device)));
    assert_same(
        "maskgit_vqgan_state_dict",
        teacher,
        official(&json["maskgit_vqgan_state_dict"]),
    );
}

#[test]
fn sftok_b_matches_the_official_state_dict() {
    check(SftokConfig::sftok_b(), "official_shapes_B.json");
}

#[test]
fn sftok_l_matches_the_official_state_dict() {
    check(SftokConfig::sftok_l(), "official_shapes_L.json");
}

#[test]
fn teacher_matches_the_official_maskgit_vqgan() {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(shapes_file("official_shapes_maskgit_vqgan.json")).unwrap(),
    )
    .unwrap();
    let got = ours(state_dict_shapes(&Vqgan::new(
        &SftokConfig::sftok_b().vqgan,
        &Device::flex(),
    )));
    assert_eq!(got.len(), json["num_tensors"].as_u64().unwrap() as usize);
    assert_same("maskgit_vqgan", got, official(&json["state_dict"]));
}

#[test]
fn generator_matches_the_official_image_bert() {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(shapes_file("official_shapes_generator.json")).unwrap(),
    )
    .unwrap();
    let model = sftok_core::generator::ImageBert::new(
        &sftok_core::generator::GeneratorConfig::sftok_b(),
        &Device::flex(),
    );
    let got = ours(state_dict_shapes(&model));
    assert_eq!(got.len(), json["num_tensors"].as_u64().unwrap() as usize);
    let elements: usize = got
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(elements as u64, json["num_elements"].as_u64().unwrap());
    assert_same("generator", got, official(&json["state_dict"]));
}
