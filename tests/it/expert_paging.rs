//! The paging expert store gives the same bits as the plain mmap store under
//! any budget: converted fixtures, greedy generations compared token for
//! token and logit for logit (exact float equality), at budgets small enough
//! to force evictions and re-reads, with every cache policy, prefetch mode and
//! read path, single- and multi-threaded. A budget below the pinned weights
//! is refused naming the minimum, by the library and by the CLI.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pocketvl::experts::{CachePolicy, ExpertError, ExpertIo, ExpertOptions, ExpertStats, Prefetch};
use pocketvl::generate::{GenerateOptions, Generation};
use pocketvl::loader::ModelFile;
use pocketvl::model::deepseek_vl2::prompt::{build_chat, Message, Role};
use pocketvl::model::deepseek_vl2::{LanguageModel, ModelError};
use pocketvl::sampler::SamplerConfig;
use pocketvl::tokenizer::Tokenizer;

use crate::common;

const PROMPT: &str = "Write a short poem about the sea and the stars, then explain it.";

fn greedy(max_new: usize) -> GenerateOptions {
    GenerateOptions {
        max_new,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        keep_logits: true,
        ..Default::default()
    }
}

/// A greedy generation with the store `opts` asks for on `threads` workers;
/// also returns the store's statistics.
fn generate(path: &Path, opts: &ExpertOptions, threads: usize) -> (Generation, ExpertStats) {
    let file = ModelFile::open(path).unwrap();
    let mut model = LanguageModel::load_with(&file, opts).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    model.set_thread_pool(Arc::new(pool));
    let tok = Tokenizer::from_model_file(&file).unwrap();
    let mut s = common::Lm::new(model, tok);
    let ids = build_chat(&s.tokenizer, &[Message::new(Role::User, PROMPT)], &[])
        .unwrap()
        .ids;
    let g = s.generate(&ids, &[], &greedy(12), &mut |_| {}).unwrap();
    // A second turn re-runs every layer over cached experts and evicted ones.
    let again = s.generate(&ids, &[], &greedy(12), &mut |_| {}).unwrap();
    assert_eq!(again.tokens, g.tokens);
    let stats = s.model.experts().stats();
    (g, stats)
}

/// The smallest budget the store accepts for `path`, from its refusal of 1 byte.
fn minimum_budget(path: &Path) -> (u64, u64) {
    let file = ModelFile::open(path).unwrap();
    let opts = ExpertOptions {
        budget: Some(1),
        ..ExpertOptions::default()
    };
    match LanguageModel::load_with(&file, &opts) {
        Err(ModelError::Expert(ExpertError::BudgetTooSmall {
            minimum, pinned, ..
        })) => (minimum, pinned),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a 1-byte budget was accepted"),
    }
}

#[test]
fn any_budget_gives_the_unlimited_bits() {
    for (name, recipe) in [("tiny-mha", "f32"), ("tiny-mla", "q4_0")] {
        let (_dir, path) = common::converted(name, recipe);
        let file_len = std::fs::metadata(&path).unwrap().len();
        let (want, mmap_stats) = generate(&path, &ExpertOptions::default(), 2);
        assert_eq!(mmap_stats.store, "mmap");
        assert!(mmap_stats.requests > 0);
        let (minimum, pinned) = minimum_budget(&path);
        let n_used = {
            let file = ModelFile::open(&path).unwrap();
            LanguageModel::load(&file).unwrap().hp.n_expert_used as u64
        };
        assert!(
            pinned < minimum && minimum < file_len,
            "{name}: {pinned} {minimum} {file_len}"
        );
        let (lru, lfu) = (CachePolicy::Lru, CachePolicy::Lfu);
        let (off, routed, ahead) = (Prefetch::Off, Prefetch::Routed, Prefetch::Ahead);
        let (direct, buffered, madvise) = (ExpertIo::Direct, ExpertIo::Buffered, ExpertIo::Madvise);
        let configs = [
            (minimum, lru, routed, direct, 1),
            (minimum, lru, routed, direct, 3),
            (minimum, lfu, ahead, buffered, 3),
            (minimum, lru, off, buffered, 1),
            (minimum, lru, routed, madvise, 2),
            (minimum, lfu, ahead, madvise, 1),
            ((minimum + file_len) / 2, lfu, routed, direct, 2),
            // Room for every expert (owned copies of tiny matrices carry
            // alignment padding, so more than the file).
            (1 << 30, lru, ahead, direct, 2),
        ];
        for (budget, policy, prefetch, io, threads) in configs {
            let opts = ExpertOptions {
                budget: Some(budget),
                policy,
                io,
                prefetch,
                readers: 2,
                ..ExpertOptions::default()
            };
            let what = format!("{name}: {opts:?}, {threads} thread(s)");
            let (got, st) = generate(&path, &opts, threads);
            assert_eq!(got.tokens, want.tokens, "{what}");
            assert_eq!(got.logits, want.logits, "{what}: logits differ");
            assert_eq!(st.store, "paged", "{what}");
            assert_eq!(st.requests, mmap_stats.requests, "{what}");
            assert_eq!(st.popularity, mmap_stats.popularity, "{what}");
            assert_eq!(st.hits + st.in_flight + st.misses, st.requests, "{what}");
            let capacity = st.cache_capacity_bytes.unwrap();
            assert_eq!(capacity, budget - pinned, "{what}");
            if budget < file_len {
                assert!(st.evictions > 0, "{what}: no evictions");
                // Every expert the model used at least once was read.
                assert!(
                    st.bytes_read > 0 && st.misses + st.prefetch_loaded > 0,
                    "{what}"
                );
                // The reserve-before-read rule keeps the cache in its budget;
                // a guess read ahead may hold room a demand read then lacks
                // (at most one expert per reader thread).
                let slack = match prefetch {
                    Prefetch::Ahead => opts.readers as u64 * (minimum - pinned) / n_used,
                    _ => 0,
                };
                assert!(st.peak_cached_bytes <= capacity + slack, "{what}: {st:?}");
            } else {
                assert_eq!(st.evictions, 0, "{what}");
                // With room for all, the second turn is all hits.
                assert!(st.hits * 2 >= st.requests, "{what}: {st:?}");
            }
            if prefetch == Prefetch::Off {
                assert_eq!(st.prefetch_loaded, 0, "{what}");
            }
            assert!(st.prefetch_used <= st.prefetch_loaded, "{what}");
        }
    }
}

#[test]
fn too_small_a_budget_is_refused_with_the_minimum() {
    let (_dir, path) = common::converted("tiny-mha", "f32");
    let (minimum, pinned) = minimum_budget(&path);
    let file = ModelFile::open(&path).unwrap();
    let opts = ExpertOptions {
        budget: Some(pinned / 2),
        ..ExpertOptions::default()
    };
    let err = LanguageModel::load_with(&file, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&format!("({minimum} bytes")), "{err}");
    let ok = ExpertOptions {
        budget: Some(minimum),
        ..ExpertOptions::default()
    };
    assert!(LanguageModel::load_with(&file, &ok).is_ok());

    // The CLI: a clear error, a non-zero exit, no panic.
    let out = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(["run", "-m", common::s(&path), "-p", "hi", "-n", "2"])
        .args(["--mem-budget", &format!("{}", minimum - 1)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the minimum is") && stderr.contains(&minimum.to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(["run", "-m", common::s(&path), "-p", "hi", "-n", "2"])
        .args(["--mem-budget", "12 parsecs"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit"));

    // --stats and --json carry the statistics.
    let out = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args([
            "run",
            "-m",
            common::s(&path),
            "-p",
            "hi",
            "-n",
            "3",
            "--json",
            "--stats",
        ])
        .args(["--mem-budget", &minimum.to_string(), "--temperature", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("expert store: paged") && stderr.contains("layer  1:"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap();
    let j: serde_json::Value = serde_json::from_str(last).unwrap();
    let st = &j["expert_stats"];
    assert_eq!(st["store"], "paged");
    assert!(st["requests"].as_u64().unwrap() > 0);
    assert!(st["popularity"].as_array().unwrap().len() > 1);
}
