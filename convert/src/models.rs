//! The table of known DeepSeek-VL2 variants and named quantization recipes (`models.toml`
//! at the repository root, embedded in the binary so it works from any directory).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{ConvertError, Result};
use crate::hf_config::LanguageConfig;

/// The embedded `models.toml`.
pub const MODELS_TOML: &str = include_str!("../../models.toml");

/// One known variant: the hyper-parameters that identify it and its default recipe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub vocab_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub use_mla: bool,
    pub topk_method: String,
    pub default_quant: String,
}

/// A named recipe as written in models.toml (type names as ggml spells them).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    /// Every tensor in this type.
    pub all: Option<String>,
    /// Routed experts.
    pub experts: Option<String>,
    /// Attention, dense MLP, shared experts, token_embd, output.
    pub others: Option<String>,
    /// Vision-tower and projector matrices.
    pub vision: Option<String>,
}

/// The parsed models.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsDb {
    pub unknown_default_quant: String,
    pub variant: Vec<Variant>,
    pub recipe: BTreeMap<String, RecipeSpec>,
}

impl ModelsDb {
    /// The table compiled into the binary.
    pub fn builtin() -> Result<ModelsDb> {
        Self::parse(MODELS_TOML)
    }

    /// Parses a models.toml text and checks that every default recipe exists.
    pub fn parse(text: &str) -> Result<ModelsDb> {
        let db: ModelsDb = toml::from_str(text).map_err(|e| ConvertError::Models(e.to_string()))?;
        for v in &db.variant {
            if !db.recipe.contains_key(&v.default_quant) {
                return Err(ConvertError::Models(format!(
                    "variant '{}' names unknown recipe '{}'",
                    v.name, v.default_quant
                )));
            }
        }
        if !db.recipe.contains_key(&db.unknown_default_quant) {
            return Err(ConvertError::Models(format!(
                "unknown_default_quant names unknown recipe '{}'",
                db.unknown_default_quant
            )));
        }
        Ok(db)
    }

    /// The variant whose hyper-parameters all equal the checkpoint's, if any.
    pub fn match_config(&self, l: &LanguageConfig) -> Option<&Variant> {
        self.variant.iter().find(|v| {
            let moe_ok = l.moe.as_ref().is_some_and(|m| {
                m.n_routed_experts == v.n_routed_experts
                    && m.n_shared_experts == v.n_shared_experts
                    && m.num_experts_per_tok == v.num_experts_per_tok
                    && m.moe_intermediate_size == v.moe_intermediate_size
                    && m.topk_method == v.topk_method
            });
            moe_ok
                && l.hidden_size == v.hidden_size
                && l.num_hidden_layers == v.num_hidden_layers
                && l.num_attention_heads == v.num_attention_heads
                && l.vocab_size == v.vocab_size
                && l.intermediate_size == v.intermediate_size
                && l.use_mla == v.use_mla
        })
    }

    /// A variant by name.
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variant.iter().find(|v| v.name == name)
    }

    /// A recipe by name, in any letter case (`q4_k`, ggml's `q4_K`, llama.cpp's `Q4_K`).
    pub fn recipe(&self, name: &str) -> Result<&RecipeSpec> {
        let found = self
            .recipe
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, spec)| spec).ok_or_else(|| {
            let known: Vec<&str> = self.recipe.keys().map(String::as_str).collect();
            ConvertError::Recipe(format!(
                "unknown --quant '{name}' (known: {})",
                known.join(", ")
            ))
        })
    }

    /// The default recipe name for a checkpoint (its variant's, or the unknown default).
    pub fn default_quant(&self, l: &LanguageConfig) -> &str {
        self.match_config(l)
            .map(|v| v.default_quant.as_str())
            .unwrap_or(&self.unknown_default_quant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf_config::{LanguageConfig, MoeConfig};

    fn lang(v: &Variant) -> LanguageConfig {
        LanguageConfig {
            vocab_size: v.vocab_size,
            hidden_size: v.hidden_size,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            num_key_value_heads: v.num_attention_heads,
            use_mla: v.use_mla,
            q_lora_rank: None,
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            moe: Some(MoeConfig {
                n_routed_experts: v.n_routed_experts,
                n_shared_experts: v.n_shared_experts,
                num_experts_per_tok: v.num_experts_per_tok,
                moe_intermediate_size: v.moe_intermediate_size,
                topk_method: v.topk_method.clone(),
                scoring_func: "softmax".into(),
                n_group: 1,
                topk_group: 1,
                norm_topk_prob: false,
                routed_scaling_factor: 1.0,
            }),
            first_k_dense_replace: 1,
            moe_layer_freq: 1,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            max_position_embeddings: 4096,
            bos_token_id: 0,
            eos_token_id: 1,
        }
    }

    #[test]
    fn builtin_parses_and_matches_each_variant() {
        let db = ModelsDb::builtin().unwrap();
        assert_eq!(db.variant.len(), 3);
        for v in &db.variant {
            assert_eq!(db.match_config(&lang(v)).map(|m| &m.name), Some(&v.name));
        }
        let mut l = lang(db.variant("deepseek-vl2").unwrap());
        l.hidden_size = 64;
        assert!(db.match_config(&l).is_none());
        assert_eq!(db.default_quant(&l), "q8_0");
        assert!(db.recipe("q4_k").is_ok());
        assert!(db.recipe("q4_K").is_ok() && db.recipe("Q8_0").is_ok());
        assert!(db.recipe("q3_x").is_err());
    }
}
