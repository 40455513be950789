//! Training and evaluation data: a folder of photos turned into batches of `[B, 3, S, S]` pixels.
//!
//! The module does not depend on burn: batches are plain `Vec<f32>` (channel-planar per image,
//! values `u8 / 255`) that the trainer turns into tensors, so the pipeline can be tested and
//! reused without a device.
//!
//! * [`ImageFolder`] finds the images under a folder, in a fixed (sorted) order.
//! * [`DataLoader`] decodes them on worker threads into a bounded prefetch queue, keeps each
//!   decoded image in memory downscaled to what the crops need (decoding a 5120x2880 JPEG every
//!   epoch would starve training), and cuts random (train) or centre (eval) crops.
//! * Everything random is drawn from seeds derived from `(seed, epoch, position)`, so a run is
//!   reproducible, independent of thread timing, and can be resumed exactly from a
//!   [`DataPosition`] stored in a checkpoint.
//! * Unreadable files are skipped (see [`DataLoader::skipped`]), never fatal.

mod augment;
mod cache;
mod folder;
mod loader;
mod resample;
mod rng;

#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use cache::SkippedFile;
pub use folder::{IMAGE_EXTENSIONS, ImageFolder};
pub use loader::{Batch, DEFAULT_CACHE_BYTES, DataLoader, DataPosition, LoaderConfig, Mode};

/// Everything that can stop the data pipeline. Single unreadable images are not errors (they are
/// skipped and listed); these are problems the person running the training has to fix.
///
/// Cloneable so that a loader can report the same failure again on every later call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("the image folder {root} does not exist")]
    MissingFolder { root: PathBuf },
    #[error("{root} is a file, not a folder; give the folder that holds the images")]
    NotAFolder { root: PathBuf },
    #[error("cannot list the folder {path}: {detail}")]
    ReadFolder { path: PathBuf, detail: String },
    #[error("no images (jpg, png, webp, bmp) found under {root}")]
    NoImages { root: PathBuf },
    #[error("invalid data loader setting: {detail}")]
    InvalidConfig { detail: String },
    #[error(
        "training needs at least one full batch, but {root} holds only {found} images for a batch \
         size of {batch_size}; add images or lower the batch size"
    )]
    TooFewImages {
        root: PathBuf,
        found: usize,
        batch_size: usize,
    },
    #[error(
        "none of the {count} images under {root} could be read (for example: {example}); \
         check that the files are JPEG, PNG, WebP or BMP images of at least 8x8 pixels"
    )]
    NothingReadable {
        root: PathBuf,
        count: usize,
        example: String,
    },
    #[error("cannot start the data loading threads: {detail}")]
    StartWorkers { detail: String },
    #[error("the data loading threads stopped unexpectedly (a worker thread crashed)")]
    WorkersStopped,
}
