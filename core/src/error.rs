//! Errors of the library, written for the people who read them: each says what is wrong and,
//! where there is something to do, what to do.

use std::path::PathBuf;

/// Everything that can go wrong when loading, importing or running a model.
#[derive(Debug, thiserror::Error)]
pub enum SftokError {
    // The OS error is part of the message and deliberately not a `#[source]`: `{:#}` printing
    // (the CLI's) would otherwise print it twice.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {path}: {error}{hint}", hint = write_hint(error))]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a valid configuration: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error(
        "{path} is not a usable weights file: {message}. If the download was interrupted, download it again."
    )]
    Weights { path: PathBuf, message: String },
    #[error("the weights in {path} do not fit this model:\n{report}")]
    KeyMismatch { path: PathBuf, report: String },
    // `transparent`, not "{0}" with a `#[from]` source: `{:#}` printing (the CLI's) would
    // otherwise say the inner message twice.
    #[error(transparent)]
    Image(#[from] crate::image_io::ImageError),
    #[error(transparent)]
    PyTorch(#[from] crate::checkpoint::pytorch::PyTorchError),
    #[error("device: {0}")]
    Device(String),
    /// What a run asks for does not fit (a missing teacher, a folder that does not exist...):
    /// front ends word it for their controls ([`crate::train::plan::PlanError`]).
    #[error("{0}")]
    Plan(Box<crate::train::plan::PlanError>),
    /// The training or evaluation images (a missing folder, no readable image...).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A folder given as a model directory is not one.
    #[error(transparent)]
    ModelDir(#[from] crate::checkpoint::model_dir::ModelDirError),
    /// A file given to an import is missing or a folder.
    #[error(transparent)]
    Import(#[from] crate::checkpoint::model_dir::ImportError),
    #[error(transparent)]
    Frechet(#[from] crate::eval::frechet::FrechetError),
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = SftokError> = std::result::Result<T, E>;

impl From<crate::train::plan::PlanError> for SftokError {
    fn from(e: crate::train::plan::PlanError) -> Self {
        SftokError::Plan(Box::new(e))
    }
}

impl SftokError {
    /// A failed read (or a failed look at an input).
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        SftokError::Io {
            path: path.into(),
            error,
        }
    }

    /// A failed write, creation, rename or removal.
    pub fn write(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        SftokError::Write {
            path: path.into(),
            error,
        }
    }
}

/// What to do about the common write failures.
fn write_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            " (the disk is full: free some space, or write somewhere else; a training run can then \
             continue with --resume)"
        }
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (no permission to write there: choose a folder you own)"
        }
        _ => "",
    }
}
