//! pocketvl's image pipeline against Pillow itself (the reference's image library).
//!
//! `scripts/pillow_oracle.py` (run with the interpreter in `POCKETVL_PYTHON`, which must have
//! Pillow 13.0.0, the version the fixtures were made with) writes test vectors; these tests
//! demand byte equality for the resampler, `ImageOps.pad` and every lossless mode conversion.

use std::path::{Path, PathBuf};
use std::process::Command;

use pocketvl::image_io::{decode_rgb, RgbImage};
use pocketvl::model::deepseek_vl2::preprocess::pad;
use pocketvl::model::deepseek_vl2::resample::resize_bicubic;
use serde_json::Value;

use crate::common;
use common::python;

/// Runs one oracle command into a fresh temporary directory; returns it and the case list.
fn oracle(py: &str, cmd: &str, extra: &[&Path]) -> (tempfile::TempDir, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pillow_oracle.py");
    let status = Command::new(py)
        .arg(&script)
        .arg(cmd)
        .arg(dir.path())
        .args(extra)
        .status()
        .expect("run pillow_oracle.py");
    assert!(status.success(), "pillow_oracle.py {cmd} failed");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["pillow"], "13.0.0",
        "the oracle must run Pillow 13.0.0"
    );
    let cases = manifest["cases"].as_array().unwrap().clone();
    (dir, cases)
}

fn raw(dir: &Path, name: &str, w: u64, h: u64) -> RgbImage {
    let data = std::fs::read(dir.join(name)).unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

fn dims(c: &Value) -> (u64, u64, u64, u64) {
    let g = |k: &str| c[k].as_u64().unwrap();
    (g("in_w"), g("in_h"), g("out_w"), g("out_h"))
}

fn diff_count(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    let n = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .filter(|(x, y)| x != y)
        .count();
    let m = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    (n, m)
}

#[test]
fn resize_matches_pillow_bit_for_bit() {
    let Some(py) = python() else { return };
    let (dir, cases) = oracle(&py, "resize", &[]);
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (wi, hi, wo, ho) = dims(c);
        let src = raw(dir.path(), &format!("{name}.in.rgb"), wi, hi);
        let want = raw(dir.path(), &format!("{name}.out.rgb"), wo, ho);
        let got = resize_bicubic(&src, wo as u32, ho as u32);
        let (n, m) = diff_count(&got, &want);
        if n != 0 {
            failures.push(format!(
                "{name} {wi}x{hi}->{wo}x{ho}: {n} bytes differ, max {m}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn pad_matches_imageops_pad() {
    let Some(py) = python() else { return };
    let (dir, cases) = oracle(&py, "pad", &[]);
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (wi, hi, wo, ho) = dims(c);
        let src = raw(dir.path(), &format!("{name}.in.rgb"), wi, hi);
        let want = raw(dir.path(), &format!("{name}.out.rgb"), wo, ho);
        let got = pad(&src, wo as u32, ho as u32, [127; 3]);
        let (n, m) = diff_count(&got, &want);
        if n != 0 {
            failures.push(format!(
                "{name} {wi}x{hi}->{wo}x{ho}: {n} bytes differ, max {m}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn decoding_matches_pil_convert_rgb() {
    let Some(py) = python() else { return };
    let (dir, cases) = oracle(&py, "modes", &[]);
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let file = dir.path().join(c["file"].as_str().unwrap());
        let (w, h) = (c["w"].as_u64().unwrap(), c["h"].as_u64().unwrap());
        let want = raw(dir.path(), &format!("{name}.rgb"), w, h);
        let apply_exif = c["apply_exif"].as_bool().unwrap();
        let got = match decode_rgb(&std::fs::read(&file).unwrap(), apply_exif) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert_eq!((got.width(), got.height()), (w as u32, h as u32), "{name}");
        let (n, m) = diff_count(&got, &want);
        println!(
            "{name} (PIL mode {}): {n} bytes differ, max {m}",
            c["pil_mode"]
        );
        // JPEG is decoded by Pillow's own libjpeg-turbo: exact, like the lossless formats.
        // Lossy WebP keeps its bound (a different decoder).
        let is_jpeg = c["file"].as_str().unwrap().ends_with(".jpg");
        let limit = if c["lossy"].as_bool().unwrap() && !is_jpeg {
            8
        } else {
            0
        };
        if m > limit {
            failures.push(format!("{name}: {n} bytes differ, max {m} > {limit}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// JPEGs made by Pillow in every layout libjpeg-turbo decodes differently (baseline,
/// progressive, 4:4:4 / 4:2:2 / 4:2:0, grey, restart markers, CMYK, sizes off the MCU grid,
/// smooth and noise content) decode to exactly PIL's `convert("RGB")` bytes.
#[test]
fn jpeg_decoding_matches_pillow_byte_for_byte() {
    let Some(py) = python() else { return };
    let (dir, cases) = oracle(&py, "jpegs", &[]);
    assert!(cases.len() >= 80, "the oracle made {} JPEGs", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let file = dir.path().join(c["file"].as_str().unwrap());
        let (w, h) = (c["w"].as_u64().unwrap(), c["h"].as_u64().unwrap());
        let want = raw(dir.path(), &format!("{name}.rgb"), w, h);
        match decode_rgb(&std::fs::read(&file).unwrap(), false) {
            Ok(got) if (got.width(), got.height()) != (w as u32, h as u32) => {
                failures.push(format!(
                    "{name}: {}x{} instead of {w}x{h}",
                    got.width(),
                    got.height()
                ))
            }
            Ok(got) => {
                let (n, m) = diff_count(&got, &want);
                if n != 0 {
                    failures.push(format!("{name}: {n} bytes differ, max {m}"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The fixture images: our decoder vs PIL's, then the whole pad pipeline fed with PIL's own
/// decoded pixels must reproduce the golden tiles exactly (that isolates the resampler and
/// `pad` from the JPEG decoder).
#[test]
fn fixture_images_through_pil_decoding_give_golden_tiles() {
    let Some(py) = python() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mha/images");
    let files: Vec<PathBuf> = ["giraffe.jpg", "shapes_500x300.png", "corn.jpg"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (dir, cases) = oracle(&py, "decode", &refs);
    for (c, f) in cases.iter().zip(&files) {
        let name = c["name"].as_str().unwrap();
        let (w, h) = (c["w"].as_u64().unwrap(), c["h"].as_u64().unwrap());
        let pil = raw(dir.path(), &format!("{name}.rgb"), w, h);
        let ours = decode_rgb(&std::fs::read(f).unwrap(), false).unwrap();
        let (n, m) = diff_count(&ours, &pil);
        let mean = ours
            .as_raw()
            .iter()
            .zip(pil.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / pil.as_raw().len() as f64;
        println!(
            "{}: decoder vs PIL: {n} of {} bytes differ, max {m}, mean {mean:.4}",
            f.display(),
            pil.as_raw().len()
        );
        assert_eq!(n, 0, "{}: our pixels must be PIL's", f.display());
    }
    let decoded: Vec<RgbImage> = cases
        .iter()
        .map(|c| {
            let (w, h) = (c["w"].as_u64().unwrap(), c["h"].as_u64().unwrap());
            raw(
                dir.path(),
                &format!("{}.rgb", c["name"].as_str().unwrap()),
                w,
                h,
            )
        })
        .collect();
    let report = fixture_tiles::compare_all_cases(|file| {
        let i = files
            .iter()
            .position(|f| f.file_name().unwrap() == file)
            .unwrap();
        decoded[i].clone()
    });
    for line in &report.lines {
        println!("{line}");
    }
    assert_eq!(
        report.max_abs_diff, 0,
        "PIL-decoded pixels must give the golden tiles exactly"
    );
}

use crate::preprocess_common as fixture_tiles;
