//! Grounding: the boxes DeepSeek-VL2 writes as `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`,
//! mapped to pixels of the original image and drawn onto it.
//!
//! Mirrors `parse_ref_bbox` in the reference's `deepseek_vl2/serve/app_modules/utils.py` (spec
//! §8.5, pitfall 43): coordinates are integers on a 0…999 grid, mapped to the **original** image
//! (as opened, no EXIF rotation; the last image of the conversation) with `trunc(v / 999 · size)`.
//! Where we deliberately differ (tolerant parsing, clamping, per-label colours, a built-in font)
//! the item's docs say so.

mod draw;
mod font;
mod parse;

use serde::Serialize;

pub use draw::{draw_boxes, BOX_COLORS, OUTLINE_WIDTH};
pub use parse::parse_detections;

/// The top of the normalised coordinate grid the model writes boxes on (spec §8.5).
pub const GRID_MAX: u32 = 999;

/// Errors of the grounding module (only drawing can fail; parsing never does).
#[derive(Debug, thiserror::Error)]
pub enum GroundingError {
    /// Creating, writing, syncing or renaming the output (or its temporary file) failed.
    #[error("grounding image {path}: {what}: {source}")]
    Io {
        path: std::path::PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The PNG encoder refused the image (for example a zero-sized one).
    #[error("grounding image {path}: PNG encoding of a {width}x{height} image failed: {source}")]
    Encode {
        path: std::path::PathBuf,
        width: u32,
        height: u32,
        #[source]
        source: image::ImageError,
    },
}

/// One box found in the model's answer, still on the model's 0…999 grid.
///
/// A `<|det|>` holding several boxes gives several detections with the same label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The referring expression (`<|ref|>…<|/ref|>`), trimmed; empty when the answer had none.
    pub label: String,
    /// `[x1, y1, x2, y2]` as written by the model: nominally 0…999, not checked or reordered here
    /// (see [`to_pixels`] for clamping).
    pub coords: [u32; 4],
}

/// A box in pixels of the original image, inclusive on both ends (the convention of Pillow's
/// `ImageDraw.rectangle`, which the reference draws with), with `x1 <= x2` and `y1 <= y2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PixelBox {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl PixelBox {
    /// `[x1, y1, x2, y2]`, the order of the JSON output.
    pub fn to_array(self) -> [u32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// Maps a detection to pixels of the original `original_w` × `original_h` image.
///
/// The reference computes `int(v / 999 * size)` in double precision (division first, then the
/// product, truncated toward zero); we do the same operations in the same order, so every value
/// inside the image is bit-for-bit the reference's. Then, where the reference relies on Pillow
/// to clip what falls outside, we clamp to the last pixel (`999` maps to `size`, one past the
/// last column or row) and order the corners (Pillow rejects `x2 < x1` and the reference then
/// draws nothing at all).
pub fn to_pixels(det: &Detection, original_w: u32, original_h: u32) -> PixelBox {
    let [x1, y1, x2, y2] = det.coords;
    let (ax, bx) = ordered(map_coord(x1, original_w), map_coord(x2, original_w));
    let (ay, by) = ordered(map_coord(y1, original_h), map_coord(y2, original_h));
    PixelBox {
        x1: ax,
        y1: ay,
        x2: bx,
        y2: by,
    }
}

/// `trunc(v / 999 * size)` clamped to `0..=size-1` (0 for an empty axis).
fn map_coord(v: u32, size: u32) -> u32 {
    let mapped = (f64::from(v) / f64::from(GRID_MAX) * f64::from(size)).trunc();
    let last = size.saturating_sub(1);
    // `mapped` is finite and >= 0; the comparison keeps the cast in range.
    if mapped >= f64::from(last) {
        last
    } else {
        mapped as u32
    }
}

fn ordered(a: u32, b: u32) -> (u32, u32) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// One box of the `--json` output's `boxes` array: `{"label": "...", "box": [x1, y1, x2, y2]}`
/// in pixels of the original image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoxRecord {
    pub label: String,
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
}

impl BoxRecord {
    /// The record for one detection on an `original_w` × `original_h` image.
    pub fn new(det: &Detection, original_w: u32, original_h: u32) -> Self {
        BoxRecord {
            label: det.label.clone(),
            bbox: to_pixels(det, original_w, original_h).to_array(),
        }
    }

    /// The record for a box already in pixels (one pair of [`ground`]'s output).
    pub fn from_pixels(label: &str, pixels: PixelBox) -> Self {
        BoxRecord {
            label: label.to_string(),
            bbox: pixels.to_array(),
        }
    }
}

/// Parses `text` and maps every box to the original image: the usual one-call path for the CLI,
/// returning the pairs [`draw_boxes`] takes.
pub fn ground(text: &str, original_w: u32, original_h: u32) -> Vec<(String, PixelBox)> {
    parse_detections(text)
        .into_iter()
        .map(|det| {
            let pixels = to_pixels(&det, original_w, original_h);
            (det.label, pixels)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(coords: [u32; 4]) -> Detection {
        Detection {
            label: String::new(),
            coords,
        }
    }

    #[test]
    fn map_coord_matches_the_formula_and_clamps() {
        // 580/999*362 = 210.17…; 999 -> 362 -> clamped to 361.
        assert_eq!(map_coord(580, 362), 210);
        assert_eq!(map_coord(999, 362), 361);
        assert_eq!(map_coord(0, 362), 0);
        assert_eq!(map_coord(5000, 362), 361);
        assert_eq!(map_coord(500, 0), 0);
        assert_eq!(map_coord(u32::MAX, u32::MAX), u32::MAX - 1);
    }

    #[test]
    fn corners_are_ordered() {
        let b = to_pixels(&det([900, 800, 100, 50]), 1000, 1000);
        assert_eq!(b.to_array(), [100, 50, 900, 800]);
    }
}
