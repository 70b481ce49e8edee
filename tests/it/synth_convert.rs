//! A synthetic checkpoint is something the converter accepts: shrunk Tiny-flavoured (MHA,
//! softmax greedy) and VL2-flavoured (MLA, sigmoid noaux_tc with the selection bias) models are
//! synthesized, converted, and the GGUF files hold every planned tensor. `bench convert` runs on
//! the same kind of checkpoint and accounts for every byte.

use std::path::Path;

use convert::source::TensorSource;
use convert::write::{convert as run_convert, mmproj_path, ConvertOptions};
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
            let mm = GgufFile::open(s.mmproj_path.as_ref().unwrap()).unwrap();
            assert_eq!(lm.tensors().len(), plan.language.tensors.len());
            assert_eq!(
                mm.tensors().len(),
                plan.mmproj.as_ref().unwrap().tensors.len()
            );
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

/// `synth --quant` writes exactly what `synth` + `convert --quant` writes, for both attention
/// and routing flavours (the VL2 one with a skewed router, so the row factors of the skew go
/// through both routes too) and for two recipes.
#[test]
fn direct_gguf_is_byte_identical_to_synth_then_convert() {
    for (variant, skew) in [(Variant::Tiny, 0.0), (Variant::Vl2, 1.0)] {
        let mut spec = common::shrink_spec(ModelSpec::new(variant, None, true));
        spec.router_skew = skew;
        let dir = tempfile::tempdir().unwrap();
        let ck_dir = dir.path().join("hf");
        synthesize(&spec, &ck_dir);
        for quant in ["q4_0", "q8_0"] {
            let via_ck = dir.path().join(format!("ck-{quant}.gguf"));
            run_convert(&ConvertOptions {
                input: ck_dir.clone(),
                output: via_ck.clone(),
                quant: Some(quant.into()),
                overrides: Vec::new(),
                force: false,
                threads: Some(2),
                progress: false,
            })
            .unwrap();
            let direct = dir.path().join(format!("direct-{quant}.gguf"));
            let mut o = SynthOptions::new(variant, &direct);
            o.seed = 3;
            o.tokenizer = Some(common::fixture("tiny-mha").join("hf/tokenizer.json"));
            let (_, s) = synth::synthesize_gguf_spec(&spec, &o, quant, Some(2)).unwrap();
            assert_eq!(s.language_path, direct);
            for (a, b) in [
                (via_ck.clone(), direct.clone()),
                (mmproj_path(&via_ck), mmproj_path(&direct)),
            ] {
                let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
                assert!(
                    x == y,
                    "{variant:?} {quant}: {} and {} differ",
                    a.display(),
                    b.display()
                );
            }
        }
    }
}

/// `synth --quant Q --cold-experts T` writes the same low-bit sidecar as `convert --quant Q
/// --cold-experts T` of the `synth` checkpoint (one sidecar writer, `convert::write`), beside
/// the same model file.
#[test]
fn direct_gguf_cold_sidecar_is_the_converters() {
    use convert::write::{cold_path, execute, execute_cold, plan, plan_cold};
    let spec = common::shrink_spec(ModelSpec::new(Variant::Tiny, None, true));
    let dir = tempfile::tempdir().unwrap();
    let ck_dir = dir.path().join("hf");
    synthesize(&spec, &ck_dir);
    let via_ck = dir.path().join("ck.gguf");
    let copts = ConvertOptions {
        input: ck_dir,
        output: via_ck.clone(),
        quant: Some("q4_0".into()),
        overrides: Vec::new(),
        force: false,
        threads: Some(2),
        progress: false,
    };
    let (ck, p) = plan(&copts).unwrap();
    let fp = plan_cold(&p, quant::GgmlType::Q2_K).unwrap();
    execute(&ck, &p, &copts).unwrap();
    execute_cold(&ck, &fp, &copts).unwrap();
    let direct = dir.path().join("direct.gguf");
    let mut o = SynthOptions::new(Variant::Tiny, &direct);
    o.seed = 3;
    o.tokenizer = Some(common::fixture("tiny-mha").join("hf/tokenizer.json"));
    o.cold_experts = Some(quant::GgmlType::Q2_K);
    synth::synthesize_gguf_spec(&spec, &o, "q4_0", Some(2)).unwrap();
    for (a, b) in [
        (via_ck.clone(), direct.clone()),
        (cold_path(&via_ck), cold_path(&direct)),
    ] {
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(x == y, "{} and {} differ", a.display(), b.display());
    }
    let side = GgufFile::open(&cold_path(&direct)).unwrap();
    assert!(side.tensors().iter().all(|t| t.name.contains("_exps.")));
    assert!(!side.tensors().is_empty());
    // `--cold-only`: the sidecar alone, beside the model written before, is the same file; it
    // is refused beside a model of another recipe, and over an existing sidecar without force.
    let good = std::fs::read(cold_path(&direct)).unwrap();
    let q2 = quant::GgmlType::Q2_K;
    let e = synth::synthesize_cold_sidecar(&spec, &o, "q4_0", q2, Some(2)).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    std::fs::remove_file(cold_path(&direct)).unwrap();
    let e = synth::synthesize_cold_sidecar(&spec, &o, "q8_0", q2, Some(2)).unwrap_err();
    assert!(e.to_string().contains("not the model"), "{e}");
    assert!(!cold_path(&direct).exists());
    let (p, bytes) = synth::synthesize_cold_sidecar(&spec, &o, "q4_0", q2, Some(2)).unwrap();
    assert_eq!((p.clone(), bytes), (cold_path(&direct), good.len() as u64));
    assert!(std::fs::read(&p).unwrap() == good);
}

fn pocketvl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(args)
        .output()
        .expect("run pocketvl")
}

/// Runs `synth --quant` expecting failure; returns stderr and checks that `dir` holds exactly
/// the files it held before.
fn synth_gguf_fails(dir: &Path, args: &[&str]) -> String {
    let before: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut all = vec!["synth", "--variant", "deepseek-vl2-tiny", "--layers", "1"];
    all.extend_from_slice(args);
    let o = pocketvl(&all);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let after: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "{args:?} left files behind");
    stderr
}

#[test]
fn direct_gguf_bad_input_is_a_clear_error_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let o = out.to_str().unwrap();

    let e = synth_gguf_fails(dir.path(), &["--quant", "q9_9", "-o", o]);
    assert!(e.contains("q9_9"), "{e}");

    let e = synth_gguf_fails(
        dir.path(),
        &["--quant", "q4_0", "--router-skew=-1", "-o", o],
    );
    assert!(e.contains("--router-skew -1"), "{e}");

    std::fs::write(&out, b"keep me").unwrap();
    let e = synth_gguf_fails(dir.path(), &["--quant", "q4_0", "-o", o]);
    assert!(e.contains("already exists (use --force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    std::fs::remove_file(&out).unwrap();

    // A parent that is a file cannot hold the output, whoever runs the test.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let inside = blocker.join("m.gguf");
    let e = synth_gguf_fails(
        dir.path(),
        &["--quant", "q4_0", "-o", inside.to_str().unwrap()],
    );
    assert!(e.contains("not-a-dir"), "{e}");
}

/// `synth --no-vision` writes a text-only checkpoint (no tower, projector or tile tags);
/// `convert`, `synth --quant` and `bench convert` turn it into the language model alone, and
/// a stale mmproj beside a replaced model is removed rather than left to be paired with it.
#[test]
fn text_only_checkpoint_converts_to_the_language_model_alone() {
    let spec = common::shrink_spec(ModelSpec::new(Variant::Tiny, None, false));
    let dir = tempfile::tempdir().unwrap();
    let ck_dir = dir.path().join("hf");
    let summary = synthesize(&spec, &ck_dir);
    let out = dir.path().join("text.gguf");
    let opts = ConvertOptions {
        input: ck_dir.clone(),
        output: out.clone(),
        quant: Some("q8_0".into()),
        overrides: Vec::new(),
        force: true,
        threads: Some(2),
        progress: false,
    };
    std::fs::write(mmproj_path(&out), b"stale").unwrap();
    let (plan, s) = run_convert(&opts).unwrap();
    assert!(plan.mmproj.is_none());
    assert_eq!(s.mmproj_path, None);
    assert!(
        !mmproj_path(&out).exists(),
        "stale mmproj left beside the model"
    );
    let lm = GgufFile::open(&out).unwrap();
    assert_eq!(lm.tensors().len(), plan.language.tensors.len());
    assert_eq!(s.input_bytes, summary.data_bytes);

    // The same bytes straight from the generator.
    let direct = dir.path().join("direct.gguf");
    let mut o = SynthOptions::new(Variant::Tiny, &direct);
    o.seed = 3;
    o.tokenizer = Some(common::fixture("tiny-mha").join("hf/tokenizer.json"));
    synth::synthesize_gguf_spec(&spec, &o, "q8_0", Some(2)).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&direct).unwrap());
    assert!(!mmproj_path(&direct).exists());

    let r = bench_convert(&ConvertBenchOptions {
        checkpoint: ck_dir,
        quant: "q8_0".into(),
        tmp_dir: Some(dir.path().to_path_buf()),
        threads: Some(2),
        progress: false,
    })
    .unwrap();
    assert_eq!(r.convert.input_bytes, summary.data_bytes);
    assert_eq!(
        r.convert.output_bytes,
        std::fs::metadata(&out).unwrap().len()
    );
}

/// A checkpoint with part of the vision side (here: the tower without its projector) is not
/// taken for a text-only one: the missing tensor is named.
#[test]
fn partial_vision_side_names_the_missing_tensor() {
    let spec = common::shrink_spec(ModelSpec::new(Variant::Tiny, None, true));
    let dir = tempfile::tempdir().unwrap();
    let ck_dir = dir.path().join("hf");
    synthesize(&spec, &ck_dir);
    // The converter sees the checkpoint minus one projector tensor.
    let ck = convert::safetensors::Checkpoint::open(&ck_dir).unwrap();
    let without = Without {
        ck: &ck,
        name: "projector.layers.2.weight",
    };
    let cfg = convert::hf_config::VlConfig::load(&ck_dir).unwrap();
    let e = convert::mapping::map_checkpoint(&cfg, &without).unwrap_err();
    assert!(e.to_string().contains("projector.layers.2.weight"), "{e}");
}

/// A checkpoint minus one tensor.
struct Without<'a> {
    ck: &'a convert::safetensors::Checkpoint,
    name: &'a str,
}

impl TensorSource for Without<'_> {
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.ck.names().filter(|n| *n != self.name))
    }
    fn info(&self, name: &str) -> convert::Result<(&[usize], convert::safetensors::Dtype)> {
        if name == self.name {
            return Err(convert::ConvertError::MissingTensor(name.into()));
        }
        TensorSource::info(self.ck, name)
    }
    fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> convert::Result<()> {
        TensorSource::read_f32(self.ck, name, start, out)
    }
    fn tensor_bytes(&self, name: &str) -> usize {
        TensorSource::tensor_bytes(self.ck, name)
    }
    fn data_bytes(&self) -> u64 {
        TensorSource::data_bytes(self.ck)
    }
}

/// Per-rank popularity of the experts of each MoE layer (fraction of tokens routed to the
/// expert of each rank), measured by running `n_seq` independent prompts of `len` random token
/// ids through the real model built from `spec` (f32 recipe, written by `synth --quant`), with
/// the router's own choices read from the trace.
fn measured_popularity(spec: &ModelSpec, n_seq: usize, len: usize) -> Vec<Vec<f64>> {
    use pocketvl::loader::ModelFile;
    use pocketvl::model::deepseek_vl2::{LanguageModel, LogitsWanted};
    use pocketvl::trace::Trace;
    use rand::{Rng, SeedableRng};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut o = SynthOptions::new(spec.variant, &path);
    o.seed = 11;
    o.tokenizer = Some(common::fixture("tiny-mha").join("hf/tokenizer.json"));
    synth::synthesize_gguf_spec(spec, &o, "f32", Some(2)).unwrap();
    let file = ModelFile::open(&path).unwrap();
    let model = LanguageModel::load(&file).unwrap();
    let l = &spec.language;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let n_moe = l.num_hidden_layers - 1;
    let mut out = vec![vec![0f64; l.n_routed_experts]; n_moe];
    let ranks: Vec<Vec<usize>> = (1..l.num_hidden_layers)
        .map(|il| {
            let router = format!("language.model.layers.{il}.mlp.gate.weight");
            synth::skew::rank_order(&router, l.n_routed_experts)
        })
        .collect();
    for _ in 0..n_seq {
        let ids: Vec<u32> = (0..len)
            .map(|_| rng.gen_range(0..l.vocab_size as u32))
            .collect();
        let emb = model.embed_tokens(&ids).unwrap();
        let mut state = model.new_state();
        state.trace = Trace::in_memory();
        model
            .forward(&mut state, &emb, 0, LogitsWanted::Last)
            .unwrap();
        for (il, p) in out.iter_mut().enumerate() {
            let rec = state
                .trace
                .records()
                .iter()
                .find(|r| r.name == "moe_topk_ids" && r.layer == Some(il + 1))
                .unwrap();
            for &e in &rec.data {
                p[ranks[il][e as usize]] += 1.0 / (n_seq * len) as f64;
            }
        }
    }
    out
}

/// `--router-skew`: routing real hidden states through the real model picks experts with the
/// documented capped-Zipf profile, for softmax greedy (Tiny, Small) and sigmoid noaux_tc
/// (VL2), while the plain random router stays near uniform.
#[test]
fn skewed_router_popularity_through_the_real_model() {
    let (n, k, alpha) = (64, 6, 1.0);
    for variant in [Variant::Tiny, Variant::Vl2] {
        let mut spec = common::shrink_spec(ModelSpec::new(variant, None, false));
        spec.language.hidden_size = 256;
        spec.language.n_routed_experts = n;
        spec.language.num_experts_per_tok = k;
        spec.language.num_hidden_layers = 4;
        spec.router_skew = alpha;
        let target = synth::skew::target_profile(n, k, alpha);
        let (n_seq, len) = (16, 64);
        let skewed = measured_popularity(&spec, n_seq, len);
        spec.router_skew = 0.0;
        let plain = measured_popularity(&spec, n_seq, len);
        for (il, (p, q)) in skewed.iter().zip(&plain).enumerate() {
            let head = |v: &[f64]| v[..8].iter().sum::<f64>() / k as f64;
            let mut q_sorted = q.clone();
            q_sorted.sort_by(|a, b| b.total_cmp(a));
            let worst = p
                .iter()
                .zip(&target)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "{variant:?} layer {}: top-8 share {:.3} (target {:.3}; plain router's 8 busiest {:.3}), worst |p - target| {worst:.3}",
                il + 1,
                head(p),
                head(&target),
                head(&q_sorted),
            );
            // 1,024 tokens: a rank's measured frequency is within ±0.05 of its own mean at
            // 3 sigma; the rest is the hidden states' departure from the fit's assumption
            // (measured: at most 0.095). The plain VL2 router is already somewhat skewed by its
            // random selection bias; the plain Tiny one is near uniform.
            assert!(worst < 0.12, "{variant:?} layer {}: {p:.2?}", il + 1);
            assert!((head(p) - head(&target)).abs() < 0.05);
            if variant == Variant::Tiny {
                assert!(head(&q_sorted) < head(&target) - 0.2, "plain router skewed");
            }
        }
    }
}
