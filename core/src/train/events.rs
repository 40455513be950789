//! What a running trainer reports, and how it is asked to stop. The CLI and the app are two views
//! of this one stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A message from the trainer.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Set-up is done; `resumed_from` is the step of the checkpoint resumed from.
    Started {
        total_steps: u64,
        resumed_from: Option<u64>,
        device: String,
        skipped_files: usize,
    },
    /// After every step.
    Progress {
        step: u64,
        total_steps: u64,
        loss: f64,
        images_per_sec: f64,
        eta_secs: f64,
    },
    /// A row of `metrics.jsonl`.
    Metrics(serde_json::Value),
    Preview {
        step: u64,
        path: PathBuf,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// Unreadable training images found so far (skipped, never fatal).
    SkippedFiles(Vec<(PathBuf, String)>),
    /// Stopped on request, after writing a checkpoint.
    Stopped {
        step: u64,
        model_dir: PathBuf,
    },
    Finished {
        step: u64,
        model_dir: PathBuf,
    },
    Failed {
        message: String,
    },
}

/// Asks a running trainer to stop; it finishes the current step, writes a checkpoint and returns.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
