//! Helpers shared by the root package's integration tests: locating fixtures, converting a
//! fixture through the converter library, reading the golden safetensors, the
//! `POCKETVL_PYTHON` skip rule and the small comparisons the oracle tests use.
//!

use std::path::{Path, PathBuf};

use convert::safetensors::SafeTensorsFile;
use convert::write::{convert, ConvertOptions};
use pocketvl::model::deepseek_vl2::preprocess::normalize_chw;
use pocketvl::model::deepseek_vl2::prompt::{Message, Role};
use pocketvl::model::deepseek_vl2::vision::VisionModel;
use pocketvl::synth::{spec::Attention, ModelSpec};
use serde_json::Value;

/// Bytes of one 384x384 RGB tile in the preprocess fixture's pixel store.
pub const TILE_BYTES: usize = 3 * 384 * 384;

/// The directory of fixture `name` under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Converts fixture `name` with `recipe` into a temp dir; returns the dir
/// guard and the model path.
pub fn converted(name: &str, recipe: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.gguf");
    let opts = ConvertOptions {
        input: fixture(name).join("hf"),
        output: out.clone(),
        quant: Some(recipe.to_string()),
        overrides: Vec::new(),
        force: false,
        threads: Some(2),
        progress: false,
    };
    convert(&opts).unwrap();
    (dir, out)
}

/// [`converted`] plus the cold-expert sidecar (`cold-model.gguf`, the routed experts again in
/// `cold`, with the converter's block-size fallback), as `pocketvl convert --cold-experts`
/// writes it.
pub fn converted_with_cold(
    name: &str,
    recipe: &str,
    cold: quant::GgmlType,
) -> (tempfile::TempDir, PathBuf) {
    let (dir, out) = converted(name, recipe);
    let opts = ConvertOptions {
        input: fixture(name).join("hf"),
        output: out.clone(),
        quant: Some(recipe.to_string()),
        overrides: Vec::new(),
        force: false,
        threads: Some(2),
        progress: false,
    };
    let (ck, plan) = convert::write::plan(&opts).unwrap();
    let fp = convert::write::plan_cold(&plan, cold).unwrap();
    convert::write::execute_cold(&ck, &fp, &opts).unwrap();
    (dir, out)
}

/// The conversation of a case as template messages.
pub fn messages(case: &Value) -> Vec<Message> {
    case["conversation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "<|User|>" | "user" => Role::User,
                "<|Assistant|>" | "assistant" => Role::Assistant,
                _ => Role::System,
            };
            Message::new(role, m["content"].as_str().unwrap())
        })
        .collect()
}

/// A fixture's `golden.safetensors` (the official implementation's outputs).
pub struct Golden(pub SafeTensorsFile);

impl Golden {
    pub fn open(name: &str) -> Golden {
        Golden(SafeTensorsFile::open(&fixture(name).join("golden.safetensors")).unwrap())
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.0
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_f32()
            .unwrap()
    }
    pub fn i64(&self, name: &str) -> Vec<i64> {
        self.0
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_i64()
            .unwrap()
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).iter().map(|&x| x as u32).collect()
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.entry(name).is_some()
    }
}

/// The reference processor's unique tiles (`tiles.pixel_u8` of the preprocess fixture), one
/// `TILE_BYTES` vector per tile.
pub fn golden_tiles() -> Vec<Vec<u8>> {
    let store = SafeTensorsFile::open(&fixture("preprocess").join("pixels.safetensors")).unwrap();
    let px = store
        .tensor("tiles.pixel_u8")
        .unwrap()
        .as_u8()
        .unwrap()
        .to_vec();
    px.chunks(TILE_BYTES).map(|c| c.to_vec()).collect()
}

/// `tiles` (RGB bytes, [`TILE_BYTES`] each) normalised as `model`'s processor does, one
/// CHW tile after another: the tower's input.
pub fn tile_pixels(model: &VisionModel, tiles: &[Vec<u8>]) -> Vec<f32> {
    let cfg = &model.config;
    tiles
        .iter()
        .flat_map(|t| normalize_chw(t, cfg.image_mean, cfg.image_std))
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The Python interpreter from `POCKETVL_PYTHON`, or `None` after reporting the skip
/// (a failure under `CI=true`): see `tests/support/prereq.rs`.
pub use crate::prereq::python;

/// A path as `&str` for command-line arguments.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `s` shrunk to the fixtures' sizes (3 layers, width 64, 16 experts, vocabulary 1280, MLA
/// ranks 32/16/8/16, vision width 64 × 2 blocks), for synthetic checkpoints fast enough for tests.
pub fn shrink_spec(mut s: ModelSpec) -> ModelSpec {
    s.language.num_hidden_layers = 3;
    s.language.hidden_size = 64;
    s.language.num_attention_heads = 4;
    s.language.vocab_size = 1280;
    s.language.intermediate_size = 160;
    s.language.moe_intermediate_size = 32;
    s.language.n_routed_experts = 16;
    s.language.num_experts_per_tok = 4;
    if let Attention::Mla { .. } = s.language.attention {
        s.language.attention = Attention::Mla {
            kv_lora_rank: 32,
            qk_nope_head_dim: 16,
            qk_rope_head_dim: 8,
            v_head_dim: 16,
        };
    }
    s.vision.width = 64;
    s.vision.layers = 2;
    s.vision.heads = 4;
    s.vision.mlp_dim = 239; // int(64 * 3.7362)
    s
}

/// A language model with one KV-cached sequence: the low-level generation API (templated ids
/// and features in, tokens out) that the oracle tests drive.
pub struct Lm {
    pub model: pocketvl::model::deepseek_vl2::LanguageModel,
    pub tokenizer: pocketvl::tokenizer::Tokenizer,
    pub seq: pocketvl::generate::Sequence,
}

impl Lm {
    pub fn new(
        model: pocketvl::model::deepseek_vl2::LanguageModel,
        tokenizer: pocketvl::tokenizer::Tokenizer,
    ) -> Lm {
        let seq = pocketvl::generate::Sequence::new(&model);
        Lm {
            model,
            tokenizer,
            seq,
        }
    }

    pub fn reset(&mut self) {
        self.seq.reset();
    }

    pub fn embed_prompt(
        &self,
        ids: &[u32],
        features: &[f32],
    ) -> Result<(Vec<f32>, Vec<u64>), pocketvl::generate::GenerateError> {
        pocketvl::generate::embed_prompt(&self.model, &self.tokenizer, ids, features)
    }

    pub fn generate(
        &mut self,
        ids: &[u32],
        features: &[f32],
        opts: &pocketvl::GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<pocketvl::generate::Generation, pocketvl::generate::GenerateError> {
        self.seq
            .generate(&self.model, &self.tokenizer, ids, features, opts, on_text)
    }

    /// A forward pass over the sequence's cache from `pos0`.
    pub fn forward(
        &mut self,
        embeds: &[f32],
        pos0: usize,
        want: pocketvl::model::deepseek_vl2::LogitsWanted,
    ) -> Result<Vec<f32>, pocketvl::model::deepseek_vl2::ModelError> {
        self.model.forward(&mut self.seq.state, embeds, pos0, want)
    }
}

/// tiny-mha converted once per test run (f32 recipe, mmproj beside it) and shared by the
/// modules that only read it (library, server and CLI-message tests). The file is `tiny.gguf`,
/// so the server names the model `tiny`.
pub fn tiny_mha_f32() -> &'static Path {
    static P: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-tiny-mha-f32");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("tiny.gguf");
        convert::write::convert(&convert::write::ConvertOptions {
            input: fixture("tiny-mha").join("hf"),
            output: out.clone(),
            quant: Some("f32".to_string()),
            overrides: Vec::new(),
            force: true,
            threads: Some(2),
            progress: false,
        })
        .unwrap();
        out
    })
}

/// Runs the pocketvl binary in `dir`; returns (exit code, stdout, stderr).
pub fn pocketvl_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run pocketvl");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
