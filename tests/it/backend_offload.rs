//! GPU offload (src/backend) against the CPU path and the reference's outputs, on both tiny
//! fixtures converted with `--quant f32`.
//!
//! With a ggml feature (`ggml-cpu`, `vulkan`, `metal`), on the device `POCKETVL_TEST_GPU`
//! names (default `CPU`, ggml's CPU backend; scripts/test-vulkan.sh sets a Vulkan device):
//! - the vision tower and projector, one ggml graph per tile: each stage within the f32
//!   tolerance of tests/it/vision_fixtures (1e-4 absolute) of the CPU path and the
//!   reference, and the fixtures' greedy tokens with vision offloaded through the library;
//! - the language model's attention (with its KV cache on the device), dense and
//!   shared-expert MLPs, and routed experts (`ggml_mul_mat_id`): logits at every position
//!   within the f32 logits tolerance of tests/it/decoder_oracle (1e-3) of the CPU path and
//!   the reference, prefilled at once and in chunks down to single tokens, and the 16 greedy
//!   tokens of every case; also with a `--gpu-mem` that fits only some layer parts (the CPU
//!   runs the rest).
//!
//! Without a ggml feature: the flags are refused with a clear error.

use crate::common;

/// Runs pocketvl in the test's working directory.
fn pocketvl(args: &[&str]) -> (Option<i32>, String, String) {
    common::pocketvl_in(std::path::Path::new("."), args)
}

#[test]
fn bad_offload_flags_are_refused_before_loading() {
    let model = common::tiny_mha_f32();
    let m = common::s(model);
    // (flags, exit status: 2 for clap's parse errors, message)
    let cases: [(&[&str], i32, &str); 3] = [
        (
            &["--offload", "vision,mlp"],
            2,
            "unknown part `mlp` in `vision,mlp` (expected a list of vision, attn, dense, \
             experts, or all, or none)",
        ),
        (
            &["--gpu-mem", "2GiB"],
            1,
            "--gpu-mem limits what is offloaded",
        ),
        (
            &["--gpu", "0", "--gpu-mem", "lots"],
            2,
            "`lots` is not a size",
        ),
    ];
    for (flags, status, want) in cases {
        let mut args = vec!["run", "-m", m, "-p", "hi", "-n", "1"];
        args.extend_from_slice(flags);
        let (code, _, stderr) = pocketvl(&args);
        assert_eq!(code, Some(status), "{flags:?}: {stderr}");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[cfg(not(feature = "ggml-cpu"))]
#[test]
fn without_a_ggml_feature_devices_are_a_clear_error() {
    let (code, _, stderr) = pocketvl(&["devices"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("built without GPU support"), "{stderr}");
    let m = common::s(common::tiny_mha_f32());
    let (code, _, stderr) = pocketvl(&["run", "-m", m, "-p", "hi", "--gpu", "0"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--features vulkan"), "{stderr}");
}

#[cfg(feature = "ggml-cpu")]
mod with_ggml {
    use std::sync::Arc;

    use convert::write::mmproj_path;
    use pocketvl::backend::{BackendOptions, DeviceChoice, GgmlDecoder, GgmlVision, Offload};
    use pocketvl::image_io::load_rgb;
    use pocketvl::loader::ModelFile;
    use pocketvl::model::deepseek_vl2::layer_offload::LayerOffload;
    use pocketvl::model::deepseek_vl2::prompt::build_chat;
    use pocketvl::model::deepseek_vl2::vision::VisionModel;
    use pocketvl::model::deepseek_vl2::{LanguageModel, LogitsWanted};
    use pocketvl::sampler::SamplerConfig;
    use pocketvl::{GenerateOptions, Model, ModelOptions};
    use serde_json::Value;

    use super::pocketvl;
    use crate::common::{
        self, converted, fixture, golden_tiles, max_abs, messages, tile_pixels, Golden,
    };

    /// The f32 tolerance of the CPU path against the reference (tests/it/vision_fixtures).
    const TOL: f32 = 1e-4;

    /// ggml CPU-backend workers per device (when the device under test is ggml's CPU): one.
    /// ggml's workers spin at a barrier after every graph node; with tests running in
    /// parallel on a loaded 2-core machine, more spinning workers than cores turned each
    /// barrier into a wait for a descheduled thread (a single attention test took over 300 s).
    const GGML_THREADS: usize = 1;

    /// The device under test: `POCKETVL_TEST_GPU` (a name or index), else ggml's CPU.
    fn device() -> DeviceChoice {
        std::env::var("POCKETVL_TEST_GPU")
            .unwrap_or_else(|_| "CPU".to_owned())
            .parse()
            .unwrap()
    }

    fn offload_vision() -> BackendOptions {
        BackendOptions::from_flags(Some(device()), Some("vision".parse().unwrap()), None).unwrap()
    }

    /// Tower and projector on the device vs the CPU path and the reference, on the golden
    /// pixels of every tile.
    fn stages(fx: &str) {
        let (_dir, path) = converted(fx, "f32");
        let vision = VisionModel::load(&mmproj_path(&path)).unwrap();
        let gpu = GgmlVision::new(&vision, Some(&device()), None, GGML_THREADS).unwrap();
        let (w, c) = gpu.device_bytes();
        println!("{fx}: device holds {w} weight bytes + {c} compute bytes");
        let golden = Golden::open(fx);
        let tiles = golden_tiles();
        let (pixels, n) = (tile_pixels(&vision, &tiles), tiles.len());
        let (tower, projected) = gpu.forward(&pixels, n, true).unwrap();

        let cpu_tower = vision.tower().forward(&pixels, n).unwrap();
        let cpu_proj = vision.projector().forward(&cpu_tower, n).unwrap();
        let want_tower = golden.f32("tiles.vision_out");
        let want_proj = golden.f32("tiles.projector_out");
        let diffs = [
            ("tower vs CPU", max_abs(&tower, &cpu_tower)),
            ("tower vs reference", max_abs(&tower, &want_tower)),
            ("projector vs CPU", max_abs(&projected, &cpu_proj)),
            ("projector vs reference", max_abs(&projected, &want_proj)),
        ];
        for (what, d) in diffs {
            println!("{fx}: {n} tiles, {what}: max abs diff {d:e}");
            assert!(d <= TOL, "{fx}: {what}: max abs diff {d} > {TOL}");
        }
    }

    #[test]
    fn vision_stages_on_device_tiny_mha() {
        stages("tiny-mha");
    }

    #[test]
    fn vision_stages_on_device_tiny_mla() {
        stages("tiny-mla");
    }

    fn greedy16() -> GenerateOptions {
        GenerateOptions {
            max_new: 16,
            sampler: SamplerConfig {
                temperature: 0.0,
                repeat_penalty: 1.0,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Every image case through the library with vision offloaded: the reference's prompt
    /// ids, image rows of its inputs_embeds within the f32 tolerance, its 16 greedy tokens.
    fn greedy(fx: &str) {
        greedy_with(fx, offload_vision());
    }

    fn greedy_with(fx: &str, backend: BackendOptions) {
        let (_dir, path) = converted(fx, "f32");
        let model = Model::load(
            &path,
            ModelOptions {
                backend,
                ..ModelOptions::default()
            },
        )
        .unwrap();
        println!("{fx}: layers on {:?}", model.language().offload_device());
        let on = model.load_vision().unwrap().offload_device();
        println!("{fx}: vision on {on:?}");
        assert!(on.is_some(), "{fx}: vision is not offloaded");
        let golden = Golden::open(fx);
        let cases: Value = common::load_json(&fixture(fx).join("cases.json"));
        let mut n_cases = 0;
        for case in cases["cases"].as_array().unwrap() {
            let files = case["images"].as_array().unwrap();
            if files.is_empty() {
                continue;
            }
            let cn = case["name"].as_str().unwrap();
            let images: Vec<_> = files
                .iter()
                .map(|f| {
                    let p = fixture(fx).join("images").join(f.as_str().unwrap());
                    Arc::new(load_rgb(&p, false).unwrap())
                })
                .collect();
            let mut session = model.session();
            let enc = session.encode_images(&images).unwrap();
            let p = build_chat(model.tokenizer(), &messages(case), &enc.token_counts()).unwrap();
            assert_eq!(p.ids, golden.ids(&format!("{cn}.input_ids")), "{fx}/{cn}");
            let emb = session.embed_prompt(&p.ids, &enc.features).unwrap();
            let de = max_abs(&emb, &golden.f32(&format!("{cn}.inputs_embeds")));
            let g = session
                .generate_ids(&p.ids, &enc.features, &greedy16(), &mut |_| {})
                .unwrap();
            let want = golden.ids(&format!("{cn}.gen_ids"));
            println!(
                "{fx}/{cn}: inputs_embeds max abs diff {de:e}, tokens {:?}",
                g.tokens
            );
            assert!(de <= TOL, "{fx}/{cn}: inputs_embeds {de} > {TOL}");
            assert_eq!(
                g.tokens[..],
                want[..16.min(want.len())],
                "{fx}/{cn}: greedy"
            );
            n_cases += 1;
        }
        assert!(n_cases > 0, "{fx}: no image case");
    }

    #[test]
    fn greedy_tokens_with_vision_offloaded_tiny_mha() {
        greedy("tiny-mha");
    }

    #[test]
    fn greedy_tokens_with_vision_offloaded_tiny_mla() {
        greedy("tiny-mla");
    }

    /// The f32 logits tolerance of the decoder against the reference
    /// (tests/it/decoder_oracle.rs, fixtures README).
    const LOGITS_TOL: f32 = 1e-3;

    fn argmax(x: &[f32]) -> u32 {
        pocketvl::sampler::argmax(x) as u32
    }

    /// Chunk sizes of the chunked prefill: a few short chunks (two single tokens among them)
    /// to start, then chunks of an odd size, so each case writes the device cache in chunks
    /// of every kind (and single tokens again in the greedy steps) with a few dozen calls
    /// rather than one per position (the image prompts are 640 to 1306 positions).
    const CHUNKS: [usize; 4] = [3, 2, 1, 1];
    const LATER_CHUNK: usize = 97;

    /// `dev` (some layer parts offloaded) against `cpu` and the reference on every case of
    /// `fx`, the reference's `inputs_embeds` as input: all logits of one prefill, the last
    /// logits after a prefill in chunks ([`CHUNKS`], then [`LATER_CHUNK`] positions at a
    /// time, the cache carrying over), and the 16 greedy tokens one position at a time.
    fn compare_layers(fx: &str, what: &str, dev: &LanguageModel, cpu: &LanguageModel) {
        let golden = Golden::open(fx);
        let cases: Value = common::load_json(&fixture(fx).join("cases.json"));
        let (d, v) = (cpu.hp.n_embd, cpu.hp.n_vocab);
        let (mut sd, mut sc) = (dev.new_state(), cpu.new_state());
        let mut worst = (0.0f32, 0.0f32);
        for case in cases["cases"].as_array().unwrap() {
            let cn = case["name"].as_str().unwrap();
            let emb = golden.f32(&format!("{cn}.inputs_embeds"));
            let t = emb.len() / d;
            let want = cpu.forward(&mut sc, &emb, 0, LogitsWanted::All).unwrap();
            let got = dev.forward(&mut sd, &emb, 0, LogitsWanted::All).unwrap();
            let e_cpu = max_abs(&got, &want);
            let e_ref = max_abs(
                &got[(t - 1) * v..],
                &golden.f32(&format!("{cn}.logits_last")),
            );
            worst = (worst.0.max(e_cpu), worst.1.max(e_ref));
            assert!(
                e_cpu <= LOGITS_TOL,
                "{fx}/{cn} {what}: logits vs CPU {e_cpu}"
            );
            assert!(
                e_ref <= LOGITS_TOL,
                "{fx}/{cn} {what}: vs reference {e_ref}"
            );
            // The same prompt in chunks, the cache carrying over between calls.
            let mut p0 = 0;
            let mut last = Vec::new();
            for m in CHUNKS.into_iter().chain(std::iter::repeat(LATER_CHUNK)) {
                if p0 >= t {
                    break;
                }
                let m = m.min(t - p0);
                last = dev
                    .forward(&mut sd, &emb[p0 * d..(p0 + m) * d], p0, LogitsWanted::Last)
                    .unwrap();
                p0 += m;
            }
            let e = max_abs(&last, &want[(t - 1) * v..]);
            assert!(
                e <= LOGITS_TOL,
                "{fx}/{cn} {what}: chunked prefill vs CPU {e}"
            );
            // 16 greedy tokens, one position at a time.
            let gen = golden.ids(&format!("{cn}.gen_ids"));
            let mut tokens = vec![argmax(&got[(t - 1) * v..])];
            while tokens.len() < 16.min(gen.len()) {
                let x = dev.embed_tokens(&tokens[tokens.len() - 1..]).unwrap();
                let pos = t + tokens.len() - 1;
                let l = dev.forward(&mut sd, &x, pos, LogitsWanted::Last).unwrap();
                tokens.push(argmax(&l));
            }
            assert_eq!(tokens[..], gen[..tokens.len()], "{fx}/{cn} {what}: greedy");
        }
        println!(
            "{fx} {what}: logits max abs diff vs CPU {:e}, vs reference {:e}; greedy ids equal",
            worst.0, worst.1
        );
    }

    /// The decoder parts `parts` names (`attn`, `dense`, `experts`).
    fn parts(list: &str) -> Offload {
        list.parse().unwrap()
    }

    /// The decoder `parts` of every layer that fits `budget` on the device, against the CPU
    /// path. Returns the layers whose (attention, MLP, routed experts) went to the device.
    fn layers(fx: &str, parts: Offload, budget: Option<u64>) -> (usize, usize, usize) {
        let (_dir, path) = converted(fx, "f32");
        let file = ModelFile::open(&path).unwrap();
        let cpu = LanguageModel::load(&file).unwrap();
        let mut dev = LanguageModel::load(&file).unwrap();
        let off = GgmlDecoder::new(&dev, Some(&device()), budget, GGML_THREADS, parts).unwrap();
        let on = off.layers_on_device();
        let what = format!(
            "attn on {} / mlp on {} / experts on {} of {} layers ({} bytes on {})",
            on.0,
            on.1,
            on.2,
            dev.hp.n_layer,
            off.device_bytes(),
            off.device()
        );
        dev.set_offload(Arc::new(off));
        compare_layers(fx, &what, &dev, &cpu);
        on
    }

    #[test]
    fn attention_on_device_tiny_mha() {
        assert!(layers("tiny-mha", parts("attn"), None).0 > 0);
    }

    #[test]
    fn attention_on_device_tiny_mla() {
        assert!(layers("tiny-mla", parts("attn"), None).0 > 0);
    }

    #[test]
    fn dense_and_shared_mlps_on_device_tiny_mha() {
        assert!(layers("tiny-mha", parts("dense"), None).1 > 0);
    }

    #[test]
    fn attention_and_mlps_on_device_tiny_mla() {
        let on = layers("tiny-mla", parts("attn,dense"), None);
        assert!(on.0 > 0 && on.1 > 0);
    }

    /// Routed experts alone through `ggml_mul_mat_id` (the router and the shared experts on
    /// the CPU): every MoE layer's stacks on the device.
    #[test]
    fn routed_experts_on_device_tiny_mha() {
        assert_eq!(layers("tiny-mha", parts("experts"), None), (0, 0, 2));
    }

    #[test]
    fn routed_experts_on_device_tiny_mla() {
        assert_eq!(layers("tiny-mla", parts("experts"), None), (0, 0, 2));
    }

    /// A `--gpu-mem` that fits about half of what offloading every decoder part needs: the
    /// first layers' attention and MLPs go to the device, then routed experts while they
    /// fit, the CPU runs the rest, and the results do not change. Then a budget that leaves
    /// room for one MoE layer's experts after the attention and MLPs: that layer's experts
    /// on the device, the other's on the CPU.
    #[test]
    fn layers_that_do_not_fit_stay_on_the_cpu() {
        let decoder = parts("attn,dense,experts");
        for fx in ["tiny-mha", "tiny-mla"] {
            let (_dir, path) = converted(fx, "f32");
            let lm = LanguageModel::load(&ModelFile::open(&path).unwrap()).unwrap();
            let all = GgmlDecoder::new(&lm, Some(&device()), None, GGML_THREADS, decoder).unwrap();
            let n = lm.hp.n_layer;
            assert_eq!(all.layers_on_device(), (n, n, n - 1));
            let (full, half) = (all.device_bytes(), all.device_bytes() / 2);
            drop(all);
            let (a, m, e) = layers(fx, decoder, Some(half));
            assert!(
                a + m + e > 0 && a + m + e < 3 * n - 1,
                "{fx}: {a} + {m} + {e} parts of {n} layers"
            );
            let no_experts = GgmlDecoder::new(
                &lm,
                Some(&device()),
                None,
                GGML_THREADS,
                parts("attn,dense"),
            )
            .unwrap()
            .device_bytes();
            let one_layer = (full - no_experts) / 2;
            let on = layers(fx, decoder, Some(no_experts + one_layer + one_layer / 2));
            assert_eq!(on, (n, n, 1), "{fx}");
        }
    }

    /// Everything offloaded through the library API (`--gpu` alone): vision, attention,
    /// MLPs and routed experts on the device, the reference's greedy tokens for every image
    /// case.
    #[test]
    fn greedy_tokens_with_everything_offloaded_tiny_mla() {
        greedy_with(
            "tiny-mla",
            BackendOptions::from_flags(Some(device()), None, None).unwrap(),
        );
    }

    #[test]
    fn devices_lists_the_test_device() {
        let (code, stdout, stderr) = pocketvl(&["devices", "--json"]);
        assert_eq!(code, Some(0), "{stderr}");
        let list: Value = serde_json::from_str(stdout.trim()).unwrap();
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"CPU"), "{names:?}");
        if let DeviceChoice::Name(n) = device() {
            assert!(
                names.iter().any(|d| d.eq_ignore_ascii_case(&n)),
                "{n} in {names:?}"
            );
        }
    }

    #[test]
    fn unknown_devices_and_budgets_too_small_are_clear_errors() {
        let m = common::s(common::tiny_mha_f32());
        let (code, _, stderr) = pocketvl(&["run", "-m", m, "-p", "hi", "--gpu", "NoSuchGpu"]);
        assert_eq!(code, Some(1));
        assert!(
            stderr.starts_with("error: --gpu NoSuchGpu: no such device (this build sees: "),
            "{stderr}"
        );
        let (code, _, stderr) = pocketvl(&["run", "-m", m, "-p", "hi", "--gpu", "999"]);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("--gpu 999: this build sees"), "{stderr}");
        let (code, _, stderr) = pocketvl(&[
            "run",
            "-m",
            m,
            "-p",
            "hi",
            "-n",
            "1",
            "--gpu",
            "CPU",
            "--offload",
            "experts",
            "--gpu-mem",
            "1KiB",
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("no layer's routed-expert stack fits in 0 MiB on CPU (--gpu-mem)"),
            "{stderr}"
        );
        let img = fixture("tiny-mha").join("images/giraffe.jpg");
        let (code, _, stderr) = pocketvl(&[
            "run",
            "-m",
            m,
            "-p",
            "hi",
            "-n",
            "1",
            "--image",
            common::s(&img),
            "--gpu",
            "CPU",
            "--offload",
            "vision",
            "--gpu-mem",
            "1KiB",
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("--gpu-mem allows 0 MiB"), "{stderr}");
        let (code, _, stderr) = pocketvl(&[
            "run",
            "-m",
            m,
            "-p",
            "hi",
            "-n",
            "1",
            "--gpu",
            "CPU",
            "--gpu-mem",
            "1KiB",
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("no layer's attention fits in 0 MiB on CPU (--gpu-mem)"),
            "{stderr}"
        );
    }
}
