//! Typed language-model hyper-parameters, read once from the GGUF metadata
//! (keys from `quant::schema`; the llama.cpp `deepseek` / `deepseek2`
//! conventions of DEEPSEEK-VL2.md §9.7).

use quant::schema::{self, llm, llm_key, pocketvl, tokenizer};

use super::{LoaderError, ModelFile, Result};

/// Attention flavour of every layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attention {
    /// Plain multi-head attention (DeepSeek-VL2-Tiny, arch `deepseek`).
    Mha {
        n_head_kv: usize,
        head_dim: usize,
        v_head_dim: usize,
    },
    /// Multi-head latent attention (Small and VL2, arch `deepseek2`).
    Mla {
        /// `None`: the query is `attn_q(x)`; else `attn_q_b(norm(attn_q_a(x)))`.
        q_lora_rank: Option<usize>,
        kv_lora_rank: usize,
        /// Non-rotary part of each q/k head.
        nope: usize,
        /// Rotary part of each q head and of the shared k_rope.
        rope: usize,
        v_head_dim: usize,
    },
}

/// How router logits become scores (`expert_gating_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    Softmax,
    Sigmoid,
}

/// How experts are chosen from the scores (`pocketvl.topk_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// Top-k of the scores.
    Greedy,
    /// Top-k of score + correction bias within the best groups (DeepSeek-V3).
    NoauxTc,
}

/// Every hyper-parameter the decoder needs.
#[derive(Clone, Debug)]
pub struct LmHparams {
    pub arch: String,
    pub n_ctx: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_vocab: usize,
    pub n_head: usize,
    /// Width of the dense MLP of the leading layers.
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Rotary dimensions per head (MHA: head_dim; MLA: the rope part).
    pub rope_dim: usize,
    pub attention: Attention,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_expert_shared: usize,
    /// Layers `0..n_leading_dense` use the dense MLP, the others MoE.
    pub n_leading_dense: usize,
    /// Width of one routed expert; shared experts are `n_expert_shared` times wider.
    pub n_ff_exp: usize,
    pub expert_weights_scale: f32,
    pub expert_weights_norm: bool,
    pub gating: Gating,
    pub topk_method: TopkMethod,
    pub n_group: usize,
    pub n_group_used: usize,
    pub bos_id: u32,
    pub eos_id: u32,
    pub image_token_id: Option<u32>,
}

/// The only pair layout pocketvl's files use; llama.cpp's `deepseek` and
/// `deepseek2` apply the same (NORM) rope, so files without the key agree.
const DEFAULT_ROPE_LAYOUT: &str = "norm";
/// llama.cpp's default for `expert_gating_func` when absent: softmax.
const DEFAULT_GATING: u32 = schema::GATING_SOFTMAX;
/// llama.cpp's default for `expert_weights_norm` when absent.
const DEFAULT_WEIGHTS_NORM: bool = false;
/// llama.cpp's default `expert_weights_scale` when absent.
const DEFAULT_WEIGHTS_SCALE: f32 = 1.0;
/// Group limiting is off (one group) unless the file says otherwise.
const DEFAULT_GROUPS: usize = 1;

impl LmHparams {
    /// Reads and checks the hyper-parameters; every missing key is reported
    /// at once, an unknown architecture or value is named.
    pub fn from_file(file: &ModelFile) -> Result<LmHparams> {
        let path = file.path().to_path_buf();
        let mut m = file.meta();
        let arch = m.str(schema::general::ARCHITECTURE);
        m.finish()?;
        let is_mla = match arch.as_str() {
            schema::ARCH_DEEPSEEK => false,
            schema::ARCH_DEEPSEEK2 => true,
            _ => {
                return Err(LoaderError::Architecture {
                    path,
                    found: arch,
                    expected: format!("`{}`, `{}`", schema::ARCH_DEEPSEEK, schema::ARCH_DEEPSEEK2),
                })
            }
        };
        let k = |s: &str| llm_key(&arch, s);
        let mut m = file.meta();
        let n_ctx = m.usize(&k(llm::CONTEXT_LENGTH));
        let n_embd = m.usize(&k(llm::EMBEDDING_LENGTH));
        let n_layer = m.usize(&k(llm::BLOCK_COUNT));
        let n_ff = m.usize(&k(llm::FEED_FORWARD_LENGTH));
        let n_head = m.usize(&k(llm::HEAD_COUNT));
        let n_head_kv = m.usize(&k(llm::HEAD_COUNT_KV));
        let rms_eps = m.f32(&k(llm::RMS_EPS));
        let rope_theta = m.f32(&k(llm::ROPE_FREQ_BASE));
        let rope_dim = m.usize(&k(llm::ROPE_DIMENSION_COUNT));
        let n_expert = m.usize(&k(llm::EXPERT_COUNT));
        let n_expert_used = m.usize(&k(llm::EXPERT_USED_COUNT));
        let n_expert_shared = m.usize(&k(llm::EXPERT_SHARED_COUNT));
        let n_leading_dense = m.usize(&k(llm::LEADING_DENSE_BLOCK_COUNT));
        let n_ff_exp = m.usize(&k(llm::EXPERT_FEED_FORWARD_LENGTH));
        let expert_weights_scale = m
            .opt_f32(&k(llm::EXPERT_WEIGHTS_SCALE))
            .unwrap_or(DEFAULT_WEIGHTS_SCALE);
        let expert_weights_norm = m
            .opt_bool(&k(llm::EXPERT_WEIGHTS_NORM))
            .unwrap_or(DEFAULT_WEIGHTS_NORM);
        let gating_id = m
            .opt_usize(&k(llm::EXPERT_GATING_FUNC))
            .map(|v| v as u32)
            .unwrap_or(DEFAULT_GATING);
        let n_group = m
            .opt_usize(&k(llm::EXPERT_GROUP_COUNT))
            .unwrap_or(DEFAULT_GROUPS);
        let n_group_used = m
            .opt_usize(&k(llm::EXPERT_GROUP_USED_COUNT))
            .unwrap_or(DEFAULT_GROUPS);
        let n_vocab_key = m.opt_usize(&k(llm::VOCAB_SIZE));
        let topk = m.opt_str(pocketvl::TOPK_METHOD);
        let rope_layout = m
            .opt_str(pocketvl::ROPE_LAYOUT)
            .unwrap_or_else(|| DEFAULT_ROPE_LAYOUT.to_string());
        let bos_id = m.u64(tokenizer::BOS_ID) as u32;
        let eos_id = m.u64(tokenizer::EOS_ID) as u32;
        let image_token_id = m.opt_usize(pocketvl::IMAGE_TOKEN_ID).map(|v| v as u32);
        let attention = if is_mla {
            let q_lora = m.opt_usize(&k(llm::Q_LORA_RANK)).unwrap_or(0);
            let kv_lora_rank = m.usize(&k(llm::KV_LORA_RANK));
            let key_length = m.usize(&k(llm::KEY_LENGTH));
            let value_length = m.usize(&k(llm::VALUE_LENGTH));
            let key_mla = m.usize(&k(llm::KEY_LENGTH_MLA));
            let v_head_dim = m.usize(&k(llm::VALUE_LENGTH_MLA));
            if key_length != kv_lora_rank + rope_dim || value_length != kv_lora_rank {
                m.problem(format!(
                    "absorbed-MLA lengths key {key_length}/value {value_length} do not match kv_lora_rank {kv_lora_rank} + rope {rope_dim}"
                ));
            }
            if n_head_kv != 1 {
                m.problem(format!(
                    "MLA files present one kv head, found head_count_kv {n_head_kv}"
                ));
            }
            if key_mla < rope_dim {
                m.problem(format!(
                    "key_length_mla {key_mla} is smaller than the rope dims {rope_dim}"
                ));
            }
            Attention::Mla {
                q_lora_rank: (q_lora > 0).then_some(q_lora),
                kv_lora_rank,
                nope: key_mla.saturating_sub(rope_dim),
                rope: rope_dim,
                v_head_dim,
            }
        } else {
            let head_dim = n_embd.checked_div(n_head).unwrap_or(0);
            let head_dim = m.opt_usize(&k(llm::KEY_LENGTH)).unwrap_or(head_dim);
            let v_head_dim = m.opt_usize(&k(llm::VALUE_LENGTH)).unwrap_or(head_dim);
            Attention::Mha {
                n_head_kv,
                head_dim,
                v_head_dim,
            }
        };
        m.finish()?;

        let unsupported = |key: &str, value: String, why: &str| LoaderError::Unsupported {
            path: file.path().to_path_buf(),
            key: key.to_string(),
            value,
            why: why.to_string(),
        };
        if rope_layout != DEFAULT_ROPE_LAYOUT {
            return Err(unsupported(
                pocketvl::ROPE_LAYOUT,
                rope_layout,
                "only adjacent-pair (`norm`) rope is implemented",
            ));
        }
        let gating = match gating_id {
            schema::GATING_SOFTMAX => Gating::Softmax,
            schema::GATING_SIGMOID => Gating::Sigmoid,
            other => {
                return Err(unsupported(
                    &k(llm::EXPERT_GATING_FUNC),
                    other.to_string(),
                    "expected 1 (softmax) or 2 (sigmoid)",
                ))
            }
        };
        let topk_method = match topk.as_deref() {
            Some("greedy") => TopkMethod::Greedy,
            Some("noaux_tc") => TopkMethod::NoauxTc,
            Some(other) => {
                return Err(unsupported(
                    pocketvl::TOPK_METHOD,
                    other.to_string(),
                    "expected `greedy` or `noaux_tc`",
                ))
            }
            // Files from other converters: llama.cpp selects on probs + bias
            // exactly when sigmoid gating is used (DeepSeek-V3 style).
            None if gating == Gating::Sigmoid => TopkMethod::NoauxTc,
            None => TopkMethod::Greedy,
        };
        if let Attention::Mha {
            n_head_kv,
            head_dim,
            ..
        } = attention
        {
            if n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
                return Err(unsupported(
                    &k(llm::HEAD_COUNT_KV),
                    n_head_kv.to_string(),
                    "must divide head_count",
                ));
            }
            if rope_dim != head_dim {
                return Err(unsupported(
                    &k(llm::ROPE_DIMENSION_COUNT),
                    rope_dim.to_string(),
                    "MHA rope must cover the whole head",
                ));
            }
        }
        if !rope_dim.is_multiple_of(2) {
            return Err(unsupported(
                &k(llm::ROPE_DIMENSION_COUNT),
                rope_dim.to_string(),
                "must be even",
            ));
        }
        if n_group == 0
            || !n_expert.is_multiple_of(n_group)
            || n_group_used == 0
            || n_group_used > n_group
        {
            return Err(unsupported(
                &k(llm::EXPERT_GROUP_COUNT),
                format!("{n_group}/{n_group_used}"),
                "groups must divide the experts and keep at least one",
            ));
        }
        if n_expert_used == 0 || n_expert_used > n_expert / n_group * n_group_used {
            return Err(unsupported(
                &k(llm::EXPERT_USED_COUNT),
                n_expert_used.to_string(),
                "must be between 1 and the experts of the kept groups",
            ));
        }
        if n_head == 0 || n_embd == 0 || n_layer == 0 || n_ctx == 0 {
            return Err(unsupported(
                &k(llm::EMBEDDING_LENGTH),
                format!("{n_embd}/{n_head}/{n_layer}/{n_ctx}"),
                "sizes must be positive",
            ));
        }
        let n_vocab = match n_vocab_key {
            Some(v) => v,
            None => file
                .gguf()
                .tensor(schema::tensor::TOKEN_EMBD)
                .and_then(|t| t.ne.get(1).copied())
                .map(|v| v as usize)
                .ok_or_else(|| LoaderError::MissingTensor {
                    path: file.path().to_path_buf(),
                    name: schema::tensor::TOKEN_EMBD.to_string(),
                })?,
        };
        Ok(LmHparams {
            arch,
            n_ctx,
            n_embd,
            n_layer,
            n_vocab,
            n_head,
            n_ff,
            rms_eps,
            rope_theta,
            rope_dim,
            attention,
            n_expert,
            n_expert_used,
            n_expert_shared,
            n_leading_dense,
            n_ff_exp,
            expert_weights_scale,
            expert_weights_norm,
            gating,
            topk_method,
            n_group,
            n_group_used,
            bos_id,
            eos_id,
            image_token_id,
        })
    }

    /// Whether layer `il` is a MoE layer (reference: `i >= first_k_dense_replace`;
    /// `moe_layer_freq` is 1 in every released variant).
    pub fn is_moe_layer(&self, il: usize) -> bool {
        self.n_expert > 0 && il >= self.n_leading_dense
    }
}
