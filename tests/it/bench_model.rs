//! `pocketvl bench model` through the real binary on the tiny fixture: the JSON line carries
//! every promised key with sane values (mmproj found beside the model, one 2x2-tiled image =
//! 5 tiles), and bad arguments fail with a clear message.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;
use common::s;
use serde_json::Value;

fn pocketvl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(args)
        .output()
        .expect("run pocketvl")
}

fn last_json(o: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line not JSON ({e}): {stdout}"))
}

fn positive(j: &Value, key: &str) -> f64 {
    let v = j[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {j}"));
    assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    v
}

#[test]
fn json_has_every_key_with_sane_values() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let o = pocketvl(&[
        "bench",
        "model",
        "-m",
        s(&model),
        "-t",
        "1",
        "-p",
        "16",
        "-n",
        "4",
        "--reps",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    for key in [
        "decode_tok_s",
        "prefill_tok_s",
        "vision_ms_per_tile",
        "ttft_ms",
        "peak_rss_mb",
        "file_mb",
        "bandwidth_gb_s",
        "fma_gflops",
        "decode_roofline_tok_s",
    ] {
        positive(&j, key);
    }
    assert_eq!(j["threads"], 1);
    assert_eq!(j["vision_tiles"], 5, "global view + 2x2 local tiles");
    // The mmproj beside the model was found and counted in the file size.
    let mmproj = j["mmproj"].as_str().expect("mmproj path");
    assert!(mmproj.ends_with("mmproj-model.gguf"), "{mmproj}");
    let sizes = std::fs::metadata(&model).unwrap().len() + std::fs::metadata(mmproj).unwrap().len();
    assert!((positive(&j, "file_mb") - sizes as f64 / 1e6).abs() < 1e-6);
    // The part of the mapped files on 2 MiB pages, where the kernel reports it (Linux's
    // smaps_rollup `FilePmdMapped`; null elsewhere): at most the files.
    if let Some(huge) = j["file_huge_mb"].as_f64() {
        assert!((0.0..=positive(&j, "file_mb")).contains(&huge), "{huge}");
    } else {
        assert!(j["file_huge_mb"].is_null(), "{}", j["file_huge_mb"]);
    }
    // Weights read per decode step: some but not all of the file (only 4 of 16 experts).
    let w = positive(&j, "decode_weight_mb");
    assert!(
        w < std::fs::metadata(&model).unwrap().len() as f64 / 1e6,
        "{w}"
    );
    // TTFT contains the vision work; the median range brackets the median.
    assert!(positive(&j, "ttft_ms") >= positive(&j, "vision_ms_per_tile"));
    let sp = &j["spread"]["decode_tok_s"];
    let (lo, mid, hi) = (
        sp["min"].as_f64(),
        sp["median"].as_f64(),
        sp["max"].as_f64(),
    );
    assert!(lo <= mid && mid <= hi, "{sp}");
    // The human-readable lines come first.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("decode (4 tok)"), "{stdout}");
}

/// `-d N` (llama-bench's depth) runs the prefill and decode after N tokens in the context:
/// the decode's mean KV cache bytes per step follow from the checkpoint's own config (f32
/// key and value rows of every position up to the step's, in every layer; half with
/// `--cache-type f16`), and a depth that does not fit the context is a clear error.
#[test]
fn depth_fills_the_context_first_and_counts_its_cache() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let cfg = common::load_json(&common::fixture("tiny-mha").join("hf/config.json"));
    let l = &cfg["language_config"];
    let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k} in {l}")) as f64;
    let head_dim = n("hidden_size") / n("num_attention_heads");
    // MHA: a key and a value row of n_kv_heads x head_dim floats per position and layer.
    let row_bytes = 2.0 * n("num_key_value_heads") * head_dim * 4.0 * n("num_hidden_layers");
    let m = s(&model);
    let args = |rest: &str| -> Vec<String> {
        let head = ["bench", "model", "-m", m, "--no-vision"];
        head.iter()
            .map(|a| a.to_string())
            .chain(rest.split(' ').map(String::from))
            .collect()
    };
    let run = |rest: &str| pocketvl(&args(rest).iter().map(String::as_str).collect::<Vec<_>>());
    let o = run("-t 1 -d 8 -p 4 -n 2 --reps 1 --json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    assert_eq!(j["n_depth"], 8);
    positive(&j, "prefill_tok_s");
    positive(&j, "decode_tok_s");
    // Steps at positions 8 and 9 read 9 and 10 rows.
    let want = 9.5 * row_bytes / 1e6;
    let kv = positive(&j, "decode_kv_mb");
    assert!((kv - want).abs() < 1e-9, "{kv} MB, want {want}");
    assert_eq!(j["cache_type"], "f32");
    // The roofline counting the cache: the same bandwidth over weights and cache together.
    let (bw, weights) = (
        positive(&j, "bandwidth_gb_s"),
        positive(&j, "decode_weight_mb"),
    );
    let roof_kv = positive(&j, "decode_roofline_kv_tok_s");
    let want_roof = bw * 1e3 / (weights + kv);
    assert!(
        (roof_kv / want_roof - 1.0).abs() < 1e-12,
        "{roof_kv}, want {want_roof}"
    );
    assert!(roof_kv < positive(&j, "decode_roofline_tok_s"));
    let frac = positive(&j, "decode_fraction_of_roofline_kv");
    let want_frac = positive(&j, "decode_tok_s") / roof_kv;
    assert!(
        (frac / want_frac - 1.0).abs() < 1e-12,
        "{frac}, want {want_frac}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("decode (2 tok @ d8)"), "{stdout}");
    assert!(stdout.contains("of the roofline counting it"), "{stdout}");
    let o = run("-t 1 -d 8 -p 4 -n 2 --reps 1 --cache-type f16 --json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    assert_eq!(j["cache_type"], "f16");
    let kv = positive(&j, "decode_kv_mb");
    assert!(
        (kv - want / 2.0).abs() < 1e-9,
        "{kv} MB, want {}",
        want / 2.0
    );
    let ctx = n("max_position_embeddings") as usize;
    let fails_with = |rest: &str| fails(&args(rest).iter().map(String::as_str).collect::<Vec<_>>());
    let e = fails_with(&format!("-d {ctx} -p 0 -n 1"));
    assert!(e.contains("exceed the model's context"), "{e}");
    let e = fails_with(&format!("-d {} -n 1", usize::MAX));
    assert!(e.contains("exceed the model's context"), "{e}");
}

/// `--regions` splits the decode steps' thread time (wall time x threads) into parts that
/// add up to it; every layer runs parallel products, and one thread has no helper to be
/// absent. Without the flag there is no profile.
#[test]
fn regions_split_the_decode_threads_time() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let cfg = common::load_json(&common::fixture("tiny-mha").join("hf/config.json"));
    let layers = cfg["language_config"]["num_hidden_layers"]
        .as_f64()
        .expect("num_hidden_layers");
    let m = s(&model);
    let bench = |rest: &str| {
        let mut args = vec![
            "bench",
            "model",
            "-m",
            m,
            "--no-vision",
            "-p",
            "0",
            "--json",
        ];
        args.extend(rest.split(' '));
        let o = pocketvl(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    for threads in ["1", "3"] {
        let o = bench(&format!("-t {threads} -n 4 --reps 2 --regions"));
        let j = last_json(&o);
        let r = &j["decode_regions"];
        let f = |k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {r}"))
        };
        let parts = ["busy", "absent", "waiting", "outside"];
        for k in parts {
            assert!(
                (0.0..=1.0).contains(&f(k)),
                "{k} = {} ({threads} threads)",
                f(k)
            );
        }
        let sum: f64 = parts.iter().map(|k| f(k)).sum();
        assert!((sum - 1.0).abs() < 1e-9, "parts sum to {sum}: {r}");
        assert!(
            f("busy") > 0.0 && f("step_ms") > 0.0 && f("region_us") > 0.0,
            "{r}"
        );
        assert!(f("in_regions") > 0.0 && f("in_regions") <= 1.0, "{r}");
        assert!(f("regions_per_token") >= layers, "{r}");
        if threads == "1" {
            assert_eq!(f("absent"), 0.0, "one thread has no helper: {r}");
        }
        // Per site (the source line that opened the regions): parts of each site's own
        // thread time, and the sites' regions add up to the total.
        let sites = r["sites"].as_array().expect("sites");
        assert!(!sites.is_empty(), "{r}");
        let mut per_token = 0.0;
        for x in sites {
            let g = |k: &str| x[k].as_f64().unwrap_or_else(|| panic!("{k} in {x}"));
            assert!(
                x["site"].as_str().is_some_and(|s| s.contains(".rs:")),
                "{x}"
            );
            let parts = g("busy") + g("absent") + g("waiting");
            assert!((parts - 1.0).abs() < 1e-9, "{x}");
            per_token += g("regions_per_token");
        }
        assert!((per_token - f("regions_per_token")).abs() < 1e-9, "{r}");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("decode regions:"), "{stdout}");
    }
    assert!(last_json(&bench("-t 1 -n 2 --reps 1"))["decode_regions"].is_null());
}

/// `--cold` times one image request from opening the files, after dropping them from the page
/// cache (on tmpfs nothing can be dropped: the residency it reports is then what stayed), and
/// the background reads behind the load cover the model file but its token embedding, and
/// the mmproj (sizes from the files and their tensor table); `--no-preload` reads nothing
/// ahead.
#[test]
fn cold_times_the_first_image_request_and_preload_reads_the_files() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let m = s(&model);
    let args = [
        "bench", "model", "-m", m, "-t", "1", "-p", "0", "-n", "0", "--reps", "1",
    ];
    let o = pocketvl(&[&args[..], &["--cold", "--json"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    // The cold request loads both models and runs the whole image request.
    assert!(positive(&j, "cold_ttft_ms") > positive(&j, "vision_ms_per_tile"));
    if let Some(r) = j["cold_resident_after_drop"].as_f64() {
        assert!((0.0..=1.0).contains(&r), "{r}");
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("ttft cold (2x2 image)"), "{stdout}");
    if cfg!(target_os = "linux") {
        let embd = quant::gguf::GgufFile::open(&model)
            .unwrap()
            .tensor("token_embd.weight")
            .unwrap()
            .n_bytes;
        let mmproj = j["mmproj"].as_str().expect("mmproj path");
        let len = |p: &str| std::fs::metadata(p).unwrap().len();
        let want = (len(m) - embd + len(mmproj)) as f64 / 1e6;
        let got = positive(&j, "preload_mb");
        assert!((got - want).abs() < 1e-9, "{got} MB, want {want}");
        positive(&j, "preload_ms");
    }
    let o = pocketvl(&[&args[..], &["--no-preload", "--json"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    assert!(
        j["preload_mb"].is_null() && j["cold_ttft_ms"].is_null(),
        "{j}"
    );
}

fn fails(args: &[&str]) -> String {
    let o = pocketvl(args);
    assert!(!o.status.success(), "expected failure for {args:?}");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn bad_arguments_are_clear_errors() {
    let (dir, model) = common::converted("tiny-mha", "q8_0");
    let m = s(&model);
    let e = fails(&["bench", "model", "-m", m, "-t", "0"]);
    assert!(e.contains("--threads must be at least 1"), "{e}");
    let e = fails(&["bench", "model", "-m", m, "--reps", "0"]);
    assert!(e.contains("--reps must be at least 1"), "{e}");
    let e = fails(&["bench", "model", "-m", "/nonexistent/x.gguf"]);
    assert!(e.contains("/nonexistent/x.gguf does not exist"), "{e}");
    let missing = dir.path().join("nope.gguf");
    let e = fails(&["bench", "model", "-m", m, "--mmproj", s(&missing)]);
    assert!(
        e.contains("mmproj file") && e.contains("does not exist"),
        "{e}"
    );
    let e = fails(&["bench", "model", "-m", m, "--cache-type", "q4_0"]);
    assert!(
        e.contains("unknown cache type `q4_0` (one of: f32, f16)"),
        "{e}"
    );
    let e = fails(&["bench", "model", "-m", m, "-p", "100000", "-n", "1"]);
    assert!(e.contains("exceed the model's context"), "{e}");
    let e = fails(&["bench", "model", "-m", m, "--no-vision", "--cold"]);
    assert!(
        e.contains("--cold") && e.contains("needs the mmproj"),
        "{e}"
    );
    // A file that is not a GGUF.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let e = fails(&["bench", "model", "-m", s(&junk)]);
    assert!(e.contains("junk.gguf"), "{e}");
    assert!(Path::new(m).is_file());
}

/// `POCKETVL_MAX_TIER` caps the kernel tier the run reports (`kernel_isa`); `scalar` works on
/// every CPU, `avx2` where the CPU has AVX2, and an unknown name is a clear error.
#[test]
fn max_tier_caps_the_kernels_and_unknown_names_are_reported() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let run = |tier: &str| {
        Command::new(env!("CARGO_BIN_EXE_pocketvl"))
            .args(["bench", "model", "-m", s(&model), "--no-vision"])
            .args(["-t", "1", "-p", "0", "-n", "2", "--reps", "1", "--json"])
            .env("POCKETVL_MAX_TIER", tier)
            .env_remove("POCKETVL_FORCE_SCALAR")
            .output()
            .expect("run pocketvl")
    };
    let o = run("scalar");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(last_json(&o)["kernel_isa"], "scalar");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let o = run("avx2");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(last_json(&o)["kernel_isa"], "avx2");
    }
    let o = run("avx9000");
    assert!(!o.status.success(), "an unknown tier ran");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("POCKETVL_MAX_TIER=\"avx9000\" is not one of scalar"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}
