//! The tensor list of a DeepSeek-VL2 checkpoint: every Hugging Face name with its shape
//! (docs/DEEPSEEK-VL2.md §2) and how its random values are drawn.
//!
//! Hugging Face tensor names are the *input* format of the converter, not GGUF names, so they are
//! spelled here (the converter's `mapping.rs` is the other place that knows them). The scales
//! follow the fixture generator (tests/fixtures/README.md "The two models") so that a synthetic
//! model's activations stay O(1): linear weights N(0, 1/fan_in), the router ×2 and lm_head ×3,
//! norm scales 1 + N(0, 0.1), biases N(0, 0.02), embeddings and tile tags N(0, 1), `pos_embed`
//! N(0, 0.2), the noaux_tc selection bias N(0, 0.1). With `--router-skew` each router row gets a
//! factor on its spread and the selection bias is zero ([`skew`]).

use std::sync::Arc;

use super::rng::{name_hash, Draw};
use super::skew;
use super::spec::{Attention, ModelSpec, Routing, DOWNSAMPLE_RATIO};

/// How the values of one tensor are drawn (all approximately Gaussian).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `mean + std * N(0, 1)`.
    Normal { mean: f32, std: f32 },
}

impl Init {
    /// N(0, std²).
    pub fn normal(std: f32) -> Init {
        Init::Normal { mean: 0.0, std }
    }
    /// A Linear/Conv weight with `fan_in` inputs, times `gain`.
    fn linear(fan_in: usize, gain: f32) -> Init {
        Init::normal(gain / (fan_in.max(1) as f32).sqrt())
    }
    /// A norm scale: 1 + N(0, 0.1²).
    fn norm() -> Init {
        Init::Normal {
            mean: 1.0,
            std: 0.1,
        }
    }
    /// A bias: N(0, 0.02²).
    fn bias() -> Init {
        Init::normal(0.02)
    }
}

/// One tensor to generate (stored as bf16).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// Per-row factors on the spread (rows = first dimension): the skewed router
    /// (`--router-skew`, [`skew`]); `None` = every row drawn alike.
    pub row_scales: Option<Arc<[f32]>>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize], init: Init) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            init,
            row_scales: None,
        }
    }

    /// How this tensor's values are drawn for `seed`.
    pub fn draw(&self, seed: u64) -> Draw<'_> {
        let row_len = self.shape.iter().skip(1).product::<usize>();
        Draw {
            seed,
            tensor: name_hash(&self.name),
            init: self.init,
            row_scales: self.row_scales.as_deref().map(|s| (row_len, s)),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes of bf16 data.
    pub fn bytes(&self) -> u64 {
        self.numel() * 2
    }
}

/// Appends `{prefix}.weight` [out, in] and, when `bias`, `{prefix}.bias` [out].
fn linear(out: &mut Vec<TensorSpec>, prefix: &str, n_out: usize, n_in: usize, bias: bool) {
    out.push(TensorSpec::new(
        format!("{prefix}.weight"),
        &[n_out, n_in],
        Init::linear(n_in, 1.0),
    ));
    if bias {
        out.push(TensorSpec::new(
            format!("{prefix}.bias"),
            &[n_out],
            Init::bias(),
        ));
    }
}

/// Appends a LayerNorm's `weight` and `bias` [n].
fn layer_norm(out: &mut Vec<TensorSpec>, prefix: &str, n: usize) {
    out.push(TensorSpec::new(
        format!("{prefix}.weight"),
        &[n],
        Init::norm(),
    ));
    out.push(TensorSpec::new(
        format!("{prefix}.bias"),
        &[n],
        Init::bias(),
    ));
}

/// Appends a SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`) of width `inter`.
fn swiglu(out: &mut Vec<TensorSpec>, prefix: &str, d: usize, inter: usize) {
    linear(out, &format!("{prefix}.gate_proj"), inter, d, false);
    linear(out, &format!("{prefix}.up_proj"), inter, d, false);
    linear(out, &format!("{prefix}.down_proj"), d, inter, false);
}

/// Every tensor of the checkpoint, in module order (vision, projector, tile tags, language);
/// the order decides which shard a tensor lands in.
pub fn tensor_list(spec: &ModelSpec) -> Vec<TensorSpec> {
    let mut t = Vec::new();
    // Without vision the whole vision side goes (tower, projector, tile tags): a text-only
    // checkpoint, which the converter turns into the language-model GGUF alone.
    if spec.with_vision {
        vision(&mut t, spec);
        projector(&mut t, spec);
    }
    language(&mut t, spec);
    t
}

/// SigLIP tower in timm naming (§2.3), including the unused `attn_pool` head.
fn vision(t: &mut Vec<TensorSpec>, spec: &ModelSpec) {
    let v = &spec.vision;
    let w = v.width;
    let p = v.patch_size;
    let n_patches = spec.grid() * spec.grid();
    t.push(TensorSpec::new(
        "vision.patch_embed.proj.weight",
        &[w, 3, p, p],
        Init::linear(3 * p * p, 1.0),
    ));
    t.push(TensorSpec::new(
        "vision.patch_embed.proj.bias",
        &[w],
        Init::bias(),
    ));
    t.push(TensorSpec::new(
        "vision.pos_embed",
        &[1, n_patches, w],
        Init::normal(0.2),
    ));
    for i in 0..v.layers {
        let b = format!("vision.blocks.{i}");
        layer_norm(t, &format!("{b}.norm1"), w);
        linear(t, &format!("{b}.attn.qkv"), 3 * w, w, true);
        linear(t, &format!("{b}.attn.proj"), w, w, true);
        layer_norm(t, &format!("{b}.norm2"), w);
        linear(t, &format!("{b}.mlp.fc1"), v.mlp_dim, w, true);
        linear(t, &format!("{b}.mlp.fc2"), w, v.mlp_dim, true);
    }
    layer_norm(t, "vision.norm", w);
    // timm's MAP head (`global_pool='map'`), built but never run (`ignore_head=True`).
    t.push(TensorSpec::new(
        "vision.attn_pool.latent",
        &[1, 1, w],
        Init::linear(w, 1.0),
    ));
    linear(t, "vision.attn_pool.q", w, w, true);
    linear(t, "vision.attn_pool.kv", 2 * w, w, true);
    linear(t, "vision.attn_pool.proj", w, w, true);
    layer_norm(t, "vision.attn_pool.norm", w);
    linear(t, "vision.attn_pool.mlp.fc1", v.mlp_dim, w, true);
    linear(t, "vision.attn_pool.mlp.fc2", w, v.mlp_dim, true);
}

/// downsample_mlp_gelu projector (§2.2) and the two learned tile tags (§2.1).
fn projector(t: &mut Vec<TensorSpec>, spec: &ModelSpec) {
    let n = spec.language.hidden_size;
    let input = spec.vision.width * DOWNSAMPLE_RATIO * DOWNSAMPLE_RATIO;
    linear(t, "projector.layers.0", n, input, true);
    linear(t, "projector.layers.2", n, n, true);
    t.push(TensorSpec::new("image_newline", &[n], Init::normal(1.0)));
    t.push(TensorSpec::new("view_seperator", &[n], Init::normal(1.0)));
}

/// The DeepSeek-V2 language model (§2.4).
fn language(t: &mut Vec<TensorSpec>, spec: &ModelSpec) {
    let l = &spec.language;
    let d = l.hidden_size;
    let h = l.num_attention_heads;
    // Router row factors by popularity rank, fitted once for all layers.
    let skew_by_rank = (spec.router_skew > 0.0)
        .then(|| skew::fit_scales(l.n_routed_experts, l.num_experts_per_tok, spec.router_skew));
    t.push(TensorSpec::new(
        "language.model.embed_tokens.weight",
        &[l.vocab_size, d],
        Init::normal(1.0),
    ));
    for il in 0..l.num_hidden_layers {
        let p = format!("language.model.layers.{il}");
        t.push(TensorSpec::new(
            format!("{p}.input_layernorm.weight"),
            &[d],
            Init::norm(),
        ));
        match l.attention {
            Attention::Mha => {
                let hd = h * (d / h);
                linear(t, &format!("{p}.self_attn.q_proj"), hd, d, false);
                linear(t, &format!("{p}.self_attn.k_proj"), hd, d, false);
                linear(t, &format!("{p}.self_attn.v_proj"), hd, d, false);
                linear(t, &format!("{p}.self_attn.o_proj"), d, hd, false);
            }
            Attention::Mla {
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
            } => {
                let q_head = qk_nope_head_dim + qk_rope_head_dim;
                linear(t, &format!("{p}.self_attn.q_proj"), h * q_head, d, false);
                linear(
                    t,
                    &format!("{p}.self_attn.kv_a_proj_with_mqa"),
                    kv_lora_rank + qk_rope_head_dim,
                    d,
                    false,
                );
                t.push(TensorSpec::new(
                    format!("{p}.self_attn.kv_a_layernorm.weight"),
                    &[kv_lora_rank],
                    Init::norm(),
                ));
                linear(
                    t,
                    &format!("{p}.self_attn.kv_b_proj"),
                    h * (qk_nope_head_dim + v_head_dim),
                    kv_lora_rank,
                    false,
                );
                linear(
                    t,
                    &format!("{p}.self_attn.o_proj"),
                    d,
                    h * v_head_dim,
                    false,
                );
            }
        }
        t.push(TensorSpec::new(
            format!("{p}.post_attention_layernorm.weight"),
            &[d],
            Init::norm(),
        ));
        // first_k_dense_replace = 1, moe_layer_freq = 1: layer 0 dense, every later layer MoE.
        if il == 0 {
            swiglu(t, &format!("{p}.mlp"), d, l.intermediate_size);
            continue;
        }
        let mut gate = TensorSpec::new(
            format!("{p}.mlp.gate.weight"),
            &[l.n_routed_experts, d],
            Init::linear(d, 2.0),
        );
        if let Some(by_rank) = &skew_by_rank {
            gate.row_scales = Some(skew::router_row_scales(&gate.name, by_rank).into());
        }
        t.push(gate);
        if l.routing == Routing::SigmoidNoauxTc {
            // Under skew the selection bias is zero: the row factors alone set popularity.
            let bias = match skew_by_rank {
                Some(_) => Init::normal(0.0),
                None => Init::normal(0.1),
            };
            t.push(TensorSpec::new(
                format!("{p}.mlp.gate.e_score_correction_bias"),
                &[l.n_routed_experts],
                bias,
            ));
        }
        for e in 0..l.n_routed_experts {
            swiglu(
                t,
                &format!("{p}.mlp.experts.{e}"),
                d,
                l.moe_intermediate_size,
            );
        }
        swiglu(
            t,
            &format!("{p}.mlp.shared_experts"),
            d,
            l.moe_intermediate_size * l.n_shared_experts,
        );
    }
    t.push(TensorSpec::new(
        "language.model.norm.weight",
        &[d],
        Init::norm(),
    ));
    t.push(TensorSpec::new(
        "language.lm_head.weight",
        &[l.vocab_size, d],
        Init::linear(d, 3.0),
    ));
}

#[cfg(test)]
mod tests {
    use super::super::spec::Variant;
    use super::*;

    fn params(v: Variant, vision: bool) -> u64 {
        tensor_list(&ModelSpec::new(v, None, vision))
            .iter()
            .map(TensorSpec::numel)
            .sum()
    }

    /// Parameter totals of docs/DEEPSEEK-VL2.md §12.1 (given there to 3 decimals of a billion).
    #[test]
    fn parameter_counts_match_the_spec() {
        let b = |n: u64| (n as f64 / 1e9 * 1000.0).round() / 1000.0;
        assert_eq!(b(params(Variant::Tiny, true)), 3.371);
        assert_eq!(b(params(Variant::Small, true)), 16.148);
        assert_eq!(b(params(Variant::Vl2, true)), 27.480);
        // The vision side: the tower incl. attn_pool ≈ 0.428 B (identical in all variants),
        // plus Tiny's projector (4·1152 → 1280 → 1280, with biases) and two tile tags.
        let vis = params(Variant::Tiny, true) - params(Variant::Tiny, false);
        let projector = (4 * 1152 * 1280 + 1280) + (1280 * 1280 + 1280) + 2 * 1280;
        assert_eq!(b(vis - projector), 0.428);
    }

    #[test]
    fn names_are_unique() {
        for v in Variant::ALL {
            let list = tensor_list(&ModelSpec::new(v, Some(3), true));
            let mut names: Vec<_> = list.iter().map(|t| &t.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), list.len());
        }
    }

    #[test]
    fn fixture_names_are_a_subset_pattern() {
        // Every tensor name of the MHA fixture (same flavour as Tiny) exists in a 3-layer Tiny.
        let idx: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/tiny-mha/hf/model.safetensors.index.json"
        ))
        .unwrap();
        let ours: std::collections::BTreeSet<String> =
            tensor_list(&ModelSpec::new(Variant::Tiny, Some(3), true))
                .into_iter()
                .map(|t| t.name)
                .collect();
        let theirs: std::collections::BTreeSet<String> = idx["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|n| !n.contains(".experts.") || n.contains(".experts.0."))
            .cloned()
            .collect();
        let missing: Vec<_> = theirs.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "fixture names we do not write: {missing:?}"
        );
    }
}
