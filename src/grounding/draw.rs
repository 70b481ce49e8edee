//! Drawing grounding boxes and their labels onto a copy of the original image, written as PNG.
//!
//! The reference (`parse_ref_bbox`) draws each box with Pillow's `rectangle(outline, width=3)`
//! and its label 20 px above the top-left corner in the box colour, cycling through a 13-colour
//! palette by box index. We keep the 3 px outline (inside the box, as Pillow draws it) and the
//! palette, but colour by **label** (all boxes of one label share a colour, so several boxes for
//! one phrase read as one answer) and draw the label on a filled chip in the box colour with a
//! built-in 5×7 font, which stays legible on any photo without a font file.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use quant::temp_file::TempFile;

use super::font::{self, ADVANCE, GLYPH_H};
use super::{GroundingError, PixelBox};

/// Outline thickness in pixels (the reference's `box_width = 3`).
pub const OUTLINE_WIDTH: u32 = 3;

/// The reference's `BOX2COLOR` palette (`deepseek_vl2/serve/app_modules/presets.py`), in order.
pub const BOX_COLORS: [[u8; 3]; 13] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [0, 255, 255],
    [255, 255, 0],
    [255, 0, 255],
    [127, 127, 127],
    [255, 255, 127],
    [255, 127, 255],
    [127, 255, 255],
    [127, 127, 255],
    [127, 255, 127],
    [255, 127, 127],
];

/// Writes `image` with every box outlined and labelled to `out` as a PNG, atomically: the PNG is
/// written to a temporary file beside `out` and renamed over it, so `out` is never left
/// half-written. The input image is not modified.
pub fn draw_boxes<S: AsRef<str>>(
    image: &RgbImage,
    boxes: &[(S, PixelBox)],
    out: &Path,
) -> Result<(), GroundingError> {
    let drawn = render_boxes(image, boxes);
    write_png_atomic(&drawn, out)
}

/// `image` with the boxes drawn, in memory (what [`draw_boxes`] writes). Outlines are drawn first
/// and labels last, so no outline covers a label. Boxes reaching outside the image are clipped.
pub fn render_boxes<S: AsRef<str>>(image: &RgbImage, boxes: &[(S, PixelBox)]) -> RgbImage {
    let mut canvas = image.clone();
    let colors = label_colors(boxes);
    for ((_, b), color) in boxes.iter().zip(&colors) {
        outline(&mut canvas, b, *color);
    }
    let scale = font_scale(canvas.width(), canvas.height());
    for ((label, b), color) in boxes.iter().zip(&colors) {
        label_chip(&mut canvas, label.as_ref(), b, *color, scale);
    }
    canvas
}

/// The colour of each box: the palette entry of its label, labels numbered by first appearance.
fn label_colors<S: AsRef<str>>(boxes: &[(S, PixelBox)]) -> Vec<Rgb<u8>> {
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    boxes
        .iter()
        .map(|(label, _)| {
            let next = index_of.len();
            let i = *index_of.entry(label.as_ref()).or_insert(next);
            Rgb(BOX_COLORS[i % BOX_COLORS.len()])
        })
        .collect()
}

/// Font magnification for an image: 7 px tall text on small images, up to 28 px on large ones
/// (the reference uses 20 px text whatever the size).
fn font_scale(width: u32, height: u32) -> u32 {
    (1 + width.max(height) / 400).min(4)
}

/// Sets every pixel of the rectangle `[x1, x2] × [y1, y2]` (inclusive) that lies in the image.
fn fill(canvas: &mut RgbImage, x1: u32, y1: u32, x2: u32, y2: u32, color: Rgb<u8>) {
    let (w, h) = canvas.dimensions();
    if w == 0 || h == 0 || x1 > x2 || y1 > y2 || x1 >= w || y1 >= h {
        return;
    }
    for y in y1..=y2.min(h - 1) {
        for x in x1..=x2.min(w - 1) {
            canvas.put_pixel(x, y, color);
        }
    }
}

/// The box outline, [`OUTLINE_WIDTH`] pixels thick, inside the box's bounds (Pillow's rule).
fn outline(canvas: &mut RgbImage, b: &PixelBox, color: Rgb<u8>) {
    let t = OUTLINE_WIDTH - 1;
    fill(canvas, b.x1, b.y1, b.x2, b.y1.saturating_add(t), color); // top
    fill(canvas, b.x1, b.y2.saturating_sub(t), b.x2, b.y2, color); // bottom
    fill(canvas, b.x1, b.y1, b.x1.saturating_add(t), b.y2, color); // left
    fill(canvas, b.x2.saturating_sub(t), b.y1, b.x2, b.y2, color); // right
}

/// The label on a chip of the box colour: above the box's top-left corner when there is room,
/// otherwise just inside the box under its top edge; moved left if it would leave the image.
/// Text is black or white, whichever contrasts with the chip.
fn label_chip(canvas: &mut RgbImage, label: &str, b: &PixelBox, color: Rgb<u8>, scale: u32) {
    if label.is_empty() {
        return;
    }
    let pad = scale;
    let chip_w = font::text_width(label)
        .saturating_mul(scale)
        .saturating_add(2 * pad);
    let chip_h = GLYPH_H * scale + 2 * pad;
    let x0 = b.x1.min(canvas.width().saturating_sub(chip_w));
    let y0 = if b.y1 >= chip_h {
        b.y1 - chip_h
    } else {
        b.y1.saturating_add(OUTLINE_WIDTH)
    };
    fill(
        canvas,
        x0,
        y0,
        x0.saturating_add(chip_w - 1),
        y0.saturating_add(chip_h - 1),
        color,
    );
    let [r, g, bl] = color.0;
    let luma = 299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(bl);
    let ink = if luma > 140_000 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    };
    let mut pen_x = x0.saturating_add(pad);
    let pen_y = y0.saturating_add(pad);
    for c in label.chars() {
        if pen_x >= canvas.width() {
            break;
        }
        let g = font::glyph(c);
        for row in 0..GLYPH_H {
            for col in 0..font::GLYPH_W {
                if font::ink(g, col, row) {
                    let x = pen_x.saturating_add(col * scale);
                    let y = pen_y.saturating_add(row * scale);
                    let x2 = x.saturating_add(scale - 1);
                    let y2 = y.saturating_add(scale - 1);
                    fill(canvas, x, y, x2, y2, ink);
                }
            }
        }
        pen_x = pen_x.saturating_add(ADVANCE * scale);
    }
}

/// Encodes `image` as PNG into a fresh temporary file in `out`'s directory, syncs it and renames
/// it to `out` (a rename within one directory is atomic on the platforms we target).
fn write_png_atomic(image: &RgbImage, out: &Path) -> Result<(), GroundingError> {
    let io_err = |what: &'static str| {
        let path = out.to_path_buf();
        move |source| GroundingError::Io { path, what, source }
    };
    let (mut guard, file) = TempFile::create(out).map_err(io_err("creating the temporary file"))?;

    let mut writer = BufWriter::new(file);
    PngEncoder::new(&mut writer)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|source| GroundingError::Encode {
            path: out.to_path_buf(),
            width: image.width(),
            height: image.height(),
            source,
        })?;
    writer.flush().map_err(io_err("writing the PNG"))?;
    let file = writer
        .into_inner()
        .map_err(|e| io_err("writing the PNG")(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing the PNG"))?;
    drop(file);
    fs::rename(guard.path(), out).map_err(io_err("renaming the temporary file into place"))?;
    guard.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_follow_labels_in_order_of_appearance() {
        let b = PixelBox {
            x1: 0,
            y1: 0,
            x2: 1,
            y2: 1,
        };
        let boxes = [("a", b), ("b", b), ("a", b), ("c", b)];
        let c = label_colors(&boxes);
        assert_eq!(
            c,
            vec![
                Rgb(BOX_COLORS[0]),
                Rgb(BOX_COLORS[1]),
                Rgb(BOX_COLORS[0]),
                Rgb(BOX_COLORS[2])
            ]
        );
    }

    #[test]
    fn fill_clips_to_the_image() {
        let mut img = RgbImage::new(4, 4);
        fill(&mut img, 2, 2, 100, 100, Rgb([9, 9, 9]));
        fill(&mut img, 10, 0, 12, 3, Rgb([7, 7, 7]));
        let set = img.pixels().filter(|p| p.0 == [9, 9, 9]).count();
        assert_eq!(set, 4);
        assert!(img.pixels().all(|p| p.0 != [7, 7, 7]));
    }

    #[test]
    fn degenerate_images_and_boxes_do_not_panic() {
        let b = PixelBox {
            x1: u32::MAX - 1,
            y1: 0,
            x2: u32::MAX,
            y2: u32::MAX,
        };
        let empty = RgbImage::new(0, 0);
        let _ = render_boxes(&empty, &[("x", b)]);
        let one = RgbImage::new(1, 1);
        let out = render_boxes(
            &one,
            &[
                ("label", b),
                (
                    "",
                    PixelBox {
                        x1: 0,
                        y1: 0,
                        x2: 0,
                        y2: 0,
                    },
                ),
            ],
        );
        assert_eq!(out.dimensions(), (1, 1));
    }
}
