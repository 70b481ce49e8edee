//! The loader's error reporting on hand-made GGUF files (written with the
//! quant crate's writer): every missing hyper-parameter in one message, shape
//! and type mismatches naming the tensor, and unused tensors rejected.

use std::path::Path;

use pocketvl::loader::{LmHparams, LoaderError, ModelFile};
use quant::gguf::{GgufWriter, Value};
use quant::schema::{self, llm, llm_key, tensor as tn, tokenizer};
use quant::GgmlType;

fn write(path: &Path, kv: &[(String, Value)], tensors: &[(&str, GgmlType, Vec<u64>)]) {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add_kv(k, v.clone()).unwrap();
    }
    for (name, ty, ne) in tensors {
        w.add_tensor(name, *ty, ne).unwrap();
    }
    let mut d = w.create(path, true).unwrap();
    for (_, ty, ne) in tensors {
        let bytes = ty.tensor_bytes(ne).unwrap() as usize;
        d.write(&vec![0u8; bytes]).unwrap();
    }
    d.finish().unwrap().commit().unwrap();
}

fn arch(a: &str) -> (String, Value) {
    (
        schema::general::ARCHITECTURE.to_string(),
        Value::String(a.to_string()),
    )
}

#[test]
fn every_missing_key_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let kv = vec![
        arch("deepseek2"),
        (llm_key("deepseek2", llm::BLOCK_COUNT), Value::U32(3)),
    ];
    write(&p, &kv, &[]);
    let f = ModelFile::open(&p).unwrap();
    let err = LmHparams::from_file(&f).unwrap_err();
    let LoaderError::Metadata { problems, .. } = &err else {
        panic!("{err}")
    };
    let msg = err.to_string();
    for key in [
        llm::CONTEXT_LENGTH,
        llm::EMBEDDING_LENGTH,
        llm::KV_LORA_RANK,
        llm::KEY_LENGTH_MLA,
    ] {
        assert!(
            msg.contains(&llm_key("deepseek2", key)),
            "{key} not in {msg}"
        );
    }
    assert!(msg.contains(tokenizer::BOS_ID));
    assert!(problems.len() > 10, "{msg}");
    assert!(!msg.contains(&llm_key("deepseek2", llm::BLOCK_COUNT)));
}

#[test]
fn other_architectures_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    write(&p, &[arch("llama")], &[]);
    let err = LmHparams::from_file(&ModelFile::open(&p).unwrap()).unwrap_err();
    assert!(
        matches!(err, LoaderError::Architecture { ref found, .. } if found == "llama"),
        "{err}"
    );
}

#[test]
fn shapes_types_and_unused_tensors_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let norm = tn::blk(0, tn::ATTN_NORM);
    write(
        &p,
        &[arch("deepseek")],
        &[
            (tn::TOKEN_EMBD, GgmlType::F16, vec![64, 10]),
            (&norm, GgmlType::F32, vec![64]),
            ("extra.weight", GgmlType::F32, vec![4]),
        ],
    );
    let f = ModelFile::open(&p).unwrap();
    let err = f.weight(tn::TOKEN_EMBD, &[64, 11]).unwrap_err();
    assert!(
        matches!(err, LoaderError::Shape { ref name, .. } if name == tn::TOKEN_EMBD),
        "{err}"
    );
    let err = f
        .weight_of(tn::TOKEN_EMBD, &[64, 10], &[GgmlType::F32])
        .unwrap_err();
    assert!(
        matches!(err, LoaderError::Type { found: "f16", .. }),
        "{err}"
    );
    assert!(matches!(
        f.weight("missing.weight", &[1]),
        Err(LoaderError::MissingTensor { .. })
    ));
    assert!(f.optional_weight("missing.weight", &[1]).unwrap().is_none());
    let w = f.weight(tn::TOKEN_EMBD, &[64, 10]).unwrap();
    assert_eq!((w.ty(), w.ne()), (GgmlType::F16, &[64u64, 10][..]));
    assert_eq!(w.data().len(), 64 * 10 * 2);
    f.weight_of(&norm, &[64], &[GgmlType::F32]).unwrap();
    match f.check_all_used() {
        Err(LoaderError::Unused { names, .. }) => {
            assert_eq!(names, vec!["extra.weight".to_string()])
        }
        other => panic!("{other:?}"),
    }
}
