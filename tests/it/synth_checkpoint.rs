//! End-to-end checks of `pocketvl synth` on a shrunk Tiny-flavoured model: the files it writes
//! are read back with the converter's safetensors reader and, when POCKETVL_PYTHON is set, with
//! the official Python `safetensors` package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use convert::safetensors::{Checkpoint, Dtype};
use pocketvl::synth::{
    self, tensor_list, HeaderEntry, ModelSpec, SafetensorsWriter, StDtype, SynthOptions, Variant,
};

use crate::common;
use common::python;

/// Tiny's structure (MHA, dense layer 0, MoE after) at fixture-like widths.
fn small_tiny() -> ModelSpec {
    common::shrink_spec(ModelSpec::new(Variant::Tiny, Some(3), true))
}

fn fixture_tokenizer() -> PathBuf {
    common::fixture("tiny-mha").join("hf/tokenizer.json")
}

fn write(spec: &ModelSpec, dir: &Path, seed: u64) -> synth::SynthSummary {
    let mut o = SynthOptions::new(spec.variant, dir);
    o.seed = seed;
    o.shard_bytes = 256 << 10;
    o.tokenizer = Some(fixture_tokenizer());
    synth::synthesize_spec(spec, &o).unwrap()
}

fn run_check(py: &str, mode: &str, arg: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/synth_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(mode)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "synth_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn synthetic_checkpoint_reads_back_with_every_tensor() {
    let spec = small_tiny();
    let dir = tempfile::tempdir().unwrap();
    let summary = write(&spec, dir.path(), 42);
    assert!(
        summary.shards.len() > 2,
        "small shard limit must split the model"
    );

    let ck = Checkpoint::open(dir.path()).unwrap();
    let list = tensor_list(&spec);
    assert_eq!(ck.names().count(), list.len());
    assert_eq!(ck.data_bytes(), summary.data_bytes);
    for t in &list {
        let v = ck.tensor(&t.name).unwrap();
        assert_eq!(v.dtype, Dtype::Bf16, "{}", t.name);
        assert_eq!(v.shape, &t.shape[..], "{}", t.name);
    }
    // Values follow the init: norms around 1, linear weights N(0, 1/fan_in).
    let norm = ck
        .tensor("language.model.layers.1.input_layernorm.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let mean = norm.iter().sum::<f32>() / norm.len() as f32;
    assert!((mean - 1.0).abs() < 0.05, "norm mean {mean}");
    let w = ck
        .tensor("language.model.layers.1.mlp.experts.3.down_proj.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    let want = 1.0 / (32f32).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "std {std}, want {want}");

    // The side files the converter and the reference processor read.
    for f in [
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["language_config"]["num_hidden_layers"], 3);
    assert_eq!(cfg["vision_config"]["heads"], 4);
    assert_eq!(cfg["projector_config"]["input_dim"], 64);

    if let Some(py) = python() {
        let theirs = run_check(&py, "checkpoint", dir.path());
        let theirs = theirs.as_object().unwrap();
        assert_eq!(theirs.len(), list.len());
        for t in &list {
            let e = &theirs[&t.name];
            assert_eq!(e[0], "BF16");
            assert_eq!(e[1], serde_json::json!(t.shape), "{}", t.name);
        }
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let mut spec = small_tiny();
    spec.with_vision = false;
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let sa = write(&spec, a.path(), 1);
    write(&spec, b.path(), 1);
    write(&spec, c.path(), 2);
    for p in &sa.shards {
        let name = p.file_name().unwrap();
        let x = std::fs::read(p).unwrap();
        assert_eq!(x, std::fs::read(b.path().join(name)).unwrap());
        assert_ne!(x, std::fs::read(c.path().join(name)).unwrap());
    }
}

#[test]
fn refuses_non_empty_output_and_bad_layers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), b"x").unwrap();
    let mut o = SynthOptions::new(Variant::Tiny, dir.path());
    o.tokenizer = Some(fixture_tokenizer());
    o.layers = Some(1);
    assert!(matches!(
        synth::synthesize(&o),
        Err(synth::SynthError::OutputNotEmpty(_))
    ));
    o.layers = Some(13);
    assert!(matches!(
        synth::synthesize(&o),
        Err(synth::SynthError::BadLayers { max: 12, .. })
    ));
}

/// The writer's F32/F16 output, loaded by Python `safetensors.numpy`, gives back the values.
#[test]
fn writer_values_match_python_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.safetensors");
    let f32s: Vec<f32> = (0..15).map(|i| i as f32 * 0.25 - 1.5).collect();
    let f16s: Vec<half::f16> = (0..6)
        .map(|i| half::f16::from_f32(i as f32 - 2.5))
        .collect();
    let entries = vec![
        HeaderEntry {
            name: "w.f32".into(),
            dtype: StDtype::F32,
            shape: vec![3, 5],
        },
        HeaderEntry {
            name: "b.f16".into(),
            dtype: StDtype::F16,
            shape: vec![6],
        },
    ];
    let mut w = SafetensorsWriter::create(&path, entries, &BTreeMap::new()).unwrap();
    for e in w.entries().to_vec() {
        let bytes: Vec<u8> = if e.dtype == StDtype::F32 {
            f32s.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            f16s.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        w.write(&bytes).unwrap();
    }
    w.finish().unwrap();

    // Our own reader first.
    let st = convert::safetensors::SafeTensorsFile::open(&path).unwrap();
    assert_eq!(st.tensor("w.f32").unwrap().to_f32().unwrap(), f32s);

    let Some(py) = python() else { return };
    let v = run_check(&py, "values", &path);
    assert_eq!(v["w.f32"][0], "float32");
    assert_eq!(v["w.f32"][1], serde_json::json!([3, 5]));
    let got: Vec<f64> = serde_json::from_value(v["w.f32"][2].clone()).unwrap();
    assert_eq!(got, f32s.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert_eq!(v["b.f16"][0], "float16");
    let got: Vec<f64> = serde_json::from_value(v["b.f16"][2].clone()).unwrap();
    assert_eq!(got, f16s.iter().map(|x| x.to_f64()).collect::<Vec<_>>());
}
