//! Tests of the Train view's logic: settings to configuration, run folders, the worker with a
//! real (tiny) training, stop / resume, following a run, the fine-tune and the error paths.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sftok_core::train::StageKind;
use sftok_core::train::run_dir::RunDir;
use sftok_core::train::sfvr::Stage2Inputs;
use sftok_core::{DeviceChoice, SftokConfig};

use super::setup::{
    check_finetune_base, check_new_run_dir, config_from_settings, finetune_config, gather_images,
    gui_error, resume_config, timestamp,
};
use super::*;
use crate::gui::views::train::thin;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/samples");
const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/models/default");

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sftok-gui-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample_images(n: usize) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(SAMPLES)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    all.sort();
    assert!(
        all.len() >= n,
        "the sample images are missing from {SAMPLES}"
    );
    all.truncate(n);
    all
}

/// A data folder holding `n` sample images.
fn data_folder(tag: &str, n: usize) -> PathBuf {
    let dir = temp_dir(tag).join("data");
    std::fs::create_dir_all(&dir).unwrap();
    for src in sample_images(n) {
        std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
    }
    dir
}

/// Polls until `done` holds (or fails the test after `limit`), collecting outcomes.
fn poll_until(
    panel: &mut TrainingPanel,
    ctx: &egui::Context,
    limit: Duration,
    outcomes: &mut Vec<TrainingOutcome>,
    mut done: impl FnMut(&TrainingPanel) -> bool,
) {
    let start = Instant::now();
    loop {
        outcomes.extend(panel.poll(ctx));
        if done(panel) {
            return;
        }
        if let Some(e) = panel.take_error() {
            panic!("unexpected error: {e}");
        }
        assert!(
            start.elapsed() < limit,
            "timed out; status: {}",
            panel.live.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn settings_survive_serde_and_old_files() {
    let s = TrainSettings {
        stage: StageKind::Stage2,
        vanilla: true,
        data: Some("/data".into()),
        followed: Some("/runs/a".into()),
        ..TrainSettings::default()
    };
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("\"stage2\""), "{text}");
    let back: TrainSettings = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    // A partial (older) settings file: the rest takes the defaults.
    let partial: TrainSettings = serde_json::from_str(r#"{"stage":"stage1","steps":5}"#).unwrap();
    assert_eq!(partial.stage, StageKind::Stage1);
    assert_eq!(partial.steps, 5);
    assert_eq!(partial.batch_size, 8);
    // Nonsense is repaired by the panel.
    let panel = TrainingPanel::new(TrainSettings {
        preset: "huge".into(),
        steps: 0,
        batch_size: 0,
        replace_prob: 7.0,
        followed: Some("/no/such/run".into()),
        ..TrainSettings::default()
    });
    let s = panel.settings();
    assert_eq!((s.preset.as_str(), s.steps, s.batch_size), ("tiny", 1, 1));
    assert_eq!(s.replace_prob, 1.0);
    assert_eq!(s.followed, None);
}

#[test]
fn configurations_from_settings() {
    let data = data_folder("config", 3);
    let base = PathBuf::from(DEFAULT_MODEL);
    let base_config = SftokConfig::from_file(&base.join("config.json")).unwrap();

    let mut s = TrainSettings {
        stage: StageKind::Teacher,
        preset: "demo".into(),
        steps: 40,
        batch_size: 3,
        ..TrainSettings::default()
    };
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("data folder"), "{e}");
    s.data = Some(data.join("missing"));
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    s.data = Some(data.clone());
    // A batch larger than the folder is refused before anything starts.
    s.batch_size = 8;
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("lower Batch size to 3"), "{e}");
    s.batch_size = 3;
    let c = config_from_settings(&s).unwrap();
    assert_eq!(c.stage, StageKind::Teacher);
    assert_eq!(c.model, SftokConfig::demo());
    assert_eq!(
        (c.steps, c.batch_size, c.data.as_path()),
        (40, 3, data.as_path())
    );
    assert_eq!(c.gan.start_step, None, "the GAN is off unless ticked");
    s.no_gan = false;
    assert_eq!(config_from_settings(&s).unwrap().gan.start_step, Some(20));
    s.no_gan = true;

    // Stage 1 needs a teacher, and takes its code grid.
    s.stage = StageKind::Stage1;
    s.preset = "tiny".into();
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("Teacher"), "{e}");
    s.teacher = Some(data.clone());
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("holds no teacher"), "{e}");
    s.teacher = Some(base.clone());
    let c = config_from_settings(&s).unwrap();
    assert_eq!(c.model.vqgan, base_config.vqgan);
    assert_eq!(c.model.encoder, SftokConfig::tiny().encoder);
    assert_eq!(c.teacher.as_deref(), Some(base.as_path()));

    // Stage 2 starts from a checkpoint that carries its teacher; vanilla or SFVR.
    s.stage = StageKind::Stage2;
    s.teacher = None;
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("Starting checkpoint"), "{e}");
    s.init = Some(data.clone());
    let e = config_from_settings(&s).unwrap_err();
    assert!(e.contains("Starting checkpoint"), "{e}");
    s.init = Some(base.clone());
    s.replace_prob = 0.5;
    let c = config_from_settings(&s).unwrap();
    assert_eq!(c.model, base_config);
    assert_eq!(c.teacher.as_deref(), Some(base.as_path()));
    assert_eq!(
        c.stage2_inputs,
        Stage2Inputs::SelfForcing { replace_prob: 0.5 }
    );
    s.vanilla = true;
    let c = config_from_settings(&s).unwrap();
    assert_eq!(c.stage2_inputs, Stage2Inputs::Vanilla);

    // Stage 3.
    s.stage = StageKind::Stage3;
    let c = config_from_settings(&s).unwrap();
    assert_eq!(c.stage, StageKind::Stage3);
    assert_eq!(c.init.as_deref(), Some(base.as_path()));
    assert_eq!(c.model, base_config);
}

#[test]
fn run_folders_and_resume() {
    let run = temp_dir("folders");
    check_new_run_dir(&run).unwrap();
    let e = resume_config(&run, 10).unwrap_err();
    assert!(e.contains("no checkpoint"), "{e}");
    // A run with a checkpoint: a new run there is refused, resuming reads its configuration.
    let data = data_folder("folders-data", 4);
    let s = TrainSettings {
        data: Some(data),
        steps: 30,
        batch_size: 4,
        ..TrainSettings::default()
    };
    let config = write_run_config(&run, &s);
    fake_checkpoint(&run, 5);
    let e = check_new_run_dir(&run).unwrap_err();
    assert!(e.contains("Resume") && e.contains("step 5"), "{e}");
    assert_eq!(resume_config(&run, 10).unwrap().steps, 30);
    assert_eq!(resume_config(&run, 100).unwrap(), {
        let mut c = config.clone();
        c.steps = 100;
        c
    });
}

#[test]
fn the_trainers_errors_name_the_apps_controls() {
    // A new run over a folder that holds one: the trainer's own refusal, worded for the app.
    let run = temp_dir("words");
    let data = data_folder("words-data", 4);
    let s = TrainSettings {
        data: Some(data),
        steps: 3,
        batch_size: 4,
        ..TrainSettings::default()
    };
    let config = write_run_config(&run, &s);
    fake_checkpoint(&run, 2);
    let e = sftok_core::train::train(
        config.clone(),
        &run,
        false,
        &burn::tensor::Device::flex(),
        &mut |_| {},
        &sftok_core::train::StopHandle::new(),
    )
    .unwrap_err();
    let m = gui_error(&e);
    assert!(
        m.ends_with("already holds a run with checkpoints: press Resume to continue it, or choose another run folder"),
        "{m}"
    );
    // Stage 2 without its starting checkpoint, refused by the trainer itself.
    let mut stage2 = config;
    stage2.stage = StageKind::Stage2;
    stage2.teacher = Some(PathBuf::from(DEFAULT_MODEL));
    let e = sftok_core::train::train(
        stage2,
        &temp_dir("words-stage2"),
        false,
        &burn::tensor::Device::flex(),
        &mut |_| {},
        &sftok_core::train::StopHandle::new(),
    )
    .unwrap_err();
    let m = gui_error(&e);
    assert!(
        m.ends_with("choose its run (stage 1) as the Starting checkpoint") && !m.contains("--"),
        "{m}"
    );
}

#[test]
fn fine_tune_preparation() {
    let base = PathBuf::from(DEFAULT_MODEL);
    check_finetune_base(&base).unwrap();
    let e = check_finetune_base(Path::new(SAMPLES)).unwrap_err();
    assert!(e.contains("not a model folder"), "{e}");

    let run = temp_dir("ft-prep");
    let e = gather_images(&[], &run.join("data")).unwrap_err();
    assert!(e.contains("gallery is empty"), "{e}");
    let e = gather_images(&[run.join("gone.png")], &run.join("data")).unwrap_err();
    assert!(e.contains("gone.png"), "{e}");
    // The same name twice (two folders) gives two files.
    let images = sample_images(2);
    let twice = vec![images[0].clone(), images[0].clone(), images[1].clone()];
    assert_eq!(gather_images(&twice, &run.join("data")).unwrap(), 3);
    assert_eq!(std::fs::read_dir(run.join("data")).unwrap().count(), 3);

    let c = finetune_config(&base, &run, 3, 50).unwrap();
    assert_eq!(c.stage, StageKind::Stage3);
    assert_eq!(c.init.as_deref(), Some(base.as_path()));
    assert_eq!(c.teacher.as_deref(), Some(base.as_path()));
    assert_eq!(c.data, run.join("data"));
    assert_eq!((c.steps, c.batch_size, c.warmup_steps), (50, 3, 5));
    assert_eq!(c.gan.start_step, None);
    assert_eq!(finetune_config(&base, &run, 20, 50).unwrap().batch_size, 8);

    let dir = super::setup::finetune_run_dir_in(&run, &base);
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("default-finetune-"), "{name}");
    assert_eq!(dir.parent(), Some(run.as_path()));
    std::fs::create_dir_all(&dir).unwrap();
    let next = super::setup::finetune_run_dir_in(&run, &base);
    assert_ne!(next, dir, "an existing folder is never reused");
}

#[test]
fn timestamps_are_utc_calendar_times() {
    assert_eq!(super::setup::format_utc(0), "19700101-000000");
    assert_eq!(
        super::setup::format_utc(1_704_067_200 + 3_661),
        "20240101-010101"
    );
    assert_eq!(super::setup::format_utc(951_782_400), "20000229-000000");
    assert_eq!(timestamp().len(), 15);
}

#[test]
fn plots_are_thinned_keeping_the_last_point() {
    let points: Vec<[f64; 2]> = (0..10_000).map(|i| [i as f64, 1.0]).collect();
    let thinned = thin(&points, 2000);
    assert!(thinned.len() <= 2001, "{}", thinned.len());
    assert_eq!(thinned.last(), points.last());
    assert_eq!(thin(&points[..5], 2000).len(), 5);
    assert_eq!(format_duration(59.4), "59s");
    assert_eq!(format_duration(61.0), "1m 01s");
    assert_eq!(format_duration(7322.0), "2h 02m");
}

#[test]
fn errors_reach_take_error() {
    let ctx = egui::Context::default();
    // Nothing to start from: refused before any thread starts.
    let mut panel = TrainingPanel::new(TrainSettings::default());
    let e = panel.start(&ctx, false).unwrap_err();
    assert!(e.contains("data folder"), "{e}");
    assert!(!panel.is_running());
    let e = panel
        .start_finetune(PathBuf::from(DEFAULT_MODEL), Vec::new(), &ctx)
        .unwrap_err();
    assert!(e.contains("gallery is empty"), "{e}");
    assert!(panel.follow(PathBuf::from(SAMPLES)).is_err());

    // A data folder without images: the trainer fails on its thread; the panel says so.
    let empty = temp_dir("no-images");
    let run = temp_dir("no-images-run");
    let mut panel = TrainingPanel::new(TrainSettings {
        data: Some(empty),
        run_dir: Some(run),
        ..TrainSettings::default()
    });
    panel.device = DeviceChoice::Cpu;
    panel.start(&ctx, false).unwrap();
    assert!(panel.is_running());
    let start = Instant::now();
    let mut outcomes = Vec::new();
    while panel.is_running() {
        outcomes.extend(panel.poll(&ctx));
        assert!(start.elapsed() < Duration::from_secs(30), "no end");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(outcomes.is_empty());
    let e = panel.take_error().expect("an error");
    assert!(e.starts_with("Training failed"), "{e}");
    assert!(panel.take_error().is_none(), "cleared when read");
    assert!(panel.live.failed);
}

/// Starts a real tiny training through the panel's worker, pauses it (a checkpoint is written),
/// resumes it exactly where it stopped, stops it, then follows the finished run folder as
/// `Open run…` does.
#[test]
fn a_tiny_run_starts_pauses_resumes_and_stops() {
    let ctx = egui::Context::default();
    let data = data_folder("tiny", 3);
    let run = temp_dir("tiny-run").join("run");
    let mut panel = TrainingPanel::new(TrainSettings {
        stage: StageKind::Teacher,
        preset: "tiny".into(),
        data: Some(data),
        steps: 100_000,
        batch_size: 2,
        run_dir: Some(run.clone()),
        log_every: 1,
        preview_every: 2,
        checkpoint_every: 100_000,
        ..TrainSettings::default()
    });
    panel.device = DeviceChoice::Cpu;
    let mut outcomes = Vec::new();
    panel.start(&ctx, false).unwrap();
    assert!(panel.is_running());
    assert!(panel.start(&ctx, false).is_err(), "one run at a time");
    poll_until(
        &mut panel,
        &ctx,
        Duration::from_secs(60),
        &mut outcomes,
        |p| p.live.step >= 2 && p.live.preview.is_some(),
    );
    assert!(panel.live.metrics.get("loss").is_some());
    assert!(panel.live.metrics.loss_names().contains(&"mse"));
    assert!(panel.live.device.is_some());

    // Pause: stops after a checkpoint.
    panel.pause();
    poll_until(
        &mut panel,
        &ctx,
        Duration::from_secs(60),
        &mut outcomes,
        |p| !p.is_running(),
    );
    let (paused_at, _) = RunDir::new(&run).latest_checkpoint().expect("a checkpoint");
    assert!(paused_at >= 2);
    assert_eq!(panel.live.step, paused_at);
    assert!(
        panel.live.status.contains("paused"),
        "{}",
        panel.live.status
    );
    assert_eq!(
        outcomes,
        [TrainingOutcome::RunEnded {
            model_dir: run.join("model"),
            stopped: true,
            paused: true,
        }]
    );
    assert!(run.join("model/teacher.safetensors").is_file());
    assert_eq!(panel.resumable_step(), Some(paused_at));

    // The preview becomes a texture.
    panel
        .preview
        .update(&ctx, panel.live.preview.clone().as_deref());
    assert!(panel.preview.texture.is_some());

    // Start again over it is refused; Resume continues it.
    assert!(panel.start(&ctx, false).unwrap_err().contains("Resume"));
    outcomes.clear();
    panel.start(&ctx, true).unwrap();
    poll_until(
        &mut panel,
        &ctx,
        Duration::from_secs(60),
        &mut outcomes,
        |p| p.live.resumed_from.is_some() && p.live.step > paused_at,
    );
    assert_eq!(panel.live.resumed_from, Some(paused_at));
    // The history before the pause is shown again.
    assert!(
        panel.live.metrics.get("loss").unwrap()[0][0] <= 1.0,
        "history reloaded"
    );
    panel.request_stop();
    poll_until(
        &mut panel,
        &ctx,
        Duration::from_secs(60),
        &mut outcomes,
        |p| !p.is_running(),
    );
    let (stopped_at, _) = RunDir::new(&run).latest_checkpoint().unwrap();
    assert!(stopped_at > paused_at);
    assert!(
        panel.live.status.contains("stopped"),
        "{}",
        panel.live.status
    );
    assert!(matches!(
        outcomes.as_slice(),
        [TrainingOutcome::RunEnded { stopped: true, .. }]
    ));

    // Follow the run folder as "Open run…" does.
    let mut viewer = TrainingPanel::new(TrainSettings::default());
    viewer.follow(run.clone()).unwrap();
    assert!(viewer.poll(&ctx).is_empty());
    assert!(viewer.live.following);
    assert_eq!(viewer.live.step, stopped_at);
    assert_eq!(viewer.live.info.total_steps, 100_000);
    assert_eq!(viewer.live.info.stage, "teacher");
    assert_eq!(viewer.live.last_checkpoint, Some(stopped_at));
    assert!(viewer.live.preview.is_some());
    assert_eq!(
        viewer.live.metrics.get("loss").unwrap().len() as u64,
        stopped_at
    );
    assert_eq!(viewer.settings().followed, Some(run.clone()));
    // Persisted: a new panel follows it again.
    let again = TrainingPanel::new(viewer.settings());
    assert!(again.live.following);
    viewer.unfollow();
    assert!(viewer.settings().followed.is_none() && viewer.live.run_dir.is_none());
}

/// The one-click fine-tune, shortened: stage 3 from the bundled default model on two sample
/// images, ending in `FineTuned` with a complete model folder.
#[test]
fn a_fine_tune_opens_beside_its_base() {
    let ctx = egui::Context::default();
    let base = PathBuf::from(DEFAULT_MODEL);
    let run = temp_dir("finetune").join("run");
    let mut panel = TrainingPanel::new(TrainSettings::default());
    panel.device = DeviceChoice::Cpu;
    panel
        .start_finetune_in(base.clone(), &sample_images(2), 3, run.clone(), &ctx)
        .unwrap();
    // While it runs, the view says what runs instead of showing the form's (other) settings.
    {
        use egui_kittest::kittest::Queryable;
        let gallery = sample_images(2);
        let mut harness = egui_kittest::Harness::builder()
            .with_size(egui::vec2(1000.0, 1400.0))
            .build_ui_state(
                |ui, panel: &mut TrainingPanel| panel.ui(ui, &gallery),
                panel,
            );
        harness.run_steps(2);
        harness.get_by_label_contains("Fine-tuning");
        assert!(harness.query_all_by_label("Batch size").next().is_none());
        panel = harness.into_state();
    }
    let mut outcomes = Vec::new();
    poll_until(
        &mut panel,
        &ctx,
        Duration::from_secs(120),
        &mut outcomes,
        |p| !p.is_running(),
    );
    assert_eq!(
        outcomes,
        [TrainingOutcome::FineTuned {
            base,
            tuned: run.join("model")
        }]
    );
    for file in ["config.json", "model.safetensors", "teacher.safetensors"] {
        assert!(run.join("model").join(file).is_file(), "{file}");
    }
    assert_eq!(std::fs::read_dir(run.join("data")).unwrap().count(), 2);
    assert_eq!(panel.live.step, 3);
    // The start is announced once (the front end drops the problems reported before it), and
    // the run folder is the fine-tune's, so Resume offers to continue it.
    assert!(panel.take_started());
    assert!(!panel.take_started());
    assert_eq!(panel.settings.run_dir.as_ref(), Some(&run));
    assert_eq!(panel.finetune_run.as_ref(), Some(&run));
}

/// Writes the run configuration these settings give into `run/config.json`, as a run's start does.
fn write_run_config(run: &Path, settings: &TrainSettings) -> TrainConfig {
    let config = config_from_settings(settings).unwrap();
    std::fs::write(
        run.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    config
}

/// A run folder as `sftok train` leaves it, without training: configuration, metrics, a preview
/// and a checkpoint.
fn fake_run(tag: &str, steps: u64) -> PathBuf {
    let run = temp_dir(tag);
    let data = data_folder(&format!("{tag}-data"), 4);
    let s = TrainSettings {
        stage: StageKind::Teacher,
        data: Some(data),
        steps: 100,
        batch_size: 4,
        ..TrainSettings::default()
    };
    write_run_config(&run, &s);
    let rows: String = (1..=steps)
        .map(|step| {
            format!(
                "{}\n",
                serde_json::json!({
                    "step": step, "loss": 1.0 / step as f64, "mse": 0.5 / step as f64,
                    "codebook_loss": 0.1, "lr": 1e-4 * step as f64, "grad_norm": 2.0,
                    "images_per_sec": 8.0, "perplexity": 12.5
                })
            )
        })
        .collect();
    std::fs::write(run.join("metrics.jsonl"), rows).unwrap();
    std::fs::create_dir_all(run.join("previews")).unwrap();
    let sample = &sample_images(1)[0];
    for step in [2, steps] {
        std::fs::copy(sample, run.join(format!("previews/step_{step:08}.png"))).unwrap();
    }
    fake_checkpoint(&run, steps);
    run
}

/// A checkpoint folder at `step` in `run`, as far as the run folder's readers look.
fn fake_checkpoint(run: &Path, step: u64) {
    let ckpt = run.join(format!("checkpoints/step_{step:08}"));
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("state.json"), "{}").unwrap();
}

#[test]
fn following_reads_a_run_folder_and_its_eta() {
    let run = fake_run("follow", 10);
    let mut panel = TrainingPanel::new(TrainSettings::default());
    panel.follow(run.clone()).unwrap();
    let live = &panel.live;
    assert_eq!((live.step, live.info.total_steps), (10, 100));
    assert_eq!(live.preview_step, Some(10));
    assert_eq!(live.last_checkpoint, Some(10));
    // 90 steps of 4 images at 8 images/s.
    assert_eq!(live.eta_secs, Some(45.0));
    assert_eq!(live.metrics.loss_names(), ["loss", "codebook_loss", "mse"]);
    assert!(live.status.contains("running"), "{}", live.status);

    // New rows, one of them half-written.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .unwrap();
    use std::io::Write;
    write!(f, "{{\"step\":11,\"loss\":0.05}}\n{{\"step\":12,").unwrap();
    panel.follow.as_mut().unwrap().next_check = Instant::now();
    panel.tick_follow();
    assert_eq!(panel.live.step, 11);
    // At most once a second.
    writeln!(f, "\"loss\":0.04}}").unwrap();
    panel.tick_follow();
    assert_eq!(panel.live.step, 11);
    panel.follow.as_mut().unwrap().next_check = Instant::now();
    panel.tick_follow();
    assert_eq!(panel.live.step, 12);
}

/// The view draws (no window: egui_kittest), its buttons work, and a Start without a data folder
/// is reported through `take_error`.
#[test]
fn the_view_draws_and_reports() {
    use egui_kittest::kittest::Queryable;
    let run = fake_run("view", 10);
    let mut panel = TrainingPanel::new(TrainSettings::default());
    panel.follow(run).unwrap();
    let gallery = sample_images(2);
    let mut harness = egui_kittest::Harness::builder()
        .with_size(egui::vec2(1000.0, 1400.0))
        .build_ui_state(
            |ui, panel: &mut TrainingPanel| {
                panel.poll(ui.ctx());
                panel.ui(ui, &gallery);
            },
            panel,
        );
    harness.run_steps(3);
    for label in [
        "Start",
        "Pause",
        "Stop",
        "Open run…",
        "Stop following",
        "Fine-tune",
        "Losses",
        "Learning rate",
    ] {
        harness.get_by_label(label);
    }
    harness.get_by_label_contains("Preview at step 10");
    harness.get_by_label_contains("step 10 / 100");
    harness.get_by_label_contains("perplexity 12.5");
    harness.get_by_label_contains("on the 2 gallery images");
    assert!(harness.state().preview.texture.is_some());

    // The stage-2 options and the advanced settings, checked for accessibility by `run`.
    harness.get_by_label("Advanced").click();
    harness.run();
    harness.state_mut().settings.stage = StageKind::Stage2;
    harness.run();
    harness.get_by_label("Vanilla");
    harness.get_by_label_contains("taken from the starting checkpoint");
    harness.state_mut().settings.stage = StageKind::Teacher;
    harness.run();
    harness.get_by_label("Adversarial loss");

    harness.get_by_label("Start").click();
    harness.run_steps(2);
    let e = harness.state_mut().take_error().expect("an error");
    assert!(e.contains("data folder"), "{e}");
    assert!(!harness.state().is_running());

    harness.get_by_label("Stop following").click();
    harness.run_steps(2);
    assert!(harness.state().settings().followed.is_none());
    harness.get_by_label_contains("No run yet");
}
