//! Images as a request gives them: a path, encoded bytes, or pixels already decoded.

use std::path::PathBuf;
use std::sync::Arc;

use super::Error;
use crate::image_io::{decode_rgb, RgbImage};
use crate::limits;

/// One image of a prompt.
#[derive(Clone, Debug)]
pub enum ImageInput {
    /// A file (JPEG, PNG, WebP, GIF, BMP).
    Path(PathBuf),
    /// The encoded bytes of such a file.
    Bytes(Arc<[u8]>),
    /// Pixels already decoded (e.g. a previous turn's image).
    Decoded(Arc<RgbImage>),
}

impl ImageInput {
    pub fn path(p: impl Into<PathBuf>) -> ImageInput {
        ImageInput::Path(p.into())
    }

    pub fn bytes(b: impl Into<Arc<[u8]>>) -> ImageInput {
        ImageInput::Bytes(b.into())
    }

    /// The pixels, upright from the EXIF orientation when `exif_rotate`; the encoded size is
    /// checked against [`limits::MAX_IMAGE_BYTES`] before anything is decoded.
    pub fn decode(&self, exif_rotate: bool) -> Result<Arc<RgbImage>, Error> {
        match self {
            ImageInput::Decoded(img) => Ok(img.clone()),
            ImageInput::Path(p) => {
                let what = p.display().to_string();
                let io = |source: std::io::Error| Error::Image {
                    what: what.clone(),
                    source: crate::image_io::ImageIoError::Io {
                        path: p.clone(),
                        source,
                    },
                };
                let len = std::fs::metadata(p).map_err(io)?.len();
                limits::image_bytes(len).map_err(|e| Error::Request(format!("{what}: {e}")))?;
                let bytes = std::fs::read(p).map_err(io)?;
                decode_rgb(&bytes, exif_rotate)
                    .map(Arc::new)
                    .map_err(|source| Error::Image { what, source })
            }
            ImageInput::Bytes(b) => {
                limits::image_bytes(b.len() as u64)?;
                decode_rgb(b, exif_rotate)
                    .map(Arc::new)
                    .map_err(|source| Error::Image {
                        what: format!("({} bytes)", b.len()),
                        source,
                    })
            }
        }
    }
}
