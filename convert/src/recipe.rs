//! Quantization recipes: which ggml type each output tensor gets.
//!
//! `--quant f32|f16|bf16` stores every tensor in that type (`--quant f32` reproduces the
//! checkpoint exactly, since bf16 widens exactly). `--quant q8_0|q4_0|q4_k|q5_k|q6_k` sets the
//! routed-expert type; attention, dense MLP, shared experts, token_embd and output default to
//! the recipe's `others` (q8_0), vision and projector matrices to `vision` (bf16), and norms,
//! biases, routers, exp_probs_b, the position embedding and tile tags stay f32. Per-role
//! overrides replace any of these. A tensor whose `ne[0]` does not divide by the chosen type's
//! block size falls back as llama.cpp's quantizer does (`llama-quant.cpp`): Q4_K→Q5_0,
//! Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→Q4_0, and 32-element block types→F16.

use std::collections::BTreeMap;

use quant::GgmlType;

use crate::error::{ConvertError, Result};
use crate::mapping::{MappedTensor, Role};
use crate::models::{ModelsDb, RecipeSpec};

/// Per-role types after applying a named recipe and the overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The `--quant` name.
    pub name: String,
    /// Type per role; [`Role::KeepF32`] included.
    pub types: BTreeMap<Role, GgmlType>,
}

/// The roles a user can override, with their CLI spelling.
pub const OVERRIDABLE: &[(&str, Role)] = &[
    ("experts", Role::Experts),
    ("attn", Role::Attn),
    ("ffn", Role::Ffn),
    ("shexp", Role::Shexp),
    ("embd", Role::Embd),
    ("output", Role::Output),
    ("vision", Role::Vision),
    ("projector", Role::Projector),
];

/// Parses a type name as the CLI accepts it (case-insensitive ggml names: `q4_k`, `Q8_0`, `f16`).
pub fn parse_type(name: &str) -> Result<GgmlType> {
    let lower = name.to_ascii_lowercase();
    let ty = quant::types::ALL_TYPES
        .iter()
        .copied()
        .find(|t| t.name().eq_ignore_ascii_case(&lower))
        .ok_or_else(|| ConvertError::Recipe(format!("unknown tensor type '{name}'")))?;
    if !quant::formats::format(ty).is_some_and(|f| f.storable) {
        return Err(ConvertError::Recipe(format!(
            "type '{name}' cannot be used to store weights (storable: {})",
            quant::formats::storable_names()
        )));
    }
    Ok(ty)
}

impl Recipe {
    /// Builds the recipe `name` from models.toml with `overrides` (role name → type name).
    pub fn new(db: &ModelsDb, name: &str, overrides: &[(Role, GgmlType)]) -> Result<Recipe> {
        let spec: &RecipeSpec = db.recipe(name)?;
        let mut types = BTreeMap::new();
        let all_roles = [
            Role::Embd,
            Role::Output,
            Role::Attn,
            Role::Ffn,
            Role::Shexp,
            Role::Experts,
            Role::Vision,
            Role::Projector,
        ];
        // Norms, biases, routers and the other KeepF32 tensors stay f32 in every recipe, even
        // `f16`/`bf16`: llama.cpp's CPU backend cannot multiply f32 activations by an f16 norm
        // weight (it aborts in binary_op), and BF16 -> F16 can overflow (pitfall 52).
        types.insert(Role::KeepF32, GgmlType::F32);
        if let Some(all) = &spec.all {
            let ty = parse_type(all)?;
            for r in all_roles {
                types.insert(r, ty);
            }
        } else {
            let get = |field: &Option<String>, what: &str| -> Result<GgmlType> {
                let s = field.as_deref().ok_or_else(|| {
                    ConvertError::Models(format!("recipe '{name}' lacks '{what}'"))
                })?;
                parse_type(s)
            };
            let experts = get(&spec.experts, "experts")?;
            let others = get(&spec.others, "others")?;
            let vision = get(&spec.vision, "vision")?;
            for r in [Role::Embd, Role::Output, Role::Attn, Role::Ffn, Role::Shexp] {
                types.insert(r, others);
            }
            types.insert(Role::Experts, experts);
            types.insert(Role::Vision, vision);
            types.insert(Role::Projector, vision);
        }
        for &(role, ty) in overrides {
            if role == Role::KeepF32 {
                return Err(ConvertError::Recipe(
                    "norms, biases and routers cannot be overridden".into(),
                ));
            }
            types.insert(role, ty);
        }
        Ok(Recipe {
            name: name.to_string(),
            types,
        })
    }

    /// The type wanted for a role (before any block-size fallback).
    pub fn wanted(&self, role: Role) -> GgmlType {
        self.types.get(&role).copied().unwrap_or(GgmlType::F32)
    }

    /// The type a tensor gets: the role's type, or its fallback when `ne[0]` does not
    /// divide by the block size. Returns (type, Some(wanted) when it fell back).
    pub fn choose(&self, t: &MappedTensor) -> (GgmlType, Option<GgmlType>) {
        let wanted = self.wanted(t.role);
        let ne0 = t.ne.first().copied().unwrap_or(1);
        let mut ty = wanted;
        // One-dimensional tensors are never block-quantized (llama.cpp keeps them F32).
        if t.ne.len() < 2 && ty.block_size() > 1 {
            return (GgmlType::F32, Some(wanted));
        }
        while !ne0.is_multiple_of(ty.block_size() as u64) {
            ty = fallback(ty);
        }
        (ty, (ty != wanted).then_some(wanted))
    }
}

/// llama.cpp's fallback for a type whose block does not fit the row.
pub fn fallback(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        _ => GgmlType::F16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Source;

    fn t(role: Role, ne: &[u64]) -> MappedTensor {
        MappedTensor {
            name: "x".into(),
            ne: ne.to_vec(),
            role,
            source: Source::Copy("x".into()),
        }
    }

    #[test]
    fn roles_and_fallbacks() {
        let db = ModelsDb::builtin().unwrap();
        let r = Recipe::new(&db, "q4_k", &[]).unwrap();
        assert_eq!(
            r.choose(&t(Role::Experts, &[1280, 896, 64])),
            (GgmlType::Q4_K, None)
        );
        assert_eq!(
            r.choose(&t(Role::Experts, &[896, 1280, 64])),
            (GgmlType::Q5_0, Some(GgmlType::Q4_K))
        );
        assert_eq!(
            r.choose(&t(Role::Attn, &[128, 512, 16])),
            (GgmlType::Q8_0, None)
        );
        // The tower is stored bf16 by default (lossless for the bf16 releases).
        assert_eq!(
            r.choose(&t(Role::Vision, &[4304, 1152])),
            (GgmlType::BF16, None)
        );
        assert_eq!(r.choose(&t(Role::KeepF32, &[1152])), (GgmlType::F32, None));
        let r = Recipe::new(&db, "q8_0", &[(Role::Vision, GgmlType::Q8_0)]).unwrap();
        assert_eq!(
            r.choose(&t(Role::Vision, &[4304, 1152])),
            (GgmlType::F16, Some(GgmlType::Q8_0))
        );
        let r = Recipe::new(&db, "q6_k", &[]).unwrap();
        assert_eq!(
            r.choose(&t(Role::Experts, &[1408, 2048, 64])),
            (GgmlType::Q8_0, Some(GgmlType::Q6_K))
        );
        let r = Recipe::new(&db, "bf16", &[]).unwrap();
        assert_eq!(r.choose(&t(Role::KeepF32, &[64])), (GgmlType::F32, None));
        assert_eq!(r.choose(&t(Role::Attn, &[64, 64])), (GgmlType::BF16, None));
        assert!(parse_type("q8_K").is_err());
        assert_eq!(parse_type("Q4_K").unwrap(), GgmlType::Q4_K);
    }
}
