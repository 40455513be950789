//! End-to-end tests of class-to-image generation: `sftok train generator`, `sftok generate` and
//! `sftok import-generator`, with the real binary on small real files.

mod common;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{repo, sftok, temp_dir};

fn ok(out: &Output) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn failed(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should have failed: {text}");
    assert!(!text.contains("panicked"), "a panic, not a message: {text}");
    text
}

/// Two classes of the bundled samples, one folder each.
fn class_folders(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    for (class, files) in [
        (
            "animals",
            &["chelsea.png", "coffee.png", "astronaut.png"][..],
        ),
        ("machines", &["rocket.png", "motorcycle_left.png"][..]),
    ] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for f in files {
            std::fs::copy(
                repo().join("assets/samples").join(f),
                data.join(class).join(f),
            )
            .unwrap();
        }
    }
    data
}

/// A generator trained for a few steps on the bundled tiny tokenizer's tokens.
fn train_small(dir: &Path, steps: &str, resume: bool) -> (PathBuf, String) {
    let data = class_folders(dir);
    let run = dir.join("run");
    let mut cmd = sftok();
    cmd.args(["train", "generator", "--device", "cpu", "--steps", steps])
        .args([
            "--batch-size",
            "4",
            "--views",
            "2",
            "--eval-every",
            "5",
            "--log-every",
            "5",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--tokenizer")
        .arg(repo().join("assets/models/default"))
        .arg("--out")
        .arg(&run);
    if resume {
        cmd.arg("--resume");
    }
    let text = ok(&cmd.output().unwrap());
    (run, text)
}

fn generate(generator: &Path, out: &Path, extra: &[&str]) -> Output {
    sftok()
        .args(["generate", "--device", "cpu", "--count", "2"])
        .arg("--generator")
        .arg(generator)
        .arg("--tokenizer")
        .arg(repo().join("assets/models/default"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_trained_generator_makes_each_class_and_the_same_seed_repeats() {
    let dir = temp_dir("train");
    let (run, text) = train_small(&dir, "10", false);
    assert!(text.contains("2 classes"), "{text}");
    assert!(run.join("model/config.json").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"masked_token_accuracy\""), "{metrics}");

    // One row per class, two images each, 64 px, 2 px apart.
    let a = dir.join("a.png");
    let trace = dir.join("trace.json");
    let args = ["--class", "animals", "--class", "1", "--seed", "3"];
    let text = ok(&generate(
        &run,
        &a,
        &[&args[..], &["--trace", trace.to_str().unwrap()]].concat(),
    ));
    assert!(text.contains("animals, machines"), "{text}");
    let grid = image::open(&a).unwrap();
    assert_eq!((grid.width(), grid.height()), (2 * 64 + 2, 2 * 64 + 2));
    let again = dir.join("again.png");
    ok(&generate(&run, &again, &args));
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&again).unwrap(),
        "same seed, other images"
    );
    // Beside the nearest training image: pairs in each row.
    let paired = dir.join("paired.png");
    let text = ok(&generate(
        &run,
        &paired,
        &[
            "--class",
            "animals",
            "--reference",
            dir.join("data").to_str().unwrap(),
        ],
    ));
    assert!(
        text.contains("nearest reference") && text.contains("mean PSNR"),
        "{text}"
    );
    let grid = image::open(&paired).unwrap();
    assert_eq!(grid.width(), 4 * 64 + 3 * 2);

    // The bundled tiny tokenizer has random weights and gives every photo nearly the same
    // tokens, so the generator learns one sequence; only a hot sampling shows the seed.
    let hot = |seed: &str, out: &Path| {
        let args = [
            "--class",
            "animals",
            "--seed",
            seed,
            "--temperature",
            "30",
            "--guidance",
            "0",
        ];
        ok(&generate(&run, out, &args));
        std::fs::read(out).unwrap()
    };
    let (s3, s3_again, s4) = (
        hot("3", &dir.join("s3.png")),
        hot("3", &dir.join("s3b.png")),
        hot("4", &dir.join("s4.png")),
    );
    assert!(s3 == s3_again, "the same seed gave other images");
    assert!(s3 != s4, "another seed gave the same images");

    // The trace: every generator step commits more tokens, the last commits all of them.
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let mask = t["mask_token_id"].as_i64().unwrap();
    let sample = &t["samples"][0];
    assert_eq!(sample["class_name"], "animals");
    let known: Vec<usize> = sample["generator_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["committed_ids"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v.as_i64() != Some(mask))
                .count()
        })
        .collect();
    assert!(known.windows(2).all(|w| w[0] < w[1]), "{known:?}");
    assert_eq!(*known.last().unwrap(), 8, "{known:?}");
    assert!(trace.with_extension("png").is_file());

    // Resume: the run continues from its checkpoint to the new length.
    let (_, text) = train_small(&dir, "15", true);
    assert!(text.contains("resumed from step 10"), "{text}");
    assert!(text.contains("finished at step 15"), "{text}");

    // Wrong inputs get messages.
    let e = failed(&generate(&run, &dir.join("x.png"), &["--class", "boats"]));
    assert!(e.contains("animals, machines"), "{e}");
    let e = failed(
        &sftok()
            .args(["generate", "--device", "cpu", "--generator"])
            .arg(&run)
            .arg("--tokenizer")
            .arg(repo().join("assets/models/sfvr"))
            .arg("--out")
            .arg(dir.join("y.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("tokenizer the generator was trained on"), "{e}");
    let e = failed(&generate(
        &repo().join("assets/models/sfvr"),
        &dir.join("z.png"),
        &[],
    ));
    assert!(e.contains("tokenizer"), "{e}");
    let e = failed(&generate(
        &run,
        &dir.join("t.png"),
        &["--trace", dir.join("t.png").to_str().unwrap()],
    ));
    assert!(e.contains("JSON"), "{e}");
}

#[test]
fn training_a_generator_needs_a_tokenizer() {
    let dir = temp_dir("notok");
    let e = failed(
        &sftok()
            .args(["train", "generator", "--data"])
            .arg(repo().join("assets/samples"))
            .arg("--out")
            .arg(dir.join("run"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("--tokenizer"), "{e}");
}

#[test]
fn the_official_generator_imports_and_generates() {
    let dir = temp_dir("import");
    let fixtures = repo().join("core/tests/data/parity");
    // The tokenizer of the fixture set, then its generator.
    let tokenizer = dir.join("tokenizer");
    ok(&sftok()
        .args(["import", "--weights"])
        .arg(fixtures.join("public/weights.safetensors"))
        .arg("--config")
        .arg(fixtures.join("public/config.json"))
        .arg("--out")
        .arg(&tokenizer)
        .output()
        .unwrap());
    let generator = dir.join("generator");
    let text = ok(&sftok()
        .args(["import-generator", "--weights"])
        .arg(fixtures.join("generator/generator.safetensors"))
        .arg("--config")
        .arg(fixtures.join("generator/config.json"))
        .arg("--out")
        .arg(&generator)
        .output()
        .unwrap());
    assert!(text.contains("10 classes"), "{text}");
    let out = dir.join("grid.png");
    ok(&sftok()
        .args([
            "generate",
            "--device",
            "cpu",
            "--class",
            "3",
            "--count",
            "2",
            "--generator",
        ])
        .arg(&generator)
        .arg("--tokenizer")
        .arg(&tokenizer)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert!(image::open(&out).is_ok());
    // A tokenizer's weights given as a generator's are named as such.
    let e = failed(
        &sftok()
            .args(["import-generator", "--weights"])
            .arg(fixtures.join("public/weights.safetensors"))
            .arg("--config")
            .arg(fixtures.join("generator/config.json"))
            .arg("--out")
            .arg(dir.join("bad"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("tokenizer's weights"), "{e}");
    // Without its config the full-size preset is assumed: every mis-shaped key is listed.
    let e = failed(
        &sftok()
            .args(["import-generator", "--weights"])
            .arg(fixtures.join("generator/generator.safetensors"))
            .arg("--out")
            .arg(dir.join("misfit"))
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("do not fit")
            && e.contains("model.encoder.layer.2.attention.self.query.weight [768, 768]"),
        "{e}"
    );
}
