//! Trivial references: what an image scores with no learning at all. Every PSNR of a tokenizer is
//! read against these: a model that scores below the image's own mean colour has learnt nothing
//! (the bundled models of 2026-11 did exactly that, unnoticed, because nothing printed the floor).
//!
//! - mean colour: every pixel set to the image's mean RGB;
//! - `k x k` block means: the mean of each `k x k` block (a box filter), upsampled back with
//!   bicubic (Catmull-Rom) interpolation. At 64 px, 8x8 blocks leave 64 colours, as many values as
//!   an f8 teacher has codes per image.

use image::imageops::FilterType;
use image::{Rgb, RgbImage};

/// The block sizes reported beside the mean colour.
pub const BLOCK_SIZES: [u32; 3] = [2, 4, 8];

/// Every pixel the image's mean colour.
pub fn mean_colour(image: &RgbImage) -> RgbImage {
    let n = (image.width() as f64 * image.height() as f64).max(1.0);
    let mut sum = [0.0f64; 3];
    for p in image.pixels() {
        for (acc, &v) in sum.iter_mut().zip(&p.0) {
            *acc += v as f64;
        }
    }
    let mean = sum.map(|s| (s / n).round().clamp(0.0, 255.0) as u8);
    RgbImage::from_pixel(image.width(), image.height(), Rgb(mean))
}

/// Means of `block x block` blocks, upsampled back bicubically to the image's size. A partial
/// block at the right or bottom edge averages what it has.
pub fn block_means(image: &RgbImage, block: u32) -> RgbImage {
    let block = block.max(1);
    let (w, h) = image.dimensions();
    let (bw, bh) = (w.div_ceil(block).max(1), h.div_ceil(block).max(1));
    let small = RgbImage::from_fn(bw, bh, |bx, by| {
        let mut sum = [0.0f64; 3];
        let mut count = 0.0;
        for y in by * block..((by + 1) * block).min(h) {
            for x in bx * block..((bx + 1) * block).min(w) {
                for (acc, &v) in sum.iter_mut().zip(&image.get_pixel(x, y).0) {
                    *acc += v as f64;
                }
                count += 1.0;
            }
        }
        Rgb(sum.map(|s| (s / f64::max(count, 1.0)).round().clamp(0.0, 255.0) as u8))
    });
    if block == 1 {
        return image.clone();
    }
    image::imageops::resize(&small, w, h, FilterType::CatmullRom)
}

/// The references of one image: `(name, reconstruction)`, mean colour first, then blocks from
/// fine to coarse.
pub fn references(image: &RgbImage) -> Vec<(String, RgbImage)> {
    let mut out = vec![("mean colour".to_string(), mean_colour(image))];
    for b in BLOCK_SIZES {
        out.push((format!("{b}x{b} block means"), block_means(image, b)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io::psnr;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(64, 64, |x, y| {
            Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
        })
    }

    #[test]
    fn finer_blocks_score_higher_and_all_beat_nothing() {
        let image = gradient();
        let refs = references(&image);
        let scores: Vec<f64> = refs.iter().map(|(_, r)| psnr(&image, r)).collect();
        // mean colour < 8x8 < 4x4 < 2x2
        assert!(scores[0] < scores[3], "{scores:?}");
        assert!(scores[3] < scores[2] && scores[2] < scores[1], "{scores:?}");
        assert!(scores[0] > 5.0, "{scores:?}");
    }

    #[test]
    fn a_flat_image_is_its_own_mean_and_its_own_blocks() {
        let flat = RgbImage::from_pixel(16, 16, Rgb([10, 200, 30]));
        assert_eq!(mean_colour(&flat), flat);
        assert_eq!(block_means(&flat, 4), flat);
    }

    #[test]
    fn block_means_of_blocks_are_exact_block_averages() {
        // Two 2x2 blocks side by side: left 0 and 100, right all 50.
        let im = RgbImage::from_fn(4, 2, |x, y| {
            let v = if x < 2 {
                if (x + y) % 2 == 0 { 0 } else { 100 }
            } else {
                50
            };
            Rgb([v, v, v])
        });
        let small_means = block_means(&im, 2);
        // Both blocks average 50: the upsampled image is flat 50.
        assert!(small_means.pixels().all(|p| p.0 == [50, 50, 50]));
    }
}
