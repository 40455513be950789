//! Decoded images kept in memory for the whole run, and the list of files that could not be read.
//!
//! Decoding is by far the most expensive step (a 5120x2880 JPEG takes a good fraction of a second),
//! so each file is decoded once per run and kept, downscaled to what its crops need. Whether a file
//! is readable is also decided once: that keeps the replacement of unreadable items (and so the
//! batches) the same in every run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use image::RgbImage;

use super::augment::prepare_for_cache;
use super::loader::Mode;
use crate::image_io::decode_rgb;

/// A file that was left out of the batches, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// What is known about one file after its first decode.
enum Entry {
    Cached(Arc<RgbImage>),
    /// Readable, but the memory budget was used up: decoded again at each use.
    Uncached,
    Unreadable(String),
}

pub(crate) struct ImageCache {
    paths: Vec<PathBuf>,
    /// One cell per file. `OnceLock` also makes a second worker that wants the same file wait
    /// for the first one's decode instead of decoding it twice.
    entries: Vec<OnceLock<Entry>>,
    bytes_left: AtomicUsize,
    mode: Mode,
    size: u32,
    skipped: Mutex<Vec<SkippedFile>>,
}

impl ImageCache {
    pub(crate) fn new(paths: Vec<PathBuf>, mode: Mode, size: u32, budget_bytes: usize) -> Self {
        let entries = paths.iter().map(|_| OnceLock::new()).collect();
        ImageCache {
            paths,
            entries,
            bytes_left: AtomicUsize::new(budget_bytes),
            mode,
            size,
            skipped: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.paths.len()
    }

    pub(crate) fn path(&self, index: usize) -> &PathBuf {
        &self.paths[index]
    }

    /// The prepared image of file `index`, or why it cannot be used.
    pub(crate) fn get(&self, index: usize) -> Result<Arc<RgbImage>, String> {
        let mut fresh = None;
        let entry = self.entries[index].get_or_init(|| match self.load(index) {
            Ok(image) if self.reserve(&image) => Entry::Cached(Arc::new(image)),
            Ok(image) => {
                fresh = Some(image);
                Entry::Uncached
            }
            Err(reason) => {
                self.record_skip(index, &reason);
                Entry::Unreadable(reason)
            }
        });
        match entry {
            Entry::Cached(image) => Ok(Arc::clone(image)),
            Entry::Unreadable(reason) => Err(reason.clone()),
            Entry::Uncached => match fresh {
                Some(image) => Ok(Arc::new(image)),
                // Read fine before; failing now means the file changed during the run.
                None => self.load(index).map(Arc::new).inspect_err(|reason| {
                    self.record_skip(index, reason);
                }),
            },
        }
    }

    /// The files skipped so far, sorted by path (workers find them in any order).
    pub(crate) fn skipped(&self) -> Vec<SkippedFile> {
        let mut list = self.lock_skipped().clone();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        list
    }

    /// Reads, decodes and downscales one file. Never panics: `decode_rgb` turns a decoder crash on
    /// a malformed file (and a cut-off JPEG) into an error like any other unreadable file.
    fn load(&self, index: usize) -> Result<RgbImage, String> {
        let path = &self.paths[index];
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        decode_rgb(&bytes, path)
            .map(|image| prepare_for_cache(image, self.mode, self.size))
            .map_err(|e| e.to_string())
    }

    /// Takes the image's size out of the memory budget; false (and nothing taken) if it does not
    /// fit, so that a huge data set degrades to decoding on every use instead of running out of
    /// memory.
    fn reserve(&self, image: &RgbImage) -> bool {
        let bytes = image.as_raw().len();
        self.bytes_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn record_skip(&self, index: usize, reason: &str) {
        let path = &self.paths[index];
        let mut list = self.lock_skipped();
        if !list.iter().any(|s| &s.path == path) {
            list.push(SkippedFile {
                path: path.clone(),
                reason: reason.to_string(),
            });
        }
    }

    /// The list stays usable even if a thread panicked while holding the lock: it is only ever
    /// appended to, so it cannot be left half-updated.
    fn lock_skipped(&self) -> std::sync::MutexGuard<'_, Vec<SkippedFile>> {
        self.skipped.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{TempDir, encoded, pattern};

    fn jpeg(trailer: &[u8]) -> Vec<u8> {
        let mut bytes = encoded(&pattern(48, 40, 5), image::ImageFormat::Jpeg);
        bytes.extend_from_slice(trailer);
        bytes
    }

    #[test]
    fn cut_off_jpegs_are_recognised() {
        let whole = jpeg(&[]);
        assert!(!crate::image_io::is_truncated_jpeg(&whole));
        assert!(!crate::image_io::is_truncated_jpeg(&jpeg(
            b"trailing camera data"
        )));
        for cut in [4, whole.len() / 3, whole.len() / 2, whole.len() - 1] {
            assert!(
                crate::image_io::is_truncated_jpeg(&whole[..cut]),
                "cut at {cut}"
            );
        }
        assert!(!crate::image_io::is_truncated_jpeg(b"\x89PNG not a jpeg"));
    }

    #[test]
    fn a_cut_off_jpeg_is_skipped_with_a_reason() {
        let dir = TempDir::new("cutjpeg");
        let whole = jpeg(&[]);
        let path = dir.path().join("half.jpg");
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let cache = ImageCache::new(vec![path.clone()], Mode::Eval, 16, 1 << 20);
        let reason = cache.get(0).unwrap_err();
        assert!(reason.contains("stops before its end"), "{reason}");
        assert_eq!(cache.skipped()[0].path, path);
    }
}
