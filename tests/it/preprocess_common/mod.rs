//! Shared by the preprocessing tests: run every fixture case with images through
//! `preprocess` and compare with the oracle (cases.json metadata exactly, tile pixels with
//! `tests/fixtures/preprocess/pixels.safetensors` through `<case>.tile_index`).

use std::path::{Path, PathBuf};

use convert::safetensors::SafeTensorsFile;
use pocketvl::image_io::RgbImage;
use pocketvl::model::deepseek_vl2::preprocess::{preprocess, PreprocessConfig};
use serde_json::Value;

pub const FIXTURES: [&str; 2] = ["tiny-mha", "tiny-mla"];
const TILE_BYTES: usize = 3 * 384 * 384;

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Pixel statistics of one comparison.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub max_abs_diff: u8,
    pub differing_bytes: usize,
    pub compared_bytes: usize,
    pub sum_abs_diff: u64,
    /// Per image file: (max abs diff, mean abs diff) over all its tiles.
    pub per_file: Vec<(String, u8, f64)>,
}

impl Report {
    pub fn mean_abs_diff(&self) -> f64 {
        self.sum_abs_diff as f64 / self.compared_bytes.max(1) as f64
    }
}

fn ints(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Runs every case of both fixtures; `decode(file_name)` supplies the decoded image.
/// Panics on any metadata mismatch (best resolution, spatial crop, token counts, tile
/// count); pixel differences are measured and returned.
pub fn compare_all_cases(decode: impl Fn(&str) -> RgbImage) -> Report {
    let cfg = PreprocessConfig::default();
    let store_path = fixture_dir("preprocess").join("pixels.safetensors");
    let store = SafeTensorsFile::open(&store_path).unwrap();
    let pixels = store.tensor("tiles.pixel_u8").unwrap();
    assert_eq!(pixels.shape, &[7, 3, 384, 384]);
    let pixels = pixels.as_u8().unwrap();

    let mut report = Report::default();
    let mut per_file: std::collections::BTreeMap<String, (u8, u64, usize)> = Default::default();
    for fx in FIXTURES {
        let dir = fixture_dir(fx);
        let cases: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
        let golden = SafeTensorsFile::open(&dir.join("golden.safetensors")).unwrap();
        for case in cases["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let files: Vec<&str> = case["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            if files.is_empty() {
                continue;
            }
            let images: Vec<RgbImage> = files.iter().map(|f| decode(f)).collect();
            for (img, size) in images.iter().zip(case["image_sizes"].as_array().unwrap()) {
                assert_eq!(
                    vec![u64::from(img.width()), u64::from(img.height())],
                    ints(size),
                    "{fx}/{name}: image size"
                );
            }
            let p = preprocess(&images, &cfg).unwrap();
            assert_eq!(
                p.cropping,
                case["cropping"].as_bool().unwrap(),
                "{fx}/{name}: cropping"
            );
            for (i, l) in p.images.iter().enumerate() {
                let best = ints(&case["best_resolution_wh"][i]);
                assert_eq!(
                    vec![u64::from(l.best_wh.0), u64::from(l.best_wh.1)],
                    best,
                    "{fx}/{name}"
                );
                let crop = ints(&case["images_spatial_crop_wh_tiles"][i]);
                assert_eq!(
                    vec![l.tiles_across as u64, l.tiles_down as u64],
                    crop,
                    "{fx}/{name}"
                );
                let n = case["image_token_counts"][i].as_u64().unwrap();
                assert_eq!(
                    l.n_tokens as u64, n,
                    "{fx}/{name}: token count of image {i}"
                );
            }
            // images_spatial_crop from the golden tensors too ([across, down] per image).
            let sc = golden
                .tensor(&format!("{name}.images_spatial_crop"))
                .unwrap()
                .to_i64()
                .unwrap();
            let ours: Vec<i64> = p
                .images
                .iter()
                .flat_map(|l| [l.tiles_across as i64, l.tiles_down as i64])
                .collect();
            assert_eq!(sc, ours, "{fx}/{name}: images_spatial_crop");

            let tile_index = golden
                .tensor(&format!("{name}.tile_index"))
                .unwrap()
                .to_i64()
                .unwrap();
            assert_eq!(
                tile_index.len(),
                p.tile_index.len(),
                "{fx}/{name}: number of tiles"
            );
            let tiles_meta = case["tiles"].as_array().unwrap();
            for (t, &g) in tile_index.iter().enumerate() {
                let want = &pixels[g as usize * TILE_BYTES..(g as usize + 1) * TILE_BYTES];
                let got = p.tile(t).unwrap();
                let mut max = 0u8;
                let mut sum = 0u64;
                let mut ndiff = 0usize;
                for (a, b) in got.iter().zip(want) {
                    let d = a.abs_diff(*b);
                    max = max.max(d);
                    sum += u64::from(d);
                    ndiff += usize::from(d != 0);
                }
                report.max_abs_diff = report.max_abs_diff.max(max);
                report.sum_abs_diff += sum;
                report.differing_bytes += ndiff;
                report.compared_bytes += TILE_BYTES;
                let file = tiles_meta[t]["image"].as_str().unwrap().to_owned();
                let e = per_file.entry(file.clone()).or_default();
                e.0 = e.0.max(max);
                e.1 += sum;
                e.2 += TILE_BYTES;
                report.lines.push(format!(
                    "{fx}/{name} tile {t} ({file} {}): max {max}, mean {:.4}, {ndiff} bytes differ",
                    tiles_meta[t]["view"].as_str().unwrap(),
                    sum as f64 / TILE_BYTES as f64
                ));
            }
        }
    }
    report.per_file = per_file
        .into_iter()
        .map(|(f, (m, s, n))| (f, m, s as f64 / n.max(1) as f64))
        .collect();
    report
}
