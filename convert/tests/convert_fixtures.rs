//! Converts both fixtures with every recipe and checks the files against the checkpoint:
//! every tensor present with the planned type and shape, and every value within its type's
//! error bound of the source (f32 exact, f16/bf16 exact rounding, block formats within the
//! format's per-block bound). The expected values are rebuilt here from the raw checkpoint
//! with the index formulas of docs/DEEPSEEK-VL2.md §7.5 and §9.7, independently of
//! `mapping::fill_rows`. With POCKETVL_PYTHON set, the PyPI `gguf` reader must list the same
//! tensors, types and shapes and dequantize to the same values.

use std::path::{Path, PathBuf};

use convert::mapping::{MappedTensor, Source};
use convert::safetensors::Checkpoint;
use convert::write::{self, ConvertOptions};
use quant::gguf::GgufFile;
use quant::GgmlType;

#[path = "../../tests/support/prereq.rs"]
mod prereq;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .join("hf")
}

fn opts(input: PathBuf, output: PathBuf, quant: &str) -> ConvertOptions {
    ConvertOptions {
        input,
        output,
        quant: Some(quant.to_string()),
        overrides: Vec::new(),
        force: false,
        threads: Some(2),
        progress: false,
    }
}

/// The output tensor rebuilt from the checkpoint, flat in ggml order (ne[0] fastest).
fn expected(ck: &Checkpoint, m: &MappedTensor) -> Vec<f32> {
    match &m.source {
        Source::Copy(n) => ck.tensor(n).unwrap().to_f32().unwrap(),
        Source::Stack(names) => names
            .iter()
            .flat_map(|n| ck.tensor(n).unwrap().to_f32().unwrap())
            .collect(),
        Source::PermuteRope { name, n_head } => {
            let t = ck.tensor(name).unwrap();
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let w = t.to_f32().unwrap();
            let hd = rows / n_head;
            let mut out = vec![0f32; rows * cols];
            // new row 2i = old row i, new row 2i+1 = old row i + hd/2, per head.
            for h in 0..*n_head {
                for i in 0..hd / 2 {
                    for c in 0..cols {
                        out[(h * hd + 2 * i) * cols + c] = w[(h * hd + i) * cols + c];
                        out[(h * hd + 2 * i + 1) * cols + c] = w[(h * hd + i + hd / 2) * cols + c];
                    }
                }
            }
            out
        }
        Source::KvbK {
            name,
            n_head,
            nope,
            v,
            kv_lora,
        } => {
            let w = ck.tensor(name).unwrap().to_f32().unwrap();
            // ne [nope, kv_lora, H]: element (d, c, h) = kv_b[h*(nope+v) + d][c].
            let mut out = Vec::new();
            for h in 0..*n_head {
                for c in 0..*kv_lora {
                    for d in 0..*nope {
                        out.push(w[(h * (nope + v) + d) * kv_lora + c]);
                    }
                }
            }
            out
        }
        Source::KvbV {
            name,
            n_head,
            nope,
            v,
            kv_lora,
        } => {
            let w = ck.tensor(name).unwrap().to_f32().unwrap();
            let mut out = Vec::new();
            for h in 0..*n_head {
                for d in 0..*v {
                    let r = h * (nope + v) + nope + d;
                    out.extend_from_slice(&w[r * kv_lora..(r + 1) * kv_lora]);
                }
            }
            out
        }
    }
}

/// Largest error allowed for one block of `src` stored as `ty` (ggml's reference quantizers).
fn block_bound(ty: GgmlType, src: &[f32]) -> f32 {
    let amax = src.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let slack = 1e-6 + amax * 1e-3; // f16 rounding of the scales
    match ty {
        // d = amax/127, round to nearest: |err| <= d/2, plus f16 rounding of d (<= 127 d 2^-11).
        GgmlType::Q8_0 => amax / 127.0 * 0.57 + slack,
        // d = max/-8; the opposite extreme clamps from 8 to 7: |err| <= |d|.
        GgmlType::Q4_0 => amax / 8.0 * 1.02 + slack,
        GgmlType::Q5_0 => amax / 16.0 * 1.02 + slack,
        // Asymmetric: step = range/(levels-1) <= 2 amax/(levels-1); err <= step/2 plus the
        // quantized sub-block scales and mins (6-bit / 8-bit): allow two steps.
        GgmlType::Q5_1 => 2.0 * amax / 31.0 + slack,
        GgmlType::Q4_K => 2.0 * 2.0 * amax / 15.0 + slack,
        GgmlType::Q5_K => 2.0 * 2.0 * amax / 31.0 + slack,
        GgmlType::Q6_K => 2.0 * amax / 32.0 + slack,
        _ => 0.0,
    }
}

fn check_values(name: &str, ty: GgmlType, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{name}: element count");
    match ty {
        GgmlType::F32 => {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert_eq!(w.to_bits(), g.to_bits(), "{name}[{i}]");
            }
        }
        GgmlType::F16 => {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert_eq!(half::f16::from_f32(*w).to_f32(), *g, "{name}[{i}]");
            }
        }
        GgmlType::BF16 => {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert_eq!(half::bf16::from_f32(*w).to_f32(), *g, "{name}[{i}]");
            }
        }
        _ => {
            let bs = ty.block_size();
            for (b, (wb, gb)) in want.chunks(bs).zip(got.chunks(bs)).enumerate() {
                let bound = block_bound(ty, wb);
                for (w, g) in wb.iter().zip(gb) {
                    assert!(
                        (w - g).abs() <= bound,
                        "{name} ({}) block {b}: |{w} - {g}| > {bound}",
                        ty.name()
                    );
                }
            }
        }
    }
}

fn dequantize_all(file: &GgufFile, name: &str) -> (GgmlType, Vec<u64>, Vec<f32>) {
    let info = file
        .tensor(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let data = file.tensor_data(info);
    let ne0 = info.ne[0] as usize;
    let n: u64 = info.ne.iter().product();
    let row_bytes = info.ty.row_bytes(ne0 as u64).unwrap() as usize;
    let mut out = vec![0f32; n as usize];
    for (dst, src) in out.chunks_exact_mut(ne0).zip(data.chunks_exact(row_bytes)) {
        quant::block::dequantize_row(info.ty, src, dst).unwrap();
    }
    (info.ty, info.ne.clone(), out)
}

fn python_check(path: &Path, file: &GgufFile) {
    let Some(python) = prereq::python() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gguf_compare.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), file.tensors().len());
    for (py, info) in tensors.iter().zip(file.tensors()) {
        assert_eq!(py["name"], info.name.as_str());
        assert_eq!(
            py["type"].as_str().unwrap().to_ascii_lowercase(),
            info.ty.name().to_ascii_lowercase(),
            "{}",
            info.name
        );
        let ne: Vec<u64> = serde_json::from_value(py["ne"].clone()).unwrap();
        assert_eq!(ne, info.ne, "{}", info.name);
        let (_, _, ours) = dequantize_all(file, &info.name);
        for (i, v) in py["sample"].as_array().unwrap().iter().enumerate() {
            assert_eq!(v.as_f64().unwrap() as f32, ours[i], "{}[{i}]", info.name);
        }
    }
}

fn convert_and_check(fixture_name: &str, quant: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.gguf");
    let o = opts(fixture(fixture_name), out.clone(), quant);
    let (plan, summary) = write::convert(&o).unwrap();
    assert_eq!(summary.language_path, out);
    assert_eq!(
        summary.mmproj_path,
        Some(dir.path().join("mmproj-model.gguf"))
    );
    let ck = Checkpoint::open(&fixture(fixture_name)).unwrap();
    for fp in [&plan.language, plan.mmproj.as_ref().unwrap()] {
        let file = GgufFile::open(&fp.path).unwrap();
        assert_eq!(file.tensors().len(), fp.tensors.len());
        for t in &fp.tensors {
            let (ty, ne, got) = dequantize_all(&file, &t.mapped.name);
            assert_eq!(ty, t.ty, "{}", t.mapped.name);
            assert_eq!(ne, t.mapped.ne, "{}", t.mapped.name);
            check_values(&t.mapped.name, ty, &expected(&ck, &t.mapped), &got);
        }
        python_check(&fp.path, &file);
    }
    // Nothing else left in the directory (no temporaries).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

macro_rules! recipe_tests {
    ($($name:ident: $fixture:expr, $quant:expr;)*) => {$(
        #[test]
        fn $name() {
            convert_and_check($fixture, $quant);
        }
    )*};
}

recipe_tests! {
    mha_f32: "tiny-mha", "f32";
    mha_f16: "tiny-mha", "f16";
    mha_bf16: "tiny-mha", "bf16";
    mha_q8_0: "tiny-mha", "q8_0";
    mha_q4_0: "tiny-mha", "q4_0";
    mha_q4_k: "tiny-mha", "q4_k";
    mha_q5_k: "tiny-mha", "q5_k";
    mha_q6_k: "tiny-mha", "q6_k";
    mla_f32: "tiny-mla", "f32";
    mla_f16: "tiny-mla", "f16";
    mla_bf16: "tiny-mla", "bf16";
    mla_q8_0: "tiny-mla", "q8_0";
    mla_q4_0: "tiny-mla", "q4_0";
    mla_q4_k: "tiny-mla", "q4_k";
    mla_q5_k: "tiny-mla", "q5_k";
    mla_q6_k: "tiny-mla", "q6_k";
}

#[test]
fn metadata_of_mla_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(fixture("tiny-mla"), dir.path().join("m.gguf"), "q8_0");
    let (plan, _) = write::convert(&o).unwrap();
    let f = GgufFile::open(&plan.language.path).unwrap();
    let u = |k: &str| {
        f.get(k)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{k}"))
    };
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("deepseek2")
    );
    assert_eq!(u("deepseek2.attention.head_count_kv"), 1);
    assert_eq!(u("deepseek2.attention.key_length"), 32 + 8);
    assert_eq!(u("deepseek2.attention.value_length"), 32);
    assert_eq!(u("deepseek2.attention.key_length_mla"), 24);
    assert_eq!(u("deepseek2.attention.value_length_mla"), 16);
    assert_eq!(u("deepseek2.attention.q_lora_rank"), 48);
    assert_eq!(u("deepseek2.expert_gating_func"), 2);
    assert_eq!(u("deepseek2.expert_group_count"), 4);
    assert_eq!(u("deepseek2.expert_group_used_count"), 2);
    assert_eq!(u("deepseek2.leading_dense_block_count"), 1);
    assert_eq!(
        f.get("deepseek2.expert_weights_norm").unwrap().as_bool(),
        Some(true)
    );
    assert_eq!(
        f.get("deepseek2.expert_weights_scale").unwrap().as_f32(),
        Some(2.0)
    );
    assert_eq!(u("pocketvl.image_token_id"), 1200);
    assert_eq!(
        f.get("pocketvl.topk_method").unwrap().as_str(),
        Some("noaux_tc")
    );
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_str_array()
        .unwrap();
    assert_eq!(tokens.len(), 1280);
    assert_eq!(tokens[1207], "<|Assistant|>");
    assert!(f.tensor("blk.1.exp_probs_b.bias").is_some());
    assert_eq!(
        f.tensor("blk.1.ffn_down_exps.weight").unwrap().ne,
        vec![32, 64, 16]
    );
    assert_eq!(
        f.tensor("blk.0.attn_k_b.weight").unwrap().ne,
        vec![16, 32, 4]
    );
    assert_eq!(
        f.tensor("blk.0.attn_v_b.weight").unwrap().ne,
        vec![32, 16, 4]
    );
    let mm = GgufFile::open(&plan.mmproj.as_ref().unwrap().path).unwrap();
    assert_eq!(
        mm.get("clip.projector_type").unwrap().as_str(),
        Some("deepseekvl2")
    );
    assert_eq!(
        mm.get("deepseekvl2.candidate_resolutions")
            .unwrap()
            .as_u32_array()
            .unwrap()
            .len(),
        46
    );
    assert!(mm.tensors().iter().all(|t| !t.name.contains("attn_pool")));
    assert_eq!(
        mm.tensor("v.position_embd.weight").unwrap().ne,
        vec![64, 729]
    );
    assert_eq!(
        mm.tensor("v.patch_embd.weight").unwrap().ne,
        vec![14, 14, 3, 64]
    );
    // Vision fc2 (ne[0] = 239) takes the default vision type bf16 as is: not a block type,
    // so no fallback.
    assert_eq!(
        mm.tensor("v.blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::BF16
    );
}

#[test]
fn fallbacks_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(fixture("tiny-mha"), dir.path().join("m.gguf"), "q4_k");
    o.overrides = vec![(convert::mapping::Role::Vision, GgmlType::Q8_0)];
    let (plan, summary) = write::convert(&o).unwrap();
    // Expert down projections have ne[0] = 32 (not a multiple of 256): Q4_K -> Q5_0.
    assert!(summary
        .fallbacks
        .iter()
        .any(|(n, w, u)| n == "blk.1.ffn_down_exps.weight"
            && *w == GgmlType::Q4_K
            && *u == GgmlType::Q5_0));
    // Vision fc2 (239 columns) cannot be Q8_0: F16.
    assert!(summary
        .fallbacks
        .iter()
        .any(|(n, w, u)| n == "v.blk.0.ffn_down.weight"
            && *w == GgmlType::Q8_0
            && *u == GgmlType::F16));
    assert_eq!(summary.fallbacks, plan.fallbacks());
}

/// `--cold-experts`: the sidecar holds exactly the language file's routed-expert tensors (same
/// names and shapes) in the low type (here Q3_K's fallback Q4_0: the fixtures' rows, 64 and 32,
/// are not multiples of 256), with values within that type's bound of the checkpoint; the
/// language file is unchanged by it, and a later conversion without the option removes it.
#[test]
fn cold_expert_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let mut o = opts(fixture("tiny-mha"), out.clone(), "q8_0");
    let (plan, _) = write::convert(&o).unwrap();
    let language = std::fs::read(&out).unwrap();
    let cold = write::plan_cold(&plan, GgmlType::Q3_K).unwrap();
    assert_eq!(cold.path, dir.path().join("cold-m.gguf"));
    let (path, bytes) =
        write::execute_cold(&Checkpoint::open(&fixture("tiny-mha")).unwrap(), &cold, &o).unwrap();
    assert_eq!(
        (path.clone(), bytes),
        (cold.path.clone(), std::fs::metadata(&path).unwrap().len())
    );
    assert_eq!(std::fs::read(&out).unwrap(), language);
    let file = GgufFile::open(&path).unwrap();
    let experts: Vec<_> = plan
        .language
        .tensors
        .iter()
        .filter(|t| t.mapped.role == convert::mapping::Role::Experts)
        .collect();
    // Layers 1 and 2 are MoE (first_k_dense_replace 1), three expert tensors each.
    assert_eq!(experts.len(), 2 * 3);
    assert_eq!(file.tensors().len(), experts.len());
    let ck = Checkpoint::open(&fixture("tiny-mha")).unwrap();
    for t in experts {
        let (ty, ne, got) = dequantize_all(&file, &t.mapped.name);
        assert_eq!(ty, GgmlType::Q4_0, "{}", t.mapped.name);
        assert_eq!(ne, t.mapped.ne, "{}", t.mapped.name);
        check_values(&t.mapped.name, ty, &expected(&ck, &t.mapped), &got);
    }
    assert_eq!(
        file.get(quant::schema::cold::TYPE).and_then(|v| v.as_u64()),
        Some(GgmlType::Q3_K.id() as u64)
    );
    python_check(&path, &file);
    // Reconverting without the option drops the now stale sidecar.
    o.force = true;
    write::convert(&o).unwrap();
    assert!(!cold.path.exists());
}
