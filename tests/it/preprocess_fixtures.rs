//! End-to-end preprocessing against the oracle: the fixture image files decoded by pocketvl,
//! tiled and padded, compared with the reference processor's tiles and metadata.

use pocketvl::image_io::load_rgb;

use crate::preprocess_common as common;

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
        // PNG and JPEG (decoded by libjpeg-turbo, Pillow's decoder): decoder, mode conversion,
        // resampler and pad are all exact.
        assert_eq!(*max, 0, "{file}: tiles must be bit-exact");
    }
}
