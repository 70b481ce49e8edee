//! Typed `config.json` and `processor_config.json` of a DeepSeek-VL2 checkpoint.
//!
//! The published configs omit every key whose value is the reference default (DeepSeek-VL2
//! commit ef9f91e, `deepseek_vl2/models/configuration_deepseek.py` and
//! `modeling_deepseek_vl_v2.py`), so the defaults below are part of the format. Each default is
//! defined once, in [`defaults`], with the class it comes from. Keys with no meaningful default
//! are required, and all missing required keys are reported together in one error.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::error::{ConvertError, Result};

/// The only accepted top-level `model_type`.
pub const MODEL_TYPE: &str = "deepseek_vl_v2";

/// Reference defaults applied when a key is absent.
pub mod defaults {
    /// `DeepseekV2Config.vocab_size`.
    pub const VOCAB_SIZE: u64 = 102_400;
    /// `DeepseekV2Config.num_hidden_layers`.
    pub const NUM_HIDDEN_LAYERS: u64 = 30;
    /// `DeepseekV2Config.num_attention_heads`.
    pub const NUM_ATTENTION_HEADS: u64 = 32;
    /// `DeepseekV2Config.use_mla` (VL2 addition): MLA unless the config says otherwise.
    pub const USE_MLA: bool = true;
    /// `DeepseekV2Config.q_lora_rank` (`null` in every published VL2 config, but the class
    /// default is a LoRA query of rank 1536).
    pub const Q_LORA_RANK: u64 = 1536;
    /// `DeepseekV2Config.kv_lora_rank`.
    pub const KV_LORA_RANK: u64 = 512;
    /// `DeepseekV2Config.qk_nope_head_dim`.
    pub const QK_NOPE_HEAD_DIM: u64 = 128;
    /// `DeepseekV2Config.qk_rope_head_dim`.
    pub const QK_ROPE_HEAD_DIM: u64 = 64;
    /// `DeepseekV2Config.v_head_dim`.
    pub const V_HEAD_DIM: u64 = 128;
    /// `DeepseekV2Config.moe_layer_freq`.
    pub const MOE_LAYER_FREQ: u64 = 1;
    /// `DeepseekV2Config.first_k_dense_replace`.
    pub const FIRST_K_DENSE_REPLACE: u64 = 0;
    /// `DeepseekV2Config.norm_topk_prob`.
    pub const NORM_TOPK_PROB: bool = false;
    /// `DeepseekV2Config.scoring_func`.
    pub const SCORING_FUNC: &str = "softmax";
    /// `DeepseekV2Config.topk_method`.
    pub const TOPK_METHOD: &str = "greedy";
    /// `DeepseekV2Config.n_group` / `topk_group` are `None`: no group limiting, i.e. one group.
    pub const N_GROUP: u64 = 1;
    /// `DeepseekV2Config.routed_scaling_factor`.
    pub const ROUTED_SCALING_FACTOR: f64 = 1.0;
    /// `DeepseekV2Config.rms_norm_eps`.
    pub const RMS_NORM_EPS: f64 = 1e-6;
    /// `DeepseekV2Config.rope_theta`.
    pub const ROPE_THETA: f64 = 10_000.0;
    /// `DeepseekV2Config.max_position_embeddings`.
    pub const MAX_POSITION_EMBEDDINGS: u64 = 2048;
    /// `DeepseekV2Config.bos_token_id`.
    pub const BOS_TOKEN_ID: u64 = 100_000;
    /// `DeepseekV2Config.eos_token_id`.
    pub const EOS_TOKEN_ID: u64 = 100_001;
    /// `VisionEncoderConfig.image_size`.
    pub const VISION_IMAGE_SIZE: u64 = 384;
    /// `VisionEncoderConfig.heads`.
    pub const VISION_HEADS: u64 = 16;
    /// `VisionEncoderConfig.global_pool`.
    pub const VISION_GLOBAL_POOL: &str = "map";
    /// `VisionEncoderConfig.ignore_head`.
    pub const VISION_IGNORE_HEAD: bool = true;
    /// SigLIP LayerNorm eps, hard-coded in the reference ViT.
    pub const VISION_LAYER_NORM_EPS: f64 = 1e-6;
    /// `MlpProjectorConfig.projector_type`.
    pub const PROJECTOR_TYPE: &str = "downsample_mlp_gelu";
    /// `MlpProjectorConfig.depth`.
    pub const PROJECTOR_DEPTH: u64 = 2;
    /// `MlpProjectorConfig.mlp_ratio`.
    pub const PROJECTOR_MLP_RATIO: u64 = 1;
    /// `MlpProjectorConfig.downsample_ratio`.
    pub const PROJECTOR_DOWNSAMPLE_RATIO: u64 = 2;
    /// `MlpProjectorConfig.input_dim`.
    pub const PROJECTOR_INPUT_DIM: u64 = 1152;
    /// `DeepseekVLV2Config.tile_tag` as every checkpoint sets it (the class default is invalid).
    pub const TILE_TAG: &str = "2D";
    /// `DeepseekVLV2Config.global_view_pos`.
    pub const GLOBAL_VIEW_POS: &str = "head";
    /// Processor: `patch_size`.
    pub const PATCH_SIZE: u64 = 14;
    /// Processor: `image_mean` / `image_std`.
    pub const IMAGE_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
    pub const IMAGE_STD: [f64; 3] = [0.5, 0.5, 0.5];
    /// Processor: `image_token`.
    pub const IMAGE_TOKEN: &str = "<image>";
    /// Processor: `pad_token`.
    pub const PAD_TOKEN: &str = "<｜▁pad▁｜>";
}

/// Language-model hyper-parameters (`language_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLP (the first `first_k_dense_replace` layers).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub use_mla: bool,
    /// `None` when the query is a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// `None` for a dense model.
    pub moe: Option<MoeConfig>,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

/// Mixture-of-experts hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    /// `"greedy"` or `"noaux_tc"`.
    pub topk_method: String,
    /// `"softmax"` or `"sigmoid"`.
    pub scoring_func: String,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
}

impl LanguageConfig {
    /// Whether layer `il` is a MoE layer (reference `DeepseekV2DecoderLayer`).
    pub fn is_moe_layer(&self, il: usize) -> bool {
        self.moe.is_some()
            && il >= self.first_k_dense_replace
            && self.moe_layer_freq > 0
            && il.is_multiple_of(self.moe_layer_freq)
    }

    /// Query/key head size: `qk_nope + qk_rope` for MLA, `hidden / heads` for MHA.
    pub fn head_dim(&self) -> usize {
        if self.use_mla {
            self.qk_nope_head_dim + self.qk_rope_head_dim
        } else {
            self.hidden_size / self.num_attention_heads.max(1)
        }
    }
}

/// SigLIP vision tower (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub layer_norm_eps: f64,
    pub ignore_head: bool,
}

impl VisionConfig {
    /// MLP hidden width, `int(width * mlp_ratio)` as timm computes it.
    pub fn mlp_dim(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }

    /// Patches per side (27 for 384/14).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }
}

/// Projector (`projector_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    pub projector_type: String,
    pub input_dim: usize,
    pub n_embed: usize,
    pub depth: usize,
    pub mlp_ratio: usize,
    pub downsample_ratio: usize,
}

/// The whole `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VlConfig {
    pub candidate_resolutions: Vec<(u32, u32)>,
    pub tile_tag: String,
    pub global_view_pos: String,
    pub language: LanguageConfig,
    pub vision: VisionConfig,
    pub projector: ProjectorConfig,
}

/// `processor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub candidate_resolutions: Vec<(u32, u32)>,
    pub patch_size: usize,
    pub downsample_ratio: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub image_token: String,
    pub pad_token: String,
}

/// Reads keys from one JSON object, collecting the names of missing required keys instead of
/// stopping at the first.
struct Reader<'a> {
    path: &'a Path,
    prefix: &'a str,
    obj: &'a Map<String, Json>,
    missing: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn key(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }

    fn bad(&self, k: &str, reason: &str) -> ConvertError {
        ConvertError::BadConfigValue {
            path: self.path.to_path_buf(),
            key: self.key(k),
            reason: reason.to_string(),
        }
    }

    /// The value, treating JSON `null` as absent.
    fn get(&self, k: &str) -> Option<&Json> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    fn opt_uint(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.bad(k, &format!("expected a non-negative integer, found {v}"))),
        }
    }

    fn uint(&mut self, k: &str) -> Result<usize> {
        let v = self.opt_uint(k)?;
        if v.is_none() {
            let key = self.key(k);
            self.missing.push(key);
        }
        Ok(v.unwrap_or(0))
    }

    fn uint_or(&self, k: &str, default: u64) -> Result<usize> {
        Ok(self.opt_uint(k)?.unwrap_or(default as usize))
    }

    fn opt_float(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(k, &format!("expected a number, found {v}"))),
        }
    }

    fn float(&mut self, k: &str) -> Result<f64> {
        let v = self.opt_float(k)?;
        if v.is_none() {
            let key = self.key(k);
            self.missing.push(key);
        }
        Ok(v.unwrap_or(0.0))
    }

    fn float_or(&self, k: &str, default: f64) -> Result<f64> {
        Ok(self.opt_float(k)?.unwrap_or(default))
    }

    fn bool_or(&self, k: &str, default: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(k, &format!("expected a boolean, found {v}"))),
        }
    }

    fn str_or(&self, k: &str, default: &str) -> Result<String> {
        match self.get(k) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.bad(k, &format!("expected a string, found {v}"))),
        }
    }

    fn resolutions(&mut self, k: &str) -> Result<Vec<(u32, u32)>> {
        let Some(v) = self.get(k) else {
            let key = self.key(k);
            self.missing.push(key);
            return Ok(Vec::new());
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.bad(k, "expected an array of [width, height] pairs"))?;
        let mut out = Vec::with_capacity(arr.len());
        for pair in arr {
            let wh = pair
                .as_array()
                .filter(|p| p.len() == 2)
                .and_then(|p| {
                    let w = u32::try_from(p.first()?.as_u64()?).ok()?;
                    let h = u32::try_from(p.get(1)?.as_u64()?).ok()?;
                    Some((w, h))
                })
                .ok_or_else(|| self.bad(k, &format!("entry {pair} is not [width, height]")))?;
            out.push(wh);
        }
        if out.is_empty() {
            return Err(self.bad(k, "no candidate resolutions"));
        }
        Ok(out)
    }

    fn triple_or(&self, k: &str, default: [f64; 3]) -> Result<[f64; 3]> {
        let Some(v) = self.get(k) else {
            return Ok(default);
        };
        let vals: Option<Vec<f64>> = v
            .as_array()
            .map(|a| a.iter().map(Json::as_f64).collect::<Option<Vec<_>>>())
            .unwrap_or(None);
        match vals.as_deref() {
            Some([a, b, c]) => Ok([*a, *b, *c]),
            _ => Err(self.bad(k, &format!("expected 3 numbers, found {v}"))),
        }
    }
}

fn read_json(path: &Path) -> Result<Map<String, Json>> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, e))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| ConvertError::Json {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    match json {
        Json::Object(m) => Ok(m),
        _ => Err(ConvertError::Json {
            path: path.to_path_buf(),
            reason: "top level is not an object".into(),
        }),
    }
}

fn sub<'a>(
    obj: &'a Map<String, Json>,
    key: &str,
    missing: &mut Vec<String>,
    empty: &'a Map<String, Json>,
) -> &'a Map<String, Json> {
    match obj.get(key).and_then(Json::as_object) {
        Some(m) => m,
        None => {
            missing.push(key.to_string());
            empty
        }
    }
}

impl VlConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<VlConfig> {
        let path = dir.join("config.json");
        let obj = read_json(&path)?;
        Self::from_json(&path, &obj)
    }

    /// Parses an already-read config object (`path` is for messages only).
    pub fn from_json(path: &Path, obj: &Map<String, Json>) -> Result<VlConfig> {
        let model_type = obj.get("model_type").and_then(Json::as_str).unwrap_or("");
        if model_type != MODEL_TYPE {
            return Err(ConvertError::WrongModelType {
                path: path.to_path_buf(),
                found: model_type.to_string(),
                expected: MODEL_TYPE,
            });
        }
        let mut missing = Vec::new();
        let empty = Map::new();
        let lang_obj = sub(obj, "language_config", &mut missing, &empty);
        let vis_obj = sub(obj, "vision_config", &mut missing, &empty);
        let proj_obj = sub(obj, "projector_config", &mut missing, &empty);

        let mut top = Reader {
            path,
            prefix: "",
            obj,
            missing: &mut missing,
        };
        let candidate_resolutions = top.resolutions("candidate_resolutions")?;
        let tile_tag = top.str_or("tile_tag", defaults::TILE_TAG)?;
        let global_view_pos = top.str_or("global_view_pos", defaults::GLOBAL_VIEW_POS)?;

        let language = read_language(Reader {
            path,
            prefix: "language_config",
            obj: lang_obj,
            missing: &mut missing,
        })?;
        let vision = read_vision(Reader {
            path,
            prefix: "vision_config",
            obj: vis_obj,
            missing: &mut missing,
        })?;
        let projector = read_projector(Reader {
            path,
            prefix: "projector_config",
            obj: proj_obj,
            missing: &mut missing,
        })?;
        if !missing.is_empty() {
            return Err(ConvertError::MissingKeys {
                path: path.to_path_buf(),
                keys: missing,
            });
        }
        let cfg = VlConfig {
            candidate_resolutions,
            tile_tag,
            global_view_pos,
            language,
            vision,
            projector,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the facts pocketvl relies on (and that the reference asserts).
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, reason: String| ConvertError::BadConfigValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let l = &self.language;
        if l.hidden_size == 0 || l.num_attention_heads == 0 || l.num_hidden_layers == 0 {
            return Err(bad(
                "language_config",
                "hidden_size, num_attention_heads and num_hidden_layers must be > 0".into(),
            ));
        }
        if !l.use_mla && !l.hidden_size.is_multiple_of(l.num_attention_heads) {
            return Err(bad(
                "language_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    l.num_attention_heads, l.hidden_size
                ),
            ));
        }
        if let Some(m) = &l.moe {
            if !matches!(m.topk_method.as_str(), "greedy" | "noaux_tc") {
                return Err(bad(
                    "language_config.topk_method",
                    format!("'{}' is not supported (greedy, noaux_tc)", m.topk_method),
                ));
            }
            if !matches!(m.scoring_func.as_str(), "softmax" | "sigmoid") {
                return Err(bad(
                    "language_config.scoring_func",
                    format!("'{}' is not supported (softmax, sigmoid)", m.scoring_func),
                ));
            }
            if m.n_group == 0 || !m.n_routed_experts.is_multiple_of(m.n_group) {
                return Err(bad(
                    "language_config.n_group",
                    format!(
                        "{} does not divide n_routed_experts {}",
                        m.n_group, m.n_routed_experts
                    ),
                ));
            }
        }
        if self.tile_tag != "2D" {
            return Err(bad(
                "tile_tag",
                format!("'{}' is not supported (2D)", self.tile_tag),
            ));
        }
        if self.global_view_pos != "head" {
            return Err(bad(
                "global_view_pos",
                format!("'{}' is not supported (head)", self.global_view_pos),
            ));
        }
        if self.projector.projector_type != defaults::PROJECTOR_TYPE {
            return Err(bad(
                "projector_config.projector_type",
                format!("'{}' is not supported", self.projector.projector_type),
            ));
        }
        if self.projector.n_embed != l.hidden_size {
            return Err(bad(
                "projector_config.n_embed",
                format!(
                    "{} differs from hidden_size {}",
                    self.projector.n_embed, l.hidden_size
                ),
            ));
        }
        if self.vision.patch_size == 0 || self.vision.heads == 0 {
            return Err(bad(
                "vision_config",
                "patch_size and heads must be > 0".into(),
            ));
        }
        Ok(())
    }
}

fn read_language(mut r: Reader<'_>) -> Result<LanguageConfig> {
    let num_attention_heads = r.uint_or("num_attention_heads", defaults::NUM_ATTENTION_HEADS)?;
    let use_mla = r.bool_or("use_mla", defaults::USE_MLA)?;
    // An explicit null means "no LoRA query"; an absent key is the class default.
    let q_lora_rank = match r.obj.get("q_lora_rank") {
        None => Some(defaults::Q_LORA_RANK as usize),
        Some(Json::Null) => None,
        Some(_) => r.opt_uint("q_lora_rank")?.filter(|&x| x > 0),
    };
    let moe = if r.get("n_routed_experts").is_some() {
        let n_group = r.uint_or("n_group", defaults::N_GROUP)?;
        Some(MoeConfig {
            n_routed_experts: r.uint("n_routed_experts")?,
            n_shared_experts: r.uint_or("n_shared_experts", 0)?,
            num_experts_per_tok: r.uint("num_experts_per_tok")?,
            moe_intermediate_size: r.uint("moe_intermediate_size")?,
            topk_method: r.str_or("topk_method", defaults::TOPK_METHOD)?,
            scoring_func: r.str_or("scoring_func", defaults::SCORING_FUNC)?,
            n_group,
            topk_group: r.uint_or("topk_group", n_group as u64)?,
            norm_topk_prob: r.bool_or("norm_topk_prob", defaults::NORM_TOPK_PROB)?,
            routed_scaling_factor: r
                .float_or("routed_scaling_factor", defaults::ROUTED_SCALING_FACTOR)?,
        })
    } else {
        None
    };
    let bos = r.uint_or("bos_token_id", defaults::BOS_TOKEN_ID)?;
    let eos = r.uint_or("eos_token_id", defaults::EOS_TOKEN_ID)?;
    let bos_token_id = u32::try_from(bos)
        .map_err(|_| r.bad("bos_token_id", &format!("{bos} does not fit in u32")))?;
    let eos_token_id = u32::try_from(eos)
        .map_err(|_| r.bad("eos_token_id", &format!("{eos} does not fit in u32")))?;
    Ok(LanguageConfig {
        vocab_size: r.uint_or("vocab_size", defaults::VOCAB_SIZE)?,
        hidden_size: r.uint("hidden_size")?,
        intermediate_size: r.uint("intermediate_size")?,
        num_hidden_layers: r.uint_or("num_hidden_layers", defaults::NUM_HIDDEN_LAYERS)?,
        num_attention_heads,
        num_key_value_heads: r.uint_or("num_key_value_heads", num_attention_heads as u64)?,
        use_mla,
        q_lora_rank,
        kv_lora_rank: r.uint_or("kv_lora_rank", defaults::KV_LORA_RANK)?,
        qk_nope_head_dim: r.uint_or("qk_nope_head_dim", defaults::QK_NOPE_HEAD_DIM)?,
        qk_rope_head_dim: r.uint_or("qk_rope_head_dim", defaults::QK_ROPE_HEAD_DIM)?,
        v_head_dim: r.uint_or("v_head_dim", defaults::V_HEAD_DIM)?,
        moe,
        first_k_dense_replace: r
            .uint_or("first_k_dense_replace", defaults::FIRST_K_DENSE_REPLACE)?,
        moe_layer_freq: r.uint_or("moe_layer_freq", defaults::MOE_LAYER_FREQ)?,
        rms_norm_eps: r.float_or("rms_norm_eps", defaults::RMS_NORM_EPS)?,
        rope_theta: r.float_or("rope_theta", defaults::ROPE_THETA)?,
        max_position_embeddings: r
            .uint_or("max_position_embeddings", defaults::MAX_POSITION_EMBEDDINGS)?,
        bos_token_id,
        eos_token_id,
    })
}

fn read_vision(mut r: Reader<'_>) -> Result<VisionConfig> {
    let global_pool = r.str_or("global_pool", defaults::VISION_GLOBAL_POOL)?;
    let ignore_head = r.bool_or("ignore_head", defaults::VISION_IGNORE_HEAD)?;
    if !ignore_head {
        return Err(r.bad(
            "ignore_head",
            &format!("false (a '{global_pool}' head that is run) is not supported"),
        ));
    }
    Ok(VisionConfig {
        image_size: r.uint_or("image_size", defaults::VISION_IMAGE_SIZE)?,
        patch_size: r.uint("patch_size")?,
        width: r.uint("width")?,
        layers: r.uint("layers")?,
        heads: r.uint_or("heads", defaults::VISION_HEADS)?,
        mlp_ratio: r.float("mlp_ratio")?,
        layer_norm_eps: defaults::VISION_LAYER_NORM_EPS,
        ignore_head,
    })
}

fn read_projector(mut r: Reader<'_>) -> Result<ProjectorConfig> {
    Ok(ProjectorConfig {
        projector_type: r.str_or("projector_type", defaults::PROJECTOR_TYPE)?,
        input_dim: r.uint_or("input_dim", defaults::PROJECTOR_INPUT_DIM)?,
        n_embed: r.uint("n_embed")?,
        depth: r.uint_or("depth", defaults::PROJECTOR_DEPTH)?,
        mlp_ratio: r.uint_or("mlp_ratio", defaults::PROJECTOR_MLP_RATIO)?,
        downsample_ratio: r.uint_or("downsample_ratio", defaults::PROJECTOR_DOWNSAMPLE_RATIO)?,
    })
}

impl ProcessorConfig {
    /// Reads `dir/processor_config.json`; when the file is absent the processor's defaults
    /// apply with the candidate resolutions of `config.json` (the reference passes the same
    /// list to both).
    pub fn load(dir: &Path, model: &VlConfig) -> Result<ProcessorConfig> {
        let path: PathBuf = dir.join("processor_config.json");
        let obj = if path.exists() {
            read_json(&path)?
        } else {
            Map::new()
        };
        let mut missing = Vec::new();
        let mut r = Reader {
            path: &path,
            prefix: "",
            obj: &obj,
            missing: &mut missing,
        };
        let candidate_resolutions = if r.get("candidate_resolutions").is_some() {
            r.resolutions("candidate_resolutions")?
        } else {
            model.candidate_resolutions.clone()
        };
        Ok(ProcessorConfig {
            candidate_resolutions,
            patch_size: r.uint_or("patch_size", defaults::PATCH_SIZE)?,
            downsample_ratio: r
                .uint_or("downsample_ratio", defaults::PROJECTOR_DOWNSAMPLE_RATIO)?,
            image_mean: r.triple_or("image_mean", defaults::IMAGE_MEAN)?,
            image_std: r.triple_or("image_std", defaults::IMAGE_STD)?,
            image_token: r.str_or("image_token", defaults::IMAGE_TOKEN)?,
            pad_token: r.str_or("pad_token", defaults::PAD_TOKEN)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
            .join("hf")
    }

    #[test]
    fn tiny_mla_defaults_applied() {
        let c = VlConfig::load(&fixture("tiny-mla")).unwrap();
        let l = &c.language;
        assert!(l.use_mla);
        assert_eq!(l.q_lora_rank, Some(48));
        assert_eq!(l.kv_lora_rank, 32);
        assert_eq!(l.rms_norm_eps, 1e-6);
        assert_eq!(l.rope_theta, 10000.0);
        let m = l.moe.as_ref().unwrap();
        assert_eq!((m.n_group, m.topk_group), (4, 2));
        assert_eq!(m.topk_method, "noaux_tc");
        assert!(m.norm_topk_prob);
        assert_eq!(m.routed_scaling_factor, 2.0);
        assert!(!l.is_moe_layer(0) && l.is_moe_layer(1) && l.is_moe_layer(2));
        assert_eq!(c.vision.mlp_dim(), 239);
        assert_eq!(c.vision.heads, 4);
        assert_eq!(c.vision.image_size, 384);
        assert_eq!(c.projector.input_dim, 64);
        assert_eq!(c.candidate_resolutions.len(), 23);
        let p = ProcessorConfig::load(&fixture("tiny-mla"), &c).unwrap();
        assert_eq!(p.candidate_resolutions, c.candidate_resolutions);
        assert_eq!(p.pad_token, "<｜▁pad▁｜>");
    }

    #[test]
    fn tiny_mha_is_mha() {
        let c = VlConfig::load(&fixture("tiny-mha")).unwrap();
        assert!(!c.language.use_mla);
        assert_eq!(c.language.q_lora_rank, None);
        assert_eq!(c.language.head_dim(), 16);
        let m = c.language.moe.as_ref().unwrap();
        assert_eq!(m.scoring_func, "softmax");
        assert!(!m.norm_topk_prob);
    }

    #[test]
    fn wrong_model_type_and_all_missing_keys() {
        let p = Path::new("config.json");
        let e = VlConfig::from_json(
            p,
            serde_json::json!({"model_type": "llama"})
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("'llama'"), "{e}");
        let j = serde_json::json!({
            "model_type": "deepseek_vl_v2",
            "language_config": {"n_routed_experts": 4},
            "vision_config": {"width": 8},
        });
        let e = VlConfig::from_json(p, j.as_object().unwrap())
            .unwrap_err()
            .to_string();
        for k in [
            "projector_config",
            "candidate_resolutions",
            "language_config.hidden_size",
            "language_config.intermediate_size",
            "language_config.num_experts_per_tok",
            "language_config.moe_intermediate_size",
            "vision_config.patch_size",
            "vision_config.layers",
            "vision_config.mlp_ratio",
        ] {
            assert!(e.contains(k), "{k} not in: {e}");
        }
    }
}
