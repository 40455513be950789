//! Errors of the library, written for the people who read them: each says what is wrong and,
//! where there is something to do, what to do.

use std::path::PathBuf;

/// Everything that can go wrong when loading, importing or running a model.
#[derive(Debug, thiserror::Error)]
pub enum SftokError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    #[error("{0}")]
    Image(#[from] crate::image_io::ImageError),
    #[error("{0}")]
    PyTorch(#[from] crate::checkpoint::pytorch::PyTorchError),
    #[error("device: {0}")]
    Device(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = SftokError> = std::result::Result<T, E>;

impl SftokError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SftokError::Io {
            path: path.into(),
            source,
        }
    }
}
