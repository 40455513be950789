//! End-to-end tests of the `sftok` command line: the real binary, real files.

mod common;
use common::{refused, repo, sftok, temp_dir};

#[test]
fn reconstruct_writes_a_strip_and_prints_psnr_per_step() {
    let dir = temp_dir("recon");
    let out = dir.join("strip.png");
    let tokens = dir.join("tokens.json");
    let result = sftok()
        .args(["reconstruct", "--device", "cpu", "--steps", "4", "--out"])
        .arg(&out)
        .arg("--tokens")
        .arg(&tokens)
        .arg(repo().join("assets/samples/chelsea.png"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&result.stderr)
    );
    // One row per step plus the teacher's.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("teacher"), "{stdout}");
    let strip = image::open(&out).unwrap();
    let size = 64; // the bundled default model's image size
    // original | 4 steps | teacher, 2 px apart.
    assert_eq!(strip.width(), 6 * size + 5 * 2);
    assert_eq!(strip.height(), size);
    // The ids: every position committed by the last step, and the mask only in the inputs.
    let ids: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    let steps = ids["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    let mask = ids["mask_token_id"].as_i64().unwrap();
    let first_inputs = steps[0]["input_ids"].as_array().unwrap();
    assert!(first_inputs.iter().all(|v| v.as_i64() == Some(mask)));
    let last = steps[3]["committed_ids"].as_array().unwrap();
    assert_eq!(last, ids["final_ids"].as_array().unwrap());
    assert!(last.iter().all(|v| v.as_i64().is_some_and(|id| id != mask)));
    assert_eq!(
        ids["teacher_ids"].as_array().unwrap().len(),
        last.len(),
        "{ids}"
    );
    assert!(!ids["latent_ids"].as_array().unwrap().is_empty());
}

#[test]
fn a_bad_image_is_an_error_message_not_a_panic() {
    let dir = temp_dir("bad");
    let bad = dir.join("not_an_image.png");
    std::fs::write(&bad, b"this is text").unwrap();
    let result = sftok()
        .args(["reconstruct", "--device", "cpu"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = refused(&result);
    assert!(stderr.contains("not an image that can be read"), "{stderr}");
}

/// A missing image is reported once, with the OS's reason said once, before any model is read
/// (an official-size model is hundreds of MB: a typo in the image path must not cost that).
#[test]
fn a_missing_image_is_said_once_before_the_model_is_read() {
    let result = sftok()
        .args(["reconstruct", "--device", "cpu", "/nonexistent/photo.png"])
        .output()
        .unwrap();
    let stderr = refused(&result);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("/nonexistent/photo.png"), "{stderr}");
    assert!(
        !stderr.contains("latent tokens"),
        "the model was loaded first: {stderr}"
    );
}

#[test]
fn a_missing_model_is_an_error_message() {
    let result = sftok()
        .args([
            "reconstruct",
            "--device",
            "cpu",
            "--model",
            "/nonexistent/model",
        ])
        .arg(repo().join("assets/samples/chelsea.png"))
        .output()
        .unwrap();
    let stderr = refused(&result);
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
}

/// The bundled teacher's folder is the wrong folder a user is most likely to try: said once,
/// with the folder to use instead.
#[test]
fn a_teacher_folder_given_as_the_model_names_the_folder_to_use() {
    let result = sftok()
        .args(["reconstruct", "--device", "cpu", "--model"])
        .arg(repo().join("assets/models/teacher"))
        .arg(repo().join("assets/samples/chelsea.png"))
        .output()
        .unwrap();
    let stderr = refused(&result);
    assert_eq!(
        stderr.matches("holds only a teacher").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("assets/models/sfvr"), "{stderr}");
}

#[test]
fn import_of_official_files_then_reconstruct() {
    let dir = temp_dir("import");
    let model = dir.join("model");
    let official = repo().join("tests/data/official");
    let result = sftok()
        .args(["import", "--weights"])
        .arg(official.join("pytorch_model.bin"))
        .arg("--config")
        .arg(official.join("config.json"))
        .arg("--teacher")
        .arg(official.join("maskgit-vqgan-teacher.bin"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for f in ["config.json", "model.safetensors", "teacher.safetensors"] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let result = sftok()
        .args(["reconstruct", "--device", "cpu", "--steps", "2", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(dir.join("s.png"))
        .arg(repo().join("assets/samples/coffee.png"))
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn importing_a_non_checkpoint_says_so() {
    let dir = temp_dir("notckpt");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, vec![7u8; 1000]).unwrap();
    let result = sftok()
        .args(["import", "--weights"])
        .arg(&junk)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = refused(&result);
    assert!(stderr.contains("not a usable weights file"), "{stderr}");
}

#[test]
fn an_import_of_a_missing_file_or_a_folder_names_the_flag() {
    let dir = temp_dir("import-inputs");
    let weights = repo().join("core/tests/data/parity/public/weights.safetensors");
    let cases: [(&str, Vec<std::ffi::OsString>, &str); 4] = [
        (
            "import",
            vec!["--weights".into(), dir.join("gone.bin").into()],
            "the weights file",
        ),
        (
            "import",
            vec![
                "--weights".into(),
                weights.clone().into(),
                "--config".into(),
                dir.clone().into(),
            ],
            "the configuration file",
        ),
        (
            "import",
            vec![
                "--weights".into(),
                weights.clone().into(),
                "--teacher".into(),
                dir.join("gone.bin").into(),
            ],
            "the teacher weights file",
        ),
        (
            "import-generator",
            vec!["--weights".into(), dir.clone().into()],
            "holds no pytorch_model.bin",
        ),
    ];
    for (command, args, says) in cases {
        let result = sftok()
            .arg(command)
            .args(&args)
            .arg("--out")
            .arg(dir.join("out"))
            .output()
            .unwrap();
        let stderr = refused(&result);
        let flag = args[args.len() - 2].to_string_lossy().to_string();
        assert!(
            stderr.contains(says) && stderr.contains(&format!("check {flag}")),
            "{command} {args:?}: {stderr}"
        );
        assert!(!dir.join("out").exists(), "nothing is written");
    }
}

#[test]
fn a_bad_device_list_for_training_is_an_error_message() {
    let out = temp_dir("devices");
    for (list, says) in [
        ("cpu,cpu", "appears twice"),
        ("tpu", "unknown device `tpu`"),
        ("wgpu:999", "discrete GPU"),
    ] {
        let result = sftok()
            .args([
                "train",
                "teacher",
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--devices",
                list,
            ])
            .arg("--data")
            .arg(repo().join("assets/samples"))
            .arg("--out")
            .arg(out.join("run"))
            .output()
            .unwrap();
        let stderr = refused(&result);
        assert!(stderr.contains(says), "{list}: {stderr}");
    }
}

#[test]
fn a_run_that_cannot_start_names_the_flag_to_change() {
    let out = temp_dir("plan-words");
    let samples = repo().join("assets/samples");
    let no_teacher = out.join("empty");
    std::fs::create_dir_all(&no_teacher).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["stage2"],
            "pass --init (a stage-1 run or a model directory)",
        ),
        (&["stage1"], "pass --teacher"),
        (
            &["stage1", "--teacher", no_teacher.to_str().unwrap()],
            "holds no teacher (teacher.safetensors): --teacher takes a teacher run",
        ),
        (&["teacher", "--batch-size", "64"], "lower --batch-size to"),
    ];
    for (args, says) in cases {
        let result = sftok()
            .arg("train")
            .args(args)
            .args(["--steps", "1", "--device", "cpu"])
            .args(if args.contains(&"--batch-size") {
                &[][..]
            } else {
                &["--batch-size", "2"][..]
            })
            .arg("--data")
            .arg(&samples)
            .arg("--out")
            .arg(out.join("run"))
            .output()
            .unwrap();
        let stderr = refused(&result);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !out.join("run").join("checkpoints").exists(),
            "{args:?}: nothing starts"
        );
    }
}
