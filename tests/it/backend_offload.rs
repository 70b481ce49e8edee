//! GPU offload (src/backend) against the CPU path and the reference's outputs, on both tiny
//! fixtures converted with `--quant f32`.
//!
//! With a ggml feature (`ggml-cpu`, `vulkan`, `metal`): the vision tower and projector run
//! as one ggml graph per tile on the device `POCKETVL_TEST_GPU` names (default `CPU`, ggml's
//! CPU backend; scripts/test-vulkan.sh sets a Vulkan device). Each stage must agree with
//! the CPU path and with the reference within the f32 tolerance of tests/it/vision_fixtures
//! (1e-4 absolute), and the fixtures' greedy tokens must stay the reference's with vision
//! offloaded through the library API. Without one: the flags are refused with a clear
//! error.

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
    use pocketvl::backend::{BackendOptions, DeviceChoice, GgmlVision};
    use pocketvl::image_io::load_rgb;
    use pocketvl::model::deepseek_vl2::preprocess::normalize_chw;
    use pocketvl::model::deepseek_vl2::prompt::build_chat;
    use pocketvl::model::deepseek_vl2::vision::VisionModel;
    use pocketvl::sampler::SamplerConfig;
    use pocketvl::{GenerateOptions, Model, ModelOptions};
    use serde_json::Value;

    use super::pocketvl;
    use crate::common::{self, converted, fixture, golden_tiles, max_abs, messages, Golden};

    /// The f32 tolerance of the CPU path against the reference (tests/it/vision_fixtures).
    const TOL: f32 = 1e-4;

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
        let gpu = GgmlVision::new(&vision, Some(&device()), None, 2).unwrap();
        let (w, c) = gpu.device_bytes();
        println!("{fx}: device holds {w} weight bytes + {c} compute bytes");
        let golden = Golden::open(fx);
        let tiles = golden_tiles();
        let cfg = &vision.config;
        let pixels: Vec<f32> = tiles
            .iter()
            .flat_map(|t| normalize_chw(t, cfg.image_mean, cfg.image_std))
            .collect();
        let n = tiles.len();
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
        let (_dir, path) = converted(fx, "f32");
        let model = Model::load(
            &path,
            ModelOptions {
                backend: offload_vision(),
                ..ModelOptions::default()
            },
        )
        .unwrap();
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
    fn unknown_devices_and_parts_not_offloadable_yet_are_clear_errors() {
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
            "--gpu",
            "CPU",
            "--offload",
            "vision,attn",
        ]);
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            "error: --offload attn: not supported yet (this version offloads: vision)\n"
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
            "--gpu-mem",
            "1KiB",
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("--gpu-mem allows 0 MiB"), "{stderr}");
    }
}
