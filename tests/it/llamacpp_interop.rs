//! llama.cpp interop: a GGUF of each tiny fixture, evaluated by llama.cpp, must reproduce the
//! official implementation's golden logits and greedy continuation. Two writers are checked:
//! pocketvl's converter (`convert::write::convert`, recipe f32) and, as an independent baseline,
//! the Python `gguf` package (scripts/llamacpp_reference_gguf.py).
//!
//! Why: llama.cpp is an independent implementation of the `deepseek` / `deepseek2`
//! architectures. If it computes the reference's numbers from a GGUF, then that file's metadata,
//! tensor names, layouts (q/k NORM-rope permutation, k_b/v_b split, stacked experts) and
//! tokenizer are what the ecosystem expects.
//!
//! The llama.cpp build takes 15-20 minutes, so these tests run only where it exists:
//! `scripts/llamacpp-interop.sh --build-only` builds it (and our `scripts/llamacpp_logits.c`
//! tool) under `target/llamacpp`, or `POCKETVL_LLAMACPP_LOGITS` names the tool. Otherwise each
//! test reports itself skipped (a failure under `CI=true`; tests/support/prereq.rs). They also need `POCKETVL_PYTHON` (numpy + gguf).
//!
//! llama.cpp runs with flash attention off and an f32 KV cache (`--no-fa --kv-f32`): its
//! defaults (f16 KV cache, f16 flash attention) move the last-position logits by ~5e-3 on these
//! fixtures, while f32 everywhere agrees with the goldens to ~1e-5.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The llama.cpp version `scripts/llamacpp-interop.sh` pins (its build directory name).
const LLAMACPP_VERSION: &str = "0.3.36";
/// Max |llama.cpp - golden| on last-position logits (|logits| <= 14). Observed: 5.7e-6 (mha),
/// 7.2e-6 (mla); the fixtures README expects f32 implementations within 1e-4.
const LOGITS_TOL: f32 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The logits tool and the Python interpreter, or `None` (after printing why) to skip.
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let tool = match std::env::var_os("POCKETVL_LLAMACPP_LOGITS") {
        Some(p) => PathBuf::from(p),
        None => root()
            .join("target/llamacpp")
            .join(format!("build-{LLAMACPP_VERSION}"))
            .join("bin/pocketvl-llamacpp-logits"),
    };
    if !tool.is_file() {
        crate::prereq::skip(&format!(
            "llama.cpp logits tool not found at {} (run scripts/llamacpp-interop.sh \
             --build-only or set POCKETVL_LLAMACPP_LOGITS)",
            tool.display()
        ));
        return None;
    }
    let python = crate::prereq::python()?;
    Some((tool, PathBuf::from(python)))
}

/// The tensors of a safetensors file we need, as raw little-endian bytes with dtype.
struct Golden {
    tensors: HashMap<String, (String, Vec<u8>)>,
}

impl Golden {
    fn load(path: &Path) -> Golden {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let hlen = u64::from_le_bytes(data[..8].try_into().expect("8-byte header length"));
        let hlen = usize::try_from(hlen).expect("header length fits usize");
        let header: serde_json::Value =
            serde_json::from_slice(&data[8..8 + hlen]).expect("safetensors header is JSON");
        let base = 8 + hlen;
        let mut tensors = HashMap::new();
        for (name, info) in header.as_object().expect("header object") {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info["dtype"].as_str().expect("dtype").to_string();
            let off = info["data_offsets"].as_array().expect("data_offsets");
            let a = base + off[0].as_u64().expect("offset") as usize;
            let b = base + off[1].as_u64().expect("offset") as usize;
            tensors.insert(name.clone(), (dtype, data[a..b].to_vec()));
        }
        Golden { tensors }
    }

    fn i64s(&self, name: &str) -> Vec<i64> {
        let (dtype, bytes) = &self.tensors[name];
        assert_eq!(dtype, "I64", "{name}");
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let (dtype, bytes) = &self.tensors[name];
        assert_eq!(dtype, "F32", "{name}");
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// What llama.cpp produced for one prompt.
struct LlamaRun {
    logits_last: Vec<f32>,
    generated: Vec<i64>,
}

/// Evaluates `ids` with llama.cpp (f32 KV, no flash attention) and generates 16 tokens greedily.
fn run_llamacpp(tool: &Path, gguf: &Path, ids: &[i64], dir: &Path) -> LlamaRun {
    let out = dir.join(format!(
        "{}.logits.f32",
        gguf.file_stem().unwrap().to_string_lossy()
    ));
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let result = Command::new(tool)
        .env("GGML_NO_BACKTRACE", "1")
        .arg("-m")
        .arg(gguf)
        .args([
            "--ids",
            &ids.join(","),
            "-n",
            "16",
            "--no-fa",
            "--kv-f32",
            "--raw",
            "-o",
        ])
        .arg(&out)
        .output()
        .expect("spawn the llama.cpp logits tool");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "llama.cpp failed on {}:\n{}\n{}",
        gguf.display(),
        stdout,
        String::from_utf8_lossy(&result.stderr)
    );
    let generated = stdout
        .lines()
        .find_map(|l| l.strip_prefix("generated "))
        .expect("a 'generated' line")
        .split_whitespace()
        .map(|s| s.parse().expect("token id"))
        .collect();
    let bytes = std::fs::read(&out).expect("logits file");
    let logits_last = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    LlamaRun {
        logits_last,
        generated,
    }
}

/// Writes the fixture's language model with the Python `gguf` package (our independent
/// reference writer, scripts/llamacpp_reference_gguf.py).
fn reference_gguf(python: &Path, fixture: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("ref-{fixture}.gguf"));
    let status = Command::new(python)
        .arg(root().join("scripts/llamacpp_reference_gguf.py"))
        .arg(root().join("tests/fixtures").join(fixture).join("hf"))
        .arg(&out)
        .status()
        .expect("spawn python");
    assert!(
        status.success(),
        "reference GGUF writer failed for {fixture}"
    );
    out
}

fn assert_matches_golden(fixture: &str, run: &LlamaRun) {
    let golden = Golden::load(
        &root()
            .join("tests/fixtures")
            .join(fixture)
            .join("golden.safetensors"),
    );
    let want = golden.f32s("text.logits_last");
    assert_eq!(
        run.logits_last.len(),
        want.len(),
        "{fixture}: vocabulary size"
    );
    let (max_diff, at) = run
        .logits_last
        .iter()
        .zip(&want)
        .enumerate()
        .map(|(i, (a, b))| ((a - b).abs(), i))
        .fold((0.0f32, 0usize), |m, x| if x.0 > m.0 { x } else { m });
    println!("{fixture}: llama.cpp vs golden logits_last max |diff| {max_diff:e} at id {at}");
    assert!(
        max_diff <= LOGITS_TOL,
        "{fixture}: llama.cpp logits differ from the golden by {max_diff} at id {at}"
    );
    assert_eq!(
        run.generated,
        golden.i64s("text.gen_ids"),
        "{fixture}: greedy continuation"
    );
}

/// Converts the fixture with pocketvl's converter, recipe f32 (bf16 weights widen exactly).
fn pocketvl_gguf(fixture: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("pocketvl-{fixture}.gguf"));
    let opts = convert::write::ConvertOptions {
        input: root().join("tests/fixtures").join(fixture).join("hf"),
        output: out.clone(),
        quant: Some("f32".into()),
        overrides: Vec::new(),
        force: true,
        threads: None,
        progress: false,
    };
    if let Err(e) = convert::write::convert(&opts) {
        panic!("pocketvl convert failed for {fixture}: {e}");
    }
    out
}

fn check_pocketvl(fixture: &str) {
    let Some((tool, _python)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let gguf = pocketvl_gguf(fixture, dir.path());
    let golden = Golden::load(
        &root()
            .join("tests/fixtures")
            .join(fixture)
            .join("golden.safetensors"),
    );
    let run = run_llamacpp(&tool, &gguf, &golden.i64s("text.input_ids"), dir.path());
    assert_matches_golden(fixture, &run);
}

fn check_reference(fixture: &str) {
    let Some((tool, python)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let gguf = reference_gguf(&python, fixture, dir.path());
    let golden = Golden::load(
        &root()
            .join("tests/fixtures")
            .join(fixture)
            .join("golden.safetensors"),
    );
    let run = run_llamacpp(&tool, &gguf, &golden.i64s("text.input_ids"), dir.path());
    assert_matches_golden(fixture, &run);
}

#[test]
fn llamacpp_reference_gguf_tiny_mha_matches_golden() {
    check_reference("tiny-mha");
}

#[test]
fn llamacpp_reference_gguf_tiny_mla_matches_golden() {
    check_reference("tiny-mla");
}

#[test]
fn llamacpp_pocketvl_gguf_tiny_mha_matches_golden() {
    check_pocketvl("tiny-mha");
}

#[test]
fn llamacpp_pocketvl_gguf_tiny_mla_matches_golden() {
    check_pocketvl("tiny-mla");
}
