//! A synthetic checkpoint is something the converter accepts: shrunk Tiny-flavoured (MHA,
//! softmax greedy) and VL2-flavoured (MLA, sigmoid noaux_tc with the selection bias) models are
//! synthesized, converted, and the GGUF files hold every planned tensor. `bench convert` runs on
//! the same kind of checkpoint and accounts for every byte.

use std::path::Path;

use convert::write::{convert as run_convert, ConvertOptions};
use pocketvl::bench::convert::{bench_convert, shard_files, ConvertBenchOptions};
use pocketvl::synth::{self, ModelSpec, SynthOptions, Variant};
use quant::gguf::GgufFile;

use crate::common;

fn synthesize(spec: &ModelSpec, dir: &Path) -> synth::SynthSummary {
    let mut o = SynthOptions::new(spec.variant, dir);
    o.seed = 3;
    o.shard_bytes = 512 << 10;
    // 1208 tokens: fits the shrunk 1280-row vocabulary.
    o.tokenizer = Some(common::fixture("tiny-mha").join("hf/tokenizer.json"));
    synth::synthesize_spec(spec, &o).unwrap()
}

#[test]
fn converter_accepts_synthetic_checkpoints() {
    for variant in [Variant::Tiny, Variant::Vl2] {
        let spec = common::shrink_spec(ModelSpec::new(variant, None, true));
        let dir = tempfile::tempdir().unwrap();
        let ck_dir = dir.path().join("hf");
        let summary = synthesize(&spec, &ck_dir);
        for quant in ["q8_0", "f16"] {
            let out = dir.path().join(format!("model-{quant}.gguf"));
            let (plan, s) = run_convert(&ConvertOptions {
                input: ck_dir.clone(),
                output: out.clone(),
                quant: Some(quant.into()),
                overrides: Vec::new(),
                force: false,
                threads: Some(2),
                progress: false,
            })
            .unwrap_or_else(|e| panic!("{variant:?} {quant}: {e}"));
            assert_eq!(s.input_bytes, summary.data_bytes);
            let lm = GgufFile::open(&s.language_path).unwrap();
            let mm = GgufFile::open(&s.mmproj_path).unwrap();
            assert_eq!(lm.tensors().len(), plan.language.tensors.len());
            assert_eq!(mm.tensors().len(), plan.mmproj.tensors.len());
            if variant == Variant::Vl2 {
                // The routing bias of noaux_tc made it through.
                assert!(plan
                    .language
                    .tensors
                    .iter()
                    .any(|t| t.mapped.name.ends_with(quant::schema::tensor::EXP_PROBS_B)));
            }
        }
    }
}

#[test]
fn bench_convert_accounts_for_every_byte() {
    let spec = common::shrink_spec(ModelSpec::new(Variant::Tiny, None, true));
    let dir = tempfile::tempdir().unwrap();
    let ck_dir = dir.path().join("hf");
    let summary = synthesize(&spec, &ck_dir);
    let files = shard_files(&ck_dir).unwrap();
    assert_eq!(files.len(), summary.shards.len());
    let on_disk: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();

    let r = bench_convert(&ConvertBenchOptions {
        checkpoint: ck_dir.clone(),
        quant: "q8_0".into(),
        tmp_dir: Some(dir.path().to_path_buf()),
        threads: Some(2),
        progress: false,
    })
    .unwrap();
    assert_eq!(r.shard_bytes, on_disk);
    assert_eq!(r.read.cold.bytes, on_disk);
    assert_eq!(r.read.warm.bytes, on_disk);
    assert_eq!(r.convert.input_bytes, summary.data_bytes);
    assert!(r.convert.output_bytes > 0);
    assert!(r.memory.max_rss.is_some_and(|b| b > 0));
    // The temporary output is gone; only the checkpoint remains.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["ratio_cold"].as_f64().is_some());
    assert!(r.report().contains("convert q8_0"));
}
