//! Hyper-parameters of the three published DeepSeek-VL2 variants, and the JSON files
//! (`config.json`, `processor_config.json`, `tokenizer_config.json`) a checkpoint of each ships.
//!
//! Values come from docs/DEEPSEEK-VL2.md §1 (tables 1.2–1.4); the config layout follows the
//! published files as mirrored by `tests/fixtures/tiny-*/hf/config.json`: keys whose value is the
//! reference default are left out (for example `rms_norm_eps`, `rope_theta`, `use_mla` for the MLA
//! variants, vision `heads`, projector `input_dim`), so a converter reading a synthetic checkpoint
//! exercises the same default handling as on a real one.

use serde_json::{json, Value};

/// One of the three published checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// DeepSeek-VL2-Tiny: MHA + softmax greedy MoE, 3.37 B parameters.
    Tiny,
    /// DeepSeek-VL2-Small: MLA + softmax greedy MoE, 16.1 B parameters.
    Small,
    /// DeepSeek-VL2: MLA + sigmoid noaux_tc MoE, 27.5 B parameters.
    Vl2,
}

impl Variant {
    /// Every variant, in size order.
    pub const ALL: [Variant; 3] = [Variant::Tiny, Variant::Small, Variant::Vl2];

    /// The name used on the command line and in models.toml.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiny => "deepseek-vl2-tiny",
            Variant::Small => "deepseek-vl2-small",
            Variant::Vl2 => "deepseek-vl2",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The language model of this variant, from the one table of known variants
    /// (`models.toml`, embedded in the binary).
    pub fn language(self) -> LmSpec {
        // The embedded table is part of the binary; its parsing and the presence of the three
        // variants are asserted by convert's `models` unit tests.
        let db = convert::models::ModelsDb::builtin().expect("embedded models.toml parses");
        let v = db
            .variant(self.name())
            .expect("models.toml lists every synth variant");
        // Small ships the DeepSeek-LLM/V2 vocabulary (BOS 100000), Tiny and VL2 the V3 one
        // (BOS 0); synth writes the matching tokenizer layout (`tokenizer::v2_layout_from_v3`).
        let (bos_token_id, eos_token_id) = match self {
            Variant::Small => (100_000, 100_001),
            Variant::Tiny | Variant::Vl2 => (0, 1),
        };
        LmSpec {
            vocab_size: v.vocab_size,
            hidden_size: v.hidden_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            attention: if v.use_mla {
                Attention::MLA
            } else {
                Attention::Mha
            },
            intermediate_size: v.intermediate_size,
            moe_intermediate_size: v.moe_intermediate_size,
            n_routed_experts: v.n_routed_experts,
            n_shared_experts: v.n_shared_experts,
            num_experts_per_tok: v.num_experts_per_tok,
            routing: if v.topk_method == "noaux_tc" {
                Routing::SigmoidNoauxTc
            } else {
                Routing::SoftmaxGreedy
            },
            bos_token_id,
            eos_token_id,
        }
    }
}

/// Attention flavour of the language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Plain multi-head attention (`use_mla: false`): q/k/v/o projections, head_dim 128.
    Mha,
    /// Multi-head latent attention without a LoRA query (`q_lora_rank: null`).
    Mla {
        kv_lora_rank: usize,
        qk_nope_head_dim: usize,
        qk_rope_head_dim: usize,
        v_head_dim: usize,
    },
}

impl Attention {
    /// MLA as Small and VL2 use it (all four values are the reference defaults).
    pub const MLA: Attention = Attention::Mla {
        kv_lora_rank: 512,
        qk_nope_head_dim: 128,
        qk_rope_head_dim: 64,
        v_head_dim: 128,
    };
}

/// MoE routing flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Softmax scores, greedy top-k, no normalisation, scaling 1.0.
    SoftmaxGreedy,
    /// Sigmoid scores, `noaux_tc` with `e_score_correction_bias`, normalised top-k, scaling 2.0.
    SigmoidNoauxTc,
}

/// Language-model hyper-parameters (`language_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct LmSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub attention: Attention,
    /// Width of the dense FFN of layer 0.
    pub intermediate_size: usize,
    /// Width of one routed expert.
    pub moe_intermediate_size: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub routing: Routing,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

/// The SigLIP-SO400M tower shared by all variants (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionSpec {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// `int(width * mlp_ratio)` with mlp_ratio 3.7362.
    pub mlp_dim: usize,
    pub patch_size: usize,
    pub image_size: usize,
}

/// The only vision tower DeepSeek-VL2 uses.
pub const VISION: VisionSpec = VisionSpec {
    width: 1152,
    layers: 27,
    heads: 16,
    mlp_dim: 4304,
    patch_size: 14,
    image_size: 384,
};

/// `vision_config.mlp_ratio` as published; `int(1152 * 3.7362)` = 4304.
const MLP_RATIO: f64 = 3.7362;

/// Projector `downsample_ratio` (reference default): 2x2 neighbours are concatenated.
pub const DOWNSAMPLE_RATIO: usize = 2;

/// A variant with the options that change its shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub variant: Variant,
    pub language: LmSpec,
    pub vision: VisionSpec,
    /// Whether the vision side (`vision.*`, `projector.*`, tile tags) is written (config.json
    /// always describes the tower).
    pub with_vision: bool,
    /// Zipf exponent of expert popularity (`--router-skew`; 0 = plain random routers).
    pub router_skew: f64,
}

impl ModelSpec {
    /// The variant with its LM truncated to `layers` (when given).
    pub fn new(variant: Variant, layers: Option<usize>, with_vision: bool) -> ModelSpec {
        let mut language = variant.language();
        if let Some(n) = layers {
            language.num_hidden_layers = n;
        }
        ModelSpec {
            variant,
            language,
            vision: VISION,
            with_vision,
            router_skew: 0.0,
        }
    }

    /// Patches per side of a tile: 384 / 14 = 27.
    pub fn grid(&self) -> usize {
        self.vision.image_size / self.vision.patch_size
    }

    /// `config.json`, keys in the published order (alphabetical) and with defaults left out.
    pub fn config_json(&self) -> Value {
        let l = &self.language;
        let mut lang = json!({
            "architectures": ["DeepseekV2ForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_deepseek.DeepseekV2Config",
                "AutoModel": "modeling_deepseek.DeepseekV2Model",
                "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"
            },
            "bos_token_id": l.bos_token_id,
            "eos_token_id": l.eos_token_id,
            "first_k_dense_replace": 1,
            "hidden_size": l.hidden_size,
            "intermediate_size": l.intermediate_size,
            "lm_head": false,
            "max_position_embeddings": 4096,
            "model_type": "deepseek_v2",
            "moe_intermediate_size": l.moe_intermediate_size,
            "n_group": 1,
            "n_routed_experts": l.n_routed_experts,
            "n_shared_experts": l.n_shared_experts,
            "num_attention_heads": l.num_attention_heads,
            "num_experts_per_tok": l.num_experts_per_tok,
            "num_hidden_layers": l.num_hidden_layers,
            "num_key_value_heads": l.num_attention_heads,
            "q_lora_rank": null,
            "rm_head": false,
            "topk_group": 1,
            "torch_dtype": "bfloat16",
            "vocab_size": l.vocab_size
        });
        if let Value::Object(m) = &mut lang {
            match l.attention {
                Attention::Mha => {
                    m.insert("use_mla".into(), json!(false));
                    m.insert("kv_lora_rank".into(), Value::Null);
                    m.insert("qk_nope_head_dim".into(), json!(0));
                    m.insert("qk_rope_head_dim".into(), json!(0));
                    m.insert("v_head_dim".into(), json!(0));
                }
                Attention::Mla {
                    kv_lora_rank,
                    qk_nope_head_dim,
                    qk_rope_head_dim,
                    v_head_dim,
                } => {
                    m.insert("kv_lora_rank".into(), json!(kv_lora_rank));
                    m.insert("qk_nope_head_dim".into(), json!(qk_nope_head_dim));
                    m.insert("qk_rope_head_dim".into(), json!(qk_rope_head_dim));
                    m.insert("v_head_dim".into(), json!(v_head_dim));
                }
            }
            match l.routing {
                Routing::SoftmaxGreedy => {
                    m.insert("topk_method".into(), json!("greedy"));
                }
                Routing::SigmoidNoauxTc => {
                    m.insert("topk_method".into(), json!("noaux_tc"));
                    m.insert("scoring_func".into(), json!("sigmoid"));
                    m.insert("norm_topk_prob".into(), json!(true));
                    m.insert("routed_scaling_factor".into(), json!(2.0));
                }
            }
        }
        let mut vision = json!({
            "layers": self.vision.layers,
            "mlp_ratio": MLP_RATIO,
            "model_name": "siglip_so400m_patch14_384",
            "model_type": "vision",
            "patch_size": self.vision.patch_size,
            "width": self.vision.width
        });
        let mut projector = json!({
            "model_type": "mlp_projector",
            "n_embed": l.hidden_size
        });
        // Shrunk test models differ from the reference defaults: then the keys must be present.
        if self.vision.heads != VISION.heads {
            if let Value::Object(m) = &mut vision {
                m.insert("heads".into(), json!(self.vision.heads));
            }
        }
        if self.vision.width != VISION.width {
            if let Value::Object(m) = &mut projector {
                m.insert("input_dim".into(), json!(self.vision.width));
            }
        }
        json!({
            "candidate_resolutions": candidate_resolutions(),
            "global_view_pos": "head",
            "language_config": lang,
            "model_type": "deepseek_vl_v2",
            "projector_config": projector,
            "tile_tag": "2D",
            "torch_dtype": "bfloat16",
            "transformers_version": "4.38.2",
            "vision_config": vision
        })
    }
}

/// The 23 candidate resolutions (width, height) in the published order (§1.1), from the one
/// table the preprocessor defaults to.
pub fn candidate_resolutions() -> Vec<[u32; 2]> {
    crate::model::deepseek_vl2::preprocess::PreprocessConfig::default()
        .candidate_resolutions
        .into_iter()
        .map(|(w, h)| [w, h])
        .collect()
}

/// `processor_config.json` as the reference processor reads it.
pub fn processor_config_json() -> Value {
    json!({
        "add_special_token": false,
        "candidate_resolutions": candidate_resolutions(),
        "downsample_ratio": DOWNSAMPLE_RATIO,
        "ignore_id": -100,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_token": "<image>",
        "mask_prompt": false,
        "normalize": true,
        "pad_token": "<｜▁pad▁｜>",
        "patch_size": VISION.patch_size,
        "processor_class": "DeepseekVLV2Processor",
        "sft_format": "deepseek"
    })
}

fn added_token(content: &str, with_type: bool) -> Value {
    let mut v = json!({
        "content": content,
        "lstrip": false,
        "normalized": true,
        "rstrip": false,
        "single_word": false
    });
    if with_type {
        if let Value::Object(m) = &mut v {
            m.insert("__type".into(), json!("AddedToken"));
        }
    }
    v
}

/// Content of the BOS token in the DeepSeek tokenizers.
pub const BOS_TOKEN: &str = "<｜begin▁of▁sentence｜>";
/// Content of the EOS token.
pub const EOS_TOKEN: &str = "<｜end▁of▁sentence｜>";
/// Content of the pad token (the processor adds it if missing).
pub const PAD_TOKEN: &str = "<｜▁pad▁｜>";

/// `tokenizer_config.json` in the layout of the DeepSeek-VL2 checkpoints.
pub fn tokenizer_config_json() -> Value {
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": added_token(BOS_TOKEN, true),
        "clean_up_tokenization_spaces": false,
        "eos_token": added_token(EOS_TOKEN, true),
        "legacy": true,
        "model_max_length": 16384,
        "pad_token": added_token(PAD_TOKEN, true),
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": null
    })
}

/// `special_tokens_map.json`.
pub fn special_tokens_map_json() -> Value {
    json!({
        "bos_token": added_token(BOS_TOKEN, false),
        "eos_token": added_token(EOS_TOKEN, false),
        "pad_token": added_token(PAD_TOKEN, false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(Variant::from_name(v.name()), Some(v));
        }
        assert_eq!(Variant::from_name("deepseek-vl3"), None);
    }

    #[test]
    fn mlp_ratio_gives_published_width() {
        assert_eq!((VISION.width as f64 * MLP_RATIO) as usize, VISION.mlp_dim);
    }

    #[test]
    fn candidates_are_the_23_published_pairs() {
        let c = candidate_resolutions();
        assert_eq!(c.len(), 23);
        assert!(c.iter().all(|[w, h]| (w / 384) * (h / 384) <= 9));
        assert_eq!(c[7], [768, 768]);
        assert_eq!(c[22], [1152, 1152]);
    }

    #[test]
    fn config_matches_fixture_layout() {
        // The MHA fixture's config has exactly the keys the Tiny config has (values differ).
        let fixture: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/tiny-mha/hf/config.json"))
                .unwrap();
        let ours = ModelSpec::new(Variant::Tiny, None, true).config_json();
        let keys = |v: &Value, p: &str| -> Vec<String> {
            v[p].as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            keys(&ours, "language_config"),
            keys(&fixture, "language_config")
        );
        assert_eq!(
            ours["candidate_resolutions"],
            fixture["candidate_resolutions"]
        );
        let top = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
        assert_eq!(top(&ours), top(&fixture));
    }
}
