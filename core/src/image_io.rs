//! Reading images safely (every failure is a message, never a panic), turning them into model
//! inputs (shorter side resized, centre crop, values in [0, 1]) and model outputs back into 8-bit
//! images.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::imageops::FilterType;
use image::{ImageReader, Limits, RgbImage};

/// Images with a side longer than this are refused before decoding, to bound memory
/// (16384 x 16384 RGB is 768 MiB decoded).
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Images with a side shorter than this are refused: there is nothing to reconstruct.
pub const MIN_IMAGE_SIDE: u32 = 8;
/// Images with more pixels than this are refused before decoding (a 2 MB PNG can declare
/// 16384 x 16384 RGBA16: 2 GiB decoded, 18.7 s before it was resized to 64 px; issue 17).
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
/// Files larger than this are not read (no supported photo comes near it; a sparse or endless
/// file would otherwise be read whole).
pub const MAX_IMAGE_FILE_BYTES: u64 = 512 << 20;
/// Memory the decoder may allocate for one image.
const MAX_DECODE_ALLOC: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    // The OS error is part of the message and deliberately not a `#[source]` (nor named
    // `source`, which thiserror would take as one): the CLI prints errors with their chain
    // (`{:#}`), which printed it twice ("No such file or directory (os error 2): No such file
    // or directory (os error 2)", issue 18).
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} is not an image that can be read ({detail}). Supported formats: JPEG, PNG, WebP, BMP."
    )]
    Decode { path: PathBuf, detail: String },
    #[error(
        "{path} is {width}x{height} pixels; images larger than {MAX_IMAGE_SIDE} pixels on a side or {MAX_IMAGE_PIXELS} pixels in all are refused. Downscale it first."
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error(
        "{path} is only {width}x{height} pixels; at least {MIN_IMAGE_SIDE} pixels on each side are needed."
    )]
    TooSmall {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("cannot write {path}: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("{path} is not a regular file ({kind}); images are read from ordinary files only")]
    NotAFile { path: PathBuf, kind: String },
    #[error(
        "{path} is {bytes} bytes; image files larger than {MAX_IMAGE_FILE_BYTES} bytes are not read"
    )]
    FileTooLarge { path: PathBuf, bytes: u64 },
}

/// Reads an image file of any supported format, bit depth and colour model as 8-bit RGB
/// (alpha is dropped, grey is replicated, 16-bit is scaled down).
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    use std::io::Read;
    let read_err = |error| ImageError::Read {
        path: path.to_path_buf(),
        error,
    };
    // Follows symlinks: a `.png` link to /dev/zero or a FIFO is refused here, before any read
    // (one grew without limit, the other blocked forever).
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "a device, pipe or socket"
        };
        return Err(ImageError::NotAFile {
            path: path.to_path_buf(),
            kind: kind.into(),
        });
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(ImageError::FileTooLarge {
            path: path.to_path_buf(),
            bytes: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_IMAGE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(ImageError::FileTooLarge {
            path: path.to_path_buf(),
            bytes: bytes.len() as u64,
        });
    }
    decode_rgb(&bytes, path)
}

/// As [`load_rgb`], from bytes; `label` names the source in messages.
pub fn decode_rgb(bytes: &[u8], label: &Path) -> Result<RgbImage, ImageError> {
    let decode_err = |detail: String| ImageError::Decode {
        path: label.to_path_buf(),
        detail,
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_err(e.to_string()))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(decode_err("unrecognised file format".into()));
    }
    let (width, height) = probe
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || width as u64 * height as u64 > MAX_IMAGE_PIXELS
    {
        return Err(ImageError::TooLarge {
            path: label.to_path_buf(),
            width,
            height,
        });
    }
    if width < MIN_IMAGE_SIDE || height < MIN_IMAGE_SIDE {
        return Err(ImageError::TooSmall {
            path: label.to_path_buf(),
            width,
            height,
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    if is_truncated_jpeg(bytes) {
        return Err(decode_err(
            "the JPEG stops before its end (a truncated download or copy?)".into(),
        ));
    }
    let mut reader = reader()?;
    reader.limits(limits);
    // A decoder that panics on a malformed file must not take the program down.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        use image::ImageDecoder;
        let mut decoder = reader.into_decoder()?;
        // The EXIF orientation (a phone's portrait photo is stored sideways with a tag saying
        // so); an unreadable tag leaves the pixels as stored.
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut image = image::DynamicImage::from_decoder(decoder)?;
        image.apply_orientation(orientation);
        Ok::<_, image::ImageError>(image)
    }))
    .map_err(|_| decode_err("the image decoder crashed on this file".into()))?;
    let image = decoded.map_err(|e| decode_err(e.to_string()))?;
    Ok(image.to_rgb8())
}

/// True for a JPEG whose data stops early.
///
/// The JPEG decoder behind `image` decodes such a file without complaint and fills the missing
/// rows with grey, which would quietly put broken pictures into training. A complete JPEG has
/// an end-of-image marker (FF D9) after its last start-of-scan marker (FF DA); inside scan data
/// an FF byte is always followed by 00 or a restart marker, so an FF D9 there can only be the
/// real end. (Data appended after the end, as some cameras do, does not matter.)
pub fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    const START_OF_IMAGE: [u8; 2] = [0xFF, 0xD8];
    const START_OF_SCAN: [u8; 2] = [0xFF, 0xDA];
    const END_OF_IMAGE: [u8; 2] = [0xFF, 0xD9];
    if !bytes.starts_with(&START_OF_IMAGE) {
        return false;
    }
    match bytes.windows(2).rposition(|w| w == START_OF_SCAN) {
        Some(scan) => !bytes[scan..].windows(2).any(|w| w == END_OF_IMAGE),
        None => true,
    }
}

/// Resizes the shorter side to `size` and takes the centre `size x size` square.
/// Returns the image and the crop rectangle `(x, y, w, h)` in the original's pixels.
pub fn center_crop_resize(image: &RgbImage, size: u32) -> (RgbImage, [u32; 4]) {
    let (w, h) = image.dimensions();
    let short = w.min(h);
    let crop = [(w - short) / 2, (h - short) / 2, short, short];
    let square = image::imageops::crop_imm(image, crop[0], crop[1], short, short).to_image();
    let out = if short == size {
        square
    } else {
        image::imageops::resize(&square, size, size, FilterType::CatmullRom)
    };
    (out, crop)
}

/// `[B, 3, S, S]` in [0, 1] from square RGB images of equal size.
pub fn images_to_tensor(images: &[RgbImage], device: &Device) -> Tensor<4> {
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    let (w, h) = (w as usize, h as usize);
    let mut values = Vec::with_capacity(images.len() * 3 * w * h);
    for image in images {
        for c in 0..3 {
            values.extend(image.pixels().map(|p| p.0[c] as f32 / 255.0));
        }
    }
    Tensor::from_data(TensorData::new(values, [images.len(), 3, h, w]), device)
}

/// 8-bit images from `[B, 3, H, W]`, clamped to [0, 1] and rounded, as the official evaluation
/// does before any metric.
pub fn tensor_to_images(t: Tensor<4>) -> Vec<RgbImage> {
    let [b, _, h, w] = t.dims();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let plane = h * w;
    (0..b)
        .map(|i| {
            let base = i * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let at = y as usize * w + x as usize;
                let px = |c: usize| to_u8(values[base + c * plane + at]);
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect()
}

/// Clamp to [0, 1], scale and round to the nearest 8-bit value.
pub fn to_u8(v: f32) -> u8 {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    (v * 255.0).round() as u8
}

/// Side-by-side strip of equally tall images with a gap of `gap` pixels.
pub fn hstack(images: &[RgbImage], gap: u32) -> RgbImage {
    let height = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let width =
        images.iter().map(|i| i.width()).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let mut out = RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([255, 255, 255]));
    let mut x = 0;
    for image in images {
        image::imageops::overlay(&mut out, image, x as i64, 0);
        x += image.width() + gap;
    }
    out
}

/// Rows of `columns` images (the last row may be shorter), `gap` white pixels between them.
pub fn grid(images: &[RgbImage], columns: usize, gap: u32) -> RgbImage {
    let rows: Vec<RgbImage> = images
        .chunks(columns.max(1))
        .map(|row| hstack(row, gap))
        .collect();
    let width = rows.iter().map(|r| r.width()).max().unwrap_or(1);
    let height =
        rows.iter().map(|r| r.height()).sum::<u32>() + gap * rows.len().saturating_sub(1) as u32;
    let mut out = RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([255, 255, 255]));
    let mut y = 0;
    for row in &rows {
        image::imageops::overlay(&mut out, row, 0, y as i64);
        y += row.height() + gap;
    }
    out
}

/// Writes a PNG.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), ImageError> {
    image.save(path).map_err(|e| ImageError::Write {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// PSNR in dB between two equally sized 8-bit images (infinite when identical).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let n = a.as_raw().len().max(1) as f64;
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum::<f64>()
        / n;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(image: image::DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    /// A JPEG of `image` with an EXIF APP1 segment holding only the orientation tag.
    fn jpeg_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(image)
            .unwrap();
        // TIFF little-endian header, one IFD entry: 0x0112 SHORT x1 = orientation.
        let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend(orientation.to_le_bytes());
        exif.extend([0, 0, 0, 0, 0, 0]);
        let mut out = jpeg[..2].to_vec();
        out.extend([0xFF, 0xE1]);
        out.extend(((exif.len() + 2) as u16).to_be_bytes());
        out.extend(exif);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        // Left half red, right half blue, 32 wide and 16 high, stored with "rotate 90 clockwise".
        let stored = RgbImage::from_fn(32, 16, |x, _| {
            if x < 16 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let upright = decode_rgb(&jpeg_with_orientation(&stored, 1), Path::new("a.jpg")).unwrap();
        assert_eq!(upright.dimensions(), (32, 16));
        let turned = decode_rgb(&jpeg_with_orientation(&stored, 6), Path::new("b.jpg")).unwrap();
        assert_eq!(turned.dimensions(), (16, 32));
        // Rotated clockwise, the left (red) half ends on top.
        assert!(turned.get_pixel(8, 4)[0] > 200 && turned.get_pixel(8, 4)[2] < 60);
        assert!(turned.get_pixel(8, 28)[2] > 200 && turned.get_pixel(8, 28)[0] < 60);
    }

    #[test]
    fn grey_alpha_and_16_bit_become_rgb() {
        let p = Path::new("x.png");
        let grey =
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 10, image::Luma([7])));
        assert_eq!(
            decode_rgb(&png_bytes(grey), p).unwrap().get_pixel(3, 3).0,
            [7, 7, 7]
        );
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            16,
            16,
            image::Rgba([1, 2, 3, 0]),
        ));
        assert_eq!(
            decode_rgb(&png_bytes(rgba), p).unwrap().get_pixel(0, 0).0,
            [1, 2, 3]
        );
        let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            16,
            16,
            image::Rgb([65535u16, 0, 32896]),
        ));
        assert_eq!(
            decode_rgb(&png_bytes(deep), p).unwrap().get_pixel(0, 0).0,
            [255, 0, 128]
        );
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let p = Path::new("bad");
        assert!(matches!(
            decode_rgb(b"hello world", p),
            Err(ImageError::Decode { .. })
        ));
        let good = png_bytes(image::DynamicImage::ImageRgb8(RgbImage::new(32, 32)));
        // (A PNG cut inside its final IEND chunk still decodes: the pixels are complete.)
        for cut in [8, 33, good.len() / 2] {
            assert!(decode_rgb(&good[..cut], p).is_err(), "truncated at {cut}");
        }
        let tiny = png_bytes(image::DynamicImage::ImageRgb8(RgbImage::new(4, 4)));
        assert!(matches!(
            decode_rgb(&tiny, p),
            Err(ImageError::TooSmall { .. })
        ));
    }

    #[test]
    fn absurd_dimensions_are_refused_before_decoding() {
        // A PNG that claims `side x side` pixels of the given bit depth and colour type, with
        // no pixel data.
        let header_only = |side: u32, depth: u8, colour: u8| {
            let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec();
            png.extend(side.to_be_bytes());
            png.extend(side.to_be_bytes());
            png.extend([depth, colour, 0, 0, 0]);
            let crc = crc32(&png[12..]);
            png.extend(crc.to_be_bytes());
            for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
                png.extend(0u32.to_be_bytes());
                png.extend(chunk);
                png.extend(crc32(chunk).to_be_bytes());
            }
            png
        };
        let e = decode_rgb(&header_only(100000, 8, 2), Path::new("huge.png")).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
        // Within the side limit but 268 million pixels of RGBA16 (2 GiB decoded).
        let png = header_only(16384, 16, 6);
        let started = std::time::Instant::now();
        let e = decode_rgb(&png, Path::new("bomb.png")).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
        assert!(started.elapsed().as_secs_f64() < 1.0);
    }

    #[cfg(unix)]
    #[test]
    fn pipes_devices_and_folders_are_refused_without_reading() {
        let dir = std::env::temp_dir().join(format!("sftok-special-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let zero = dir.join("zero.png");
        let _ = std::fs::remove_file(&zero);
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = load_rgb(&zero).unwrap_err();
        assert!(matches!(e, ImageError::NotAFile { .. }), "{e}");
        let fifo = dir.join("fifo.png");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        let e = load_rgb(&fifo).unwrap_err();
        assert!(matches!(e, ImageError::NotAFile { .. }), "{e}");
        let folder = dir.join("folder.png");
        std::fs::create_dir_all(&folder).unwrap();
        let e = load_rgb(&folder).unwrap_err();
        assert!(e.to_string().contains("a folder"), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn crop_is_centred_on_the_long_side() {
        let img = RgbImage::from_fn(40, 20, |x, _| image::Rgb([x as u8, 0, 0]));
        let (out, crop) = center_crop_resize(&img, 20);
        assert_eq!(crop, [10, 0, 20, 20]);
        assert_eq!(out.get_pixel(0, 0).0[0], 10);
    }

    #[test]
    fn psnr_of_known_error() {
        let a = RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(4, 4, image::Rgb([110, 100, 100]));
        // mse = 100 / 3
        let expected = 10.0 * (255.0f64 * 255.0 / (100.0 / 3.0)).log10();
        assert!((psnr(&a, &b) - expected).abs() < 1e-9);
    }
}
