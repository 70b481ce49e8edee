//! The DeepSeek-VL2 language model (`DeepseekV2ForCausalLM` of the reference,
//! `deepseek_vl2/models/modeling_deepseek.py`; DEEPSEEK-VL2.md §7):
//!
//! ```text
//! h = embeddings                         (image features already scattered in)
//! for each layer:
//!     h = h + attention(rms_norm(h))     MHA or MLA, KV cache
//!     h = h + ffn(rms_norm(h))           dense MLP (leading layers) or MoE
//! logits = output(rms_norm(h))
//! ```

use std::sync::Arc;

use quant::schema::tensor as tn;
use quant::GgmlType;
use rayon::ThreadPool;
use thiserror::Error;

use super::attention::{AttnScratch, MhaWeights, MlaWeights, QProj};
use super::layer_offload::{AttnWeights, DeviceCache, LayerOffload};
use super::moe::{
    add_shared, moe_forward, route_tokens, Mlp, MoeScratch, MoeWeights, RouterConfig,
};
use crate::experts::{ColdExperts, ExpertError, ExpertOptions, ExpertStore, LayerExperts};
use crate::kv_cache::{CacheType, KvCache};
use crate::loader::{Attention, LmHparams, LoaderError, ModelFile, Preload, Weight};
use crate::ops::{add_assign, matmul, rms_norm, row_to_f32, Rope, RopeLayout};
use crate::trace::Trace;

/// Errors of a forward pass or of building the model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Expert(#[from] ExpertError),
    #[error("sequence of {need} positions exceeds the context length {n_ctx}")]
    ContextOverflow { need: usize, n_ctx: usize },
    #[error("forward at position {pos0}, but only {cached} positions are cached")]
    Gap { pos0: usize, cached: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("embeddings of {len} floats are not whole rows of {n_embd}")]
    EmbedShape { len: usize, n_embd: usize },
    #[error("offloaded layers: {0}")]
    Offload(String),
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that is not the last).
    None,
    /// The last position only: `[n_vocab]`.
    Last,
    /// Every position: `[n, n_vocab]`.
    All,
}

/// The attention weights of one layer.
#[derive(Clone, Debug)]
enum Attn {
    Mha(MhaWeights),
    Mla(MlaWeights),
}

/// The feed-forward part of one layer.
#[derive(Clone, Debug)]
enum Ffn {
    Dense(Mlp),
    Moe(MoeWeights),
}

#[derive(Clone, Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    attn: Attn,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// Types accepted for 1-D tensors (norm weights, the selection bias): llama.cpp's
/// converters keep them F32; a recipe that stores every tensor as f16/bf16 is
/// accepted too (they are widened to f32 once at load).
const VECTOR_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// The language model's weights: immutable once loaded and shared by every conversation
/// (`&self` forward passes); each sequence's KV cache and buffers live in a [`DecoderState`].
pub struct LanguageModel {
    pub hp: LmHparams,
    token_embd: Weight,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Weight,
    experts: Box<dyn ExpertStore>,
    router: RouterConfig,
    rope: Rope,
    /// The workers forward passes run in (`None`: the caller's pool).
    pool: Option<Arc<ThreadPool>>,
    /// Runs the parts of layers it says it runs instead of the CPU (`--offload attn,dense`).
    offload: Option<Arc<dyn LayerOffload>>,
    /// The element type of new states' KV caches (`--cache-type`).
    cache_type: CacheType,
    /// The file being read in behind the load (`ExpertOptions::preload`).
    preload: Option<Preload>,
}

/// What one sequence (a conversation) owns: its KV cache, the activation buffers its forward
/// passes reuse, and its trace. Many states can run against one [`LanguageModel`] at once.
pub struct DecoderState {
    cache: KvCache,
    /// The KV cache rows of the layers whose attention is offloaded, made on the first
    /// forward pass that needs them (the CPU cache still counts the positions).
    device_cache: Option<DeviceCache>,
    scratch: Scratch,
    /// Named intermediate dumps (off by default).
    pub trace: Trace,
}

impl DecoderState {
    /// The KV cache (its length is the number of positions already processed).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Drops cached positions `n..` (to reuse a common prefix, or reset with 0).
    pub fn truncate_cache(&mut self, n: usize) {
        self.cache.truncate(n);
    }
}

/// The buffers of a forward pass, sized by the largest batch seen so far.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    xn: Vec<f32>,
    y: Vec<f32>,
    hn: Vec<f32>,
    logits: Vec<f32>,
    /// Dense MLP hidden rows.
    hidden: Vec<f32>,
    /// Shared experts' output when they run on a device.
    shared: Vec<f32>,
    attn: AttnScratch,
    moe: MoeScratch,
}

fn u(v: usize) -> u64 {
    v as u64
}

impl LanguageModel {
    /// Builds the model from `file`: every tensor fetched by name with its
    /// expected shape, and every tensor of the file must be used.
    pub fn load(file: &ModelFile) -> Result<LanguageModel, ModelError> {
        Self::load_with(file, &ExpertOptions::default())
    }

    /// [`LanguageModel::load`] with the expert store `experts` asks for
    /// (plain mmap, or paging under `--mem-budget`).
    pub fn load_with(
        file: &ModelFile,
        experts: &ExpertOptions,
    ) -> Result<LanguageModel, ModelError> {
        let hp = LmHparams::from_file(file)?;
        if experts.budget.is_none() {
            // Every matrix but the embedding table is streamed whole per token; under a
            // budget the paging store decides residency in normal pages itself.
            let g = file.gguf();
            g.advise_huge_pages(g.tensor(tn::TOKEN_EMBD).as_slice());
        }
        let d = u(hp.n_embd);
        let v = u(hp.n_vocab);
        let token_embd = file.weight(tn::TOKEN_EMBD, &[d, v])?;
        let output_norm = file
            .weight_of(tn::OUTPUT_NORM, &[d], VECTOR_TYPES)?
            .to_f32();
        let output = file.weight(tn::OUTPUT, &[d, v])?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        let mut stacks = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let name = |s: &str| tn::blk(il, s);
            let attn_norm = file
                .weight_of(&name(tn::ATTN_NORM), &[d], VECTOR_TYPES)?
                .to_f32();
            let ffn_norm = file
                .weight_of(&name(tn::FFN_NORM), &[d], VECTOR_TYPES)?
                .to_f32();
            let h = hp.n_head;
            let attn = match hp.attention {
                Attention::Mha {
                    n_head_kv,
                    head_dim,
                    v_head_dim,
                } => Attn::Mha(MhaWeights {
                    q: file.weight(&name(tn::ATTN_Q), &[d, u(h * head_dim)])?,
                    k: file.weight(&name(tn::ATTN_K), &[d, u(n_head_kv * head_dim)])?,
                    v: file.weight(&name(tn::ATTN_V), &[d, u(n_head_kv * v_head_dim)])?,
                    o: file.weight(&name(tn::ATTN_OUTPUT), &[u(h * v_head_dim), d])?,
                    n_head: h,
                    n_head_kv,
                    head_dim,
                    v_head_dim,
                }),
                Attention::Mla {
                    q_lora_rank,
                    kv_lora_rank: r,
                    nope,
                    rope,
                    v_head_dim,
                } => {
                    let dq = u(h * (nope + rope));
                    let q = match q_lora_rank {
                        None => QProj::Plain(file.weight(&name(tn::ATTN_Q), &[d, dq])?),
                        Some(rq) => QProj::Lora {
                            a: file.weight(&name(tn::ATTN_Q_A), &[d, u(rq)])?,
                            norm: file
                                .weight_of(&name(tn::ATTN_Q_A_NORM), &[u(rq)], VECTOR_TYPES)?
                                .to_f32(),
                            b: file.weight(&name(tn::ATTN_Q_B), &[u(rq), dq])?,
                        },
                    };
                    Attn::Mla(MlaWeights {
                        q,
                        kv_a: file.weight(&name(tn::ATTN_KV_A_MQA), &[d, u(r + rope)])?,
                        kv_a_norm: file
                            .weight_of(&name(tn::ATTN_KV_A_NORM), &[u(r)], VECTOR_TYPES)?
                            .to_f32(),
                        k_b: file.weight(&name(tn::ATTN_K_B), &[u(nope), u(r), u(h)])?,
                        v_b: file.weight(&name(tn::ATTN_V_B), &[u(r), u(v_head_dim), u(h)])?,
                        o: file.weight(&name(tn::ATTN_OUTPUT), &[u(h * v_head_dim), d])?,
                        n_head: h,
                        kv_lora_rank: r,
                        nope,
                        rope,
                        v_head_dim,
                    })
                }
            };
            let (ffn, stack) = if hp.is_moe_layer(il) {
                let (e, f) = (u(hp.n_expert), u(hp.n_ff_exp));
                let gate_inp = file.weight(&name(tn::FFN_GATE_INP), &[d, e])?;
                let bias = match hp.topk_method {
                    crate::loader::TopkMethod::NoauxTc => Some(
                        file.weight_of(&name(tn::EXP_PROBS_B), &[e], VECTOR_TYPES)?
                            .to_f32(),
                    ),
                    crate::loader::TopkMethod::Greedy => None,
                };
                let shared = if hp.n_expert_shared > 0 {
                    let fs = f * u(hp.n_expert_shared);
                    Some(Mlp {
                        gate: file.weight(&name(tn::FFN_GATE_SHEXP), &[d, fs])?,
                        up: file.weight(&name(tn::FFN_UP_SHEXP), &[d, fs])?,
                        down: file.weight(&name(tn::FFN_DOWN_SHEXP), &[fs, d])?,
                    })
                } else {
                    None
                };
                let stack = LayerExperts {
                    gate: file.weight(&name(tn::FFN_GATE_EXPS), &[d, f, e])?,
                    up: file.weight(&name(tn::FFN_UP_EXPS), &[d, f, e])?,
                    down: file.weight(&name(tn::FFN_DOWN_EXPS), &[f, d, e])?,
                };
                (
                    Ffn::Moe(MoeWeights {
                        gate_inp,
                        bias,
                        shared,
                    }),
                    Some(stack),
                )
            } else {
                let i = u(hp.n_ff);
                let mlp = Mlp {
                    gate: file.weight(&name(tn::FFN_GATE), &[d, i])?,
                    up: file.weight(&name(tn::FFN_UP), &[d, i])?,
                    down: file.weight(&name(tn::FFN_DOWN), &[i, d])?,
                };
                (Ffn::Dense(mlp), None)
            };
            layers.push(Layer {
                attn_norm,
                attn,
                ffn_norm,
                ffn,
            });
            stacks.push(stack);
        }
        file.check_all_used()?;
        let store = crate::experts::open(file, stacks, hp.n_expert_used, experts)?;
        let mut model = Self::assemble(hp, token_embd, layers, output_norm, output, store);
        // The same bytes read in from here on (the routed experts of `--cold-experts only`
        // come from the low-bit copy instead: no preload of the unused ones). Not before the
        // norms above are read: each of their faults would wait behind the preload's reads.
        if experts.budget.is_none() && experts.preload && experts.cold == ColdExperts::Off {
            let g = file.gguf();
            model.preload = Preload::start(file, g.tensor(tn::TOKEN_EMBD).as_slice());
        }
        Ok(model)
    }

    fn assemble(
        hp: LmHparams,
        token_embd: Weight,
        layers: Vec<Layer>,
        output_norm: Vec<f32>,
        output: Weight,
        experts: Box<dyn ExpertStore>,
    ) -> LanguageModel {
        let router = RouterConfig {
            n_expert: hp.n_expert,
            n_used: hp.n_expert_used,
            gating: hp.gating,
            method: hp.topk_method,
            n_group: hp.n_group,
            n_group_used: hp.n_group_used,
            norm: hp.expert_weights_norm,
            scale: hp.expert_weights_scale,
        };
        let rope = Rope::new(hp.rope_dim, hp.rope_theta, RopeLayout::Adjacent, hp.n_ctx);
        LanguageModel {
            hp,
            token_embd,
            layers,
            output_norm,
            output,
            experts,
            router,
            rope,
            pool: None,
            offload: None,
            cache_type: CacheType::default(),
            preload: None,
        }
    }

    /// A fresh sequence: an empty KV cache of this model's layout and context length.
    pub fn new_state(&self) -> DecoderState {
        let (kw, vw) = match self.layers.first().map(|l| &l.attn) {
            Some(Attn::Mha(w)) => w.cache_widths(),
            Some(Attn::Mla(w)) => w.cache_widths(),
            None => (0, 0),
        };
        DecoderState {
            cache: KvCache::new(self.hp.n_layer, kw, vw, self.hp.n_ctx, self.cache_type),
            device_cache: None,
            scratch: Scratch::default(),
            trace: Trace::off(),
        }
    }

    /// Runs the parts `offload` takes on its device in every later forward pass (states
    /// made before keep working: their device cache is made when first needed).
    pub fn set_offload(&mut self, offload: Arc<dyn LayerOffload>) {
        self.offload = Some(offload);
    }

    /// The device offloaded layer parts run on, if any.
    pub fn offload_device(&self) -> Option<String> {
        self.offload.as_ref().map(|o| o.device())
    }

    /// Layer `il`'s attention weights (what a device uploads).
    pub fn attention_weights(&self, il: usize) -> AttnWeights<'_> {
        match &self.layers[il].attn {
            Attn::Mha(w) => AttnWeights::Mha(w),
            Attn::Mla(w) => AttnWeights::Mla(w),
        }
    }

    /// Layer `il`'s dense MLP, or its shared experts' MLP (`None`: an MoE layer without
    /// shared experts).
    pub fn mlp_weights(&self, il: usize) -> Option<&Mlp> {
        match &self.layers[il].ffn {
            Ffn::Dense(m) => Some(m),
            Ffn::Moe(w) => w.shared.as_ref(),
        }
    }

    /// Whether layer `il` has routed experts (an MoE layer).
    pub fn has_routed_experts(&self, il: usize) -> bool {
        matches!(self.layers[il].ffn, Ffn::Moe(_))
    }

    /// Replaces the expert store (e.g. by one with a memory budget).
    pub fn set_expert_store(&mut self, store: Box<dyn ExpertStore>) {
        self.experts = store;
    }

    /// The expert store (usage statistics).
    pub fn experts(&self) -> &dyn ExpertStore {
        self.experts.as_ref()
    }

    /// The background read of the file started at load, where one runs.
    pub fn preload(&self) -> Option<&Preload> {
        self.preload.as_ref()
    }

    /// Embeddings of `ids`: `[ids.len(), n_embd]`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        self.embed_tokens_into(ids, &mut out)?;
        Ok(out)
    }

    /// [`LanguageModel::embed_tokens`] into a reused buffer.
    pub fn embed_tokens_into(&self, ids: &[u32], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let d = self.hp.n_embd;
        let view = self.token_embd.view();
        out.resize(ids.len() * d, 0.0);
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= self.hp.n_vocab {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    n_vocab: self.hp.n_vocab,
                });
            }
            row_to_f32(&view, id as usize, &mut out[i * d..][..d]);
        }
        Ok(())
    }

    /// Runs `embeds` `[n, n_embd]` at positions `pos0..pos0+n` of the sequence `st`, after
    /// dropping its cached positions `pos0..`; returns the logits asked for.
    pub fn forward(
        &self,
        st: &mut DecoderState,
        embeds: &[f32],
        pos0: usize,
        want: LogitsWanted,
    ) -> Result<Vec<f32>, ModelError> {
        Ok(self.forward_logits(st, embeds, pos0, want)?.to_vec())
    }

    /// [`LanguageModel::forward`] returning the logits borrowed from the
    /// state's buffers (the decode loop copies nothing and allocates nothing).
    pub fn forward_logits<'s>(
        &self,
        st: &'s mut DecoderState,
        embeds: &[f32],
        pos0: usize,
        want: LogitsWanted,
    ) -> Result<&'s [f32], ModelError> {
        let rows = match &self.pool {
            Some(pool) => pool.install(|| self.forward_in_pool(st, embeds, pos0, want))?,
            None => self.forward_in_pool(st, embeds, pos0, want)?,
        };
        Ok(&st.scratch.logits[..rows * self.hp.n_vocab])
    }

    /// Runs the workers of `pool` for every later forward pass (the CLI's
    /// `--threads`); without one, the caller's rayon pool is used.
    pub fn set_thread_pool(&mut self, pool: Arc<ThreadPool>) {
        self.pool = Some(pool);
    }

    /// Stores the KV caches of states made from now on as `ty` (the CPU's rows; layers
    /// whose attention is offloaded keep the device's own).
    pub fn set_cache_type(&mut self, ty: CacheType) {
        self.cache_type = ty;
    }

    /// The forward pass proper; leaves the logits in `scratch.logits` and
    /// returns how many rows it holds.
    fn forward_in_pool(
        &self,
        st: &mut DecoderState,
        embeds: &[f32],
        pos0: usize,
        want: LogitsWanted,
    ) -> Result<usize, ModelError> {
        let d = self.hp.n_embd;
        if !embeds.len().is_multiple_of(d) {
            return Err(ModelError::EmbedShape {
                len: embeds.len(),
                n_embd: d,
            });
        }
        let n = embeds.len() / d;
        let DecoderState {
            cache,
            device_cache,
            scratch: sc,
            trace,
        } = st;
        if pos0 > cache.len() {
            return Err(ModelError::Gap {
                pos0,
                cached: cache.len(),
            });
        }
        if pos0 + n > self.hp.n_ctx {
            return Err(ModelError::ContextOverflow {
                need: pos0 + n,
                n_ctx: self.hp.n_ctx,
            });
        }
        cache.truncate(pos0);
        let off = self.offload.as_deref();
        let on_device = |il: usize| off.filter(|o| o.attention_on_device(il));
        let mlp_on_device = |il: usize| off.filter(|o| o.mlp_on_device(il));
        let experts_on_device = |il: usize| off.filter(|o| o.experts_on_device(il));
        if device_cache.is_none() {
            if let Some(o) = (0..self.hp.n_layer).find_map(on_device) {
                *device_cache = Some(o.new_cache(self.hp.n_ctx).map_err(ModelError::Offload)?);
            }
        }
        trace.next_call();
        let eps = self.hp.rms_eps;
        // h: [n, D] residual stream; xn, y: [n, D].
        sc.h.clear();
        sc.h.extend_from_slice(embeds);
        sc.xn.resize(n * d, 0.0);
        sc.y.resize(n * d, 0.0);
        let (h, xn, y) = (&mut sc.h, &mut sc.xn, &mut sc.y);
        trace.tap("inp_embd", None, &[n, d], h);
        for (il, layer) in self.layers.iter().enumerate() {
            rms_norm(h, &layer.attn_norm, eps, xn);
            trace.tap("attn_norm", Some(il), &[n, d], xn);
            let a = &mut sc.attn;
            match (&layer.attn, on_device(il), device_cache.as_mut()) {
                (_, Some(o), Some(dc)) => o
                    .attention(dc, il, xn, n, pos0, y)
                    .map_err(ModelError::Offload)?,
                (Attn::Mha(w), ..) => w.forward(&self.rope, cache, il, xn, n, pos0, y, a),
                (Attn::Mla(w), ..) => w.forward(&self.rope, cache, il, xn, n, pos0, y, a),
            }
            trace.tap("attn_out", Some(il), &[n, d], y);
            add_assign(h, y);
            rms_norm(h, &layer.ffn_norm, eps, xn);
            trace.tap("ffn_norm", Some(il), &[n, d], xn);
            let mlp_dev = mlp_on_device(il);
            match (&layer.ffn, mlp_dev) {
                (Ffn::Dense(_), Some(o)) => o.mlp(il, xn, n, y).map_err(ModelError::Offload)?,
                (Ffn::Dense(mlp), None) => mlp.forward(xn, n, y, &mut sc.hidden),
                (Ffn::Moe(w), _) => {
                    // Shared experts on the device are added after the routed ones, the
                    // order the CPU path adds them in.
                    let shared = w.shared.as_ref().filter(|_| mlp_dev.is_none());
                    match experts_on_device(il) {
                        Some(o) => {
                            route_tokens(w, &self.router, xn, n, &mut sc.moe);
                            let routing = sc.moe.routing(self.router.n_used);
                            o.experts(il, xn, n, routing, y)
                                .map_err(ModelError::Offload)?;
                            if let Some(sh) = shared {
                                add_shared(sh, xn, n, y, &mut sc.moe);
                            }
                        }
                        None => moe_forward(
                            il,
                            w,
                            shared,
                            &self.router,
                            self.experts.as_ref(),
                            xn,
                            n,
                            y,
                            &mut sc.moe,
                        )?,
                    }
                    if let (Some(o), Some(_)) = (mlp_dev, &w.shared) {
                        sc.shared.resize(n * d, 0.0);
                        o.mlp(il, xn, n, &mut sc.shared)
                            .map_err(ModelError::Offload)?;
                        y.iter_mut().zip(&sc.shared).for_each(|(y, s)| *y += s);
                    }
                    if trace.enabled() {
                        let k = self.router.n_used;
                        let ids: Vec<f32> = sc.moe.routed_ids.iter().map(|&e| e as f32).collect();
                        trace.tap("moe_topk_ids", Some(il), &[n, k], &ids);
                        trace.tap(
                            "moe_topk_weights",
                            Some(il),
                            &[n, k],
                            &sc.moe.routed_weights,
                        );
                    }
                }
            }
            trace.tap("ffn_out", Some(il), &[n, d], y);
            add_assign(h, y);
            trace.tap("residual", Some(il), &[n, d], h);
        }
        cache.set_len(pos0 + n);
        let rows = match want {
            LogitsWanted::None => return Ok(0),
            LogitsWanted::Last => n.min(1),
            LogitsWanted::All => n,
        };
        let first = n - rows;
        sc.hn.resize(rows * d, 0.0);
        rms_norm(&h[first * d..], &self.output_norm, eps, &mut sc.hn);
        trace.tap("output_norm", None, &[rows, d], &sc.hn);
        sc.logits.resize(rows * self.hp.n_vocab, 0.0);
        matmul(&self.output, &sc.hn, rows, &mut sc.logits);
        Ok(rows)
    }
}

impl LanguageModel {
    /// Resizes the context (RoPE tables, and the limit of states made afterwards).
    pub fn set_context_length(&mut self, n_ctx: usize) {
        let n_ctx = n_ctx.max(1);
        self.hp.n_ctx = n_ctx;
        self.rope = Rope::new(
            self.hp.rope_dim,
            self.hp.rope_theta,
            RopeLayout::Adjacent,
            n_ctx,
        );
    }
}
