//! Image and token metrics. Images are 8-bit RGB: reconstructions are clamped and rounded to 8 bits
//! before any metric, as the official evaluation does.

use image::RgbImage;

pub use crate::image_io::psnr;

/// Half-width of the SSIM Gaussian window: scikit-image's `int(truncate * sigma + 0.5)` with
/// `truncate = 3.5`, `sigma = 1.5`.
const SSIM_RADIUS: usize = 5;
const SSIM_SIGMA: f64 = 1.5;

/// SSIM (Wang et al. 2004) between two equally sized 8-bit RGB images, computed as scikit-image's
/// `structural_similarity(a, b, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
/// use_sample_covariance=False)`: an 11-tap Gaussian window, K1 = 0.01, K2 = 0.03, the SSIM map
/// averaged over the region the window covers fully, then over the three channels. This is the
/// convention of most tokenizer papers. Images smaller than the window return NaN.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "ssim needs equal sizes");
    let (w, h) = (a.width() as usize, a.height() as usize);
    if w < 2 * SSIM_RADIUS + 1 || h < 2 * SSIM_RADIUS + 1 {
        return f64::NAN;
    }
    let kernel = gaussian_kernel(SSIM_RADIUS, SSIM_SIGMA);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mut total = 0.0;
    for c in 0..3 {
        let x: Vec<f64> = a.pixels().map(|p| p[c] as f64).collect();
        let y: Vec<f64> = b.pixels().map(|p| p[c] as f64).collect();
        let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
        let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
        let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
        let [ux, uy, uxx, uyy, uxy] =
            [&x, &y, &xx, &yy, &xy].map(|p| filter_valid(p, w, h, &kernel));
        let n = ux.len();
        let mut sum = 0.0;
        for i in 0..n {
            let vx = uxx[i] - ux[i] * ux[i];
            let vy = uyy[i] - uy[i] * uy[i];
            let vxy = uxy[i] - ux[i] * uy[i];
            sum += ((2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2))
                / ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2));
        }
        total += sum / n as f64;
    }
    total / 3.0
}

fn gaussian_kernel(radius: usize, sigma: f64) -> Vec<f64> {
    let k: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let d = i as f64 - radius as f64;
            (-0.5 * d * d / (sigma * sigma)).exp()
        })
        .collect();
    let s: f64 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Separable filtering keeping only the positions where the window lies inside the image.
fn filter_valid(plane: &[f64], w: usize, h: usize, kernel: &[f64]) -> Vec<f64> {
    let k = kernel.len();
    let (ow, oh) = (w + 1 - k, h + 1 - k);
    let mut rows = vec![0.0; ow * h];
    for y in 0..h {
        for x in 0..ow {
            rows[y * ow + x] = (0..k).map(|i| kernel[i] * plane[y * w + x + i]).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = (0..k).map(|i| kernel[i] * rows[(y + i) * ow + x]).sum();
        }
    }
    out
}

/// How a codebook is used over a set of ids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeUse {
    /// Fraction of the codebook's entries used at least once.
    pub utilisation: f64,
    /// `exp(entropy)` of the id histogram: the number of equally likely codes with the same entropy.
    pub perplexity: f64,
}

/// Counts ids into a histogram of `codebook_size` bins (ids outside are ignored).
#[derive(Debug, Clone)]
pub struct CodeHistogram {
    counts: Vec<u64>,
}

impl CodeHistogram {
    pub fn new(codebook_size: usize) -> Self {
        CodeHistogram {
            counts: vec![0; codebook_size],
        }
    }

    pub fn add(&mut self, ids: &[i64]) {
        for &id in ids {
            if let Some(c) = usize::try_from(id)
                .ok()
                .and_then(|i| self.counts.get_mut(i))
            {
                *c += 1;
            }
        }
    }

    pub fn usage(&self) -> CodeUse {
        let total: u64 = self.counts.iter().sum();
        let used = self.counts.iter().filter(|&&c| c > 0).count();
        let entropy: f64 = self
            .counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                -p * p.ln()
            })
            .sum();
        CodeUse {
            utilisation: used as f64 / self.counts.len().max(1) as f64,
            perplexity: if total == 0 { 0.0 } else { entropy.exp() },
        }
    }
}

/// Fraction of positions where `predicted` equals `truth`.
pub fn accuracy(predicted: &[i64], truth: &[i64]) -> f64 {
    let n = predicted.len().min(truth.len());
    if n == 0 {
        return f64::NAN;
    }
    predicted.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32, shift: u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 + y * 3) as u8 ^ shift,
                (x * y) as u8,
                (255 - x * 5) as u8,
            ])
        })
    }

    #[test]
    fn identical_images_have_ssim_one_and_infinite_psnr() {
        let a = gradient(32, 24, 0);
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-12);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn psnr_of_a_constant_offset_is_known() {
        // Every channel off by 5: MSE 25, PSNR = 10 log10(255^2 / 25) = 34.1514 dB.
        let a = RgbImage::from_pixel(16, 16, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(16, 16, image::Rgb([105, 105, 105]));
        assert!((psnr(&a, &b) - 34.151_403_521_958_73).abs() < 1e-9);
    }

    #[test]
    fn ssim_of_constant_images_follows_the_luminance_term() {
        // Flat images: variances and covariance are 0, so SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1).
        let a = RgbImage::from_pixel(20, 20, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(20, 20, image::Rgb([120, 120, 120]));
        let c1 = (0.01f64 * 255.0).powi(2);
        let expected = (2.0 * 100.0 * 120.0 + c1) / (100.0f64.powi(2) + 120.0f64.powi(2) + c1);
        assert!((ssim(&a, &b) - expected).abs() < 1e-12);
    }

    #[test]
    fn ssim_is_symmetric_and_below_one_for_different_images() {
        let a = gradient(40, 40, 0);
        let b = gradient(40, 40, 0x15);
        let s = ssim(&a, &b);
        assert!(s < 1.0 && s > -1.0);
        assert!((s - ssim(&b, &a)).abs() < 1e-12);
        assert!(ssim(&RgbImage::new(8, 8), &RgbImage::new(8, 8)).is_nan());
    }

    /// Known values from an independent computation: scikit-image 0.26
    /// `structural_similarity(a, b, channel_axis=2, data_range=255, gaussian_weights=True,
    /// sigma=1.5, use_sample_covariance=False)` and `peak_signal_noise_ratio(a, b, data_range=255)`
    /// on the same synthetic images built with numpy.
    #[test]
    fn ssim_and_psnr_match_scikit_image() {
        let s = ssim(&gradient(40, 40, 0), &gradient(40, 40, 0x15));
        assert!((s - 0.881_964_156_749_049_4).abs() < 1e-9, "{s}");
        let (a, b) = (gradient(48, 30, 0), gradient(48, 30, 0x2a));
        assert!((ssim(&a, &b) - 0.768_490_234_419_577_4).abs() < 1e-9);
        assert!((psnr(&a, &b) - 22.525_449_715_736_61).abs() < 1e-9);
    }

    #[test]
    fn code_usage_counts_and_perplexity() {
        let mut h = CodeHistogram::new(8);
        h.add(&[0, 1, 2, 3, 0, 1, 2, 3, 99, -1]);
        let u = h.usage();
        assert_eq!(u.utilisation, 0.5);
        assert!((u.perplexity - 4.0).abs() < 1e-12);
        assert_eq!(CodeHistogram::new(4).usage().perplexity, 0.0);
        assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4]), 0.75);
    }
}
