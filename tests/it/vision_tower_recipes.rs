//! Accuracy of the vision-tower recipes, measured (not asserted: a table for choosing the
//! default `vision` type). Each tiny fixture is converted with the f32 recipe and the tower
//! and projector matrices overridden to F32 (exact), F16, BF16 or Q8_0 (which also rounds
//! activations to int8 blocks), BF16 also with `--vision-precision bf16` (the tower's
//! activations rounded to bf16 where this CPU has AVX512_BF16 or AMX; exact elsewhere, so
//! the row then equals plain BF16's); the reference's own pixels go through tower, projector and
//! the f32 language model. Printed per recipe: tower output max |diff| (7 golden tiles),
//! image-embeds max |diff|, last-position logits max |diff| and greedy agreement (16 tokens
//! per case) against the golden outputs.
//!
//! Run: `cargo test --release --test it vision_tower_recipes:: -- --ignored --nocapture`.

use convert::mapping::Role as TensorRole;
use convert::write::{convert, mmproj_path, ConvertOptions};
use pocketvl::image_io::load_rgb;
use pocketvl::loader::ModelFile;
use pocketvl::model::deepseek_vl2::preprocess::{preprocess, Preprocessed};
use pocketvl::model::deepseek_vl2::prompt::build_chat;
use pocketvl::model::deepseek_vl2::vision::{VisionModel, VisionPrecision};
use pocketvl::model::deepseek_vl2::LanguageModel;
use pocketvl::sampler::SamplerConfig;
use pocketvl::tokenizer::Tokenizer;
use pocketvl::GenerateOptions;
use quant::GgmlType;
use serde_json::Value;

use crate::common;
use common::{fixture, golden_tiles, max_abs, messages, tile_pixels, Golden, Lm};

fn measure(fx: &str, vty: GgmlType, precision: VisionPrecision) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    convert(&ConvertOptions {
        input: fixture(fx).join("hf"),
        output: path.clone(),
        quant: Some("f32".into()),
        overrides: vec![(TensorRole::Vision, vty), (TensorRole::Projector, vty)],
        force: false,
        threads: Some(2),
        progress: false,
    })
    .unwrap();
    let file = ModelFile::open(&path).unwrap();
    let model = LanguageModel::load(&file).unwrap();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let mut vision = VisionModel::load(&mmproj_path(&path)).unwrap();
    vision.set_precision(precision);
    let golden = Golden::open(fx);
    let tiles = golden_tiles();
    let pixels = tile_pixels(&vision, &tiles);
    let tower = vision.tower().forward(&pixels, tiles.len()).unwrap();
    let d_tower = max_abs(&tower, &golden.f32("tiles.vision_out"));

    let mut session = Lm::new(model, tok);
    let params = GenerateOptions {
        max_new: 16,
        chunk: 0,
        keep_logits: true,
        sampler: SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture(fx).join("cases.json")).unwrap()).unwrap();
    let (mut d_emb, mut d_logits, mut agree, mut total) = (0.0f32, 0.0f32, 0, 0);
    for case in cases["cases"].as_array().unwrap() {
        let files = case["images"].as_array().unwrap();
        if files.is_empty() {
            continue;
        }
        let cn = case["name"].as_str().unwrap();
        let images: Vec<_> = files
            .iter()
            .map(|f| load_rgb(&fixture(fx).join("images").join(f.as_str().unwrap()), false))
            .collect::<Result<_, _>>()
            .unwrap();
        let ours = preprocess(&images, &vision.config).unwrap();
        let pre = Preprocessed {
            unique_tiles: tiles.clone(),
            tile_index: golden
                .i64(&format!("{cn}.tile_index"))
                .iter()
                .map(|&i| i as usize)
                .collect(),
            ..ours
        };
        let feats = vision.encode(&pre).unwrap();
        let counts: Vec<usize> = case["image_token_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as usize)
            .collect();
        let p = build_chat(&session.tokenizer, &messages(case), &counts).unwrap();
        let (emb, _) = session.embed_prompt(&p.ids, &feats).unwrap();
        d_emb = d_emb.max(max_abs(&emb, &golden.f32(&format!("{cn}.inputs_embeds"))));
        session.reset();
        let g = session
            .generate(&p.ids, &feats, &params, &mut |_| {})
            .unwrap();
        session.reset();
        d_logits = d_logits.max(max_abs(
            &g.logits[0],
            &golden.f32(&format!("{cn}.logits_last")),
        ));
        let want = golden.ids(&format!("{cn}.gen_ids"));
        agree += g
            .tokens
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        total += want.len();
    }
    println!(
        "{fx} tower {vty} ({precision}): tower out max {d_tower:.3e} | image embeds max {d_emb:.3e} | \
         logits_last max {d_logits:.3e} | greedy prefix {agree}/{total}"
    );
}

#[test]
#[ignore = "measurement: prints the accuracy table of the tower recipes"]
fn tower_recipe_accuracy_table() {
    for fx in ["tiny-mha", "tiny-mla"] {
        for (vty, precision) in [
            (GgmlType::F32, VisionPrecision::Exact),
            (GgmlType::F16, VisionPrecision::Exact),
            (GgmlType::BF16, VisionPrecision::Exact),
            (GgmlType::BF16, VisionPrecision::Bf16),
            (GgmlType::Q8_0, VisionPrecision::Exact),
        ] {
            measure(fx, vty, precision);
        }
    }
}
