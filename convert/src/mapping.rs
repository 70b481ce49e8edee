//! Hugging Face tensor names → GGUF tensor names, shapes and transforms.
//!
//! The mapping is a table: one row per tensor kind, with the expected checkpoint shape (from
//! the config, so a mismatched checkpoint fails here, before any writing) and the transform the
//! writer applies. Names come only from `quant::schema`. Every checkpoint tensor must be
//! consumed by a row or be in [`SKIPPED_PREFIXES`]; anything else is an error.
//!
//! Shapes: checkpoint shapes are PyTorch order (slowest first); GGUF `ne` is fastest first,
//! i.e. the reversed shape (docs/DEEPSEEK-VL2.md §9.7, pitfall 44).

use std::collections::BTreeSet;

use quant::schema::{tensor as t, vtensor as vt};

use crate::error::{ConvertError, Result};
use crate::hf_config::VlConfig;
use crate::safetensors::Dtype;
use crate::source::TensorSource;

/// Checkpoint tensors deliberately not converted: the SigLIP MAP head, built by the
/// reference but never run (`ignore_head: true`, §1.2).
pub const SKIPPED_PREFIXES: &[&str] = &["vision.attn_pool."];

/// What a tensor is, for the quantization recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// token_embd.
    Embd,
    /// output (lm_head).
    Output,
    /// Attention matrices (q, k, v, o, MLA projections).
    Attn,
    /// Dense MLP of the leading dense layer(s).
    Ffn,
    /// Shared experts.
    Shexp,
    /// Routed-expert stacks.
    Experts,
    /// Vision-tower matrices.
    Vision,
    /// Projector matrices (mm.0, mm.2).
    Projector,
    /// Norms, biases, router weights, exp_probs_b, position embedding, tile tags: stay f32
    /// under quantized recipes.
    KeepF32,
}

impl Role {
    /// Short name for plan listings.
    pub fn name(self) -> &'static str {
        match self {
            Role::Embd => "embd",
            Role::Output => "output",
            Role::Attn => "attn",
            Role::Ffn => "ffn",
            Role::Shexp => "shexp",
            Role::Experts => "experts",
            Role::Vision => "vision",
            Role::Projector => "projector",
            Role::KeepF32 => "f32",
        }
    }
}

/// How an output tensor is produced from checkpoint tensors. Output rows have `ne[0]`
/// elements; the writer asks for rows in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The tensor as stored (its reversed shape, leading 1s dropped).
    Copy(String),
    /// Rows permuted per head from half-split RoPE pairs (i, i + d/2) to adjacent pairs
    /// (2i, 2i+1): new row 2i = old row i, new row 2i+1 = old row i + d/2 (§7.5), as
    /// llama.cpp's converter permutes LLaMA q/k.
    PermuteRope { name: String, n_head: usize },
    /// Expert matrices stacked in expert order into one 3-D tensor.
    Stack(Vec<String>),
    /// `attn_k_b` from `kv_b_proj` [H·(nope+v), kv_lora]: per head the nope rows,
    /// transposed, i.e. torch [H, kv_lora, nope].
    KvbK {
        name: String,
        n_head: usize,
        nope: usize,
        v: usize,
        kv_lora: usize,
    },
    /// `attn_v_b`: per head the v rows, i.e. torch [H, v, kv_lora].
    KvbV {
        name: String,
        n_head: usize,
        nope: usize,
        v: usize,
        kv_lora: usize,
    },
}

impl Source {
    /// Checkpoint tensors this source reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Source::Copy(n) | Source::PermuteRope { name: n, .. } => vec![n],
            Source::KvbK { name, .. } | Source::KvbV { name, .. } => vec![name],
            Source::Stack(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// Short description for plan listings.
    pub fn describe(&self) -> String {
        match self {
            Source::Copy(n) => n.clone(),
            Source::PermuteRope { name, .. } => format!("{name} (rope rows permuted)"),
            Source::Stack(v) => format!(
                "{} .. ({} experts stacked)",
                v.first().map(String::as_str).unwrap_or(""),
                v.len()
            ),
            Source::KvbK { name, .. } => format!("{name} (k part, transposed per head)"),
            Source::KvbV { name, .. } => format!("{name} (v part)"),
        }
    }
}

/// One output tensor (type chosen later by the recipe).
#[derive(Debug, Clone, PartialEq)]
pub struct MappedTensor {
    pub name: String,
    /// ggml dimensions, fastest first.
    pub ne: Vec<u64>,
    pub role: Role,
    pub source: Source,
}

/// The two output files' tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub language: Vec<MappedTensor>,
    /// `None` for a text-only checkpoint ([`is_text_only`]): there is no mmproj to write.
    pub mmproj: Option<Vec<MappedTensor>>,
}

/// Names of the checkpoint tensors that go to the mmproj besides `vision.*` and `projector.*`.
const TILE_TAGS: [&str; 2] = ["image_newline", "view_seperator"];

/// Whether `name` is part of the vision side (tower, projector, tile tags).
fn is_vision_side(name: &str) -> bool {
    name.starts_with("vision.") || name.starts_with("projector.") || TILE_TAGS.contains(&name)
}

/// A text-only checkpoint: no tensor of the vision side at all (what `pocketvl synth
/// --no-vision` writes, or a checkpoint stripped to its language model). It converts to the
/// language-model GGUF alone; a checkpoint with only part of the vision side is an error (the
/// missing tensors are named).
pub fn is_text_only(ck: &dyn TensorSource) -> bool {
    !ck.names().any(is_vision_side)
}

/// Builds the table rows, checking each source shape.
struct Builder<'a> {
    ck: &'a dyn TensorSource,
    used: BTreeSet<String>,
    out: Vec<MappedTensor>,
}

impl Builder<'_> {
    /// Checks that `hf` exists with `shape` (PyTorch order) and marks it used.
    fn expect(&mut self, hf: &str, shape: &[usize]) -> Result<()> {
        let (found, dtype) = self.ck.info(hf)?;
        if found != shape {
            return Err(ConvertError::ShapeMismatch {
                tensor: hf.to_string(),
                expected: shape.to_vec(),
                found: found.to_vec(),
            });
        }
        if !dtype.is_float() {
            return Err(ConvertError::DtypeMismatch {
                tensor: hf.to_string(),
                dtype: dtype.name(),
                wanted: "a float dtype",
            });
        }
        self.used.insert(hf.to_string());
        Ok(())
    }

    fn push(&mut self, name: String, ne: Vec<usize>, role: Role, source: Source) {
        self.out.push(MappedTensor {
            name,
            ne: ne.into_iter().map(|d| d as u64).collect(),
            role,
            source,
        });
    }

    /// A plain copy: checkpoint `shape` → ne = reversed shape without leading 1s.
    fn copy(&mut self, gguf: String, hf: &str, shape: &[usize], role: Role) -> Result<()> {
        self.expect(hf, shape)?;
        let mut ne: Vec<usize> = shape.iter().rev().copied().collect();
        while ne.len() > 1 && ne.last() == Some(&1) {
            ne.pop();
        }
        self.push(gguf, ne, role, Source::Copy(hf.to_string()));
        Ok(())
    }
}

/// Maps the whole checkpoint; errors on a missing, misshapen or unmapped tensor.
pub fn map_checkpoint(cfg: &VlConfig, ck: &dyn TensorSource) -> Result<Mapping> {
    let mut b = Builder {
        ck,
        used: BTreeSet::new(),
        out: Vec::new(),
    };
    map_language(cfg, &mut b)?;
    let language = std::mem::take(&mut b.out);
    let mmproj = if is_text_only(ck) {
        None
    } else {
        map_vision(cfg, &mut b)?;
        Some(std::mem::take(&mut b.out))
    };

    let unmapped: Vec<String> = ck
        .names()
        .filter(|n| !b.used.contains(*n) && !SKIPPED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .map(str::to_string)
        .collect();
    if !unmapped.is_empty() {
        return Err(ConvertError::UnmappedTensors { names: unmapped });
    }
    Ok(Mapping { language, mmproj })
}

fn map_language(cfg: &VlConfig, b: &mut Builder<'_>) -> Result<()> {
    let l = &cfg.language;
    let (d, v, h) = (l.hidden_size, l.vocab_size, l.num_attention_heads);
    let p = "language.model";
    // | GGUF                      | HF                                   | role    |
    // | token_embd.weight         | language.model.embed_tokens.weight   | embd    |
    // | output_norm.weight        | language.model.norm.weight           | f32     |
    // | output.weight             | language.lm_head.weight (not tied)   | output  |
    b.copy(
        t::TOKEN_EMBD.into(),
        &format!("{p}.embed_tokens.weight"),
        &[v, d],
        Role::Embd,
    )?;
    for il in 0..l.num_hidden_layers {
        let hf = |s: &str| format!("{p}.layers.{il}.{s}");
        let g = |s: &str| t::blk(il, s);
        // | blk.N.attn_norm | input_layernorm          | f32 |
        // | blk.N.ffn_norm  | post_attention_layernorm | f32 |
        b.copy(
            g(t::ATTN_NORM),
            &hf("input_layernorm.weight"),
            &[d],
            Role::KeepF32,
        )?;
        b.copy(
            g(t::FFN_NORM),
            &hf("post_attention_layernorm.weight"),
            &[d],
            Role::KeepF32,
        )?;
        if l.use_mla {
            map_mla(cfg, b, il)?;
        } else {
            // MHA (Tiny): q/k rows permuted per head for NORM (adjacent-pair) RoPE.
            // | blk.N.attn_q / attn_k | self_attn.q_proj / k_proj, rope rows permuted |
            // | blk.N.attn_v          | self_attn.v_proj                              |
            // | blk.N.attn_output     | self_attn.o_proj                              |
            let hd = l.head_dim();
            for (gn, hn, permute) in [
                (t::ATTN_Q, "self_attn.q_proj.weight", true),
                (t::ATTN_K, "self_attn.k_proj.weight", true),
                (t::ATTN_V, "self_attn.v_proj.weight", false),
            ] {
                let rows = if gn == t::ATTN_Q {
                    h * hd
                } else {
                    l.num_key_value_heads * hd
                };
                let n_head = if gn == t::ATTN_Q {
                    h
                } else {
                    l.num_key_value_heads
                };
                b.expect(&hf(hn), &[rows, d])?;
                let source = if permute {
                    Source::PermuteRope {
                        name: hf(hn),
                        n_head,
                    }
                } else {
                    Source::Copy(hf(hn))
                };
                b.push(g(gn), vec![d, rows], Role::Attn, source);
            }
            b.copy(
                g(t::ATTN_OUTPUT),
                &hf("self_attn.o_proj.weight"),
                &[d, h * hd],
                Role::Attn,
            )?;
        }
        if l.is_moe_layer(il) {
            map_moe(cfg, b, il)?;
        } else {
            // | blk.N.ffn_gate / ffn_up / ffn_down | mlp.gate_proj / up_proj / down_proj | ffn |
            let i = l.intermediate_size;
            b.copy(
                g(t::FFN_GATE),
                &hf("mlp.gate_proj.weight"),
                &[i, d],
                Role::Ffn,
            )?;
            b.copy(g(t::FFN_UP), &hf("mlp.up_proj.weight"), &[i, d], Role::Ffn)?;
            b.copy(
                g(t::FFN_DOWN),
                &hf("mlp.down_proj.weight"),
                &[d, i],
                Role::Ffn,
            )?;
        }
    }
    b.copy(
        t::OUTPUT_NORM.into(),
        &format!("{p}.norm.weight"),
        &[d],
        Role::KeepF32,
    )?;
    b.copy(
        t::OUTPUT.into(),
        "language.lm_head.weight",
        &[v, d],
        Role::Output,
    )?;
    Ok(())
}

/// MLA attention (Small, VL2; §2.4, §9.7).
fn map_mla(cfg: &VlConfig, b: &mut Builder<'_>, il: usize) -> Result<()> {
    let l = &cfg.language;
    let (d, h) = (l.hidden_size, l.num_attention_heads);
    let (nope, rope, vd, kvl) = (
        l.qk_nope_head_dim,
        l.qk_rope_head_dim,
        l.v_head_dim,
        l.kv_lora_rank,
    );
    let hf = |s: &str| format!("language.model.layers.{il}.self_attn.{s}");
    let g = |s: &str| t::blk(il, s);
    let q_rows = h * (nope + rope);
    match l.q_lora_rank {
        // | blk.N.attn_q | q_proj [H·(nope+rope), D], no permutation (NORM rope is native) |
        None => b.copy(g(t::ATTN_Q), &hf("q_proj.weight"), &[q_rows, d], Role::Attn)?,
        // | blk.N.attn_q_a / attn_q_a_norm / attn_q_b | q_a_proj / q_a_layernorm / q_b_proj |
        Some(r) => {
            b.copy(g(t::ATTN_Q_A), &hf("q_a_proj.weight"), &[r, d], Role::Attn)?;
            b.copy(
                g(t::ATTN_Q_A_NORM),
                &hf("q_a_layernorm.weight"),
                &[r],
                Role::KeepF32,
            )?;
            b.copy(
                g(t::ATTN_Q_B),
                &hf("q_b_proj.weight"),
                &[q_rows, r],
                Role::Attn,
            )?;
        }
    }
    // | blk.N.attn_kv_a_mqa  | kv_a_proj_with_mqa [kv_lora + rope, D] (latent first) |
    // | blk.N.attn_kv_a_norm | kv_a_layernorm [kv_lora]                            |
    b.copy(
        g(t::ATTN_KV_A_MQA),
        &hf("kv_a_proj_with_mqa.weight"),
        &[kvl + rope, d],
        Role::Attn,
    )?;
    b.copy(
        g(t::ATTN_KV_A_NORM),
        &hf("kv_a_layernorm.weight"),
        &[kvl],
        Role::KeepF32,
    )?;
    // | blk.N.attn_k_b | kv_b_proj rows [0, nope) of each head, transposed: ne [nope, kv_lora, H] |
    // | blk.N.attn_v_b | kv_b_proj rows [nope, nope+v) of each head:       ne [kv_lora, v, H]    |
    let kvb = hf("kv_b_proj.weight");
    b.expect(&kvb, &[h * (nope + vd), kvl])?;
    let (name, n_head) = (kvb.clone(), h);
    b.push(
        g(t::ATTN_K_B),
        vec![nope, kvl, h],
        Role::Attn,
        Source::KvbK {
            name: name.clone(),
            n_head,
            nope,
            v: vd,
            kv_lora: kvl,
        },
    );
    b.push(
        g(t::ATTN_V_B),
        vec![kvl, vd, h],
        Role::Attn,
        Source::KvbV {
            name,
            n_head,
            nope,
            v: vd,
            kv_lora: kvl,
        },
    );
    // | blk.N.attn_output | o_proj [D, H·v] |
    b.copy(
        g(t::ATTN_OUTPUT),
        &hf("o_proj.weight"),
        &[d, h * vd],
        Role::Attn,
    )?;
    Ok(())
}

/// A MoE layer: router, optional selection bias, stacked routed experts, shared experts.
fn map_moe(cfg: &VlConfig, b: &mut Builder<'_>, il: usize) -> Result<()> {
    let l = &cfg.language;
    let Some(m) = &l.moe else { return Ok(()) };
    let (d, e, f) = (l.hidden_size, m.n_routed_experts, m.moe_intermediate_size);
    let hf = |s: &str| format!("language.model.layers.{il}.mlp.{s}");
    let g = |s: &str| t::blk(il, s);
    // | blk.N.ffn_gate_inp | mlp.gate.weight [E, D]                              | f32 |
    // | blk.N.exp_probs_b  | mlp.gate.e_score_correction_bias [E] (noaux_tc only) | f32 |
    b.copy(
        g(t::FFN_GATE_INP),
        &hf("gate.weight"),
        &[e, d],
        Role::KeepF32,
    )?;
    if m.topk_method == "noaux_tc" {
        b.copy(
            g(t::EXP_PROBS_B),
            &hf("gate.e_score_correction_bias"),
            &[e],
            Role::KeepF32,
        )?;
    }
    // | blk.N.ffn_{gate,up}_exps | experts.{0..E}.{gate,up}_proj [F, D] stacked: ne [D, F, E] |
    // | blk.N.ffn_down_exps      | experts.{0..E}.down_proj [D, F] stacked:      ne [F, D, E] |
    for (gn, proj, shape) in [
        (t::FFN_GATE_EXPS, "gate_proj", [f, d]),
        (t::FFN_UP_EXPS, "up_proj", [f, d]),
        (t::FFN_DOWN_EXPS, "down_proj", [d, f]),
    ] {
        let mut names = Vec::with_capacity(e);
        for x in 0..e {
            let n = hf(&format!("experts.{x}.{proj}.weight"));
            b.expect(&n, &shape)?;
            names.push(n);
        }
        b.push(
            g(gn),
            vec![shape[1], shape[0], e],
            Role::Experts,
            Source::Stack(names),
        );
    }
    // | blk.N.ffn_{gate,up,down}_shexp | shared_experts.* (width F·n_shared) | shexp |
    if m.n_shared_experts > 0 {
        let s = f * m.n_shared_experts;
        b.copy(
            g(t::FFN_GATE_SHEXP),
            &hf("shared_experts.gate_proj.weight"),
            &[s, d],
            Role::Shexp,
        )?;
        b.copy(
            g(t::FFN_UP_SHEXP),
            &hf("shared_experts.up_proj.weight"),
            &[s, d],
            Role::Shexp,
        )?;
        b.copy(
            g(t::FFN_DOWN_SHEXP),
            &hf("shared_experts.down_proj.weight"),
            &[d, s],
            Role::Shexp,
        )?;
    }
    Ok(())
}

/// Vision tower, projector and tile tags (the mmproj file; §9.9).
fn map_vision(cfg: &VlConfig, b: &mut Builder<'_>) -> Result<()> {
    let v = &cfg.vision;
    let (w, ps, grid, mlp) = (v.width, v.patch_size, v.grid(), v.mlp_dim());
    let n = cfg.projector.n_embed;
    let pin = cfg.projector.input_dim * cfg.projector.downsample_ratio.pow(2);
    // | v.patch_embd.weight / .bias | vision.patch_embed.proj [W, 3, P, P] / [W] |
    // | v.position_embd.weight      | vision.pos_embed [1, grid², W]             |
    b.copy(
        vt::PATCH_EMBD_W.into(),
        "vision.patch_embed.proj.weight",
        &[w, 3, ps, ps],
        Role::Vision,
    )?;
    b.copy(
        vt::PATCH_EMBD_B.into(),
        "vision.patch_embed.proj.bias",
        &[w],
        Role::KeepF32,
    )?;
    b.copy(
        vt::POSITION_EMBD.into(),
        "vision.pos_embed",
        &[1, grid * grid, w],
        Role::KeepF32,
    )?;
    for il in 0..v.layers {
        let hf = |s: &str| format!("vision.blocks.{il}.{s}");
        let g = |s: &str| vt::vblk(il, s);
        // | v.blk.N.ln1 / ln2        | blocks.N.norm1 / norm2       | f32    |
        // | v.blk.N.attn_qkv         | blocks.N.attn.qkv [3W, W]    | vision |
        // | v.blk.N.attn_out         | blocks.N.attn.proj [W, W]    | vision |
        // | v.blk.N.ffn_up / ffn_down| blocks.N.mlp.fc1 / fc2       | vision |
        for (gw, gb, hn, rows, cols) in [
            (vt::LN1_W, vt::LN1_B, "norm1", 0, w),
            (vt::LN2_W, vt::LN2_B, "norm2", 0, w),
            (vt::ATTN_QKV_W, vt::ATTN_QKV_B, "attn.qkv", 3 * w, w),
            (vt::ATTN_OUT_W, vt::ATTN_OUT_B, "attn.proj", w, w),
            (vt::FFN_UP_W, vt::FFN_UP_B, "mlp.fc1", mlp, w),
            (vt::FFN_DOWN_W, vt::FFN_DOWN_B, "mlp.fc2", w, mlp),
        ] {
            if rows == 0 {
                b.copy(g(gw), &hf(&format!("{hn}.weight")), &[cols], Role::KeepF32)?;
                b.copy(g(gb), &hf(&format!("{hn}.bias")), &[cols], Role::KeepF32)?;
            } else {
                b.copy(
                    g(gw),
                    &hf(&format!("{hn}.weight")),
                    &[rows, cols],
                    Role::Vision,
                )?;
                b.copy(g(gb), &hf(&format!("{hn}.bias")), &[rows], Role::KeepF32)?;
            }
        }
    }
    // | v.post_ln.weight / .bias | vision.norm (final LayerNorm, used) | f32 |
    b.copy(
        vt::POST_LN_W.into(),
        "vision.norm.weight",
        &[w],
        Role::KeepF32,
    )?;
    b.copy(
        vt::POST_LN_B.into(),
        "vision.norm.bias",
        &[w],
        Role::KeepF32,
    )?;
    // | mm.0 | projector.layers.0 [N, 4·W_in] (columns in F.unfold channel-major order) |
    // | mm.2 | projector.layers.2 [N, N]                                                |
    b.copy(
        vt::MM0_W.into(),
        "projector.layers.0.weight",
        &[n, pin],
        Role::Projector,
    )?;
    b.copy(
        vt::MM0_B.into(),
        "projector.layers.0.bias",
        &[n],
        Role::KeepF32,
    )?;
    b.copy(
        vt::MM2_W.into(),
        "projector.layers.2.weight",
        &[n, n],
        Role::Projector,
    )?;
    b.copy(
        vt::MM2_B.into(),
        "projector.layers.2.bias",
        &[n],
        Role::KeepF32,
    )?;
    // | v.image_newline / v.view_seperator | image_newline / view_seperator [N] | f32 |
    b.copy(
        vt::IMAGE_NEWLINE.into(),
        "image_newline",
        &[n],
        Role::KeepF32,
    )?;
    b.copy(
        vt::VIEW_SEPERATOR.into(),
        "view_seperator",
        &[n],
        Role::KeepF32,
    )?;
    Ok(())
}

/// The element ranges of checkpoint tensors that [`fill_rows`] reads for output rows
/// `row0 .. row0 + n_rows` of `m`: (name, first element, element count), one per input tensor
/// touched (one per expert for a stack). Each range covers every read `fill_rows` makes of that
/// tensor for those rows, so the read-ahead can load exactly these bytes first.
pub fn input_spans<'a>(
    ck: &dyn TensorSource,
    m: &'a MappedTensor,
    row0: usize,
    n_rows: usize,
) -> Result<Vec<(&'a str, usize, usize)>> {
    let ne0 = m.ne.first().copied().unwrap_or(1) as usize;
    if ne0 == 0 || n_rows == 0 {
        return Ok(Vec::new());
    }
    // The rows [first, end) of a per-head layout touched by output rows of heads h0..=h1.
    let heads = |per_head: usize| {
        (
            row0 / per_head.max(1),
            (row0 + n_rows - 1) / per_head.max(1),
        )
    };
    Ok(match &m.source {
        Source::Copy(name) => vec![(name.as_str(), row0 * ne0, n_rows * ne0)],
        Source::PermuteRope { name, n_head } => {
            let rows_total = ck.info(name)?.0.first().copied().unwrap_or(0);
            let hd = (rows_total / (*n_head).max(1)).max(1);
            let (h0, h1) = heads(hd);
            vec![(name.as_str(), h0 * hd * ne0, (h1 + 1 - h0) * hd * ne0)]
        }
        Source::Stack(names) => {
            let rows_per = (m.ne.get(1).copied().unwrap_or(1) as usize).max(1);
            let mut spans = Vec::new();
            let mut k = 0;
            while k < n_rows {
                let r = row0 + k;
                let (e, er) = (r / rows_per, r % rows_per);
                let run = (rows_per - er).min(n_rows - k);
                if let Some(name) = names.get(e) {
                    spans.push((name.as_str(), er * ne0, run * ne0));
                }
                k += run;
            }
            spans
        }
        Source::KvbV { name, nope, v, .. } => {
            let (h0, h1) = heads(*v);
            let first = h0 * (nope + v) + nope;
            vec![(
                name.as_str(),
                first * ne0,
                (h1 * (nope + v) + nope + v - first) * ne0,
            )]
        }
        Source::KvbK {
            name,
            nope,
            v,
            kv_lora,
            ..
        } => {
            let (h0, h1) = heads(*kv_lora);
            let first = h0 * (nope + v) * kv_lora;
            let end = (h1 * (nope + v) + nope) * kv_lora;
            vec![(name.as_str(), first, end - first)]
        }
    })
}

/// Where output rows of a mapped tensor come from.
enum RowsFrom<'m> {
    /// A run of stored rows: input tensor, first element, how many consecutive output rows
    /// it holds.
    Stored(&'m str, usize, usize),
    /// `KvbK`'s transposed rows (the source's fields).
    Transposed {
        name: &'m str,
        nope: usize,
        v: usize,
        kv_lora: usize,
    },
}

/// Where output row `r` of `m` (and up to `left - 1` rows after it) come from.
fn stored_run<'m>(
    ck: &dyn TensorSource,
    m: &'m MappedTensor,
    r: usize,
    left: usize,
) -> Result<RowsFrom<'m>> {
    let ne0 = m.ne.first().copied().unwrap_or(1) as usize;
    let (name, start, run) = match &m.source {
        Source::Copy(name) => (name.as_str(), r * ne0, left),
        Source::PermuteRope { name, n_head } => {
            let rows_total = ck.info(name)?.0.first().copied().unwrap_or(0);
            let hd = rows_total / (*n_head).max(1);
            let (head, j) = (r / hd.max(1), r % hd.max(1));
            let half = hd / 2;
            let old = head * hd
                + if j.is_multiple_of(2) {
                    j / 2
                } else {
                    half + j / 2
                };
            (name.as_str(), old * ne0, 1)
        }
        // An expert's rows are contiguous in its matrix: one run per expert touched.
        Source::Stack(names) => {
            let rows_per = (m.ne.get(1).copied().unwrap_or(1) as usize).max(1);
            let (e, er) = (r / rows_per, r % rows_per);
            let name = names.get(e).ok_or_else(|| {
                ConvertError::MissingTensor(format!("{}: expert row {r}", m.name))
            })?;
            (name.as_str(), er * ne0, (rows_per - er).min(left))
        }
        Source::KvbV { name, nope, v, .. } => {
            let (head, dv) = (r / (*v).max(1), r % (*v).max(1));
            (name.as_str(), (head * (nope + v) + nope + dv) * ne0, 1)
        }
        Source::KvbK {
            name,
            nope,
            v,
            kv_lora,
            ..
        } => {
            return Ok(RowsFrom::Transposed {
                name,
                nope: *nope,
                v: *v,
                kv_lora: *kv_lora,
            })
        }
    };
    Ok(RowsFrom::Stored(name, start, run))
}

/// Produces output rows `[row0, row0 + dst.len() / row_bytes)` of a mapped tensor as `ty`
/// bytes straight from the stored values (`quant::block::convert_row`: no f32 rows), or
/// returns `false` having written nothing useful when they cannot be (a transposing source,
/// a stored dtype without a row converter, values not in memory): [`fill_rows`] and
/// `quantize_row` then make the same bytes.
pub fn convert_rows(
    ck: &dyn TensorSource,
    m: &MappedTensor,
    row0: usize,
    ty: quant::GgmlType,
    dst: &mut [u8],
) -> Result<bool> {
    let ne0 = m.ne.first().copied().unwrap_or(1) as usize;
    let row_bytes = ty.row_bytes(ne0 as u64).unwrap_or(0) as usize;
    if ne0 == 0 || row_bytes == 0 {
        return Ok(false);
    }
    let n_rows = dst.len() / row_bytes;
    let mut k = 0;
    while k < n_rows {
        let RowsFrom::Stored(name, start, run) = stored_run(ck, m, row0 + k, n_rows - k)? else {
            return Ok(false);
        };
        let Some((dtype, src)) = ck.stored(name, start, run * ne0) else {
            return Ok(false);
        };
        let src_ty = match dtype {
            Dtype::Bf16 => quant::GgmlType::BF16,
            Dtype::F16 => quant::GgmlType::F16,
            Dtype::F32 => quant::GgmlType::F32,
            _ => return Ok(false),
        };
        let rows = src.chunks_exact(src.len() / run);
        let out = dst[k * row_bytes..(k + run) * row_bytes].chunks_exact_mut(row_bytes);
        for (s, d) in rows.zip(out) {
            quant::block::convert_row(ty, src_ty, s, d).map_err(|e| ConvertError::Quant {
                context: m.name.clone(),
                message: e.to_string(),
            })?;
        }
        k += run;
    }
    Ok(true)
}

/// Produces output rows `[row0, row0 + out.len() / ne0)` of a mapped tensor as f32.
pub fn fill_rows(
    ck: &dyn TensorSource,
    m: &MappedTensor,
    row0: usize,
    out: &mut [f32],
) -> Result<()> {
    let ne0 = m.ne.first().copied().unwrap_or(1) as usize;
    if ne0 == 0 {
        return Ok(());
    }
    let n_rows = out.len() / ne0;
    let mut k = 0;
    while k < n_rows {
        match stored_run(ck, m, row0 + k, n_rows - k)? {
            RowsFrom::Stored(name, start, run) => {
                ck.read_f32(name, start, &mut out[k * ne0..(k + run) * ne0])?;
                k += run;
            }
            RowsFrom::Transposed {
                name,
                nope,
                v,
                kv_lora,
            } => {
                // Output row (head, c) holds W_UK[head][0..nope][c]: read the head's nope
                // rows once per head touched and transpose.
                let mut block = vec![0f32; nope * kv_lora];
                let mut loaded = usize::MAX;
                for (k, row) in out.chunks_exact_mut(ne0).enumerate() {
                    let r = row0 + k;
                    let (head, c) = (r / kv_lora.max(1), r % kv_lora.max(1));
                    if head != loaded {
                        ck.read_f32(name, head * (nope + v) * kv_lora, &mut block)?;
                        loaded = head;
                    }
                    for (dd, o) in row.iter_mut().enumerate() {
                        *o = block.get(dd * kv_lora + c).copied().unwrap_or(0.0);
                    }
                }
                return Ok(());
            }
        }
    }
    Ok(())
}
