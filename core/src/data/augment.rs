//! From a decoded image to the crop of one batch item: the downscale kept in the cache and the
//! random (train) or centre (eval) square with its flip. `resample` turns the square into pixels.

use image::RgbImage;
use image::imageops::{self, FilterType};

use super::loader::Mode;
use super::rng::SplitMix64;
use crate::image_io::center_crop_resize;

/// Reduces a freshly decoded image to what every later crop of it needs, so the cache holds no
/// more pixels than necessary.
///
/// * Eval: the final `size x size` centre crop itself (exactly [`center_crop_resize`], so eval
///   inputs match what reconstruction elsewhere in the project sees).
/// * Train: the whole image with its shorter side at most `ceil(size * max_scale)`, the largest
///   scale a crop can ask for. Smaller images are kept as they are (upscaling happens per crop).
pub(crate) fn prepare_for_cache(image: RgbImage, mode: Mode, size: u32) -> RgbImage {
    match mode {
        Mode::Eval => center_crop_resize(&image, size).0,
        Mode::Train { max_scale, .. } => shrink_shorter_side(image, cache_side(size, max_scale)),
    }
}

/// Largest shorter side a train crop can need: `ceil(size * max_scale)`.
pub(crate) fn cache_side(size: u32, max_scale: f32) -> u32 {
    (f64::from(size) * f64::from(max_scale)).ceil() as u32
}

/// Downscales so the shorter side is `side`, keeping the aspect ratio; never upscales.
///
/// Triangle (bilinear) filtering: `image` widens the kernel with the reduction factor, so this
/// averages properly (no aliasing) at half the cost of Catmull-Rom on the large factors
/// (5120x2880 to 192 px) the cache sees.
fn shrink_shorter_side(image: RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let short = w.min(h);
    if short <= side {
        return image;
    }
    let scale = |long: u32| {
        ((f64::from(long) * f64::from(side) / f64::from(short)).round() as u32).max(side)
    };
    let (nw, nh) = if w <= h {
        (side, scale(h))
    } else {
        (scale(w), side)
    };
    imageops::resize(&image, nw, nh, FilterType::Triangle)
}

/// A square of the cached image, resized to the output size, optionally mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Crop {
    pub x: u32,
    pub y: u32,
    /// Side of the square in the cached image's pixels.
    pub side: u32,
    pub flip: bool,
}

/// The whole (already centre-cropped) cached image, as eval uses it.
pub(crate) fn full_crop(width: u32, height: u32) -> Crop {
    Crop {
        x: 0,
        y: 0,
        side: width.min(height),
        flip: false,
    }
}

/// The train augmentation: shorter side to `round(size * u)` with `u ~ U[1, max_scale]`, a
/// uniformly placed `size x size` crop, and a horizontal flip with p = 0.5 if `flip`.
///
/// It is computed as the equivalent square in the cached image (side `short * size / target`)
/// which is then resized to `size`: the same pixels as resizing the whole image and cropping,
/// but only the crop is resampled, which is what keeps large `max_scale` cheap.
/// The draws are always made in the same order (scale, x, y, flip) so that a given seed gives
/// the same crop whatever the image.
pub(crate) fn random_crop(
    width: u32,
    height: u32,
    size: u32,
    max_scale: f32,
    flip: bool,
    rng: &mut SplitMix64,
) -> Crop {
    let u = 1.0 + (f64::from(max_scale) - 1.0) * rng.unit();
    let target = (f64::from(size) * u).round().max(1.0);
    let short = width.min(height);
    let side = (f64::from(short) * f64::from(size) / target)
        .round()
        .clamp(1.0, f64::from(short)) as u32;
    let x = rng.below(u64::from(width - side) + 1) as u32;
    let y = rng.below(u64::from(height - side) + 1) as u32;
    let coin = rng.coin();
    Crop {
        x,
        y,
        side,
        flip: flip && coin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rng::Stream;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn cache_keeps_only_what_crops_need() {
        let train = Mode::Train {
            max_scale: 1.5,
            flip: false,
        };
        let big = prepare_for_cache(gradient(400, 200), train, 64);
        assert_eq!(big.dimensions(), (192, 96));
        let small = prepare_for_cache(gradient(60, 90), train, 64);
        assert_eq!(
            small.dimensions(),
            (60, 90),
            "small images are not upscaled in the cache"
        );
        let eval = prepare_for_cache(gradient(400, 200), Mode::Eval, 64);
        assert_eq!(eval.dimensions(), (64, 64));
    }

    #[test]
    fn random_crops_stay_inside_and_follow_the_scale() {
        for position in 0..200 {
            let mut rng = SplitMix64::derive(3, Stream::Item, 0, position);
            let crop = random_crop(300, 200, 64, 2.0, true, &mut rng);
            assert!(
                crop.x + crop.side <= 300 && crop.y + crop.side <= 200,
                "{crop:?}"
            );
            // Shorter side 200 resized to 64..128 means a square of 100..200 source pixels.
            assert!((100..=200).contains(&crop.side), "{crop:?}");
        }
        let mut rng = SplitMix64::derive(3, Stream::Item, 0, 0);
        let plain = random_crop(64, 80, 64, 1.0, false, &mut rng);
        assert_eq!((plain.side, plain.x, plain.flip), (64, 0, false));
    }
}
