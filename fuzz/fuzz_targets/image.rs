//! Image decoding (every format, JPEG through libjpeg-turbo) and the reference's preprocessing
//! on arbitrary bytes: `Ok` or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketvl::image_io::decode_rgb;
use pocketvl::model::deepseek_vl2::preprocess::{preprocess, PreprocessConfig};

/// The harness's own bound (not the product's, which is `image_io::MAX_PIXELS`): a few
/// bytes can claim a 16384x16384 image, and decoding those 805 MB at every such input would
/// make the run measure allocation instead of parsing.
const HARNESS_MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format()
    else {
        return;
    };
    if let Ok((w, h)) = reader.into_dimensions() {
        if u64::from(w) * u64::from(h) > HARNESS_MAX_PIXELS {
            return;
        }
    }
    for exif in [false, true] {
        let Ok(img) = decode_rgb(data, exif) else {
            return;
        };
        assert_eq!(
            img.as_raw().len(),
            3 * img.width() as usize * img.height() as usize
        );
        if !exif {
            let pre = preprocess(&[img], &PreprocessConfig::default());
            std::hint::black_box(pre.is_ok());
        }
    }
});
