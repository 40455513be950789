//! A training run's directory:
//!
//! ```text
//! <run>/config.json              the run's configuration, written before anything else
//! <run>/metrics.jsonl            one JSON object per logged step
//! <run>/previews/step_<N>.png    originals above reconstructions, every `preview_every` steps
//! <run>/checkpoints/step_<N>/    weights, EMA, optimiser and state.json (complete ones only)
//! <run>/model/                   the latest EMA weights as a model directory (what `--init`,
//!                                `--teacher` and `--model` read)
//! ```
//!
//! Checkpoints are written into a hidden temporary folder, each file fsynced, then the folder is
//! renamed into place: a write killed at any point leaves the previous checkpoints intact and
//! loadable, and a half-written folder is never mistaken for a checkpoint.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::files::{read_weights, safetensors_bytes};
use crate::checkpoint::state::StateDict;
use crate::error::{Result, SftokError};

pub const RUN_CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
pub const STATE_FILE: &str = "state.json";
pub const EXTRA_FILE: &str = "extra.json";

/// Where training resumes: everything that is not a tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Completed optimiser steps.
    pub step: u64,
    /// Data position (epoch, batch within it) of the next batch.
    pub data_epoch: u64,
    pub data_batch: u64,
    pub ema_updates: u64,
    /// Images seen so far.
    pub images_seen: u64,
}

/// The writer lock of a run directory ([`RunDir::lock`]).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// A run opened for writing ([`RunDir::open`]).
#[derive(Debug)]
pub struct OpenedRun<C> {
    /// Hold it for the whole run.
    pub lock: RunLock,
    pub config: C,
    /// The latest complete checkpoint, if any.
    pub latest: Option<(u64, PathBuf)>,
}

/// The paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(RUN_CONFIG)
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS)
    }
    pub fn previews_dir(&self) -> PathBuf {
        self.root.join("previews")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The published model directory (EMA weights).
    pub fn model_dir(&self) -> PathBuf {
        self.root.join("model")
    }

    /// Creates the folders.
    pub fn create(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.previews_dir(),
            self.checkpoints_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| SftokError::write(&dir, e))?;
        }
        Ok(())
    }

    /// Takes the run's writer lock (`<run>/.lock`, an advisory `flock`), held until the
    /// returned guard is dropped: a second training on the same folder is refused at once instead
    /// of both writing checkpoints and metrics (issue 17). The kernel releases the lock when the
    /// process dies, so a killed run never leaves a stale lock.
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.root).map_err(|e| SftokError::write(&self.root, e))?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| SftokError::write(&path, e))?;
        // std's advisory lock (flock on Unix), held until `file` is closed with the run.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(SftokError::Other(format!(
                    "another training is writing to {}{}; wait for it to finish (or stop it), or choose another run folder",
                    self.root.display(),
                    if holder.trim().is_empty() {
                        String::new()
                    } else {
                        format!(" (process {})", holder.trim())
                    }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SftokError::write(&path, e)),
        }
        let mut file = file;
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        self.remove_leftovers();
        Ok(RunLock { _file: file })
    }

    /// Temporary files and folders of writers that were killed (checkpoint folders, the model
    /// directory's atomic writes). Only called under the run's lock.
    fn remove_leftovers(&self) {
        for dir in [self.checkpoints_dir(), self.model_dir(), self.root.clone()] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") || (name.starts_with('.') && name.contains(".tmp-")) {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        }
    }

    /// Appends one line to `metrics.jsonl` (flushed, so a viewer can follow it live).
    pub fn append_metrics(&self, row: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| SftokError::write(&path, e))?;
        writeln!(f, "{row}").map_err(|e| SftokError::write(&path, e))
    }

    /// Drops metric rows past `step` (after resuming from an earlier checkpoint, rows logged
    /// after it would otherwise appear twice).
    pub fn truncate_metrics_after(&self, step: u64) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::checkpoint::files::write_atomic(&path, kept.as_bytes())
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(self.checkpoints_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step_")?.parse().ok()?;
                let path = entry.path();
                path.join(STATE_FILE).is_file().then_some((step, path))
            })
            .collect();
        out.sort();
        out
    }

    pub fn latest_checkpoint(&self) -> Option<(u64, PathBuf)> {
        self.checkpoints().pop()
    }

    /// Writes a checkpoint atomically: `files` (name -> tensors), `extra` (`extra.json`, the
    /// non-tensor training state) and the resume state, into a temporary folder that is renamed
    /// to `step_<N>`; then keeps only the newest `keep`. Everything a resume reads is inside the
    /// folder before the rename, so a kill at any point leaves either the whole checkpoint or none.
    pub fn write_checkpoint(
        &self,
        state: &ResumeState,
        files: &[(&str, &StateDict)],
        extra: Option<&[u8]>,
        keep: usize,
    ) -> Result<PathBuf> {
        let dir = self.checkpoints_dir();
        std::fs::create_dir_all(&dir).map_err(|e| SftokError::write(&dir, e))?;
        // Other writers' leftovers are removed when the run's lock is taken (`lock`).
        let name = format!("step_{:08}", state.step);
        let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| SftokError::write(&tmp, e))?;
        for (file, tensors) in files {
            write_synced(&tmp.join(file), &safetensors_bytes(tensors, None)?)?;
        }
        if let Some(extra) = extra {
            write_synced(&tmp.join(EXTRA_FILE), extra)?;
        }
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        // The state file goes last: a folder with it is complete.
        write_synced(&tmp.join(STATE_FILE), &json)?;
        let final_path = dir.join(&name);
        if final_path.exists() {
            std::fs::remove_dir_all(&final_path).map_err(|e| SftokError::write(&final_path, e))?;
        }
        std::fs::rename(&tmp, &final_path).map_err(|e| SftokError::write(&final_path, e))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        let all = self.checkpoints();
        if all.len() > keep.max(1) {
            for (_, old) in &all[..all.len() - keep.max(1)] {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        Ok(final_path)
    }

    /// Opens the run for writing: takes its lock and settles the configuration. Resuming reads
    /// the run's own `config.json` and `keep` decides what of the requested one applies (the
    /// trainers let only the length grow); a new run is refused where checkpoints already are.
    pub fn open<C: Serialize + serde::de::DeserializeOwned>(
        &self,
        requested: C,
        resume: bool,
        keep: impl FnOnce(C, C) -> C,
    ) -> Result<OpenedRun<C>> {
        let lock = self.lock()?;
        let latest = self.latest_checkpoint();
        let config = if resume {
            let path = self.config_path();
            let text = std::fs::read_to_string(&path).map_err(|e| SftokError::io(&path, e))?;
            let saved: C = serde_json::from_str(&text).map_err(|e| SftokError::Config {
                path: path.clone(),
                message: format!("not this kind of run's configuration ({e})"),
            })?;
            keep(saved, requested)
        } else if latest.is_some() {
            return Err(crate::train::plan::PlanError::RunExists {
                path: self.root.clone(),
            }
            .into());
        } else {
            requested
        };
        Ok(OpenedRun {
            lock,
            config,
            latest,
        })
    }

    /// Writes the run's configuration (before anything else of the run).
    pub fn write_config<C: Serialize>(&self, config: &C) -> Result<()> {
        self.create()?;
        crate::checkpoint::files::write_atomic(
            &self.config_path(),
            serde_json::to_string_pretty(config)
                .expect("a configuration serialises")
                .as_bytes(),
        )
    }

    /// Reads a checkpoint: its resume state and a named file's tensors.
    pub fn read_checkpoint(path: &Path) -> Result<ResumeState> {
        let state_path = path.join(STATE_FILE);
        let text =
            std::fs::read_to_string(&state_path).map_err(|e| SftokError::io(&state_path, e))?;
        serde_json::from_str(&text).map_err(|e| SftokError::Config {
            path: state_path,
            message: e.to_string(),
        })
    }

    pub fn read_checkpoint_file(path: &Path, file: &str) -> Result<StateDict> {
        read_weights(&path.join(file))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| SftokError::write(path, e))?;
    f.write_all(bytes).map_err(|e| SftokError::write(path, e))?;
    f.sync_all().map_err(|e| SftokError::write(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::state::StoredTensor;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sftok-run-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn state(step: u64) -> ResumeState {
        ResumeState {
            step,
            data_epoch: 0,
            data_batch: step,
            ema_updates: step,
            images_seen: step * 4,
        }
    }

    #[test]
    fn keeps_the_newest_checkpoints() {
        let run = RunDir::new(temp_dir("keep"));
        run.create().unwrap();
        let mut sd = StateDict::new();
        sd.insert("w".into(), StoredTensor::f32(vec![2], vec![1.0, 2.0]));
        for step in 1..=4 {
            run.write_checkpoint(&state(step), &[("model.safetensors", &sd)], None, 2)
                .unwrap();
        }
        let steps: Vec<u64> = run.checkpoints().iter().map(|c| c.0).collect();
        assert_eq!(steps, [3, 4]);
        let (step, path) = run.latest_checkpoint().unwrap();
        assert_eq!(RunDir::read_checkpoint(&path).unwrap(), state(step));
        assert_eq!(
            RunDir::read_checkpoint_file(&path, "model.safetensors").unwrap(),
            sd
        );
    }

    #[test]
    fn a_write_killed_halfway_leaves_the_previous_checkpoint() {
        let run = RunDir::new(temp_dir("killed"));
        run.create().unwrap();
        let mut sd = StateDict::new();
        sd.insert("w".into(), StoredTensor::f32(vec![1], vec![7.0]));
        run.write_checkpoint(&state(10), &[("model.safetensors", &sd)], None, 3)
            .unwrap();
        // What a process killed during the next write leaves: a temporary folder with a
        // truncated weights file and no state file, and a final-looking folder without state.
        let partial = run.checkpoints_dir().join(".tmp-step_00000020-999");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("model.safetensors"), b"\x10\x00\x00").unwrap();
        std::fs::create_dir_all(run.checkpoints_dir().join("step_00000030")).unwrap();
        let (step, path) = run.latest_checkpoint().unwrap();
        assert_eq!(step, 10);
        assert_eq!(
            RunDir::read_checkpoint_file(&path, "model.safetensors").unwrap(),
            sd
        );
    }

    #[test]
    fn a_second_writer_is_refused_and_leftovers_are_removed() {
        let run = RunDir::new(temp_dir("lock"));
        run.create().unwrap();
        let leftover = run.checkpoints_dir().join(".tmp-step_00000020-999");
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::create_dir_all(run.model_dir()).unwrap();
        let tmp_file = run.model_dir().join(".config.json.tmp-123");
        std::fs::write(&tmp_file, b"x").unwrap();
        let first = run.lock().unwrap();
        assert!(!leftover.exists() && !tmp_file.exists());
        let e = run.lock().unwrap_err().to_string();
        assert!(e.contains("another training"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        run.lock().unwrap();
    }

    #[test]
    fn metrics_after_a_resume_point_are_dropped() {
        let run = RunDir::new(temp_dir("metrics"));
        run.create().unwrap();
        for step in 1..=5 {
            run.append_metrics(&serde_json::json!({"step": step, "loss": 1.0}))
                .unwrap();
        }
        run.truncate_metrics_after(3).unwrap();
        let text = std::fs::read_to_string(run.metrics_path()).unwrap();
        assert_eq!(text.lines().count(), 3);
    }
}
