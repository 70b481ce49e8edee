//! Image files in, 8-bit RGB out, the way the reference sees them.
//!
//! The DeepSeek-VL2 reference opens every image with PIL and calls `convert("RGB")` at once
//! (spec §3.1). This module decodes with the `image` crate and then reproduces PIL's mode
//! conversion table, so that the pixels handed to preprocessing are the ones the reference
//! would have:
//!
//! | decoded as | PIL mode | what `convert("RGB")` does (and what we do) |
//! | --- | --- | --- |
//! | RGB8 | RGB | unchanged |
//! | RGBA8 | RGBA | alpha dropped, **no** compositing |
//! | L8 / LA8 | L / LA | grey replicated, alpha dropped |
//! | palette PNG | P | the `png` crate expands the palette; transparency only adds alpha, which is dropped |
//! | 1-bit PNG | 1 | expanded to 0 / 255 |
//! | L16 (16-bit grey PNG) | I;16 | value **clipped** to 255, not scaled |
//! | LA16 / RGB16 / RGBA16 | LA / RGB / RGBA | PIL reads 16-bit samples through an 8-bit raw mode: high byte kept |
//!
//! EXIF orientation: PIL does not rotate and the reference never calls `exif_transpose`, so
//! `apply_exif = false` reproduces the reference. Callers serving real photos usually want
//! `true` (a phone portrait otherwise arrives on its side).
//!
//! Limits: dimensions are read from the header before any pixel buffer is allocated; images
//! larger than [`MAX_SIDE`] on a side or [`MAX_PIXELS`] in total are refused.
//!
//! JPEG is the exception to "decode with the `image` crate": it is decoded by libjpeg-turbo,
//! Pillow's own decoder, with Pillow's settings ([`jpeg`]), so its pixels are Pillow's exactly.
//!
//! Checked against Pillow 13 (`tests/it/preprocess_pillow.rs`): every lossless mode above, GIF
//! with a transparent palette index, lossy and lossless WebP, EXIF rotation and JPEG (baseline,
//! progressive, 4:4:4 / 4:2:2 / 4:2:0, grey, restart markers, CMYK) are byte-identical.

use std::io::{BufRead, Cursor, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader};

pub mod jpeg;

/// The image size limits (defined with every other limit in [`crate::limits`]).
pub use crate::limits::{MAX_IMAGE_PIXELS as MAX_PIXELS, MAX_IMAGE_SIDE as MAX_SIDE};

/// Errors from reading an image file; every variant names what went wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    #[error("cannot read image file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image data is empty (0 bytes)")]
    Empty,
    #[error("unrecognised image format (supported: JPEG, PNG, WebP, GIF, BMP)")]
    UnknownFormat,
    #[error("image has zero size ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error(
        "image is too large: {width}x{height} ({pixels} pixels); the limit is {max_side} per side \
         and {max_pixels} pixels"
    )]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("cannot decode {format} image: {source}")]
    Decode {
        format: String,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot decode JPEG image: {reason}")]
    Jpeg { reason: String },
    #[error(
        "JPEG data is truncated: no end-of-image marker after the last scan ({len} bytes); \
         PIL refuses such files (\"image file is truncated\")"
    )]
    TruncatedJpeg { len: usize },
    #[error("invalid RGB buffer: {width}x{height} needs {expected} bytes, got {found}")]
    BadBuffer {
        width: u32,
        height: u32,
        expected: usize,
        found: usize,
    },
}

/// An 8-bit RGB image, row-major, channels interleaved (`[r, g, b, r, g, b, ...]`).
///
/// Width first, like PIL's `image.size`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wraps an interleaved RGB buffer; its length must be `3 * width * height`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self, ImageIoError> {
        let expected = 3usize
            .checked_mul(width as usize)
            .and_then(|n| n.checked_mul(height as usize));
        match expected {
            Some(n) if n == data.len() => Ok(Self {
                width,
                height,
                data,
            }),
            _ => Err(ImageIoError::BadBuffer {
                width,
                height,
                expected: expected.unwrap_or(usize::MAX),
                found: data.len(),
            }),
        }
    }

    /// An image filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(3 * n);
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The interleaved pixel bytes.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at (x, y), or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        let p = self.data.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }

    /// Copies `src` into this image with its top-left corner at (x, y); parts falling outside
    /// are clipped, like PIL's `paste`.
    pub fn paste(&mut self, src: &RgbImage, x: i64, y: i64) {
        let (dw, dh) = (self.width as i64, self.height as i64);
        let x0 = x.max(0);
        let x1 = (x + src.width as i64).min(dw);
        let y0 = y.max(0);
        let y1 = (y + src.height as i64).min(dh);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let row_bytes = 3 * (x1 - x0) as usize;
        for yy in y0..y1 {
            let d = 3 * (yy as usize * self.width as usize + x0 as usize);
            let s = 3 * ((yy - y) as usize * src.width as usize + (x0 - x) as usize);
            self.data[d..d + row_bytes].copy_from_slice(&src.data[s..s + row_bytes]);
        }
    }

    /// The `w`x`h` region with top-left corner (x, y); it must lie inside the image.
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> Option<RgbImage> {
        if x.checked_add(w)? > self.width || y.checked_add(h)? > self.height {
            return None;
        }
        let mut data = Vec::with_capacity(3 * w as usize * h as usize);
        for yy in y..y + h {
            let s = 3 * (yy as usize * self.width as usize + x as usize);
            data.extend_from_slice(&self.data[s..s + 3 * w as usize]);
        }
        Some(RgbImage {
            width: w,
            height: h,
            data,
        })
    }
}

/// Reads and decodes an image file; see [`decode_rgb`].
pub fn load_rgb(path: &Path, apply_exif: bool) -> Result<RgbImage, ImageIoError> {
    let bytes = std::fs::read(path).map_err(|source| ImageIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb(&bytes, apply_exif)
}

/// Decodes an encoded image (JPEG, PNG, WebP, GIF first frame, BMP) into 8-bit RGB exactly as
/// PIL's `Image.open(...).convert("RGB")` would (see the module table), optionally applying
/// the EXIF orientation (the reference does not).
pub fn decode_rgb(bytes: &[u8], apply_exif: bool) -> Result<RgbImage, ImageIoError> {
    if bytes.is_empty() {
        return Err(ImageIoError::Empty);
    }
    let reader = guessed_reader(Cursor::new(bytes), true)?;
    let format = reader
        .format()
        .map(|f| format!("{f:?}"))
        .unwrap_or_else(|| "unknown".to_owned());
    let decode_err = |source| ImageIoError::Decode {
        format: format.clone(),
        source,
    };

    // Read the header only, and refuse before any pixel allocation.
    // Header only, without the crate's limits, so that an oversized image gets our error.
    let (width, height) = guessed_reader(Cursor::new(bytes), false)?
        .into_dimensions()
        .map_err(decode_err)?;
    check_dimensions(width, height)?;
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    if is_jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageIoError::TruncatedJpeg { len: bytes.len() });
    }

    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let orientation = if apply_exif {
        Some(decoder.orientation().map_err(decode_err)?)
    } else {
        None
    };
    let rgb = if is_jpeg {
        // The crate's decoder only read the header (and EXIF); the pixels come from Pillow's.
        jpeg::decode_like_pil(bytes)?
    } else {
        to_rgb8_like_pil(&DynamicImage::from_decoder(decoder).map_err(decode_err)?)
    };
    match orientation {
        Some(o) if o != image::metadata::Orientation::NoTransforms => Ok(oriented(rgb, o)),
        _ => Ok(rgb),
    }
}

/// `rgb` turned by an EXIF orientation.
fn oriented(rgb: RgbImage, o: image::metadata::Orientation) -> RgbImage {
    let (w, h) = (rgb.width, rgb.height);
    let buf = image::RgbImage::from_raw(w, h, rgb.data).expect("RgbImage holds 3*w*h bytes");
    let mut img = DynamicImage::ImageRgb8(buf);
    img.apply_orientation(o);
    let out = img.into_rgb8();
    RgbImage {
        width: out.width(),
        height: out.height(),
        data: out.into_raw(),
    }
}

fn guessed_reader<R: BufRead + Seek>(r: R, limited: bool) -> Result<ImageReader<R>, ImageIoError> {
    let mut reader = ImageReader::new(r)
        .with_guessed_format()
        .map_err(|source| ImageIoError::Io {
            path: PathBuf::from("<memory>"),
            source,
        })?;
    if reader.format().is_none() {
        return Err(ImageIoError::UnknownFormat);
    }
    if limited {
        // The crate's own allocation limit stays on as a second line of defence.
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        reader.limits(limits);
    } else {
        reader.no_limits();
    }
    Ok(reader)
}

/// Whether a JPEG ends its last scan with an EOI marker (`FF D9`). libjpeg-turbo decodes a
/// cut-off file with only a warning (the missing rows come out grey); PIL's file reader then
/// raises "image file is truncated", and so do we.
/// Inside entropy-coded data `FF` is only followed by `00` or a restart marker, so an `FF D9`
/// after the last SOS (`FF DA`) can only be the real end; an EXIF thumbnail's EOI lies before
/// the main image's scans and does not count.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(p) => bytes
            .get(p + 2..)
            .is_some_and(|rest| rest.windows(2).any(|w| w == [0xFF, 0xD9])),
        None => false,
    }
}

/// Refuses zero-sized and oversized images, naming the size.
pub fn check_dimensions(width: u32, height: u32) -> Result<(), ImageIoError> {
    if width == 0 || height == 0 {
        return Err(ImageIoError::ZeroSize { width, height });
    }
    let pixels = width as u64 * height as u64;
    if width > MAX_SIDE || height > MAX_SIDE || pixels > MAX_PIXELS {
        return Err(ImageIoError::TooLarge {
            width,
            height,
            pixels,
            max_side: MAX_SIDE,
            max_pixels: MAX_PIXELS,
        });
    }
    Ok(())
}

/// PIL's `convert("RGB")` applied to whatever the decoder produced (module table).
pub fn to_rgb8_like_pil(img: &DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let n = width as usize * height as usize;
    let mut data = Vec::with_capacity(3 * n);
    match img {
        DynamicImage::ImageRgb8(b) => data.extend_from_slice(b.as_raw()),
        DynamicImage::ImageRgba8(b) => {
            for p in b.as_raw().chunks_exact(4) {
                data.extend_from_slice(&p[..3]);
            }
        }
        DynamicImage::ImageLuma8(b) => {
            for &v in b.as_raw() {
                data.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA8(b) => {
            for p in b.as_raw().chunks_exact(2) {
                data.extend_from_slice(&[p[0], p[0], p[0]]);
            }
        }
        // PIL mode I;16: convert("RGB") clips at 255.
        DynamicImage::ImageLuma16(b) => {
            for &v in b.as_raw() {
                let c = v.min(255) as u8;
                data.extend_from_slice(&[c, c, c]);
            }
        }
        // PIL reads these through 8-bit raw modes (LA;16B, RGB;16B, RGBA;16B): high byte.
        DynamicImage::ImageLumaA16(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let c = (p[0] >> 8) as u8;
                data.extend_from_slice(&[c, c, c]);
            }
        }
        DynamicImage::ImageRgb16(b) => {
            for &v in b.as_raw() {
                data.push((v >> 8) as u8);
            }
        }
        DynamicImage::ImageRgba16(b) => {
            for p in b.as_raw().chunks_exact(4) {
                data.extend(p[..3].iter().map(|&v| (v >> 8) as u8));
            }
        }
        // 32-bit float images (not produced by the enabled formats) and future colour types:
        // the crate's own conversion is the best available.
        other => data.extend_from_slice(other.to_rgb8().as_raw()),
    }
    RgbImage {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A PNG signature, an IHDR claiming `w`x`h` RGB8 and an empty IDAT: a valid header
    /// with (almost) no pixel data, as an attacker would send.
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut body = b"IHDR".to_vec();
        body.extend_from_slice(&w.to_be_bytes());
        body.extend_from_slice(&h.to_be_bytes());
        body.extend_from_slice(&[8, 2, 0, 0, 0]);
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(b"IDAT");
        out.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
        out
    }

    fn encode_png(w: u32, h: u32) -> Vec<u8> {
        let data: Vec<u8> = (0..3 * w * h).map(|i| (i * 37 % 251) as u8).collect();
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&data, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn decodes_a_png_exactly() {
        let img = decode_rgb(&encode_png(5, 3), false).unwrap();
        assert_eq!((img.width(), img.height()), (5, 3));
        assert_eq!(img.pixel(1, 0), Some([111, 148, 185]));
    }

    #[test]
    fn huge_images_are_refused_before_decoding() {
        match decode_rgb(&png_header(20000, 20000), false) {
            Err(ImageIoError::TooLarge { width, height, .. }) => {
                assert_eq!((width, height), (20000, 20000))
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            check_dimensions(16385, 10),
            Err(ImageIoError::TooLarge { .. })
        ));
        assert!(matches!(
            check_dimensions(10, 16385),
            Err(ImageIoError::TooLarge { .. })
        ));
        assert!(check_dimensions(16384, 16384).is_ok());
        assert!(matches!(
            check_dimensions(0, 5),
            Err(ImageIoError::ZeroSize { .. })
        ));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        assert!(matches!(decode_rgb(&[], false), Err(ImageIoError::Empty)));
        assert!(matches!(
            decode_rgb(b"hello world", false),
            Err(ImageIoError::UnknownFormat)
        ));
        let png = encode_png(64, 64);
        for cut in [8, 20, 33, 60, png.len() / 2, png.len() - 13] {
            assert!(
                decode_rgb(&png[..cut], false).is_err(),
                "truncated at {cut}"
            );
        }
        // A header claiming 0 width.
        assert!(decode_rgb(&png_header(0, 7), false).is_err());
        let missing = load_rgb(Path::new("/nonexistent/pocketvl.png"), false);
        assert!(matches!(missing, Err(ImageIoError::Io { .. })));
    }

    #[test]
    fn rgb_image_helpers() {
        assert!(RgbImage::from_raw(2, 2, vec![0; 11]).is_err());
        let mut canvas = RgbImage::filled(4, 3, [127; 3]);
        canvas.paste(&RgbImage::filled(3, 3, [1, 2, 3]), 2, 1);
        assert_eq!(canvas.pixel(1, 1), Some([127; 3]));
        assert_eq!(canvas.pixel(3, 2), Some([1, 2, 3]));
        assert_eq!(canvas.pixel(4, 0), None);
        let c = canvas.crop(2, 1, 2, 2).unwrap();
        assert!(c.as_raw().chunks(3).all(|p| p == [1, 2, 3]));
        assert!(canvas.crop(3, 0, 2, 1).is_none());
    }
}
