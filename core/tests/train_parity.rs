//! One official training step of stage 1, SFVR (replace_prob 1.0 and 0.5) and vanilla, replayed
//! with the official random draws (`train.safetensors` of the parity set; see its `TRAIN.md`):
//! ids, masks, logits, every loss term, the gradients of eight parameters and the global grad norm.
//!
//! Tolerances (TRAIN.md): ids, masks, counts and M1 exactly; mask_ratio atol 1e-6; losses atol
//! 1e-5; logits atol 1e-4; grads max|g - g_ref| <= 1e-3 max|g_ref| per tensor; grad norm rtol 1e-4.

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use sftok_core::checkpoint::build_sftok;
use sftok_core::checkpoint::files::read_safetensors_bytes;
use sftok_core::checkpoint::state::{StateDict, param_ids};
use sftok_core::config::SftokConfig;
use sftok_core::train::masking::{MaskDraw, mask_ratio};
use sftok_core::train::optim::grad_norm;
use sftok_core::train::sfvr::Stage2Inputs;
use sftok_core::train::token_step::{TokenStage, token_step};

fn fixture_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SFTOK_PARITY_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/parity/public");
    if shared.join("train.safetensors").is_file() {
        return shared;
    }
    manifest.join("tests/data/parity/public")
}

fn read(path: &Path) -> StateDict {
    read_safetensors_bytes(&std::fs::read(path).unwrap()).unwrap()
}

fn rows(sd: &StateDict, key: &str) -> Vec<Vec<i64>> {
    let t = &sd[key];
    t.as_i64().chunks(t.shape[1]).map(<[i64]>::to_vec).collect()
}

fn rows_f32(sd: &StateDict, key: &str) -> Vec<Vec<f32>> {
    let t = &sd[key];
    t.as_f32().chunks(t.shape[1]).map(<[f32]>::to_vec).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn scalar(sd: &StateDict, key: &str) -> f32 {
    sd[key].as_f32()[0]
}

#[test]
fn official_training_steps_are_reproduced() {
    let dir = fixture_dir();
    let config = SftokConfig::from_file(&dir.join("config.json")).unwrap();
    let io = read(&dir.join("io.safetensors"));
    let train = read(&dir.join("train.safetensors"));
    let device = Device::flex().autodiff();
    let x = {
        let t = &io["x"];
        Tensor::<4>::from_data(TensorData::new(t.as_f32(), t.shape.clone()), &device)
    };
    let proxy = rows(&train, "proxy_codes");
    let draw = MaskDraw {
        timesteps: train["rand/timesteps"].as_f32(),
        perm_rand: rows_f32(&train, "rand/perm_rand"),
        replace_rand: rows_f32(&train, "rand/replace_rand"),
    };
    let weights = dir.join("weights.safetensors");
    let mut failures = Vec::new();
    let cases = [
        ("stage1", TokenStage::WarmUp),
        (
            "sfvr",
            TokenStage::Stage2(Stage2Inputs::SelfForcing { replace_prob: 1.0 }),
        ),
        (
            "sfvr_p05",
            TokenStage::Stage2(Stage2Inputs::SelfForcing { replace_prob: 0.5 }),
        ),
        ("vanilla", TokenStage::Stage2(Stage2Inputs::Vanilla)),
    ];
    for (case, stage) in cases {
        let model = build_sftok(&config, read(&weights), &device, &weights).unwrap();
        let out = token_step(&model, x.clone(), &proxy, stage, &draw);
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                failures.push(format!("{case}/{what}: {detail}"));
            }
        };
        check(
            "ids",
            out.inputs.ids == rows(&train, &format!("{case}/ids")),
            format!("{:?}", out.inputs.ids),
        );
        let mask: Vec<Vec<i64>> = out
            .inputs
            .mask
            .iter()
            .map(|r| r.iter().map(|&m| m as i64).collect())
            .collect();
        check(
            "mask",
            mask == rows(&train, &format!("{case}/mask")),
            format!("{mask:?}"),
        );
        if case != "stage1" {
            let nm: Vec<i64> = out.inputs.num_masked.iter().map(|&v| v as i64).collect();
            check(
                "num_token_masked",
                nm == train[&format!("{case}/num_token_masked")].as_i64(),
                format!("{nm:?}"),
            );
            let ratios: Vec<f32> = draw.timesteps.iter().map(|&t| mask_ratio(t)).collect();
            let d = max_abs_diff(&ratios, &train[&format!("{case}/mask_ratio")].as_f32());
            check("mask_ratio", d <= 1e-6, format!("diff {d}"));
            let sr: Vec<Vec<i64>> = out
                .inputs
                .should_replace
                .iter()
                .map(|r| r.iter().map(|&m| m as i64).collect())
                .collect();
            if case.starts_with("sfvr") {
                check(
                    "should_replace",
                    sr == rows(&train, &format!("{case}/should_replace")),
                    format!("{sr:?}"),
                );
                check(
                    "M1",
                    out.m1.as_ref() == Some(&rows(&train, "M1")),
                    format!("{:?}", out.m1),
                );
            }
        }
        let d = max_abs_diff(
            &values(out.logits.clone()),
            &train[&format!("{case}/logits")].as_f32(),
        );
        check("logits", d <= 1e-4, format!("max diff {d}"));
        let d = max_abs_diff(
            &values(out.ce.clone()),
            &train[&format!("{case}/ce")].as_f32(),
        );
        check("ce", d <= 1e-5, format!("max diff {d}"));
        for (name, t) in [
            ("recon_loss", &out.recon_loss),
            ("quantizer_loss", &out.quantizer_loss),
            ("commitment_loss", &out.commitment_loss),
            ("codebook_loss", &out.codebook_loss),
            ("total_loss", &out.total_loss),
        ] {
            let got = values(t.clone())[0];
            let want = scalar(&train, &format!("{case}/{name}"));
            check(name, (got - want).abs() <= 1e-5, format!("{got} vs {want}"));
        }

        let grads = GradientsParams::from_grads(out.total_loss.backward(), &model);
        let ids = param_ids(&model);
        let norm = grad_norm(&model, &grads);
        let want_norm = scalar(&train, &format!("{case}/grad_total_norm")) as f64;
        check(
            "grad_total_norm",
            ((norm - want_norm) / want_norm).abs() <= 1e-4,
            format!("{norm} vs {want_norm}"),
        );
        let grad_of = |name: &str| -> Vec<f32> {
            let id = ids[name];
            match name {
                "encoder.patch_embed.weight"
                | "encoder.conv_out.weight"
                | "decoder.ffn.2.weight" => values(grads.get::<4>(id).expect(name)),
                "quantize.embedding" => values(grads.get::<3>(id).expect(name)),
                // burn's Linear holds [in, out]; the file holds PyTorch's [out, in].
                "quantize.shared_linear.weight" => {
                    values(grads.get::<2>(id).expect(name).transpose())
                }
                _ => values(grads.get::<2>(id).expect(name)),
            }
        };
        for name in [
            "latent_tokens",
            "encoder.patch_embed.weight",
            "encoder.conv_out.weight",
            "quantize.embedding",
            "quantize.shared_linear.weight",
            "decoder.learnable_embedding.weight",
            "decoder.ffn.2.weight",
            "decoder.transformer.0.attn.in_proj_weight",
        ] {
            let want = train[&format!("{case}/grad/{name}")].as_f32();
            let got = grad_of(name);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&got, &want);
            check(
                &format!("grad/{name}"),
                d <= 1e-3 * scale,
                format!("max diff {d}, max |g| {scale}"),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
