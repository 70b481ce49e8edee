//! The grounding-box parser on arbitrary model output, and the mapping of its boxes to
//! pixels of an image of arbitrary size: corners ordered and clamped to the last pixel.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketvl::grounding::{ground, parse_detections};

fuzz_target!(|data: &[u8]| {
    // The first 4 bytes pick the image size (1..=65536 per side); the rest is the text.
    let (size, text) = data.split_at(data.len().min(4));
    let side = |b: &[u8]| u32::from(u16::from_le_bytes([b[0], b[1]])) + 1;
    let (w, h) = if size.len() == 4 {
        (side(&size[..2]), side(&size[2..]))
    } else {
        (640, 480)
    };
    let text = String::from_utf8_lossy(text);
    std::hint::black_box(parse_detections(&text));
    for (_, b) in ground(&text, w, h) {
        let [x1, y1, x2, y2] = b.to_array();
        assert!(
            x1 <= x2 && y1 <= y2 && x2 < w && y2 < h,
            "{b:?} outside {w}x{h}"
        );
    }
});
