//! Interoperability with the Python `gguf` package, the reference GGUF
//! implementation maintained with llama.cpp: files we write read identically
//! with its `GGUFReader`, and files its `GGUFWriter` writes read identically
//! with ours. Both sides are compared through the JSON that
//! `scripts/gguf_check.py` prints (values typed, floats as bit patterns,
//! tensor bytes as sha256).
//!
//! Needs `POCKETVL_PYTHON` (an interpreter with `gguf` and `numpy`); without
//! it the tests report themselves skipped (a failure under `CI=true`).

use std::path::{Path, PathBuf};
use std::process::Command;

use quant::gguf::{GgufFile, GgufWriter, Value, ValueType, ALL_VALUE_TYPES};
use quant::GgmlType;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::prereq::python;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gguf_check.py")
}

/// Runs `gguf_check.py` with `args` and parses its JSON.
fn run_check(py: &str, args: &[&Path]) -> Json {
    let out = Command::new(py)
        .arg(script())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "gguf_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gguf_check.py JSON")
}

/// A value in the script's typed JSON form.
fn typed(v: &Value) -> Json {
    let name = v.type_name();
    match v {
        Value::U8(x) => json!([name, x]),
        Value::I8(x) => json!([name, x]),
        Value::U16(x) => json!([name, x]),
        Value::I16(x) => json!([name, x]),
        Value::U32(x) => json!([name, x]),
        Value::I32(x) => json!([name, x]),
        Value::U64(x) => json!([name, x]),
        Value::I64(x) => json!([name, x]),
        Value::F32(x) => json!([name, x.to_bits()]),
        Value::F64(x) => json!([name, x.to_bits()]),
        Value::Bool(x) => json!([name, x]),
        Value::String(s) => json!([name, s]),
        Value::Array(ty, items) => {
            json!([name, ty.name(), items.iter().map(typed).collect::<Vec<_>>()])
        }
    }
}

/// What our reader sees, in the script's JSON form.
fn describe(f: &GgufFile) -> Json {
    let metadata: Vec<Json> = f
        .metadata()
        .iter()
        .map(|(k, v)| json!([k, typed(v)]))
        .collect();
    let tensors: Vec<Json> = f
        .tensors()
        .iter()
        .map(|t| {
            let hash: String = Sha256::digest(f.tensor_data(t))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            json!({
                "name": t.name,
                "type": t.ty.name().to_uppercase(),
                "type_id": t.ty.id(),
                "ne": t.ne,
                "n_bytes": t.n_bytes,
                "offset": t.offset,
                "sha256": hash,
            })
        })
        .collect();
    json!({
        "version": f.version(),
        "alignment": f.alignment(),
        "data_offset": f.data_offset(),
        "metadata": metadata,
        "tensors": tensors,
    })
}

/// Compares field by field so a failure names what differs.
fn assert_same(python: &Json, rust: &Json) {
    for field in ["version", "alignment", "data_offset"] {
        assert_eq!(python[field], rust[field], "{field}");
    }
    for list in ["metadata", "tensors"] {
        let (p, r) = (
            python[list].as_array().unwrap(),
            rust[list].as_array().unwrap(),
        );
        for (a, b) in p.iter().zip(r) {
            assert_eq!(a, b, "{list} entry differs (python, rust)");
        }
        assert_eq!(p.len(), r.len(), "number of {list}");
    }
}

#[test]
fn files_we_write_read_identically_in_gguf_py() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");

    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("deepseek2".into()))
        .unwrap();
    let scalars = [
        Value::U8(255),
        Value::I8(-128),
        Value::U16(65535),
        Value::I16(-32768),
        Value::U32(u32::MAX),
        Value::I32(i32::MIN),
        Value::F32(f32::NAN),
        Value::Bool(false),
        Value::String("ünïcödé ▁ 日本".into()),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F64(-0.0),
    ];
    for v in &scalars {
        let ty = v.value_type();
        w.add_kv(&format!("s.{ty}"), v.clone()).unwrap();
        w.add_kv(&format!("a.{ty}"), Value::Array(ty, vec![v.clone(); 3]))
            .unwrap();
        w.add_kv(&format!("e.{ty}"), Value::Array(ty, vec![]))
            .unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let specs: [(&str, GgmlType, &[u64]); 10] = [
        ("f32", GgmlType::F32, &[5, 3]),
        ("f16", GgmlType::F16, &[4, 3, 2]),
        ("bf16", GgmlType::BF16, &[6, 2]),
        ("q8_0", GgmlType::Q8_0, &[64, 2]),
        ("q4_0", GgmlType::Q4_0, &[32, 1, 1, 3]),
        ("q4_k", GgmlType::Q4_K, &[256, 3]),
        ("q5_k", GgmlType::Q5_K, &[512]),
        ("q2_k", GgmlType::Q2_K, &[256]),
        ("i32", GgmlType::I32, &[7]),
        ("blk.0.ffn_gate_exps.weight", GgmlType::Q6_K, &[256, 2, 4]),
    ];
    for (name, ty, ne) in specs {
        w.add_tensor(name, ty, ne).unwrap();
    }
    let infos = w.tensor_infos().unwrap();
    let mut dw = w.create(&path, false).unwrap();
    for t in &infos {
        let bytes: Vec<u8> = (0..t.n_bytes).map(|_| rng.gen()).collect();
        dw.write(&bytes).unwrap();
    }
    dw.finish().unwrap().commit().unwrap();

    let python_view = run_check(&py, &[&path]);
    let ours = GgufFile::open(&path).unwrap();
    assert_same(&python_view, &describe(&ours));
}

#[test]
fn files_gguf_py_writes_read_identically_here() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("theirs.gguf");
    let python_view = run_check(&py, &[Path::new("--write-sample"), &path]);
    let f = GgufFile::open(&path).unwrap();
    assert_same(&python_view, &describe(&f));

    // The sample really covers everything: every value type as a scalar and
    // as an array element type, nested arrays, and a custom alignment.
    for ty in ALL_VALUE_TYPES {
        if ty != ValueType::Array {
            assert!(
                f.metadata().iter().any(|(_, v)| v.value_type() == ty),
                "{ty}"
            );
        }
        assert!(
            f.metadata()
                .iter()
                .any(|(_, v)| matches!(v, Value::Array(t, items) if *t == ty && !items.is_empty())),
            "array of {ty}"
        );
    }
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get("test.u64"), Some(&Value::U64(u64::MAX - 1)));
    assert!(f
        .get("test.f32_nan")
        .and_then(Value::as_f32)
        .unwrap()
        .is_nan());
    assert_eq!(
        f.get("test.nested")
            .and_then(Value::as_array)
            .map(<[Value]>::len),
        Some(3)
    );
    assert_eq!(
        f.get("tokenizer.ggml.tokens").and_then(Value::as_str_array),
        Some(vec!["<s>", "</s>", "▁the"])
    );
    let q = f.tensor("t.q4_k").unwrap();
    assert_eq!(
        (q.ty, q.ne.as_slice(), q.n_bytes),
        (GgmlType::Q4_K, &[256, 3][..], 432)
    );
}

/// gguf-py's own writer, given the same keys, values and tensors, produces
/// exactly the bytes ours does (it cannot write empty arrays, so there are
/// none here).
#[test]
fn our_bytes_equal_gguf_py_writer_bytes() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.gguf");
    let theirs = dir.path().join("theirs.gguf");
    for alignment in [None, Some(64u32)] {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "deepseek".into()).unwrap();
        if let Some(a) = alignment {
            w.add_kv("general.alignment", a.into()).unwrap();
        }
        w.add_kv("deepseek.block_count", 12u32.into()).unwrap();
        w.add_kv("deepseek.rope.freq_base", 10000.0f32.into())
            .unwrap();
        w.add_kv("x.f64", (-0.0f64).into()).unwrap();
        w.add_kv("x.i64", (-5i64).into()).unwrap();
        w.add_kv("x.u64", u64::MAX.into()).unwrap();
        w.add_kv("x.bool", true.into()).unwrap();
        w.add_kv("x.u8", 9u8.into()).unwrap();
        w.add_kv("x.i16", (-9i16).into()).unwrap();
        w.add_kv(
            "tokenizer.ggml.tokens",
            Value::array(ValueType::String, ["<s>", "▁a", "b"]),
        )
        .unwrap();
        w.add_kv(
            "tokenizer.ggml.scores",
            Value::array(ValueType::F32, [0.0f32, -1.5, f32::NAN]),
        )
        .unwrap();
        w.add_kv(
            "tokenizer.ggml.token_type",
            Value::array(ValueType::I32, [1i32, 3, 1]),
        )
        .unwrap();
        let specs: [(&str, GgmlType, &[u64]); 5] = [
            ("token_embd.weight", GgmlType::Q8_0, &[64, 3]),
            ("output_norm.weight", GgmlType::F32, &[7]),
            ("blk.0.attn_q.weight", GgmlType::BF16, &[5, 3]),
            ("blk.0.ffn_up_exps.weight", GgmlType::Q4_K, &[256, 2, 3]),
            ("blk.0.ffn_down_exps.weight", GgmlType::F16, &[3, 1, 2]),
        ];
        for (name, ty, ne) in specs {
            w.add_tensor(name, ty, ne).unwrap();
        }
        let total: u64 = w.tensor_infos().unwrap().iter().map(|t| t.n_bytes).sum();
        let mut dw = w.create(&ours, true).unwrap();
        dw.write(&(0..total).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>())
            .unwrap();
        dw.finish().unwrap().commit().unwrap();

        let view = run_check(&py, &[Path::new("--rewrite"), &ours, &theirs]);
        assert_same(&view, &describe(&GgufFile::open(&ours).unwrap()));
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
        assert_eq!(
            (a.len(), first_diff),
            (b.len(), None),
            "alignment {alignment:?}: (length, first differing byte)"
        );
    }
}
