//! Turning the Train view's settings into a run configuration (a [`RunPlan`], which the command
//! line fills too, so both build runs the same way), checking the folders first with messages
//! that say what to do, and preparing one-click fine-tunes.

use std::path::{Path, PathBuf};

use sftok_core::checkpoint::{CONFIG_FILE, MODEL_FILE, TEACHER_FILE};
use sftok_core::train::run_dir::RunDir;
use sftok_core::train::{StageKind, TrainConfig};

use super::TrainSettings;
use sftok_core::SftokError;
use sftok_core::train::plan::{PlanError, RunPlan, previous};

/// Length of the one-click fine-tune.
pub const FINETUNE_STEPS: u64 = 50;

/// A planning error in the app's words: what is wrong, and which field or button fixes it.
pub fn plan_words(e: &PlanError) -> String {
    match e {
        PlanError::Missing { .. } => format!("{e} (moved or deleted?): choose it again"),
        PlanError::NotAFolder { .. } => format!("{e}: choose a folder"),
        PlanError::NoTeacher { .. } => format!(
            "{e}: choose a teacher run (made by the `teacher` stage) or a model folder that includes its teacher"
        ),
        PlanError::NotAModel { .. } => format!(
            "{e}: choose a folder with {CONFIG_FILE} and {MODEL_FILE}, such as a run's model/ folder"
        ),
        PlanError::CannotStart { stage, .. } => {
            let wanted = match stage {
                StageKind::Teacher => {
                    format!("a teacher run or a model folder with {TEACHER_FILE}")
                }
                StageKind::Stage1 => format!("a stage-1 run or a model folder with {MODEL_FILE}"),
                _ => format!(
                    "the stage-{} run (or a model folder with {MODEL_FILE})",
                    previous(*stage)
                ),
            };
            format!("{e}: choose {wanted} as the Starting checkpoint")
        }
        PlanError::BatchLargerThanData { images, .. } => format!(
            "{e}: lower Batch size to {} or add images",
            (*images).max(1)
        ),
        PlanError::NeedsTeacher {
            init_has_none: false,
            ..
        } => format!("{e}: choose a Teacher (a teacher run, or an imported official teacher)"),
        PlanError::NeedsTeacher {
            init_has_none: true,
            ..
        } => format!("{e}: the Starting checkpoint carries no teacher, so choose a Teacher too"),
        PlanError::NeedsInit { stage } => format!(
            "{e}: choose its run (stage {}) as the Starting checkpoint",
            previous(*stage)
        ),
        PlanError::RunExists { .. } => {
            format!("{e}: press Resume to continue it, or choose another run folder")
        }
        PlanError::Unreadable { .. } | PlanError::Model(_) => e.to_string(),
    }
}

/// A library error in the app's words (planning errors name the app's fields).
pub fn gui_error(e: &SftokError) -> String {
    match e {
        SftokError::Plan(p) => plan_words(p),
        other => other.to_string(),
    }
}

fn has_teacher(path: &Path) -> bool {
    sftok_core::checkpoint::model_dir::carries_teacher(path)
}

/// The configuration of a new run from the view's settings, after checking the folders.
pub fn config_from_settings(s: &TrainSettings) -> Result<TrainConfig, String> {
    let data = s
        .data
        .as_deref()
        .ok_or("choose a data folder (the images to train on) first")?;
    let mut plan = RunPlan::new(s.stage, data);
    plan.preset = s.preset.clone();
    plan.teacher = s.teacher.clone();
    plan.init = s.init.clone();
    plan.vanilla = s.vanilla;
    plan.replace_prob = s.replace_prob;
    plan.steps = s.steps.max(1);
    plan.batch_size = s.batch_size.max(1);
    plan.log_every = s.log_every.max(1);
    plan.preview_every = s.preview_every;
    plan.checkpoint_every = s.checkpoint_every.max(1);
    // Ticked: on from half-way, for the teacher too (whose command-line default is off).
    plan.gan_start = Some((!s.no_gan).then_some(plan.steps / 2));
    plan.check().map_err(|e| plan_words(&e))?;
    plan.config().map_err(|e| plan_words(&e))
}

/// The configuration to resume the run in `run_dir` with: its own, at least `steps` long (the
/// trainer keeps a resumed run's configuration; only its length may grow).
pub fn resume_config(run_dir: &Path, steps: u64) -> Result<TrainConfig, String> {
    let run = RunDir::new(run_dir);
    if run.latest_checkpoint().is_none() {
        return Err(format!(
            "{} holds no checkpoint to resume from: press Start to begin a run there",
            run_dir.display()
        ));
    }
    let path = run.config_path();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {} ({e}): {} is not a run folder made by training",
            path.display(),
            run_dir.display()
        )
    })?;
    let mut config: TrainConfig = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a run configuration ({e}); was it written by another version of SFTok Studio?",
            path.display()
        )
    })?;
    config.steps = config.steps.max(steps);
    Ok(config)
}

/// Refuses to start a new run over one that has checkpoints.
pub fn check_new_run_dir(run_dir: &Path) -> Result<(), String> {
    if let Some((step, _)) = RunDir::new(run_dir).latest_checkpoint() {
        return Err(format!(
            "{} already holds a run (checkpoint at step {step}): press Resume to continue it, or choose another run folder",
            run_dir.display()
        ));
    }
    if run_dir.exists() && !run_dir.is_dir() {
        return Err(format!(
            "the run folder {} is a file: choose a folder",
            run_dir.display()
        ));
    }
    Ok(())
}

/// Where the app keeps its runs and fine-tunes: the platform's per-user data folder.
pub fn app_data_dir() -> PathBuf {
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(d) = env_dir("XDG_DATA_HOME") {
        return d.join("sftok-studio");
    }
    if cfg!(windows)
        && let Some(d) = env_dir("APPDATA")
    {
        return d.join("sftok-studio");
    }
    if let Some(home) = env_dir("HOME") {
        return if cfg!(target_os = "macos") {
            home.join("Library/Application Support/sftok-studio")
        } else {
            home.join(".local/share/sftok-studio")
        };
    }
    std::env::temp_dir().join("sftok-studio")
}

/// A folder under `parent` named `stem`, not yet existing (a `-2`, `-3`... suffix if needed).
fn unused_dir(parent: &Path, stem: &str) -> PathBuf {
    let first = parent.join(stem);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| parent.join(format!("{stem}-{i}")))
        .find(|p| !p.exists())
        .expect("some suffix is free")
}

/// A new run folder for the settings when none was chosen.
pub fn default_run_dir(s: &TrainSettings) -> PathBuf {
    let stem = match s.stage {
        StageKind::Teacher | StageKind::Stage1 => {
            format!("{}-{}-{}", s.stage, s.preset, timestamp())
        }
        _ => format!("{}-{}", s.stage, timestamp()),
    };
    unused_dir(&app_data_dir().join("runs"), &stem)
}

/// The run folder of a fine-tune of `base`: `<data dir>/finetunes/<base name>-finetune-<time>`
/// (never beside the base model, which may be a read-only bundled asset; the temporary folder if
/// the data folder cannot be created).
pub fn finetune_run_dir(base: &Path) -> PathBuf {
    let parent = app_data_dir().join("finetunes");
    if std::fs::create_dir_all(&parent).is_ok() {
        finetune_run_dir_in(&parent, base)
    } else {
        finetune_run_dir_in(&std::env::temp_dir().join("sftok-studio-finetunes"), base)
    }
}

/// A new fine-tune run folder for `base` under `parent`.
pub fn finetune_run_dir_in(parent: &Path, base: &Path) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    unused_dir(parent, &format!("{name}-finetune-{}", timestamp()))
}

/// Checks that `base` is a model folder (or a run that published one) a fine-tune can start
/// from.
pub fn check_finetune_base(base: &Path) -> Result<(), String> {
    sftok_core::train::plan::check_model_folder(base)
        .map(|_| ())
        .map_err(|e| plan_words(&e))
}

/// Puts the images into `data` (hard links where possible, else copies), numbered so that equal
/// names from different folders do not collide. Returns how many were placed.
pub fn gather_images(images: &[PathBuf], data: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(data)
        .map_err(|e| format!("cannot create the folder {} ({e})", data.display()))?;
    let mut placed = 0;
    let mut missing = Vec::new();
    for (i, src) in images.iter().enumerate() {
        if !src.is_file() {
            missing.push(src.display().to_string());
            continue;
        }
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let dst = data.join(format!("{i:04}-{name}"));
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).map_err(|e| {
                format!(
                    "cannot copy {} into {} ({e})",
                    src.display(),
                    data.display()
                )
            })?;
        }
        placed += 1;
    }
    if placed == 0 {
        return Err(if missing.is_empty() {
            "the gallery is empty: add the images to fine-tune on first".into()
        } else {
            format!(
                "none of the gallery's images exist on disk any more ({}): add them again",
                missing.join(", ")
            )
        });
    }
    Ok(placed)
}

/// The fine-tune's run: stage 3 (decoder fine-tuning, encoder and quantizer frozen) from `base`
/// on `<run>/data`, short, with a small warm-up and no adversarial loss (too short to help).
pub fn finetune_config(
    base: &Path,
    run_dir: &Path,
    images: usize,
    steps: u64,
) -> Result<TrainConfig, String> {
    let data = run_dir.join("data");
    let mut plan = RunPlan::new(StageKind::Stage3, &data);
    plan.init = Some(base.to_path_buf());
    // The teacher only travels along, so that the tuned model folder is complete.
    plan.teacher = has_teacher(base).then(|| base.to_path_buf());
    plan.steps = steps.max(1);
    plan.batch_size = images.clamp(1, 8);
    plan.warmup = Some((steps / 10).clamp(1, 5));
    plan.gan_start = Some(None);
    plan.log_every = 1;
    plan.preview_every = (steps / 5).max(1);
    plan.checkpoint_every = steps.max(1);
    plan.keep_checkpoints = 1;
    plan.config().map_err(|e| plan_words(&e))
}

/// The UTC time as `YYYYMMDD-HHMMSS`.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
