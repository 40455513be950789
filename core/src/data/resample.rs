//! Resampling a square crop straight into the batch's planar `f32` layout.
//!
//! `image::imageops::resize` reads every filter tap through a generic pixel view; for the small
//! crops of a training batch that made resizing about 95% of a cached item's cost. Crops are
//! square, so one table of Catmull-Rom weights serves both axes, and the samples are read from
//! contiguous rows.

use image::RgbImage;

/// For each output sample: the input samples it reads (`first`, `count`) and their normalised
/// weights.
struct Taps {
    first: Vec<usize>,
    count: Vec<usize>,
    /// `width` slots per output sample, the first `count` of them used.
    weights: Vec<f32>,
    width: usize,
}

impl Taps {
    /// Input range and weights of output sample `i`.
    fn of(&self, i: usize) -> (std::ops::Range<usize>, &[f32]) {
        let (first, count) = (self.first[i], self.count[i]);
        (
            first..first + count,
            &self.weights[i * self.width..][..count],
        )
    }
}

/// Catmull-Rom cubic (B = 0, C = 0.5), the filter `image_io::center_crop_resize` uses.
fn catmull_rom(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        (1.5 * x - 2.5) * x * x + 1.0
    } else if x < 2.0 {
        ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    } else {
        0.0
    }
}

/// Weights to go from `src` samples to `dst`. When shrinking, the kernel is widened by the
/// reduction factor, so every input pixel contributes (no aliasing), as `image` does.
fn taps(src: usize, dst: usize) -> Taps {
    let ratio = src as f32 / dst as f32;
    let widen = ratio.max(1.0);
    let support = 2.0 * widen;
    let width = (2.0 * support).ceil() as usize + 1;
    let mut taps = Taps {
        first: Vec::with_capacity(dst),
        count: Vec::with_capacity(dst),
        weights: vec![0.0; dst * width],
        width,
    };
    for (i, row) in taps.weights.chunks_exact_mut(width).enumerate() {
        let centre = (i as f32 + 0.5) * ratio;
        let start = ((centre - support).floor().max(0.0) as usize).min(src - 1);
        let end = ((centre + support).ceil() as usize).clamp(start + 1, src.min(start + width));
        for (w, j) in row.iter_mut().zip(start..end) {
            *w = catmull_rom((j as f32 + 0.5 - centre) / widen);
        }
        let sum: f32 = row.iter().sum();
        if sum != 0.0 {
            row.iter_mut().for_each(|w| *w /= sum);
        }
        taps.first.push(start);
        taps.count.push(end - start);
    }
    taps
}

/// Resamples the `side x side` square of `image` at (`x`, `y`) to `size x size` and writes it as
/// three planes of `u8 / 255` values (rounded to 8-bit levels, like every other input the model
/// sees), mirrored left-right if `flip`. `out` must hold `3 * size * size` values.
pub(crate) fn write_square(
    image: &RgbImage,
    (x, y, side): (u32, u32, u32),
    size: u32,
    flip: bool,
    out: &mut [f32],
) {
    let (stride, side, size) = (3 * image.width() as usize, side as usize, size as usize);
    let rows = image.as_raw()[y as usize * stride..]
        .chunks(stride)
        .take(side);
    let rows = rows.map(|row| &row[3 * x as usize..3 * (x as usize + side)]);
    if side == size {
        // Nothing to resample (eval, and `max_scale` 1 training): copy the 8-bit values.
        for (oy, row) in rows.enumerate() {
            let values = row.iter().map(|&v| f32::from(v));
            write_row(&values.collect::<Vec<_>>(), oy, size, flip, out);
        }
        return;
    }
    let taps = taps(side, size);
    let across: Vec<Vec<f32>> = rows.map(|row| resample_row(row, &taps, size)).collect();
    let mut sum = vec![0.0f32; size * 3];
    for oy in 0..size {
        let (range, weights) = taps.of(oy);
        sum.fill(0.0);
        for (row, &w) in across[range].iter().zip(weights) {
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += w * v);
        }
        write_row(&sum, oy, size, flip, out);
    }
}

/// Horizontal pass: one row of `side` RGB pixels to `size` RGB samples (interleaved, 0..255).
fn resample_row(row: &[u8], taps: &Taps, size: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; size * 3];
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        let (range, weights) = taps.of(i);
        let src = &row[3 * range.start..3 * range.end];
        for (&w, p) in weights.iter().zip(src.chunks_exact(3)) {
            px[0] += w * f32::from(p[0]);
            px[1] += w * f32::from(p[1]);
            px[2] += w * f32::from(p[2]);
        }
    }
    out
}

/// Writes output row `oy` (interleaved RGB samples in 0..255) into the three planes, rounded to
/// 8-bit levels.
fn write_row(samples: &[f32], oy: usize, size: usize, flip: bool, out: &mut [f32]) {
    let plane = size * size;
    for (ox, px) in samples.chunks_exact(3).enumerate() {
        let at = oy * size + if flip { size - 1 - ox } else { ox };
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + at] = v.round().clamp(0.0, 255.0) / 255.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::planar;
    use image::imageops::{self, FilterType};

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = ((x as f32 * 0.3).sin() * 100.0 + (y as f32 * 0.2).cos() * 80.0 + 128.0) as u8;
            image::Rgb([v, (x * 2) as u8, 255 - (y * 3) as u8])
        })
    }

    #[test]
    fn same_size_is_an_exact_copy() {
        let image = pattern(40, 30);
        let mut out = vec![0.0; 3 * 16 * 16];
        write_square(&image, (5, 7, 16), 16, false, &mut out);
        let expected = imageops::crop_imm(&image, 5, 7, 16, 16).to_image();
        assert_eq!(out, planar(&expected));
    }

    #[test]
    fn matches_image_crates_catmull_rom_within_one_level() {
        let image = pattern(200, 150);
        for (x, y, side, size) in [
            (10, 3, 137, 64),
            (0, 0, 150, 64),
            (20, 30, 40, 64),
            (1, 2, 97, 31),
        ] {
            let mut out = vec![0.0; 3 * size * size];
            write_square(&image, (x, y, side), size as u32, false, &mut out);
            let square = imageops::crop_imm(&image, x, y, side, side).to_image();
            let reference =
                imageops::resize(&square, size as u32, size as u32, FilterType::CatmullRom);
            let worst = out
                .iter()
                .zip(planar(&reference))
                .map(|(a, b)| ((a - b) * 255.0).abs().round() as u32)
                .max();
            assert!(
                worst <= Some(1),
                "{side} -> {size}: off by {worst:?} levels"
            );
        }
    }

    #[test]
    fn flat_colour_stays_flat_and_flip_mirrors() {
        let image = RgbImage::from_pixel(50, 50, image::Rgb([10, 128, 250]));
        let mut out = vec![0.0; 3 * 20 * 20];
        write_square(&image, (3, 3, 47), 20, true, &mut out);
        assert!(out[..400].iter().all(|&v| v == 10.0 / 255.0));
        assert!(out[800..].iter().all(|&v| v == 250.0 / 255.0));

        let ramp = RgbImage::from_fn(8, 8, |x, _| image::Rgb([x as u8, 0, 0]));
        let mut out = vec![0.0; 3 * 64];
        write_square(&ramp, (0, 0, 8), 8, true, &mut out);
        assert_eq!(out[0], 7.0 / 255.0);
        assert_eq!(out[7], 0.0);
    }
}
