//! `pocketvl convert` / `pocketvl inspect` through the real binary: the happy path, and every
//! kind of bad input giving a clear message, a non-zero exit and no partial output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common;
use common::s;

fn fixture(name: &str) -> PathBuf {
    common::fixture(name).join("hf")
}

fn pocketvl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(args)
        .output()
        .expect("run pocketvl")
}

/// A writable copy of a fixture checkpoint.
fn copy_fixture(name: &str, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Runs a conversion expected to fail; returns stderr and checks nothing was written.
fn fails(hf: &Path, out_dir: &Path, extra: &[&str]) -> String {
    std::fs::create_dir_all(out_dir).ok();
    let before: Vec<_> = std::fs::read_dir(out_dir)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    let out_file = out_dir.join("model.gguf");
    let mut args = vec!["convert", s(hf), "-o", s(&out_file), "--quant", "q8_0"];
    args.extend_from_slice(extra);
    let o = pocketvl(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let after: Vec<_> = std::fs::read_dir(out_dir)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert_eq!(before, after, "files left behind; stderr: {stderr}");
    stderr
}

#[test]
fn convert_then_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    let o = pocketvl(&[
        "convert",
        s(&fixture("tiny-mha")),
        "-o",
        s(&out),
        "--quant",
        "q4_k",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let mmproj = dir.path().join("mmproj-tiny.gguf");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![s(&out), s(&mmproj)]
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("blk.1.ffn_down_exps.weight: q4_K -> q5_0"),
        "{stderr}"
    );
    assert!(stderr.contains("MB/s"), "{stderr}");

    let o = pocketvl(&["inspect", s(&out), "--json"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["metadata"]["general.architecture"], "deepseek");
    assert_eq!(
        j["metadata"]["tokenizer.ggml.tokens"]
            .as_array()
            .unwrap()
            .len(),
        1280
    );
    let tensors = j["tensors"].as_array().unwrap();
    let q = tensors
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["type"], "q8_0");
    assert_eq!(q["shape"], serde_json::json!([64, 64]));
    assert_eq!(q["bytes"], 64 * 2 * 34);

    let o = pocketvl(&["inspect", s(&mmproj)]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("clip.projector_type = \"deepseekvl2\""),
        "{text}"
    );
    assert!(text.contains("(46 x u32)"), "{text}");
    assert!(text.contains("v.blk.1.ffn_down.weight"), "{text}");
}

#[test]
fn dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let o = pocketvl(&[
        "convert",
        s(&fixture("tiny-mla")),
        "-o",
        s(&out),
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("blk.1.ffn_gate_exps.weight"), "{text}");
    assert!(text.contains("blk.0.attn_k_b.weight"), "{text}");
    assert!(text.contains("experts"), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mha", &hf);
    std::fs::remove_file(hf.join("model-00002-of-00002.safetensors")).unwrap();
    let e = fails(&hf, &dir.path().join("out"), &[]);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mha", &hf);
    let p = hf.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let e = fails(&hf, &dir.path().join("out"), &[]);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn header_claiming_2_pow_60_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mha", &hf);
    let p = hf.join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = fails(&hf, &dir.path().join("out"), &[]);
    assert!(e.contains("header claims 1152921504606846976 bytes"), "{e}");
}

#[test]
fn unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mha", &hf);
    let p = hf.join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.windows(6).position(|w| w == b"\"BF16\"").unwrap();
    bytes[at + 1..at + 5].copy_from_slice(b"XF16");
    std::fs::write(&p, bytes).unwrap();
    let e = fails(&hf, &dir.path().join("out"), &[]);
    assert!(e.contains("unsupported dtype 'XF16'"), "{e}");
}

fn edit_config(hf: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = hf.join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut j);
    std::fs::write(&p, serde_json::to_string_pretty(&j).unwrap()).unwrap();
}

#[test]
fn wrong_model_type() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mla", &hf);
    edit_config(&hf, |j| j["model_type"] = "deepseek_v2".into());
    let e = fails(&hf, &dir.path().join("out"), &[]);
    assert!(
        e.contains("model_type is 'deepseek_v2', expected 'deepseek_vl_v2'"),
        "{e}"
    );
}

#[test]
fn missing_config_keys_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mla", &hf);
    edit_config(&hf, |j| {
        j["language_config"]
            .as_object_mut()
            .unwrap()
            .remove("hidden_size");
        j["vision_config"].as_object_mut().unwrap().remove("width");
        j["projector_config"]
            .as_object_mut()
            .unwrap()
            .remove("n_embed");
    });
    let e = fails(&hf, &dir.path().join("out"), &[]);
    for k in [
        "language_config.hidden_size",
        "vision_config.width",
        "projector_config.n_embed",
    ] {
        assert!(e.contains(k), "{k} missing from: {e}");
    }
}

#[test]
fn unwritable_output_dir() {
    let dir = tempfile::tempdir().unwrap();
    // The output's parent is a regular file: no directory can be created there.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("model.gguf");
    let o = pocketvl(&[
        "convert",
        s(&fixture("tiny-mha")),
        "-o",
        s(&out),
        "--quant",
        "f16",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("error:") && e.contains("blocker"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("model.gguf"), b"old").unwrap();
    let e = fails(&fixture("tiny-mha"), &out_dir, &[]);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(out_dir.join("model.gguf")).unwrap(), b"old");
    let out = out_dir.join("model.gguf");
    let o = pocketvl(&["convert", s(&fixture("tiny-mha")), "-o", s(&out), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(std::fs::read(&out).unwrap(), b"old");
}

/// The official processor takes BOS/EOS from the tokenizer and runs whatever config.json says;
/// so does convert, with a warning: the file is the one the consistent checkpoint gives.
#[test]
fn config_ids_disagreeing_with_the_tokenizer_follow_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    copy_fixture("tiny-mha", &hf);
    edit_config(&hf, |j| {
        j["language_config"]["bos_token_id"] = 5.into();
        j["language_config"]["eos_token_id"] = 7.into();
    });
    let mismatched = dir.path().join("mismatched.gguf");
    let o = pocketvl(&["convert", s(&hf), "-o", s(&mismatched), "--quant", "f32"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for line in [
        "warning: BOS '<｜begin▁of▁sentence｜>' has id 0 in the tokenizer but 5 in config.json; \
         using the tokenizer's 0, as the reference's processor does",
        "warning: EOS '<｜end▁of▁sentence｜>' has id 1 in the tokenizer but 7 in config.json; \
         using the tokenizer's 1, as the reference's processor does",
    ] {
        assert!(
            stderr.lines().any(|l| l == line),
            "{line}\nnot in:\n{stderr}"
        );
    }
    let consistent = dir.path().join("consistent.gguf");
    let o = pocketvl(&[
        "convert",
        s(&fixture("tiny-mha")),
        "-o",
        s(&consistent),
        "--quant",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&mismatched).unwrap() == std::fs::read(&consistent).unwrap(),
        "the mismatched checkpoint must convert to the consistent one's file"
    );
    let o = pocketvl(&[
        "run",
        "-m",
        s(&mismatched),
        "-p",
        "Hello",
        "-n",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// An unknown variant converts with the recipe asked for, and the warning names that recipe.
#[test]
fn unknown_variant_warning_names_the_recipe_used() {
    let dir = tempfile::tempdir().unwrap();
    let hf = fixture("tiny-mha");
    let unknown = "warning: hyper-parameters match no known variant in models.toml (hidden 64, \
                   layers 3); converting anyway";
    for (extra, tail) in [
        (vec!["--quant", "f32"], "with --quant 'f32'"),
        (
            vec![],
            "with the default recipe for unknown variants 'q8_0'",
        ),
    ] {
        let out = dir.path().join(format!("m{}.gguf", extra.len()));
        let mut args = vec!["convert", s(&hf), "-o", s(&out)];
        args.extend(extra);
        let o = pocketvl(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        let line = format!("{unknown} {tail}");
        assert!(
            stderr.lines().any(|l| l == line),
            "{line}\nnot in:\n{stderr}"
        );
    }
}
