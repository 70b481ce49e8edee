//! The decoder against the reference implementation's outputs (the fixture
//! goldens, tests/fixtures/README.md), for both tiny checkpoints converted
//! here with the converter library.
//!
//! Data-driven over cases.json, every case. Image cases take the image
//! features from the golden `inputs_embeds` rows at the image positions (the
//! reference's input to the language model); the vision path is tested
//! against `tiles.*` separately. Text rows are always our own embeddings.
//!
//! f32 recipe: prompt ids equal, logits within 1e-3 (README tolerance),
//! per-layer hidden state at the last position, MoE choices, argmax at every
//! position with a margin, and the 16 greedy tokens. f16 / q8_0: tokens equal
//! where the golden top-1 margin exceeds the format's error; the measured
//! agreement and max logit error are printed.

use pocketvl::experts::ExpertOptions;
use pocketvl::generate::{GenerateOptions, Sequence};
use pocketvl::kv_cache::CacheType;
use pocketvl::loader::ModelFile;
use pocketvl::model::deepseek_vl2::prompt::build_chat;
use pocketvl::model::deepseek_vl2::{LanguageModel, LogitsWanted};
use pocketvl::sampler::SamplerConfig;
use pocketvl::tokenizer::Tokenizer;
use pocketvl::trace::Trace;

use crate::common;
use common::{converted, fixture, load_json, max_abs, messages, Golden};

fn image_counts(case: &serde_json::Value) -> Vec<usize> {
    case["image_token_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

/// Prompt ids (checked against the golden) and the golden image-feature rows
/// `[n_image_positions, D]` in prompt order.
fn prompt_and_features(
    tok: &Tokenizer,
    golden: &Golden,
    case: &serde_json::Value,
    d: usize,
) -> (Vec<u32>, Vec<f32>) {
    let cn = case["name"].as_str().unwrap();
    let p = build_chat(tok, &messages(case), &image_counts(case)).unwrap();
    let want_ids: Vec<u32> = golden
        .i64(&format!("{cn}.input_ids"))
        .iter()
        .map(|&x| x as u32)
        .collect();
    assert_eq!(p.ids, want_ids, "{cn}: prompt ids");
    let emb = golden.f32(&format!("{cn}.inputs_embeds"));
    let mut feats = Vec::new();
    for r in &p.images {
        feats.extend_from_slice(&emb[r.start * d..(r.start + r.len) * d]);
    }
    (p.ids, feats)
}

fn argmax(x: &[f32]) -> usize {
    pocketvl::sampler::argmax(x)
}

/// The full f32 comparison for one fixture.
fn check_f32(name: &str) {
    let (_dir, path) = converted(name, "f32");
    let file = ModelFile::open(&path).unwrap();
    let model = LanguageModel::load(&file).unwrap();
    let mut st = model.new_state();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let cases = load_json(&fixture(name).join("cases.json"));
    let golden = Golden::open(name);
    let (d, v, n_layer) = (model.hp.n_embd, model.hp.n_vocab, model.hp.n_layer);
    let mut worst_logit = 0.0f32;
    for case in cases["cases"].as_array().unwrap() {
        let cn = case["name"].as_str().unwrap();
        let (ids, _) = prompt_and_features(&tok, &golden, case, d);
        let t = ids.len();
        let mut emb = model.embed_tokens(&ids).unwrap();
        let gemb = golden.f32(&format!("{cn}.inputs_embeds"));
        let mask = golden
            .0
            .tensor(&format!("{cn}.images_seq_mask"))
            .unwrap()
            .to_bool()
            .unwrap();
        for p in 0..t {
            if mask[p] {
                emb[p * d..][..d].copy_from_slice(&gemb[p * d..][..d]);
            }
        }
        let e = max_abs(&emb, &gemb);
        assert!(
            e <= 1e-6,
            "{name}/{cn}: inputs_embeds (text rows) max |diff| {e}"
        );

        st.trace = Trace::in_memory();
        let logits = model.forward(&mut st, &emb, 0, LogitsWanted::All).unwrap();
        // Last-position logits.
        let last = &logits[(t - 1) * v..];
        let e = max_abs(last, &golden.f32(&format!("{cn}.logits_last")));
        worst_logit = worst_logit.max(e);
        assert!(e < 1e-3, "{name}/{cn}: logits_last max |diff| {e}");
        // Logits at the probed positions.
        let at = golden.i64(&format!("{cn}.logits_at_pos"));
        let at_l = golden.f32(&format!("{cn}.logits_at"));
        for (j, &p) in at.iter().enumerate() {
            let e = max_abs(&logits[p as usize * v..][..v], &at_l[j * v..][..v]);
            worst_logit = worst_logit.max(e);
            assert!(e < 1e-3, "{name}/{cn}: logits at {p} max |diff| {e}");
        }
        // Argmax wherever the reference's choice is not a near tie.
        let am = golden.i64(&format!("{cn}.argmax"));
        let margin = golden.f32(&format!("{cn}.argmax_margin"));
        for p in 0..t {
            if margin[p] > 1e-3 {
                assert_eq!(
                    argmax(&logits[p * v..][..v]) as i64,
                    am[p],
                    "{name}/{cn}: argmax at {p}"
                );
            }
        }
        // Hidden state at the last position: input, after each layer, after the final norm.
        let hid = golden.f32(&format!("{cn}.hidden_last"));
        let recs = st.trace.records();
        for il in 0..n_layer {
            let r = recs
                .iter()
                .find(|r| r.name == "residual" && r.layer == Some(il))
                .unwrap();
            let e = max_abs(&r.data[(t - 1) * d..][..d], &hid[(il + 1) * d..][..d]);
            assert!(
                e < 1e-4,
                "{name}/{cn}: hidden after layer {il} max |diff| {e}"
            );
        }
        let on = recs.iter().find(|r| r.name == "output_norm").unwrap();
        let e = max_abs(&on.data[(t - 1) * d..][..d], &hid[(n_layer + 1) * d..][..d]);
        assert!(e < 1e-4, "{name}/{cn}: final norm max |diff| {e}");
        // MoE choices at the last token (sorted by weight, as the golden is).
        for il in 0..n_layer {
            let key = format!("{cn}.moe.layer{il}.topk_ids");
            if !golden.has(&key) {
                continue;
            }
            let ids_r = recs
                .iter()
                .find(|r| r.name == "moe_topk_ids" && r.layer == Some(il))
                .unwrap();
            let w_r = recs
                .iter()
                .find(|r| r.name == "moe_topk_weights" && r.layer == Some(il))
                .unwrap();
            let k = ids_r.shape[1];
            let check_row = |row: usize, want_ids: &[i64], want_w: &[f32], what: &str| {
                let mut pairs: Vec<(i64, f32)> = (0..k)
                    .map(|j| (ids_r.data[row * k + j] as i64, w_r.data[row * k + j]))
                    .collect();
                pairs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
                let got: Vec<i64> = pairs.iter().map(|p| p.0).collect();
                assert_eq!(got, want_ids, "{name}/{cn}: layer {il} {what} expert ids");
                for (p, w) in pairs.iter().zip(want_w) {
                    assert!(
                        (p.1 - w).abs() < 1e-5,
                        "{name}/{cn}: layer {il} {what} weight {} vs {w}",
                        p.1
                    );
                }
            };
            check_row(
                t - 1,
                &golden.i64(&key),
                &golden.f32(&format!("{cn}.moe.layer{il}.topk_weights")),
                "last",
            );
            let all_key = format!("{cn}.moe.layer{il}.topk_ids_all");
            if golden.has(&all_key) {
                let all_ids = golden.i64(&all_key);
                let all_w = golden.f32(&format!("{cn}.moe.layer{il}.topk_weights_all"));
                for p in 0..t {
                    let mut wi: Vec<(i64, f32)> = (0..k)
                        .map(|j| (all_ids[p * k + j], all_w[p * k + j]))
                        .collect();
                    wi.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
                    let ids: Vec<i64> = wi.iter().map(|x| x.0).collect();
                    let ws: Vec<f32> = wi.iter().map(|x| x.1).collect();
                    check_row(p, &ids, &ws, &format!("pos {p}"));
                }
            }
        }
        st.trace = Trace::off();
    }
    println!("{name} f32: max |logit diff| over checked rows {worst_logit:e}");
    // Greedy generation (fresh session per case, no stop strings: compare ids).
    let mut seq = Sequence::new(&model);
    for case in cases["cases"].as_array().unwrap() {
        let cn = case["name"].as_str().unwrap();
        let (ids, feats) = prompt_and_features(&tok, &golden, case, d);
        seq.reset();
        let params = GenerateOptions {
            max_new: 16,
            chunk: 5,
            sampler: SamplerConfig {
                temperature: 0.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let g = seq
            .generate(&model, &tok, &ids, &feats, &params, &mut |_| {})
            .unwrap();
        let want: Vec<u32> = golden
            .i64(&format!("{cn}.gen_ids"))
            .iter()
            .map(|&x| x as u32)
            .collect();
        let n = if case["gen_stopped_at_eos"].as_bool().unwrap_or(false) {
            g.tokens.len()
        } else {
            want.len()
        };
        assert_eq!(g.tokens[..], want[..n], "{name}/{cn}: greedy tokens");
    }
}

#[test]
fn tiny_mha_f32_matches_reference() {
    check_f32("tiny-mha");
}

#[test]
fn tiny_mla_f32_matches_reference() {
    check_f32("tiny-mla");
}

/// Teacher-forced comparison of a quantized recipe along the golden greedy
/// path: at each of the 16 steps of every case, our argmax is compared with
/// the golden token; choices that differ although the golden top-1 margin
/// exceeds `tol` are listed. Returns (top-1 agreement, max error of the
/// golden top-1 logit, number of such flips).
///
/// f16 holds every bf16 weight exactly, so it must agree everywhere. Q8_0 on
/// MLA + sigmoid routing can flip an expert choice, which moves logits by
/// O(logit std) (README "Tolerances": even bf16 activations give 92.7-100 %
/// argmax agreement on tiny-mla). Measured here (weights and, as in ggml,
/// activations quantized to Q8_0): tiny-mha 99.1 %, tiny-mla 92.9 % with two
/// flips after expert-choice changes; the bound is 90 %.
fn check_quantized(name: &str, recipe: &str, tol: f32) -> (f32, f32, usize) {
    let (_dir, path) = converted(name, recipe);
    let p = teacher_forced(name, &path, &ExpertOptions::default(), CacheType::F32, tol);
    println!(
        "{name} {recipe}: top-1 agreement {:.1}% ({}/{}), max top-1 logit error {:.4}",
        p.rate() * 100.0,
        p.agree,
        p.total,
        p.max_err
    );
    for f in &p.flips {
        println!("  {recipe} choice differs beyond the margin: {f}");
    }
    (p.rate(), p.max_err, p.flips.len())
}

/// How a model did along the golden greedy path ([`teacher_forced`]).
pub struct PathScore {
    /// Steps whose argmax is the golden token, of `total`.
    pub agree: usize,
    pub total: usize,
    /// Max and mean |error| of the golden top-1 logit.
    pub max_err: f32,
    pub mean_err: f32,
    /// Choices that differ although the golden top-1 margin exceeds the tolerance.
    pub flips: Vec<String>,
    /// The logit rows of every step of every case, in order.
    pub logits: Vec<f32>,
}

impl PathScore {
    pub fn rate(&self) -> f32 {
        self.agree as f32 / self.total.max(1) as f32
    }
}

/// Runs the model file `path` (a conversion of fixture `name`) with the expert store `opts`
/// and KV caches of type `cache`, teacher-forced along every case's golden greedy path (16 steps, image rows from the golden
/// `inputs_embeds`) and scores each step against the golden logits (see [`check_quantized`]).
pub fn teacher_forced(
    name: &str,
    path: &std::path::Path,
    opts: &ExpertOptions,
    cache: CacheType,
    tol: f32,
) -> PathScore {
    let file = ModelFile::open(path).unwrap();
    let mut model = LanguageModel::load_with(&file, opts).unwrap();
    model.set_cache_type(cache);
    let mut st = model.new_state();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let cases = load_json(&fixture(name).join("cases.json"));
    let golden = Golden::open(name);
    let v = model.hp.n_vocab;
    let (mut agree, mut total, mut max_err, mut sum_err) = (0usize, 0usize, 0.0f32, 0.0f64);
    let mut flips = Vec::new();
    let mut rows = Vec::new();
    let d = model.hp.n_embd;
    for case in cases["cases"].as_array().unwrap() {
        let cn = case["name"].as_str().unwrap();
        let (mut ids, _) = prompt_and_features(&tok, &golden, case, d);
        let t = ids.len();
        let gen: Vec<u32> = golden
            .i64(&format!("{cn}.gen_ids"))
            .iter()
            .map(|&x| x as u32)
            .collect();
        ids.extend_from_slice(&gen[..gen.len() - 1]);
        let mut emb = model.embed_tokens(&ids).unwrap();
        let gemb = golden.f32(&format!("{cn}.inputs_embeds"));
        let mask = golden
            .0
            .tensor(&format!("{cn}.images_seq_mask"))
            .unwrap()
            .to_bool()
            .unwrap();
        for p in 0..t {
            if mask[p] {
                emb[p * d..][..d].copy_from_slice(&gemb[p * d..][..d]);
            }
        }
        let logits = model.forward(&mut st, &emb, 0, LogitsWanted::All).unwrap();
        let top5 = golden.i64(&format!("{cn}.gen_top5_ids"));
        let top5_l = golden.f32(&format!("{cn}.gen_top5_logits"));
        for s in 0..gen.len() {
            let row = &logits[(t - 1 + s) * v..][..v];
            rows.extend_from_slice(row);
            let ours = argmax(row) as u32;
            total += 1;
            agree += (ours == gen[s]) as usize;
            let e = (row[top5[s * 5] as usize] - top5_l[s * 5]).abs();
            max_err = max_err.max(e);
            sum_err += e as f64;
            let margin = top5_l[s * 5] - top5_l[s * 5 + 1];
            if margin > tol && ours != gen[s] {
                flips.push(format!(
                    "{cn} step {s}: {ours} vs {} (margin {margin:.3}, top-1 logit error {e:.3})",
                    gen[s]
                ));
            }
        }
    }
    PathScore {
        agree,
        total,
        max_err,
        mean_err: (sum_err / total.max(1) as f64) as f32,
        flips,
        logits: rows,
    }
}

#[test]
fn tiny_mha_quantized_recipes() {
    let (rate, err, flips) = check_quantized("tiny-mha", "f16", 1e-3);
    assert!(rate == 1.0 && err < 1e-3 && flips == 0);
    let (rate, _, flips) = check_quantized("tiny-mha", "q8_0", 0.5);
    assert!(rate >= 0.93 && flips == 0, "q8_0 agreement {rate}");
}

#[test]
fn tiny_mla_quantized_recipes() {
    let (rate, err, flips) = check_quantized("tiny-mla", "f16", 1e-3);
    assert!(rate == 1.0 && err < 1e-3 && flips == 0);
    let (rate, _, _) = check_quantized("tiny-mla", "q8_0", 0.5);
    assert!(rate >= 0.90, "q8_0 agreement {rate}");
}

/// The f32 recipe over an f16 KV cache (`--cache-type f16`): keys and values rounded to
/// f16 where they are stored, everything else as the f32 parity above. Measured along every
/// case's 16 greedy steps (x86-64, Zen 4): 112/112 top-1 agreement on both checkpoints, the
/// golden top-1 logit off by at most 1.4e-3 (tiny-mha) and 7.1e-4 (tiny-mla) where the f32
/// cache is within 8e-6, any logit moved from the f32 cache's by at most 2.8e-3. Bounds:
/// every step agrees, 5e-3 on the top-1 logit, 1e-2 on any logit.
#[test]
fn f16_kv_cache_along_the_greedy_path() {
    for name in ["tiny-mha", "tiny-mla"] {
        let (_dir, path) = converted(name, "f32");
        let exact = teacher_forced(name, &path, &ExpertOptions::default(), CacheType::F32, 0.0);
        let p = teacher_forced(name, &path, &ExpertOptions::default(), CacheType::F16, 0.0);
        let moved = max_abs(&p.logits, &exact.logits);
        println!(
            "{name} f16 cache: top-1 agreement {}/{} (f32 cache {}/{}), max top-1 logit error {:.2e} (f32 cache {:.2e}), logits moved by at most {moved:.2e}",
            p.agree, p.total, exact.agree, exact.total, p.max_err, exact.max_err
        );
        assert_eq!(p.agree, p.total, "{name}: {:?}", p.flips);
        assert!(p.max_err < 5e-3, "{name}: top-1 logit error {}", p.max_err);
        assert!(moved < 1e-2, "{name}: logits moved by {moved}");
    }
}

/// The 4-bit recipe (Q4_0 routed experts, Q8_0 elsewhere; `q4_k` would fall back to Q5_0 on
/// the tiny widths), every case: text, and image cases with the golden image features. Random
/// weights are the hard case for 4 bits (fixture README: Q4_0 routed experts alone give
/// 82-91 % argmax agreement over all prompt positions); along the greedy path measured
/// 111/112 steps agree, with the golden top-1 logit off by at most 0.45 (aarch64 under qemu,
/// cortex-a76; CI runs this test there and natively). No choice may differ where the golden
/// top-1 margin exceeds 1.0 (over twice that error).
#[test]
fn tiny_mha_q4_0_recipe() {
    let (rate, err, flips) = check_quantized("tiny-mha", "q4_0", 1.0);
    assert!(
        rate >= 0.95 && err < 1.0 && flips == 0,
        "q4_0 agreement {rate}, top-1 logit error {err}"
    );
}
