//! The vision tower, projector and image-token layout against the reference's outputs
//! (tests/fixtures/README.md), for both tiny checkpoints converted here with `--quant f32`.
//!
//! Each stage is fed the reference's own input (golden pixels, golden tower output), so a
//! failure points at one stage: tower `tiles.vision_out`, projector `tiles.projector_out`,
//! layout the image rows of `<case>.inputs_embeds`. Tolerance 1e-4 absolute (README: an
//! independent f64 re-implementation lands within 4e-6 / 2e-6 / 1.2e-6).

use convert::safetensors::SafeTensorsFile;
use convert::write::mmproj_path;
use pocketvl::image_io::load_rgb;
use pocketvl::model::deepseek_vl2::preprocess::{preprocess, Preprocessed};
use pocketvl::model::deepseek_vl2::vision::{VisionModel, VisionPrecision};
use serde_json::Value;

use crate::common;
use common::{converted, fixture, golden_tiles, max_abs, tile_pixels};

const TOL: f32 = 1e-4;

/// Converts fixture `name` with the f32 recipe; returns the temp dir guard and the model.
fn vision_model(name: &str) -> (tempfile::TempDir, VisionModel) {
    let (dir, out) = converted(name, "f32");
    let model = VisionModel::load(&mmproj_path(&out)).unwrap();
    (dir, model)
}

/// One fixture, stage by stage: tower on the golden pixels, projector on the golden tower
/// output (and on ours), then the image rows of `inputs_embeds` of every case with images,
/// laid out from the golden tiles and, once per distinct image list, end to end from the
/// image files (decoder included).
fn check_fixture(fx: &str) {
    let (_dir, model) = vision_model(fx);
    let golden = SafeTensorsFile::open(&fixture(fx).join("golden.safetensors")).unwrap();
    let tiles = golden_tiles();
    let (pixels, n_tiles) = (tile_pixels(&model, &tiles), tiles.len());
    let want_v = golden.tensor("tiles.vision_out").unwrap().to_f32().unwrap();
    let got_v = model.tower().forward(&pixels, n_tiles).unwrap();
    let dv = max_abs(&got_v, &want_v);
    println!(
        "{fx}: vision_out ({} tiles) max abs diff {dv:e}",
        tiles.len()
    );
    assert!(dv <= TOL, "{fx}: vision_out max abs diff {dv} > {TOL}");

    let want_p = golden
        .tensor("tiles.projector_out")
        .unwrap()
        .to_f32()
        .unwrap();
    let got_p = model.projector().forward(&want_v, tiles.len()).unwrap();
    let dp = max_abs(&got_p, &want_p);
    println!("{fx}: projector_out (golden input) max abs diff {dp:e}");
    assert!(dp <= TOL, "{fx}: projector_out max abs diff {dp} > {TOL}");
    let chained = model.projector().forward(&got_v, tiles.len()).unwrap();
    let dc = max_abs(&chained, &want_p);
    println!("{fx}: projector_out (our tower output) max abs diff {dc:e}");
    assert!(
        dc <= TOL,
        "{fx}: chained projector_out max abs diff {dc} > {TOL}"
    );

    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture(fx).join("cases.json")).unwrap()).unwrap();
    let n = model.hparams.n_proj;
    let mut seen_e2e: Vec<Vec<String>> = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let files: Vec<String> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        if files.is_empty() {
            continue;
        }
        let embeds = golden
            .tensor(&format!("{name}.inputs_embeds"))
            .unwrap()
            .to_f32()
            .unwrap();
        let mask = golden
            .tensor(&format!("{name}.images_seq_mask"))
            .unwrap()
            .to_bool()
            .unwrap();
        let want: Vec<f32> = embeds
            .chunks(n)
            .zip(&mask)
            .filter(|(_, &m)| m)
            .flat_map(|(r, _)| r.iter().copied())
            .collect();

        // Our decoding and tiling give the layout; the tiles are the reference's (their
        // projector output computed above by our tower and projector).
        let images: Vec<_> = files
            .iter()
            .map(|f| load_rgb(&fixture(fx).join("images").join(f), false).unwrap())
            .collect();
        let ours = preprocess(&images, &model.config).unwrap();
        let tile_index: Vec<usize> = golden
            .tensor(&format!("{name}.tile_index"))
            .unwrap()
            .to_i64()
            .unwrap()
            .iter()
            .map(|&i| i as usize)
            .collect();
        let from_golden = Preprocessed {
            unique_tiles: tiles.clone(),
            tile_index,
            ..ours.clone()
        };
        let got = model.projector().assemble(&chained, &from_golden).unwrap();
        assert_eq!(got.len(), want.len(), "{fx}/{name}: number of image rows");
        let d = max_abs(&got, &want);
        println!(
            "{fx}/{name}: image rows of inputs_embeds ({}) max abs diff {d:e}",
            want.len() / n
        );
        assert!(
            d <= TOL,
            "{fx}/{name}: inputs_embeds image rows max abs diff {d} > {TOL}"
        );

        // End to end from the files: exact pixels for PNG and JPEG alike.
        if seen_e2e.contains(&files) {
            continue;
        }
        seen_e2e.push(files.clone());
        let e2e = model.encode(&ours).unwrap();
        let d2 = max_abs(&e2e, &want);
        println!("{fx}/{name}: end to end from the image files max abs diff {d2:e}");
        assert!(d2 <= TOL, "{fx}/{name}: end to end {d2} > {TOL}");
    }
}

#[test]
fn language_model_file_is_refused_as_mmproj() {
    let (_dir, out) = converted("tiny-mha", "f32");
    let err = VisionModel::load(&out)
        .err()
        .expect("a language model is not an mmproj");
    let msg = err.to_string();
    assert!(msg.contains("clip"), "{msg}");
}

#[test]
fn vision_stages_tiny_mha() {
    check_fixture("tiny-mha");
}

#[test]
fn vision_stages_tiny_mla() {
    check_fixture("tiny-mla");
}

/// `--vision-precision bf16` on the default (bf16) mmproj: the tower's activations rounded to
/// bf16 where this CPU has AVX512_BF16 or AMX (then the output moves off the exact path, by
/// about the 2^-9 rounding carried through 27 layers; on AVX512_BF16 the attention's
/// operands too), the exact path elsewhere. The bound is this mode's own, ~4x the largest
/// difference measured on both fixtures (2.3e-2, `vision_tower_recipes`); the exact mode
/// keeps [`TOL`].
#[test]
fn bf16_precision_tower_stays_near_the_reference() {
    let rounded =
        quant::kernels::bf16_tiles().is_some() || quant::kernels::bf16_dot_tiles().is_some();
    for fx in ["tiny-mha", "tiny-mla"] {
        let (_dir, out) = converted(fx, "bf16");
        let mut model = VisionModel::load(&mmproj_path(&out)).unwrap();
        let golden = SafeTensorsFile::open(&fixture(fx).join("golden.safetensors")).unwrap();
        let want = golden.tensor("tiles.vision_out").unwrap().to_f32().unwrap();
        let tiles = golden_tiles();
        let (pixels, n_tiles) = (tile_pixels(&model, &tiles), tiles.len());
        let exact = model.tower().forward(&pixels, n_tiles).unwrap();
        model.set_precision(VisionPrecision::Bf16);
        let fast = model.tower().forward(&pixels, n_tiles).unwrap();
        let (de, df) = (max_abs(&exact, &want), max_abs(&fast, &want));
        println!("{fx}: exact {de:e}, bf16 {df:e} (rounded path: {rounded})");
        assert!(de <= TOL, "{fx}: exact mode {de} > {TOL}");
        assert!(df <= 9e-2, "{fx}: bf16 mode {df}");
        assert_eq!(rounded, exact != fast, "{fx}: which path ran");
    }
}
