//! The whole image path against the reference's outputs (tests/fixtures/README.md), starting
//! from the image FILES: decode, tile, tower, projector, layout, prompt, language model and
//! greedy generation, for every image case of both tiny checkpoints (converted here with the
//! converter library).
//!
//! Two pixel sources per case:
//! * ours, from the files (`load_rgb`, no EXIF rotation, as the reference): PNG and JPEG
//!   (decoded by libjpeg-turbo, Pillow's decoder) give the reference's pixels exactly, so every
//!   case must match the reference to f32 noise, greedy tokens included;
//! * the reference's own pixels (`preprocess/pixels.safetensors` fed to our tower with our
//!   layout): every case must then match to f32 noise, greedy tokens included.
//!
//! Quantized recipes (f16, q8_0) are teacher-forced along the golden greedy path, as
//! tests/it/decoder_oracle.rs does for text, with image features from the recipe's own mmproj on
//! the reference pixels.

use convert::write::mmproj_path;
use pocketvl::image_io::{load_rgb, RgbImage};
use pocketvl::loader::ModelFile;
use pocketvl::model::deepseek_vl2::preprocess::{preprocess, Preprocessed};
use pocketvl::model::deepseek_vl2::prompt::{build_chat, Message, Role};
use pocketvl::model::deepseek_vl2::vision::VisionModel;
use pocketvl::model::deepseek_vl2::{LanguageModel, LogitsWanted};
use pocketvl::sampler::SamplerConfig;
use pocketvl::tokenizer::Tokenizer;
use pocketvl::vision_cache::VisionCache;
use pocketvl::GenerateOptions;
use serde_json::Value;

use crate::common;
use common::{converted, fixture, golden_tiles, max_abs, messages, Golden, Lm};

fn image_cases(name: &str) -> Vec<Value> {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture(name).join("cases.json")).unwrap()).unwrap();
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["images"].as_array().unwrap().is_empty())
        .cloned()
        .collect()
}

fn case_images(fx: &str, case: &Value) -> Vec<RgbImage> {
    case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| load_rgb(&fixture(fx).join("images").join(f.as_str().unwrap()), false).unwrap())
        .collect()
}

/// Features from the reference's own pixels: our tiling decides the layout, the golden tile
/// store supplies the pixels (`<case>.tile_index` rows).
fn golden_pixel_features(
    vision: &VisionModel,
    golden: &Golden,
    tiles: &[Vec<u8>],
    cn: &str,
    images: &[RgbImage],
) -> Vec<f32> {
    let ours = preprocess(images, &vision.config).unwrap();
    let tile_index: Vec<usize> = golden
        .i64(&format!("{cn}.tile_index"))
        .iter()
        .map(|&i| i as usize)
        .collect();
    let pre = Preprocessed {
        unique_tiles: tiles.to_vec(),
        tile_index,
        ..ours
    };
    vision.encode(&pre).unwrap()
}

fn greedy16() -> GenerateOptions {
    GenerateOptions {
        max_new: 16,
        chunk: 0,
        keep_logits: true,
        sampler: SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What one run (one pixel source) of one case measured.
struct Measured {
    embeds: f32,
    logits: f32,
    matching: usize,
}

/// Embeddings, last-position logits and 16 greedy tokens of one case from `features`.
fn run_case(
    session: &mut Lm,
    golden: &Golden,
    cn: &str,
    ids: &[u32],
    features: &[f32],
) -> Measured {
    let (emb, _) = session.embed_prompt(ids, features).unwrap();
    let embeds = max_abs(&emb, &golden.f32(&format!("{cn}.inputs_embeds")));
    session.reset();
    let g = session
        .generate(ids, features, &greedy16(), &mut |_| {})
        .unwrap();
    let logits = max_abs(&g.logits[0], &golden.f32(&format!("{cn}.logits_last")));
    let want = golden.ids(&format!("{cn}.gen_ids"));
    let matching = g
        .tokens
        .iter()
        .zip(&want)
        .take_while(|(a, b)| a == b)
        .count();
    Measured {
        embeds,
        logits,
        matching,
    }
}

fn check_f32(fx: &str) {
    let (_dir, path) = converted(fx, "f32");
    let file = ModelFile::open(&path).unwrap();
    let model = LanguageModel::load(&file).unwrap();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let vision = VisionModel::load(&mmproj_path(&path)).unwrap();
    let golden = Golden::open(fx);
    let tiles = golden_tiles();
    let mut session = Lm::new(model, tok);
    // One cache for the whole fixture: the giraffe recurs across cases.
    let mut cache = VisionCache::default();
    for case in image_cases(fx) {
        let cn = case["name"].as_str().unwrap();
        let images = case_images(fx, &case);
        let enc = cache.encode(&vision, &images).unwrap();
        let p = build_chat(&session.tokenizer, &messages(&case), &enc.token_counts()).unwrap();
        assert_eq!(
            p.ids,
            golden.ids(&format!("{cn}.input_ids")),
            "{fx}/{cn}: prompt ids"
        );
        let n_gen = 16;

        let files = run_case(&mut session, &golden, cn, &p.ids, &enc.features);
        let gp = golden_pixel_features(&vision, &golden, &tiles, cn, &images);
        let gold = run_case(&mut session, &golden, cn, &p.ids, &gp);
        println!(
            "{fx}/{cn}: from files: inputs_embeds max {:.3e}, logits_last max {:.3e}, greedy {}/{n_gen}; \
             golden pixels: inputs_embeds max {:.3e}, logits_last max {:.3e}, greedy {}/{n_gen}; \
             cached images {}",
            files.embeds, files.logits, files.matching, gold.embeds, gold.logits, gold.matching,
            enc.n_cached()
        );
        // The reference's pixels: f32 noise everywhere, exact greedy tokens (the smallest
        // golden top-1 margin during generation is >= 2e-3).
        assert!(
            gold.embeds <= 1e-4,
            "{fx}/{cn}: golden-pixel embeds {}",
            gold.embeds
        );
        assert!(
            gold.logits <= 1e-3,
            "{fx}/{cn}: golden-pixel logits {}",
            gold.logits
        );
        assert_eq!(
            gold.matching, n_gen,
            "{fx}/{cn}: golden-pixel greedy tokens"
        );
        // Every image file (PNG or JPEG, decoded by Pillow's own libjpeg-turbo) gives the
        // reference's pixels exactly, so the files match the reference to f32 noise.
        assert!(
            files.embeds <= 1e-4,
            "{fx}/{cn}: embeds from files {}",
            files.embeds
        );
        assert!(
            files.logits <= 1e-3,
            "{fx}/{cn}: logits from files {}",
            files.logits
        );
        assert_eq!(files.matching, n_gen, "{fx}/{cn}: greedy tokens from files");
    }
    println!(
        "{fx}: vision cache hits {} misses {}",
        cache.hits, cache.misses
    );
}

#[test]
fn tiny_mha_images_from_files_match_reference() {
    check_f32("tiny-mha");
}

#[test]
fn tiny_mla_images_from_files_match_reference() {
    check_f32("tiny-mla");
}

/// Teacher-forced along the golden greedy path (prompt + the first 15 golden tokens), image
/// features from the recipe's own mmproj on the reference pixels. Returns (top-1 agreement,
/// max error of the golden top-1 logit).
fn check_quantized(fx: &str, recipe: &str) -> (f32, f32) {
    let (_dir, path) = converted(fx, recipe);
    let file = ModelFile::open(&path).unwrap();
    let model = LanguageModel::load(&file).unwrap();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let vision = VisionModel::load(&mmproj_path(&path)).unwrap();
    let golden = Golden::open(fx);
    let tiles = golden_tiles();
    let mut session = Lm::new(model, tok);
    let v = session.model.hp.n_vocab;
    let (mut agree, mut total, mut max_err) = (0usize, 0usize, 0.0f32);
    for case in image_cases(fx) {
        let cn = case["name"].as_str().unwrap();
        let images = case_images(fx, &case);
        let counts: Vec<usize> = case["image_token_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as usize)
            .collect();
        let p = build_chat(&session.tokenizer, &messages(&case), &counts).unwrap();
        let feats = golden_pixel_features(&vision, &golden, &tiles, cn, &images);
        let (mut emb, _) = session.embed_prompt(&p.ids, &feats).unwrap();
        let gen = golden.ids(&format!("{cn}.gen_ids"));
        emb.extend(session.model.embed_tokens(&gen[..gen.len() - 1]).unwrap());
        session.reset();
        let logits = session.forward(&emb, 0, LogitsWanted::All).unwrap();
        session.reset();
        let t = p.ids.len();
        let top5 = golden.i64(&format!("{cn}.gen_top5_ids"));
        let top5_l = golden.f32(&format!("{cn}.gen_top5_logits"));
        let (mut case_agree, mut case_err) = (0usize, 0.0f32);
        for (s, &want) in gen.iter().enumerate() {
            let row = &logits[(t - 1 + s) * v..][..v];
            case_agree += (pocketvl::sampler::argmax(row) as u32 == want) as usize;
            case_err = case_err.max((row[top5[s * 5] as usize] - top5_l[s * 5]).abs());
        }
        println!(
            "{fx} {recipe} {cn}: top-1 agreement {case_agree}/{}, max top-1 logit error {case_err:.4}",
            gen.len()
        );
        agree += case_agree;
        total += gen.len();
        max_err = max_err.max(case_err);
    }
    let rate = agree as f32 / total.max(1) as f32;
    println!(
        "{fx} {recipe} image cases: top-1 agreement {:.1}% ({agree}/{total}), max top-1 logit error {max_err:.4}",
        rate * 100.0
    );
    (rate, max_err)
}

#[test]
fn tiny_mha_image_quantized_recipes() {
    let (rate, err) = check_quantized("tiny-mha", "f16");
    assert!(rate == 1.0 && err < 1e-3, "f16: {rate} {err}");
    let (rate, _) = check_quantized("tiny-mha", "q8_0");
    assert!(rate >= 0.9, "q8_0 agreement {rate}");
}

#[test]
fn tiny_mla_image_quantized_recipes() {
    let (rate, err) = check_quantized("tiny-mla", "f16");
    assert!(rate == 1.0 && err < 1e-3, "f16: {rate} {err}");
    let (rate, _) = check_quantized("tiny-mla", "q8_0");
    assert!(rate >= 0.85, "q8_0 agreement {rate}");
}

/// A chat whose third image arrives in the second turn: the earlier two images lose their
/// tiling, so the prompt must be re-run from the first image. The incremental session must
/// give exactly what a fresh session gives on the same conversation, and a follow-up turn
/// without new images must take all features from the cache and re-run only the tail.
#[test]
fn chat_third_image_relayout_matches_fresh_prefill() {
    let fx = "tiny-mha";
    let (_dir, path) = converted(fx, "f32");
    let file = ModelFile::open(&path).unwrap();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let vision = VisionModel::load(&mmproj_path(&path)).unwrap();
    let img = |f: &str| load_rgb(&fixture(fx).join("images").join(f), false).unwrap();
    let (giraffe, shapes, corn) = (
        img("giraffe.jpg"),
        img("shapes_500x300.png"),
        img("corn.jpg"),
    );
    let mut session = Lm::new(LanguageModel::load(&file).unwrap(), tok);
    let tok2 = Tokenizer::from_model_file(&file).unwrap();
    let mut fresh = Lm::new(LanguageModel::load(&file).unwrap(), tok2);
    let mut cache = VisionCache::default();
    let mut params = greedy16();
    params.max_new = 4;

    // Turn 1: two images, tiled.
    let mut history = vec![Message::new(Role::User, "<image>\n<image>\nCompare them.")];
    let mut images = vec![giraffe.clone(), shapes.clone()];
    let enc = cache.encode(&vision, &images).unwrap();
    assert_eq!(enc.token_counts(), vec![631, 617]);
    let p1 = build_chat(&session.tokenizer, &history, &enc.token_counts()).unwrap();
    let g1 = session
        .generate(&p1.ids, &enc.features, &params, &mut |_| {})
        .unwrap();
    let feats1 = enc.features.clone();
    history.push(Message::new(Role::Assistant, g1.text.clone()));

    // Turn 2: a third image; every image is re-encoded untiled (no cache hit).
    history.push(Message::new(Role::User, "<image>\nAnd this one?"));
    images.push(corn);
    let enc = cache.encode(&vision, &images).unwrap();
    assert_eq!(enc.token_counts(), vec![421, 421, 421]);
    assert_eq!(enc.n_cached(), 0);
    let p2 = build_chat(&session.tokenizer, &history, &enc.token_counts()).unwrap();
    let g2 = session
        .generate(&p2.ids, &enc.features, &params, &mut |_| {})
        .unwrap();
    // The re-run starts where the cached positions stop matching: the global view (the
    // first 210 rows) is the same tiled or not, so the first image's local part onwards.
    let (_, fps1) = session.embed_prompt(&p1.ids, &feats1).unwrap();
    let (_, fps2) = session.embed_prompt(&p2.ids, &enc.features).unwrap();
    let common = fps1.iter().zip(&fps2).take_while(|(a, b)| a == b).count();
    assert!(common > p2.images[0].start && common < p2.images[0].start + p2.images[0].len);
    assert_eq!(g2.timings.prefill_tokens, p2.ids.len() - common);
    let f2 = fresh
        .generate(&p2.ids, &enc.features, &params, &mut |_| {})
        .unwrap();
    assert_eq!(g2.tokens, f2.tokens);
    let d = max_abs(&g2.logits[0], &f2.logits[0]);
    assert!(
        d <= 1e-5,
        "re-laid-out prefill vs fresh: logits differ by {d}"
    );
    println!(
        "relayout: turn 2 re-ran {} of {} positions, logits vs fresh {d:e}",
        g2.timings.prefill_tokens,
        p2.ids.len()
    );

    // Turn 3: no new image; all three come from the cache and only the tail is re-run.
    history.push(Message::new(Role::Assistant, g2.text.clone()));
    history.push(Message::new(Role::User, "Which is largest?"));
    let enc = cache.encode(&vision, &images).unwrap();
    assert_eq!(enc.n_cached(), 3);
    let p3 = build_chat(&session.tokenizer, &history, &enc.token_counts()).unwrap();
    let g3 = session
        .generate(&p3.ids, &enc.features, &params, &mut |_| {})
        .unwrap();
    assert!(
        g3.timings.prefill_tokens < p3.ids.len() - p3.images[2].start,
        "turn 3 re-ran {} of {} positions",
        g3.timings.prefill_tokens,
        p3.ids.len()
    );
    fresh.reset();
    let f3 = fresh
        .generate(&p3.ids, &enc.features, &params, &mut |_| {})
        .unwrap();
    assert_eq!(g3.tokens, f3.tokens);
    let _ = (giraffe, shapes);
}

/// Encoding images one by one through the cache gives the same features as encoding the
/// request's images together (`VisionModel::encode` on the joint preprocessing).
#[test]
fn cache_features_equal_joint_encoding() {
    let fx = "tiny-mla";
    let (_dir, path) = converted(fx, "f32");
    let vision = VisionModel::load(&mmproj_path(&path)).unwrap();
    let img = |f: &str| load_rgb(&fixture(fx).join("images").join(f), false).unwrap();
    for images in [
        vec![img("giraffe.jpg"), img("shapes_500x300.png")],
        vec![
            img("giraffe.jpg"),
            img("shapes_500x300.png"),
            img("corn.jpg"),
        ],
    ] {
        let joint = vision.encode(&vision.preprocess(&images).unwrap()).unwrap();
        let mut cache = VisionCache::new(2);
        let one = cache.encode(&vision, &images).unwrap();
        let again = cache.encode(&vision, &images).unwrap();
        assert_eq!(one.features.len(), joint.len());
        let d = max_abs(&one.features, &joint);
        assert!(d <= 1e-6, "per-image vs joint encoding differ by {d}");
        assert_eq!(again.features, one.features);
        // Capacity 2: with three images the oldest is evicted each round.
        println!(
            "{} images: cache hits on the second pass {}",
            images.len(),
            again.n_cached()
        );
        assert!(cache.len() <= 2);
    }
}
