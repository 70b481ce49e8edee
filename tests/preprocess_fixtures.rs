//! End-to-end preprocessing against the oracle: the fixture image files decoded by pocketvl,
//! tiled and padded, compared with the reference processor's tiles and metadata.

use pocketvl::image_io::load_rgb;

#[path = "preprocess_common/mod.rs"]
mod common;

#[test]
fn fixture_cases_match_the_reference_processor() {
    let report = common::compare_all_cases(|file| {
        load_rgb(
            &common::fixture_dir("tiny-mha").join("images").join(file),
            false,
        )
        .unwrap()
    });
    for line in &report.lines {
        println!("{line}");
    }
    println!(
        "overall: max abs diff {}, mean {:.5}, {} of {} bytes differ",
        report.max_abs_diff,
        report.mean_abs_diff(),
        report.differing_bytes,
        report.compared_bytes
    );
    for (file, max, mean) in &report.per_file {
        println!("{file}: max {max}, mean {mean:.5}");
        if file.ends_with(".png") {
            // Lossless input: decoder, mode conversion, resampler and pad are all exact.
            assert_eq!(*max, 0, "{file}: PNG tiles must be bit-exact");
        } else {
            // JPEG: zune-jpeg's IDCT and chroma upsampling round differently from
            // libjpeg-turbo's (the fixtures README expects "small u8 differences"; spec §3.1
            // "a few levels per pixel"). Fed with PIL's decoded pixels the same pipeline is
            // exact (tests/preprocess_pillow.rs), so any difference here is the decoder's.
            // Measured: giraffe.jpg max 4 / mean 0.155, corn.jpg max 4 / mean 0.081; the
            // bounds leave 2x headroom without admitting a real resampling bug (a wrong filter
            // or offset moves edges by tens of levels and the mean by > 1).
            assert!(
                *max <= JPEG_MAX_ABS,
                "{file}: max abs diff {max} > {JPEG_MAX_ABS}"
            );
            assert!(
                *mean <= JPEG_MEAN_ABS,
                "{file}: mean abs diff {mean} > {JPEG_MEAN_ABS}"
            );
        }
    }
}

const JPEG_MAX_ABS: u8 = 8;
const JPEG_MEAN_ABS: f64 = 0.35;
