//! Drawing boxes: the PNG decodes, keeps the original size, the outline has the box colour and
//! the inside of the box is untouched.

use std::path::Path;

use image::{Rgb, RgbImage};
use pocketvl::grounding::{
    draw_boxes, ground, to_pixels, Detection, PixelBox, BOX_COLORS, OUTLINE_WIDTH,
};

/// A deterministic, non-uniform background (so "untouched" is a real check, not a flat colour).
fn background(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) * 3 % 256) as u8,
        ])
    })
}

fn read_png(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

fn in_box(x: u32, y: u32, b: &PixelBox) -> bool {
    (b.x1..=b.x2).contains(&x) && (b.y1..=b.y2).contains(&y)
}

#[test]
fn one_box_outline_coloured_inside_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vg.png");
    let img = background(362, 543);
    // The spec's answer on the fixtures' giraffe size.
    let boxes = ground(
        "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 900, 900]]<|/det|>",
        img.width(),
        img.height(),
    );
    assert_eq!(boxes.len(), 1);
    let b = boxes[0].1;
    draw_boxes(&img, &boxes, &out).unwrap();
    let got = read_png(&out);
    assert_eq!(got.dimensions(), img.dimensions());

    let red = Rgb(BOX_COLORS[0]);
    let t = OUTLINE_WIDTH;
    for y in 0..img.height() {
        for x in 0..img.width() {
            let on_outline =
                in_box(x, y, &b) && (x < b.x1 + t || x > b.x2 - t || y < b.y1 + t || y > b.y2 - t);
            let inside = in_box(x, y, &b) && !on_outline;
            if on_outline {
                assert_eq!(got.get_pixel(x, y), &red, "outline pixel ({x}, {y})");
            } else if inside {
                assert_eq!(
                    got.get_pixel(x, y),
                    img.get_pixel(x, y),
                    "inside ({x}, {y})"
                );
            } else if y > b.y1 || y < b.y1.saturating_sub(40) {
                // Away from the label chip (which sits just above the box), nothing changes.
                assert_eq!(
                    got.get_pixel(x, y),
                    img.get_pixel(x, y),
                    "outside ({x}, {y})"
                );
            }
        }
    }
    // The label chip: just above the box's top-left corner, in the box colour with some ink.
    let chip: Vec<_> = (b.x1..b.x1 + 40)
        .flat_map(|x| (b.y1 - 18..b.y1).map(move |y| (x, y)))
        .map(|(x, y)| *got.get_pixel(x, y))
        .collect();
    assert!(chip.iter().filter(|p| **p == red).count() > chip.len() / 2);
    assert!(
        chip.contains(&Rgb([255, 255, 255])),
        "no text ink on the chip"
    );
    // The input image is not modified.
    assert_eq!(img, background(362, 543));
}

#[test]
fn labels_get_distinct_colours_and_repeated_labels_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("several.png");
    let img = background(400, 300);
    let text = "<|ref|>cat<|/ref|><|det|>[[100,300,300,500],[600,300,800,500]]<|/det|> and \
                <|ref|>dog<|/ref|><|det|>[[100,700,400,950]]<|/det|>";
    let boxes = ground(text, img.width(), img.height());
    assert_eq!(boxes.len(), 3);
    draw_boxes(&img, &boxes, &out).unwrap();
    let got = read_png(&out);
    assert_eq!(got.dimensions(), (400, 300));
    let colour_of = |b: &PixelBox| {
        // Middle of the left edge: outline, away from any label chip.
        *got.get_pixel(b.x1 + 1, (b.y1 + b.y2) / 2)
    };
    assert_eq!(colour_of(&boxes[0].1), Rgb(BOX_COLORS[0]));
    assert_eq!(colour_of(&boxes[1].1), Rgb(BOX_COLORS[0]));
    assert_eq!(colour_of(&boxes[2].1), Rgb(BOX_COLORS[1]));
    for (_, b) in &boxes {
        let (cx, cy) = ((b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2);
        assert_eq!(got.get_pixel(cx, cy), img.get_pixel(cx, cy));
    }
}

#[test]
fn boxes_touching_the_edges_and_odd_labels_draw_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("edges.png");
    let img = background(50, 30);
    let boxes: Vec<(String, PixelBox)> = [
        ("", [0, 0, 999, 999]),
        (
            "长颈鹿 and a very long label that runs off the image",
            [0, 0, 10, 10],
        ),
        ("x", [998, 998, 999, 999]),
    ]
    .iter()
    .map(|(l, c)| {
        let det = Detection {
            label: l.to_string(),
            coords: *c,
        };
        (det.label.clone(), to_pixels(&det, 50, 30))
    })
    .collect();
    draw_boxes(&img, &boxes, &out).unwrap();
    let got = read_png(&out);
    assert_eq!(got.dimensions(), (50, 30));
    // The whole-image box's outline runs along the right and bottom borders; the third label's
    // one-pixel box in the corner is drawn over it in the third colour.
    assert_eq!(got.get_pixel(49, 15), &Rgb(BOX_COLORS[0]));
    assert_eq!(got.get_pixel(25, 29), &Rgb(BOX_COLORS[0]));
    assert_eq!(got.get_pixel(49, 29), &Rgb(BOX_COLORS[2]));
}

#[test]
fn writes_atomically_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("over.png");
    std::fs::write(&out, b"old contents").unwrap();
    let img = background(20, 20);
    let boxes = [(
        "a",
        PixelBox {
            x1: 2,
            y1: 12,
            x2: 15,
            y2: 18,
        },
    )];
    draw_boxes(&img, &boxes, &out).unwrap();
    assert_eq!(read_png(&out).dimensions(), (20, 20));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("over.png")]);

    // A directory that does not exist: an Io error naming the output path.
    let bad = dir.path().join("missing").join("x.png");
    let err = draw_boxes(&img, &boxes, &bad).unwrap_err();
    assert!(err.to_string().contains("x.png"), "{err}");
    // A zero-sized image cannot be a PNG: an error, no file, no temporary left.
    let empty = RgbImage::new(0, 0);
    let zero = dir.path().join("zero.png");
    assert!(draw_boxes(&empty, &boxes, &zero).is_err());
    assert!(!zero.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Writes a sample for a person to look at when `POCKETVL_GROUNDING_SAMPLE` names a path
/// (used to check by eye that labels are legible; not an assertion).
#[test]
fn sample_for_eyes() {
    let Ok(path) = std::env::var("POCKETVL_GROUNDING_SAMPLE") else {
        println!("skipped: POCKETVL_GROUNDING_SAMPLE not set");
        return;
    };
    let img_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mha/images/giraffe.jpg");
    let img = image::open(img_path).unwrap().to_rgb8();
    let text = "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>\
                <|ref|>tree (left) #2<|/ref|><|det|>[[0, 0, 300, 600]]<|/det|>\
                <|ref|>ABCDEFGHIJKLMNOPQRSTUVWXYZ<|/ref|><|det|>[[20, 700, 700, 800]]<|/det|>\
                <|ref|>abcdefghijklmnopqrstuvwxyz<|/ref|><|det|>[[20, 850, 700, 950]]<|/det|>\
                <|ref|>0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ é<|/ref|><|det|>[[20, 420, 999, 500]]<|/det|>";
    let boxes = ground(text, img.width(), img.height());
    draw_boxes(&img, &boxes, Path::new(&path)).unwrap();
}
