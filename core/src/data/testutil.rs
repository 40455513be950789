//! Helpers for the data module's tests: a self-deleting temporary folder and generated images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::{ImageFormat, RgbImage};

/// A fresh folder under the system's temporary folder, deleted (best effort) when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sftok-data-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `w x h` image whose every pixel differs from its neighbours, so that any change of
/// crop position or flip shows in the output.
pub(crate) fn pattern(w: u32, h: u32, salt: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + y * 3) as u8 ^ salt,
            (y * 5 + x) as u8,
            salt.wrapping_mul(31).wrapping_add((x * y) as u8),
        ])
    })
}

/// Writes `pattern(w, h, salt)` as PNG (whatever the extension says), creating folders.
pub(crate) fn write_png(path: &Path, w: u32, h: u32, salt: u8) {
    write_image(path, &pattern(w, h, salt), ImageFormat::Png);
}

pub(crate) fn write_image(path: &Path, image: &RgbImage, format: ImageFormat) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    image.save_with_format(path, format).unwrap();
}

/// The batch layout of `image`: three planes of `u8 / 255` values.
pub(crate) fn planar(image: &RgbImage) -> Vec<f32> {
    let plane = (image.width() * image.height()) as usize;
    let mut out = vec![0.0; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for (c, &value) in pixel.0.iter().enumerate() {
            out[c * plane + i] = f32::from(value) / 255.0;
        }
    }
    out
}

/// `image` encoded as a file of `format`.
pub(crate) fn encoded(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}
