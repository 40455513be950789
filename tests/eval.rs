//! End-to-end tests of `sftok eval` and of the bundled model assets.

use std::path::Path;
use std::process::Command;

use image::RgbImage;

mod common;
use common::{repo, sftok, temp_dir};

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// PSNR written out here from its definition, independently of the crate's.
fn psnr_by_hand(a: &RgbImage, b: &RgbImage) -> f64 {
    let n = a.as_raw().len() as f64;
    let mse: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / n;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// `eval` over three images against a second route to the same numbers: `sftok reconstruct` writes
/// each reconstruction into its strip, the test cuts it out and measures it against the centre
/// crop of the original.
#[test]
fn eval_figures_match_an_independent_computation() {
    let dir = temp_dir("figures");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let names = ["astronaut.png", "chelsea.png", "coffee.png"];
    for name in names {
        std::fs::copy(repo().join("assets/samples").join(name), data.join(name)).unwrap();
    }
    let model = repo().join("assets/models/default");
    let json = dir.join("eval.json");
    let table = run_ok(
        sftok()
            .args(["eval", "--device", "cpu", "--steps", "1,4", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--json")
            .arg(&json),
    );
    assert!(table.contains("| steps | PSNR (dB) | SSIM |"), "{table}");
    assert!(dir.join("eval.png").is_file(), "the plot is written");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = &report["results"][model.display().to_string()];
    let size = 64u32; // the default model's image size

    for steps in [1u32, 4] {
        let mut psnrs = Vec::new();
        let mut ssims = Vec::new();
        for name in names {
            let strip_path = dir.join(format!("{name}-{steps}.png"));
            run_ok(
                sftok()
                    .args(["reconstruct", "--device", "cpu", "--model"])
                    .arg(&model)
                    .args(["--steps", &steps.to_string(), "--out"])
                    .arg(&strip_path)
                    .arg(data.join(name)),
            );
            let strip = image::open(&strip_path).unwrap().to_rgb8();
            let original = image::imageops::crop_imm(&strip, 0, 0, size, size).to_image();
            let last = steps * (size + 2);
            let recon = image::imageops::crop_imm(&strip, last, 0, size, size).to_image();
            psnrs.push(psnr_by_hand(&original, &recon));
            ssims.push(sftok_core::eval::metrics::ssim(&original, &recon));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let got = &results[steps.to_string()];
        let (psnr, ssim) = (got["psnr"].as_f64().unwrap(), got["ssim"].as_f64().unwrap());
        assert!(
            (psnr - mean(&psnrs)).abs() < 0.02,
            "T={steps}: {psnr} vs {psnrs:?}"
        );
        assert!(
            (ssim - mean(&ssims)).abs() < 1e-3,
            "T={steps}: {ssim} vs {ssims:?}"
        );
        let acc = got["proxy_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        // Each image's own figures, in the order of `image_names` (sorted paths).
        let per_image: Vec<f64> = got["per_image_psnr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (got, want) in per_image.iter().zip(&psnrs) {
            assert!(
                (got - want).abs() < 0.02,
                "T={steps}: {per_image:?} vs {psnrs:?}"
            );
        }
        assert_eq!(per_image.len(), 3);
        let accs = got["per_image_proxy_accuracy"].as_array().unwrap();
        assert_eq!(accs.len(), 3);
    }
    let listed: Vec<&str> = report["image_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        listed.len() == 3 && listed.iter().zip(names).all(|(l, n)| l.ends_with(n)),
        "{listed:?}"
    );
    assert!(report["teacher"][model.display().to_string()]["psnr"].is_number());
    assert!(
        report["rfid"].as_str().unwrap().contains("--inception"),
        "without Inception weights, eval says how to get rFID"
    );
}

/// A skipped file whose name is not UTF-8 is listed in the report, which is still written; bad
/// outputs and sizes are refused before any work.
#[cfg(unix)]
#[test]
fn eval_reports_odd_file_names_and_checks_its_options_first() {
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_dir("odd-names");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        repo().join("assets/samples/chelsea.png"),
        data.join("chelsea.png"),
    )
    .unwrap();
    let odd = data.join(std::ffi::OsStr::from_bytes(b"broken-\xff\xfe.png"));
    std::fs::write(&odd, b"not a png").unwrap();
    let model = repo().join("assets/models/default");
    let json = dir.join("eval.json");
    run_ok(
        sftok()
            .args(["eval", "--device", "cpu", "--steps", "1", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--json")
            .arg(&json),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0][0].as_str().unwrap().contains("broken-"));
    assert_eq!(report["images"], 1);

    for (args, expect) in [
        (vec!["--json", dir.to_str().unwrap()], "is a folder"),
        (vec!["--size", "4"], "--size 4"),
        (vec!["--size", "0"], "--size 0"),
    ] {
        let out = sftok()
            .args(["eval", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(expect) && !stderr.contains("evaluating"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn eval_of_an_empty_folder_says_what_is_wrong() {
    let dir = temp_dir("empty");
    let out = sftok()
        .args(["eval", "--device", "cpu", "--model"])
        .arg(repo().join("assets/models/default"))
        .arg("--data")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("error:") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// A model directory whose files are damaged or missing gets a message that names the file.
#[test]
fn a_damaged_or_missing_asset_is_a_clear_error() {
    let dir = temp_dir("damaged");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "teacher.safetensors"] {
        std::fs::copy(repo().join("assets/models/default").join(f), model.join(f)).unwrap();
    }
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(
        model.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    let reconstruct = |model: &Path| {
        sftok()
            .args(["reconstruct", "--device", "cpu", "--model"])
            .arg(model)
            .arg("--out")
            .arg(dir.join("x.png"))
            .arg(repo().join("assets/samples/rocket.png"))
            .output()
            .unwrap()
    };
    let out = reconstruct(&model);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("model.safetensors") && !stderr.contains("panicked"),
        "{stderr}"
    );

    std::fs::remove_file(model.join("config.json")).unwrap();
    let out = reconstruct(&model);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.json") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// The bundled demo models (SFVR and vanilla, each with the teacher) load and reconstruct a sample.
#[test]
fn the_bundled_models_load_and_reconstruct_a_sample() {
    let dir = temp_dir("bundled");
    for name in ["sfvr", "vanilla"] {
        let model = repo().join("assets/models").join(name);
        let out = dir.join(format!("{name}.png"));
        let stdout = run_ok(
            sftok()
                .args(["reconstruct", "--device", "cpu", "--steps", "8", "--model"])
                .arg(&model)
                .arg("--out")
                .arg(&out)
                .arg(repo().join("assets/samples/coffee.png")),
        );
        assert!(
            stdout.contains("teacher"),
            "{name} ships its teacher: {stdout}"
        );
        let strip = image::open(&out).unwrap();
        // original | 8 steps | teacher at the demo's 64 px, 2 px apart.
        assert_eq!((strip.width(), strip.height()), (10 * 64 + 9 * 2, 64));
    }
    // Without --model, reconstruct uses the bundled SFVR model.
    let out = sftok()
        .args(["reconstruct", "--device", "cpu", "--steps", "2", "--out"])
        .arg(dir.join("default.png"))
        .arg(repo().join("assets/samples/coffee.png"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("assets/models/sfvr"));
}

/// `sftok paired` on an eval report: the paired difference of two models equals the mean of
/// their per-image differences, the tables and the plot are written, and a group naming a model
/// the report lacks is a clear error.
#[test]
fn paired_compares_recipes_image_by_image() {
    let dir = temp_dir("paired");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["astronaut.png", "chelsea.png", "coffee.png"] {
        std::fs::copy(repo().join("assets/samples").join(name), data.join(name)).unwrap();
    }
    let a = repo().join("assets/models/sfvr");
    let b = repo().join("assets/models/default");
    let json = dir.join("eval.json");
    run_ok(
        sftok()
            .args(["eval", "--device", "cpu", "--steps", "1,2", "--model"])
            .arg(&a)
            .arg("--model")
            .arg(&b)
            .arg("--data")
            .arg(&data)
            .arg("--json")
            .arg(&json),
    );
    let (la, lb) = (a.display().to_string(), b.display().to_string());
    let md = dir.join("paired.md");
    let table = run_ok(
        sftok()
            .args(["paired", "--eval"])
            .arg(&json)
            .arg("--group")
            .arg(format!("A={la}"))
            .arg("--group")
            .arg(format!("B={lb}"))
            .args(["--versus", "A:B", "--markdown"])
            .arg(&md)
            .arg("--plot")
            .arg(dir.join("paired.png")),
    );
    assert!(md.is_file() && dir.join("paired.png").is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let per = |label: &str| -> Vec<f64> {
        report["results"][label]["2"]["per_image_psnr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let diff: f64 = per(&la)
        .iter()
        .zip(per(&lb))
        .map(|(x, y)| x - y)
        .sum::<f64>()
        / 3.0;
    let row = table
        .lines()
        .find(|l| l.starts_with("| 2 |"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(&format!("{diff:+.3}")), "{diff} in {row}");

    let out = sftok()
        .args(["paired", "--eval"])
        .arg(&json)
        .args(["--group", "A=/no/such/model", "--versus", "A:A"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/no/such/model"),
        "{stderr}"
    );
}
