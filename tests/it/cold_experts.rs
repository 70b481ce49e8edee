//! The low-bit copy of the routed experts (`--cold-experts`, issue 9 item 5).
//!
//! Quality cost: every routed expert served from the copy (`only`) against the primary, along
//! the fixtures' golden greedy paths (teacher-forced, scored against the reference's logits).
//! The fixtures' expert rows are 64 (gate, up) and 32 (down) elements: Q3_K (and any 256-block
//! type) cannot hold them and the converter falls back to Q4_0, so on the fixtures the copy
//! is Q4_0, and these figures are the cost of a Q4_0 copy of f32 experts (BENCHMARKS.md).
//!
//! Paging with the copy (`lowbit`): the copy is paged through the same cache and budget (the
//! minimum stays the plain store's), fetches whose full expert is not resident come from the
//! copy (counted; a fetch never reads a full expert itself), the full experts of reused copies
//! are read behind them, and a missing or mismatched sidecar, `lowbit` without a budget, `lowbit` with
//! `--expert-io madvise` and `only` with a budget are clear errors, from the library and the
//! CLI.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pocketvl::experts::{
    sidecar_path, ColdExperts, ExpertError, ExpertIo, ExpertOptions, ExpertStats, Prefetch,
};
use pocketvl::generate::{GenerateOptions, Generation};
use pocketvl::kv_cache::CacheType;
use pocketvl::loader::ModelFile;
use pocketvl::model::deepseek_vl2::prompt::{build_chat, Message, Role};
use pocketvl::model::deepseek_vl2::{LanguageModel, ModelError};
use pocketvl::sampler::SamplerConfig;
use pocketvl::tokenizer::Tokenizer;
use quant::gguf::{GgufFile, GgufWriter, Value};
use quant::GgmlType;

use crate::common;
use crate::decoder_oracle::teacher_forced;

fn only() -> ExpertOptions {
    ExpertOptions {
        cold: ColdExperts::Only,
        ..ExpertOptions::default()
    }
}

/// Quality of the copy against the primary on fixture `name` converted with `recipe`:
/// (top-1 agreement of the primary, of the copy; max and mean |golden top-1 logit error| of
/// the copy; max and mean |logit difference| copy vs primary over every vocabulary entry of
/// every step).
fn quality(name: &str, recipe: &str) -> (f32, f32, f32, f32, f32, f32) {
    let (_dir, path) = common::converted_with_cold(name, recipe, GgmlType::Q3_K);
    let side = GgufFile::open(&sidecar_path(&ModelFile::open(&path).unwrap())).unwrap();
    assert!(side.tensors().iter().all(|t| t.ty == GgmlType::Q4_0));
    let f32_cache = CacheType::F32;
    let full = teacher_forced(
        name,
        &path,
        &ExpertOptions::default(),
        f32_cache,
        f32::INFINITY,
    );
    let low = teacher_forced(name, &path, &only(), f32_cache, f32::INFINITY);
    assert_eq!(full.logits.len(), low.logits.len());
    let diffs = full
        .logits
        .iter()
        .zip(&low.logits)
        .map(|(a, b)| (a - b).abs());
    let max_diff = diffs.clone().fold(0.0f32, f32::max);
    let mean_diff = (diffs.map(f64::from).sum::<f64>() / low.logits.len() as f64) as f32;
    println!(
        "{name} {recipe} primary: top-1 {:.1}% ({}/{}), golden top-1 logit error max {:.4} mean \
         {:.4}; low-bit copy (q3_K requested, Q4_0 stored): top-1 {:.1}% ({}/{}), error max \
         {:.4} mean {:.4}; logits vs primary: max |diff| {max_diff:.4}, mean {mean_diff:.4}",
        full.rate() * 100.0,
        full.agree,
        full.total,
        full.max_err,
        full.mean_err,
        low.rate() * 100.0,
        low.agree,
        low.total,
        low.max_err,
        low.mean_err,
    );
    (
        full.rate(),
        low.rate(),
        low.max_err,
        low.mean_err,
        max_diff,
        mean_diff,
    )
}

/// Measured on x86-64 (AVX2 kernels; BENCHMARKS.md "Quality of the low-bit expert copy"):
///
/// | fixture | top-1 primary | top-1 copy | golden top-1 logit error max / mean | logits vs primary max / mean |
/// |---|---|---|---|---|
/// | tiny-mha | 112/112 | 111/112 | 0.444 / 0.094 | 0.961 / 0.088 |
/// | tiny-mla | 112/112 | 89/112 | 1.124 / 0.222 | 3.872 / 0.194 |
///
/// tiny-mla routes with sigmoid + noaux_tc over 16 experts: a 4-bit expert output moves the
/// next layer's expert choice, which moves logits by O(logit std) (the fixture README's
/// "Tolerances"). Bounds: the measured figures plus about 25 % (another kernel tier's
/// summation order can flip one more choice).
#[test]
fn lowbit_copy_quality_on_the_fixtures() {
    let (full, low, max_err, mean_err, max_diff, mean_diff) = quality("tiny-mha", "f32");
    assert_eq!(full, 1.0);
    assert!(low >= 0.95, "agreement {low}");
    assert!(max_err < 0.6 && mean_err < 0.12, "{max_err} {mean_err}");
    assert!(max_diff < 1.2 && mean_diff < 0.11, "{max_diff} {mean_diff}");
    let (full, low, max_err, mean_err, max_diff, mean_diff) = quality("tiny-mla", "f32");
    assert_eq!(full, 1.0);
    assert!(low >= 0.75, "agreement {low}");
    assert!(max_err < 1.4 && mean_err < 0.28, "{max_err} {mean_err}");
    assert!(max_diff < 4.8 && mean_diff < 0.25, "{max_diff} {mean_diff}");
}

fn greedy(max_new: usize) -> GenerateOptions {
    GenerateOptions {
        max_new,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Two greedy turns with the store `opts` asks for; the store's statistics after them.
fn generate(path: &Path, opts: &ExpertOptions) -> (Generation, ExpertStats) {
    generate_until(path, opts, |_| true)
}

/// [`generate`], its statistics taken once `settled` holds of them: reads behind low-bit
/// serves finish on the store's own reader threads, which a loaded machine (the test suite's
/// other tests) may not have scheduled by the end of the turns; polled for up to 30 s, then
/// the last statistics.
fn generate_until(
    path: &Path,
    opts: &ExpertOptions,
    settled: impl Fn(&ExpertStats) -> bool,
) -> (Generation, ExpertStats) {
    let file = ModelFile::open(path).unwrap();
    let mut model = LanguageModel::load_with(&file, opts).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    model.set_thread_pool(Arc::new(pool));
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let mut s = common::Lm::new(model, tok);
    let prompt = "Tell me about the sea.";
    let ids = build_chat(&s.tokenizer, &[Message::new(Role::User, prompt)], &[])
        .unwrap()
        .ids;
    let g = s.generate(&ids, &[], &greedy(8), &mut |_| {}).unwrap();
    s.generate(&ids, &[], &greedy(8), &mut |_| {}).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stats = s.model.experts().stats();
    while !settled(&stats) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        stats = s.model.experts().stats();
    }
    (g, stats)
}

fn load_err(path: &Path, opts: &ExpertOptions) -> ExpertError {
    let file = ModelFile::open(path).unwrap();
    match LanguageModel::load_with(&file, opts) {
        Err(ModelError::Expert(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("{opts:?} was accepted"),
    }
}

/// Bytes of one expert (gate + up + down) in `file`, from its tensor table: the same in every
/// MoE layer of the fixtures.
fn expert_bytes(file: &GgufFile) -> u64 {
    let mut per_layer = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for t in file.tensors().iter().filter(|t| t.name.contains("_exps.")) {
        let layer = t.name.split('.').nth(1).unwrap().to_string();
        let e = per_layer.entry(layer).or_default();
        e.0 += t.n_bytes;
        e.1 = t.ne[2];
    }
    let per: std::collections::BTreeSet<u64> = per_layer.values().map(|(b, n)| b / n).collect();
    assert_eq!(per.len(), 1, "{per:?}");
    per.into_iter().next().unwrap()
}

#[test]
fn lowbit_serves_what_the_cache_cannot() {
    let (_dir, path) = common::converted_with_cold("tiny-mha", "f32", GgmlType::Q3_K);
    let (_, mmap) = generate(&path, &ExpertOptions::default());
    let lowbit = |budget: u64, prefetch: Prefetch| ExpertOptions {
        budget: Some(budget),
        prefetch,
        readers: 2,
        cold: ColdExperts::Lowbit,
        ..ExpertOptions::default()
    };
    let minimum_of = |opts: &ExpertOptions| match load_err(&path, opts) {
        ExpertError::BudgetTooSmall {
            minimum, pinned, ..
        } => (minimum, pinned),
        e => panic!("unexpected error {e}"),
    };
    // The copy is paged, not resident: the minimum is the plain store's (pinned weights and
    // one token's experts of a layer at full precision, the larger copy).
    let (minimum, pinned) = minimum_of(&lowbit(1, Prefetch::Routed));
    let plain = ExpertOptions {
        budget: Some(1),
        ..ExpertOptions::default()
    };
    assert_eq!(minimum_of(&plain), (minimum, pinned));
    let e = load_err(&path, &lowbit(minimum - 1, Prefetch::Routed)).to_string();
    assert!(e.contains(&format!("({minimum} bytes")), "{e}");
    // Reads are whole experts of either file, as their tensor tables give them.
    let model = ModelFile::open(&path).unwrap();
    let per_full = expert_bytes(model.gguf());
    let per_low = expert_bytes(&GgufFile::open(&sidecar_path(&model)).unwrap());
    assert!(per_low < per_full, "{per_low} {per_full}");
    for (budget, prefetch) in [
        (minimum, Prefetch::Routed),
        (minimum, Prefetch::Off),
        (1 << 30, Prefetch::Routed),
        (1 << 30, Prefetch::Off),
    ] {
        let what = format!("budget {budget}, prefetch {prefetch}");
        // Without prefetching, full reads happen only behind second low-bit serves.
        let behind_serves = |st: &ExpertStats| prefetch != Prefetch::Off || st.prefetch_loaded > 0;
        let (g, st) = generate_until(&path, &lowbit(budget, prefetch), behind_serves);
        // The copy changes the outputs, hence the generated tokens and the fetches that
        // follow them: only the shape of the counts is the mmap run's.
        assert!(!g.tokens.is_empty() && st.requests > 0, "{what}");
        let layers = |p: &Vec<Vec<u64>>| p.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(layers(&st.popularity), layers(&mmap.popularity), "{what}");
        assert_eq!(
            st.hits + st.in_flight + st.misses + st.lowbit_served,
            st.requests,
            "{what}: {st:?}"
        );
        // A fetch never reads a full expert itself: it reads (or finds) the low-bit copy.
        assert_eq!(st.misses, 0, "{what}: {st:?}");
        assert!(st.lowbit_served > 0, "{what}: {st:?}");
        assert!(st.lowbit_misses <= st.lowbit_served, "{what}: {st:?}");
        assert_eq!(st.cold_experts.as_deref(), Some("lowbit"), "{what}");
        assert_eq!(st.pinned_bytes, pinned, "{what}");
        let capacity = budget - pinned;
        assert_eq!(st.cache_capacity_bytes, Some(capacity), "{what}");
        // Both copies share the budget: at most one demand read beyond it.
        assert!(
            st.peak_cached_bytes <= capacity + (minimum - pinned),
            "{what}: {st:?}"
        );
        assert!(st.lowbit_bytes_read > 0, "{what}: {st:?}");
        assert_eq!(st.lowbit_bytes_read % per_low, 0, "{what}: {st:?}");
        assert_eq!(
            (st.bytes_read - st.lowbit_bytes_read) % per_full,
            0,
            "{what}: {st:?}"
        );
        if prefetch == Prefetch::Off {
            // Nothing prefetches: the fetches read the copies, and every full expert read
            // is a background read behind a second low-bit serve (two turns of one prompt
            // reuse copies; nothing drops those reads).
            assert!(st.lowbit_misses > 0, "{what}: {st:?}");
            assert!(
                st.prefetch_loaded > 0 && st.bytes_read > st.lowbit_bytes_read,
                "{what}: {st:?}"
            );
        }
    }
}

/// Rewrites the sidecar of `path` with metadata `key` set to `value` and without the tensors
/// `drop` names.
fn tamper(path: &Path, key: &str, value: Value, drop: &str) {
    let side = sidecar_path(&ModelFile::open(path).unwrap());
    let g = GgufFile::open(&side).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_kv(k, if k == key { value.clone() } else { v.clone() })
            .unwrap();
    }
    let kept: Vec<_> = g.tensors().iter().filter(|t| t.name != drop).collect();
    for t in &kept {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
    }
    let mut data = w.create(&side, true).unwrap();
    for t in &kept {
        data.write(g.tensor_data(t)).unwrap();
    }
    data.finish().unwrap().commit().unwrap();
}

#[test]
fn missing_or_mismatched_sidecars_are_clear_errors() {
    let (dir, path) = common::converted_with_cold("tiny-mha", "f32", GgmlType::Q3_K);
    let lowbit = ExpertOptions {
        budget: Some(1 << 30),
        cold: ColdExperts::Lowbit,
        ..ExpertOptions::default()
    };
    // Mode errors.
    let e = load_err(
        &path,
        &ExpertOptions {
            budget: None,
            ..lowbit.clone()
        },
    );
    assert!(e.to_string().contains("needs --mem-budget"), "{e}");
    let e = load_err(
        &path,
        &ExpertOptions {
            budget: Some(1 << 30),
            ..only()
        },
    );
    assert!(e.to_string().contains("takes no --mem-budget"), "{e}");
    let e = load_err(
        &path,
        &ExpertOptions {
            io: ExpertIo::Madvise,
            ..lowbit.clone()
        },
    );
    assert!(
        e.to_string().contains("--expert-io direct or buffered"),
        "{e}"
    );
    // A layer count other than the model's.
    let side = dir.path().join("cold-model.gguf");
    let good = std::fs::read(&side).unwrap();
    tamper(&path, quant::schema::cold::BLOCK_COUNT, Value::U32(4), "");
    let e = load_err(&path, &lowbit).to_string();
    assert!(
        e.contains("cold-model.gguf") && e.contains("made for 4 layers, the model has 3"),
        "{e}"
    );
    // A missing expert tensor.
    std::fs::write(&side, &good).unwrap();
    tamper(&path, "", Value::U32(0), "blk.2.ffn_down_exps.weight");
    let e = load_err(&path, &only()).to_string();
    assert!(e.contains("blk.2.ffn_down_exps.weight"), "{e}");
    // No sidecar at all.
    std::fs::remove_file(&side).unwrap();
    let e = load_err(&path, &lowbit).to_string();
    assert!(
        e.contains("cold-model.gguf") && e.contains("not found") && e.contains("--cold-experts"),
        "{e}"
    );

    // The CLI: non-zero exit, the message, no panic.
    for (flags, want) in [
        (vec!["--cold-experts", "lowbit"], "needs --mem-budget"),
        (
            vec!["--cold-experts", "lowbit", "--mem-budget", "1GiB"],
            "not found",
        ),
        (vec!["--cold-experts", "sometimes"], "lowbit"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
            .args(["run", "-m", common::s(&path), "-p", "hi", "-n", "2"])
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{flags:?}: {stderr}");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // With the sidecar back, --stats and --json report the low-bit serves.
    std::fs::write(&side, &good).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(["run", "-m", common::s(&path), "-p", "hi", "-n", "3"])
        .args(["--json", "--stats", "--temperature", "0"])
        .args(["--cold-experts", "lowbit", "--mem-budget", "1GiB"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("served from the low-bit copy"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let st = &j["expert_stats"];
    assert!(st["lowbit_served"].as_u64().unwrap() > 0, "{st}");
    assert!(st["lowbit_bytes_read"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["cold_experts"], "lowbit", "{st}");
}
