//! JPEG decoding with Pillow's decoder: libjpeg-turbo, through the `turbojpeg` binding.
//!
//! Pillow decodes JPEGs with libjpeg-turbo's defaults: the ISLOW integer inverse DCT,
//! "fancy" (triangular) chroma upsampling and its fixed-point YCbCr→RGB tables. That is
//! deterministic integer arithmetic, so decoding with the same library and the same settings
//! gives Pillow's bytes exactly; any other decoder (zune-jpeg, used before) lands a few levels
//! away, enough to move the reference's logits and even its greedy tokens. We use the library
//! itself rather than re-implementing those paths: the `turbojpeg-sys` crate builds the
//! libjpeg-turbo sources it bundles (3.1) with cmake (and nasm for its SIMD code, which is
//! bit-exact with the C code), so nothing beyond crates.io and Debian packages is needed.
//!
//! PIL modes: grey JPEGs (mode L) and YCbCr/RGB JPEGs (mode RGB) decode straight to RGB (grey
//! replicated, as `convert("RGB")` does). Four-component JPEGs are mode CMYK, read with raw mode
//! `CMYK;I` ("assume Adobe conventions": the stored values are inverted), and `convert("RGB")`
//! maps them with Pillow's `cmyk2rgb`: `nk = 255 - k; r = nk - round(c * nk / 255)`.

use super::{ImageIoError, RgbImage};
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat};

/// Decodes a complete JPEG to the RGB bytes Pillow's `Image.open(..).convert("RGB")` gives.
pub fn decode_like_pil(bytes: &[u8]) -> Result<RgbImage, ImageIoError> {
    let err = |source: turbojpeg::Error| ImageIoError::Jpeg {
        reason: source.to_string(),
    };
    let mut d = Decompressor::new().map_err(err)?;
    let header = d.read_header(bytes).map_err(err)?;
    let (w, h) = (header.width, header.height);
    super::check_dimensions(
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    )?;
    let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
    let (format, channels) = if cmyk {
        (PixelFormat::CMYK, 4)
    } else {
        (PixelFormat::RGB, 3)
    };
    let mut image = Image {
        pixels: vec![0u8; channels * w * h],
        width: w,
        pitch: channels * w,
        height: h,
        format,
    };
    match d.decompress(bytes, image.as_deref_mut()) {
        Ok(()) => {}
        // A warning (recoverable corrupt data) still decoded every row: Pillow ignores
        // libjpeg's warnings and keeps the pixels, so do we.
        Err(turbojpeg::Error::TurboJpegError(msg)) if is_libjpeg_warning(&msg) => {}
        Err(e) => return Err(err(e)),
    }
    let data = if cmyk {
        image
            .pixels
            .chunks_exact(4)
            .flat_map(inverted_cmyk_to_rgb)
            .collect()
    } else {
        image.pixels
    };
    RgbImage::from_raw(w as u32, h as u32, data)
}

/// Whether a TurboJPEG failure is one of libjpeg's warnings (`JWRN_*` in the bundled
/// libjpeg-turbo's jerror.h). TurboJPEG decodes the whole image and then reports a warning as a
/// failure with the warning's text, which the binding passes on as a string only; these
/// prefixes are the warnings' texts, none of which begins a fatal (`JERR_*`) message.
/// (A truncated file — "Premature end of JPEG file" — never gets here: it is refused before
/// decoding, as PIL refuses it.)
fn is_libjpeg_warning(msg: &str) -> bool {
    const WARNINGS: [&str; 7] = [
        "Unknown Adobe color transform code",
        "Corrupt JPEG data:",
        "Inconsistent progression sequence",
        "Warning: unknown JFIF revision number",
        "Premature end of JPEG file",
        "Invalid SOS parameters for sequential JPEG",
        "Application transferred too many scanlines",
    ];
    WARNINGS.iter().any(|w| msg.starts_with(w))
}

/// Pillow's `CMYK;I` unpacking (each stored value inverted) followed by its `cmyk2rgb`.
fn inverted_cmyk_to_rgb(stored: &[u8]) -> [u8; 3] {
    let [c, m, y, k] = [0, 1, 2, 3].map(|i| 255 - u32::from(stored[i]));
    let nk = 255 - k;
    // MULDIV255: a * b / 255 rounded, in Pillow's integer form.
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| nk.saturating_sub(muldiv255(v, nk)) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_follows_pillow_on_edge_values() {
        // Stored values are inverted: stored 255 = no ink.
        assert_eq!(inverted_cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(inverted_cmyk_to_rgb(&[0, 0, 0, 0]), [0, 0, 0]);
        assert_eq!(inverted_cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        // c = 255 (full cyan), k = 0: red channel 0, others white.
        assert_eq!(inverted_cmyk_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
        // c = 128, k = 64: nk = 191; 191 - round(128 * 191 / 255) = 191 - 96 = 95.
        assert_eq!(inverted_cmyk_to_rgb(&[127, 255, 255, 191])[0], 95);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_like_pil(b"\xFF\xD8\xFF\xE0 not a jpeg").is_err());
        assert!(decode_like_pil(&[]).is_err());
    }
}
