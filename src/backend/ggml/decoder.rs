//! The language model's attention (with its KV cache rows), its dense and shared-expert
//! MLPs and its routed experts (experts.rs) as ggml graphs on a device, one graph per layer
//! part and forward pass, built on weights uploaded once from the mapped file (the expert
//! store for routed experts) and kept resident (DEEPSEEK-VL2.md §7).
//!
//! The graphs follow the CPU path (src/model/deepseek_vl2/attention.rs, moe.rs): MHA with
//! adjacent-pair RoPE over whole heads and grouped kv heads; MLA in the absorbed form, the
//! cache holding `[rms_norm(c) ; rope(k_rope)]` per position, queries mapped into the
//! latent space with `W_UKᵀ`, the score split as latent part + rope part, the attended
//! latent mapped back with `W_UV`, scale `1/sqrt(nope + rope)`; SiLU-gated MLPs. Layers'
//! attention and MLPs are taken in order while their weights and one sequence's cache rows
//! fit the memory budget, then the layers' routed experts (the largest part) in order with
//! what is left; the CPU runs the rest.

use std::sync::{Arc, Mutex};

use super::device::{self, Backend};
use super::experts::{self, ExpertsW};
use super::graph::{Allocator, Graph, Ops, Resident, Tensor, WeightUpload};
use crate::backend::{BackendError, DeviceChoice, Offload};
use crate::loader::Weight;
use crate::model::deepseek_vl2::attention::{QProj, MLA_NORM_EPS};
use crate::model::deepseek_vl2::layer_offload::{AttnWeights, DeviceCache, LayerOffload};
use crate::model::deepseek_vl2::moe::{Mlp, Routing};
use crate::model::deepseek_vl2::LanguageModel;

/// Nodes of the largest per-call graph (MLA attention has about 40).
const MAX_NODES: usize = 128;
const F32: usize = std::mem::size_of::<f32>();

/// How MLA's query is made on the device.
enum QW {
    Plain(Tensor),
    Lora { a: Tensor, norm: Tensor, b: Tensor },
}

/// One layer's attention on the device.
enum AttnW {
    Mha {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        o: Tensor,
        n_head: i64,
        n_head_kv: i64,
        head_dim: i64,
        v_head_dim: i64,
    },
    Mla {
        q: QW,
        kv_a: Tensor,
        kv_a_norm: Tensor,
        /// `[nope, r * H]` as stored; viewed `[nope, r, H]` in the graph.
        k_b: Tensor,
        /// `[r, v_head * H]`; viewed `[r, v_head, H]`.
        v_b: Tensor,
        o: Tensor,
        n_head: i64,
        r: i64,
        nope: i64,
        rope: i64,
        v_head_dim: i64,
    },
}

impl AttnW {
    /// Shapes of the two cache tensors of one sequence of `n_ctx` positions, each laid out
    /// so that every matrix product reads a slice of it as a contiguous f32 matrix (ggml's
    /// Vulkan backend converts a matrix-product operand whose rows are strided to f16 first):
    /// MHA keys and values one `[dim, n_ctx]` matrix per kv head; MLA the latent `c` and the
    /// rope key `k_rope` apart (no values: the latent is the value).
    fn cache_shapes(&self, n_ctx: i64) -> [[i64; 3]; 2] {
        match *self {
            AttnW::Mha {
                n_head_kv,
                head_dim,
                v_head_dim,
                ..
            } => [[head_dim, n_ctx, n_head_kv], [v_head_dim, n_ctx, n_head_kv]],
            AttnW::Mla { r, rope, .. } => [[r, n_ctx, 1], [rope, n_ctx, 1]],
        }
    }
}

struct MlpW {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

#[derive(Default)]
struct LayerW {
    attn: Option<AttnW>,
    mlp: Option<MlpW>,
    experts: Option<ExpertsW>,
}

/// What goes to the device, per layer.
#[derive(Clone, Copy, Default)]
struct Plan {
    attn: bool,
    mlp: bool,
    experts: bool,
}

/// A graph input and the values it gets before each run.
enum Input<'d> {
    F32(Tensor, &'d [f32]),
    I32(Tensor, &'d [i32]),
}

/// What a graph builder returns: the cache writes to run first, the output `[D, n]`, and
/// its inputs besides `x`.
struct Built<'d> {
    writes: Vec<Tensor>,
    y: Tensor,
    inputs: Vec<Input<'d>>,
}

/// The backend and the compute buffer every graph is allocated in, used under one lock.
struct Runner {
    alloc: Allocator,
    backend: Backend,
}

// SAFETY: the ggml handles in `Runner` are owned by it alone and used only under the
// `Mutex` that holds it (one thread at a time); ggml backends may be driven from any thread
// as long as calls on one are not concurrent.
unsafe impl Send for Runner {}

/// One sequence's KV cache rows on the device, per layer whose attention is offloaded.
struct Kv {
    /// The two tensors of [`AttnW::cache_shapes`]: MHA keys and values, MLA `c` and
    /// `k_rope`.
    layers: Vec<Option<[Tensor; 2]>>,
    n_ctx: usize,
    _buffer: Resident,
    /// Keeps the backend alive while the buffer is (a cache can outlive the model).
    _runner: Arc<Mutex<Runner>>,
}

// SAFETY: the tensors and buffer belong to this cache alone; graphs read and write them
// only under the runner's lock, on behalf of the one sequence that owns the cache.
unsafe impl Send for Kv {}

/// Attention and MLPs of the layers that fit, on a ggml device.
pub struct GgmlDecoder {
    layers: Vec<LayerW>,
    n_embd: i64,
    rope_dim: i32,
    rope_theta: f32,
    device: String,
    /// Bytes held: weights, plus one sequence's cache rows.
    weight_bytes: u64,
    cache_bytes: u64,
    /// Dropped before the runner (field order): the weights live in its backend's memory.
    _weights: Resident,
    runner: Arc<Mutex<Runner>>,
}

// SAFETY: after `new`, the tensor handles in `layers` and `_weights` are only read, and
// only while a graph is built under the runner's lock (one thread at a time); the device
// work itself runs under that lock too.
unsafe impl Send for GgmlDecoder {}
// SAFETY: as for `Send`: every use of the ggml handles is serialised by the runner's lock.
unsafe impl Sync for GgmlDecoder {}

fn bytes(w: &Weight) -> u64 {
    w.view().data.len() as u64
}

fn mlp_bytes(m: &Mlp) -> u64 {
    bytes(&m.gate) + bytes(&m.up) + bytes(&m.down)
}

fn attn_bytes(a: AttnWeights<'_>) -> u64 {
    match a {
        AttnWeights::Mha(w) => bytes(&w.q) + bytes(&w.k) + bytes(&w.v) + bytes(&w.o),
        AttnWeights::Mla(w) => {
            let q = match &w.q {
                QProj::Plain(q) => bytes(q),
                QProj::Lora { a, norm, b } => bytes(a) + bytes(b) + 4 * norm.len() as u64,
            };
            q + bytes(&w.kv_a)
                + 4 * w.kv_a_norm.len() as u64
                + bytes(&w.k_b)
                + bytes(&w.v_b)
                + bytes(&w.o)
        }
    }
}

/// A weight as one `[k, n]` matrix of its file type (3-D stacks flattened; the graph views
/// them back).
fn matrix<'a>(
    up: &mut WeightUpload<'a>,
    what: &str,
    w: &'a Weight,
) -> Result<Tensor, BackendError> {
    let v = w.view();
    up.matrix(what, &v, v.k, v.n)
}

fn vector(up: &mut WeightUpload<'_>, x: &[f32]) -> Tensor {
    up.floats(x, &[x.len() as i64])
}

fn upload_attn<'a>(
    up: &mut WeightUpload<'a>,
    il: usize,
    a: AttnWeights<'a>,
    rope_dim: usize,
) -> Result<AttnW, BackendError> {
    let name = |s: &str| format!("layer {il} {s}");
    let i = |v: usize| v as i64;
    Ok(match a {
        AttnWeights::Mha(w) => {
            if w.head_dim != rope_dim {
                return Err(BackendError::Ggml(format!(
                    "layer {il}: RoPE over {rope_dim} of {} head dims is not offloadable",
                    w.head_dim
                )));
            }
            AttnW::Mha {
                q: matrix(up, &name("attn_q"), &w.q)?,
                k: matrix(up, &name("attn_k"), &w.k)?,
                v: matrix(up, &name("attn_v"), &w.v)?,
                o: matrix(up, &name("attn_output"), &w.o)?,
                n_head: i(w.n_head),
                n_head_kv: i(w.n_head_kv),
                head_dim: i(w.head_dim),
                v_head_dim: i(w.v_head_dim),
            }
        }
        AttnWeights::Mla(w) => {
            if w.rope != rope_dim {
                return Err(BackendError::Ggml(format!(
                    "layer {il}: RoPE over {rope_dim} dims, but the rope key has {}",
                    w.rope
                )));
            }
            let q = match &w.q {
                QProj::Plain(q) => QW::Plain(matrix(up, &name("attn_q"), q)?),
                QProj::Lora { a, norm, b } => QW::Lora {
                    a: matrix(up, &name("attn_q_a"), a)?,
                    norm: vector(up, norm),
                    b: matrix(up, &name("attn_q_b"), b)?,
                },
            };
            AttnW::Mla {
                q,
                kv_a: matrix(up, &name("attn_kv_a_mqa"), &w.kv_a)?,
                kv_a_norm: vector(up, &w.kv_a_norm),
                k_b: matrix(up, &name("attn_k_b"), &w.k_b)?,
                v_b: matrix(up, &name("attn_v_b"), &w.v_b)?,
                o: matrix(up, &name("attn_output"), &w.o)?,
                n_head: i(w.n_head),
                r: i(w.kv_lora_rank),
                nope: i(w.nope),
                rope: i(w.rope),
                v_head_dim: i(w.v_head_dim),
            }
        }
    })
}

impl GgmlDecoder {
    /// Uploads the layer parts `parts` asks for (`attn`, `dense`: dense and shared-expert
    /// MLPs, `experts`: routed experts), layer by layer while they fit in `budget` bytes
    /// (default: the device's free memory) with one sequence's cache rows, to the device
    /// `choice` names; fails when nothing fits or the device lacks an operation.
    pub fn new(
        lm: &LanguageModel,
        choice: Option<&DeviceChoice>,
        budget: Option<u64>,
        threads: usize,
        parts: Offload,
    ) -> Result<GgmlDecoder, BackendError> {
        let (dev, info) = device::find(choice)?;
        let backend = Backend::open(dev, info, threads)?;
        let hp = &lm.hp;
        let allowed = budget.unwrap_or(backend.info.memory_free);
        let (attn, mlp) = (parts.attn, parts.dense);
        // Which parts fit: attention and MLPs in layer order, then routed experts.
        let (mut used, mut cache_bytes) = (0u64, 0u64);
        let mut plan = vec![Plan::default(); hp.n_layer];
        for (il, p) in plan.iter_mut().enumerate() {
            if attn {
                let a = lm.attention_weights(il);
                let (kw, vw) = match a {
                    AttnWeights::Mha(w) => w.cache_widths(),
                    AttnWeights::Mla(w) => w.cache_widths(),
                };
                let kv = ((kw + vw) * hp.n_ctx * F32) as u64;
                let need = attn_bytes(a) + kv;
                if used + need <= allowed {
                    p.attn = true;
                    used += need;
                    cache_bytes += kv;
                }
            }
            if let Some(m) = lm.mlp_weights(il).filter(|_| mlp) {
                let need = mlp_bytes(m);
                if used + need <= allowed {
                    p.mlp = true;
                    used += need;
                }
            }
        }
        if parts.experts {
            for (il, p) in plan.iter_mut().enumerate() {
                if !lm.has_routed_experts(il) {
                    continue;
                }
                let need = experts::layer_bytes(lm, il)?;
                if used + need <= allowed {
                    p.experts = true;
                    used += need;
                }
            }
        }
        if !plan.iter().any(|p| p.attn || p.mlp || p.experts) {
            return Err(BackendError::Memory(format!(
                "no layer's {} fits in {} MiB on {} ({})",
                if attn {
                    "attention"
                } else if mlp {
                    "MLP"
                } else {
                    "routed-expert stack"
                },
                allowed >> 20,
                backend.info.name,
                if budget.is_some() {
                    "--gpu-mem"
                } else {
                    "its free memory"
                }
            )));
        }
        let n_tensors: usize = 19 * hp.n_layer;
        let mut up = WeightUpload::new(n_tensors)?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for (il, p) in plan.iter().enumerate() {
            let mut l = LayerW::default();
            if p.attn {
                l.attn = Some(upload_attn(
                    &mut up,
                    il,
                    lm.attention_weights(il),
                    hp.rope_dim,
                )?);
            }
            if let Some(w) = lm.mlp_weights(il).filter(|_| p.mlp) {
                let name = |s: &str| format!("layer {il} {s}");
                l.mlp = Some(MlpW {
                    gate: matrix(&mut up, &name("ffn_gate"), &w.gate)?,
                    up: matrix(&mut up, &name("ffn_up"), &w.up)?,
                    down: matrix(&mut up, &name("ffn_down"), &w.down)?,
                });
            }
            if p.experts {
                l.experts = Some(experts::declare(&mut up, lm, il)?);
            }
            layers.push(l);
        }
        let weights = up.upload(&backend)?;
        for (il, l) in layers.iter().enumerate() {
            if let Some(w) = &l.experts {
                experts::fill(&weights, lm, il, w)?;
            }
        }
        let device = format!("{} ({})", backend.info.name, backend.info.description);
        let runner = Runner {
            alloc: Allocator::new(&backend)?,
            backend,
        };
        Ok(GgmlDecoder {
            layers,
            n_embd: hp.n_embd as i64,
            rope_dim: hp.rope_dim as i32,
            rope_theta: hp.rope_theta,
            device,
            weight_bytes: weights.bytes() as u64,
            cache_bytes,
            _weights: weights,
            runner: Arc::new(Mutex::new(runner)),
        })
    }

    /// Layers whose (attention, MLP, routed experts) run on the device.
    pub fn layers_on_device(&self) -> (usize, usize, usize) {
        let count = |f: fn(&LayerW) -> bool| self.layers.iter().filter(|l| f(l)).count();
        (
            count(|l| l.attn.is_some()),
            count(|l| l.mlp.is_some()),
            count(|l| l.experts.is_some()),
        )
    }

    /// Builds a graph with `build` on the input `x` `[n, D]`, sets its inputs, runs it and
    /// reads its output into `out` `[n, D]`.
    fn run<'d>(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        build: impl FnOnce(&Ops<'_>, Tensor) -> Built<'d>,
    ) -> Result<(), String> {
        let r = self.runner.lock().unwrap_or_else(|p| p.into_inner());
        let mut io = None;
        let graph = Graph::new(&r.backend, &r.alloc, MAX_NODES, |o| {
            let xin = o.input(&[self.n_embd, n as i64]);
            let Built {
                mut writes,
                y,
                inputs,
            } = build(o, xin);
            io = Some((xin, y, inputs));
            writes.push(y);
            writes
        })
        .map_err(|e| e.to_string())?;
        let (xin, y, inputs) = io.expect("the graph builder ran");
        graph.set_input(xin, x);
        for input in inputs {
            match input {
                Input::F32(t, v) => graph.set_input(t, v),
                Input::I32(t, v) => graph.set_input_i32(t, v),
            }
        }
        graph.compute(&r.backend).map_err(|e| e.to_string())?;
        graph.get_output(y, out);
        Ok(())
    }
}

/// MHA for `x` `[D, n]` at `pos`: writes the new keys/values into rows `pos0..` of
/// `kc`/`vc` (`[dim, n_ctx, Hkv]`), attends causally over rows `0..pos0+n`. Returns (cache
/// writes, output).
#[allow(clippy::too_many_arguments)]
fn mha(
    o: &Ops<'_>,
    w: &AttnW,
    x: Tensor,
    pos: Tensor,
    [kc, vc]: [Tensor; 2],
    n: i64,
    pos0: i64,
    (rope_dim, theta): (i32, f32),
) -> (Vec<Tensor>, Tensor) {
    let AttnW::Mha {
        q,
        k,
        v,
        o: wo,
        n_head: h,
        n_head_kv: hkv,
        head_dim: hd,
        v_head_dim: vd,
    } = *w
    else {
        unreachable!("mha() is called on MHA layers")
    };
    let q = o.rope(
        o.reshape_3d(o.mul_mat(q, x), hd, h, n),
        pos,
        rope_dim,
        theta,
    );
    let k = o.rope(
        o.reshape_3d(o.mul_mat(k, x), hd, hkv, n),
        pos,
        rope_dim,
        theta,
    );
    let v = o.reshape_3d(o.mul_mat(v, x), vd, hkv, n);
    // Rows `from..from+len` of every kv head of cache `c`.
    let rows = |c: Tensor, dim: i64, from: i64, len: i64| {
        let nb = c.nb();
        o.view_3d(c, dim, len, hkv, nb[1], nb[2], from as usize * nb[1])
    };
    let writes = vec![
        o.cpy(o.permute(k, 0, 2, 1, 3), rows(kc, hd, pos0, n)),
        o.cpy(o.permute(v, 0, 2, 1, 3), rows(vc, vd, pos0, n)),
    ];
    let kv = pos0 + n;
    let keys = rows(kc, hd, 0, kv); // [hd, kv, Hkv]
    let scores = o.mul_mat(keys, o.cont(o.permute(q, 0, 2, 1, 3))); // [kv, n, H]
    let probs = o.soft_max_scaled(
        o.diag_mask_inf(scores, pos0 as i32),
        1.0 / (hd as f32).sqrt(),
    );
    let vt = o.cont(o.transpose(rows(vc, vd, 0, kv))); // vᵀ per kv head: [kv, vd, Hkv]
    let heads = o.mul_mat(vt, probs); // [vd, n, H]
    let merged = o.reshape_2d(o.cont(o.permute(heads, 0, 2, 1, 3)), vd * h, n);
    (writes, o.mul_mat(wo, merged))
}

/// Absorbed MLA for `x` `[D, n]` at `pos`: writes `rms_norm(c)` and `rope(k_rope)` into rows
/// `pos0..` of `cc` `[r, n_ctx]` and `rc` `[rope, n_ctx]`, attends over rows `0..pos0+n`.
/// Returns (cache writes, output).
#[allow(clippy::too_many_arguments)]
fn mla(
    o: &Ops<'_>,
    w: &AttnW,
    x: Tensor,
    pos: Tensor,
    [cc, rc]: [Tensor; 2],
    n: i64,
    pos0: i64,
    (rope_dim, theta): (i32, f32),
) -> (Vec<Tensor>, Tensor) {
    let AttnW::Mla {
        q: ref qw,
        kv_a,
        kv_a_norm,
        k_b,
        v_b,
        o: wo,
        n_head: h,
        r,
        nope,
        rope: dr,
        v_head_dim: vd,
    } = *w
    else {
        unreachable!("mla() is called on MLA layers")
    };
    let dq = nope + dr;
    let q = match *qw {
        QW::Plain(wq) => o.mul_mat(wq, x),
        QW::Lora { a, norm, b } => {
            let qa = o.rms_norm_w(o.mul_mat(a, x), norm, MLA_NORM_EPS);
            o.mul_mat(b, qa)
        }
    };
    let q = o.reshape_3d(q, dq, h, n);
    let (qrow, qtok) = (q.nb()[1], q.nb()[2]);
    let q_nope = o.view_3d(q, nope, h, n, qrow, qtok, 0);
    let q_pe = o.view_3d(q, dr, h, n, qrow, qtok, nope as usize * F32);
    let q_pe = o.rope(q_pe, pos, rope_dim, theta); // [dr, H, n]
    let kva = o.mul_mat(kv_a, x); // [r + dr, n]
    let kvrow = kva.nb()[1];
    let c = o.rms_norm_w(o.view_2d(kva, r, n, kvrow, 0), kv_a_norm, MLA_NORM_EPS);
    let k_pe = o.view_3d(kva, dr, 1, n, kvrow, kvrow, r as usize * F32);
    let k_pe = o.rope(k_pe, pos, rope_dim, theta); // [dr, 1, n]
                                                   // Rows `from..from+len` of cache `c`.
    let rows = |c: Tensor, from: i64, len: i64| {
        let nb = c.nb();
        o.view_2d(c, c.ne()[0], len, nb[1], from as usize * nb[1])
    };
    let writes = vec![
        o.cpy(c, rows(cc, pos0, n)),
        o.cpy(o.reshape_2d(k_pe, dr, n), rows(rc, pos0, n)),
    ];
    let kv = pos0 + n;
    // Queries in the latent space: [r, n, H] = W_UKᵀ q_nope per head.
    let q_lat = o.mul_mat(
        o.reshape_3d(k_b, nope, r, h),
        o.cont(o.permute(q_nope, 0, 2, 1, 3)),
    );
    let scores = o.add(
        o.mul_mat(rows(cc, 0, kv), q_lat),
        o.mul_mat(rows(rc, 0, kv), o.cont(o.permute(q_pe, 0, 2, 1, 3))),
    ); // [kv, n, H]
    let probs = o.soft_max_scaled(
        o.diag_mask_inf(scores, pos0 as i32),
        1.0 / (dq as f32).sqrt(),
    );
    // The value is the latent: o_lat [r, n, H] = probs · cᵀ.
    let ct = o.cont(o.transpose(rows(cc, 0, kv))); // [kv, r]
    let o_lat = o.mul_mat(ct, probs);
    let heads = o.mul_mat(o.reshape_3d(v_b, r, vd, h), o_lat); // [vd, n, H]
    let merged = o.reshape_2d(o.cont(o.permute(heads, 0, 2, 1, 3)), vd * h, n);
    (writes, o.mul_mat(wo, merged))
}

impl LayerOffload for GgmlDecoder {
    fn device(&self) -> String {
        self.device.clone()
    }

    fn device_bytes(&self) -> u64 {
        self.weight_bytes + self.cache_bytes
    }

    fn attention_on_device(&self, il: usize) -> bool {
        self.layers.get(il).is_some_and(|l| l.attn.is_some())
    }

    fn mlp_on_device(&self, il: usize) -> bool {
        self.layers.get(il).is_some_and(|l| l.mlp.is_some())
    }

    fn new_cache(&self, n_ctx: usize) -> Result<DeviceCache, String> {
        let mut up = WeightUpload::new(2 * self.layers.len()).map_err(|e| e.to_string())?;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.attn
                    .as_ref()
                    .map(|a| a.cache_shapes(n_ctx as i64).map(|ne| up.empty(&ne)))
            })
            .collect();
        let r = self.runner.lock().unwrap_or_else(|p| p.into_inner());
        let buffer = up.upload(&r.backend).map_err(|e| e.to_string())?;
        Ok(Box::new(Kv {
            layers,
            n_ctx,
            _buffer: buffer,
            _runner: self.runner.clone(),
        }))
    }

    fn attention(
        &self,
        cache: &mut DeviceCache,
        il: usize,
        x: &[f32],
        n: usize,
        pos0: usize,
        out: &mut [f32],
    ) -> Result<(), String> {
        let kv = cache
            .downcast_mut::<Kv>()
            .ok_or("a sequence state made for another device")?;
        let (w, cache) = match (&self.layers[il].attn, kv.layers[il]) {
            (Some(w), Some(c)) => (w, c),
            _ => return Err(format!("layer {il}: attention is not on the device")),
        };
        if pos0 + n > kv.n_ctx {
            return Err(format!(
                "positions up to {} exceed the device cache of {}",
                pos0 + n,
                kv.n_ctx
            ));
        }
        let rope = (self.rope_dim, self.rope_theta);
        let positions: Vec<i32> = (pos0..pos0 + n).map(|p| p as i32).collect();
        let (n, p0) = (n as i64, pos0 as i64);
        self.run(x, n as usize, out, |o, x| {
            let pos = o.input_i32(&[n]);
            let (writes, y) = match w {
                AttnW::Mha { .. } => mha(o, w, x, pos, cache, n, p0, rope),
                AttnW::Mla { .. } => mla(o, w, x, pos, cache, n, p0, rope),
            };
            Built {
                writes,
                y,
                inputs: vec![Input::I32(pos, &positions)],
            }
        })
    }

    fn mlp(&self, il: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), String> {
        let Some(w) = &self.layers[il].mlp else {
            return Err(format!("layer {il}: the MLP is not on the device"));
        };
        self.run(x, n, out, |o, x| {
            let hidden = o.mul(o.silu(o.mul_mat(w.gate, x)), o.mul_mat(w.up, x));
            Built {
                writes: vec![],
                y: o.mul_mat(w.down, hidden),
                inputs: vec![],
            }
        })
    }

    fn experts_on_device(&self, il: usize) -> bool {
        self.layers.get(il).is_some_and(|l| l.experts.is_some())
    }

    fn experts(
        &self,
        il: usize,
        x: &[f32],
        n: usize,
        routing: Routing<'_>,
        out: &mut [f32],
    ) -> Result<(), String> {
        let Some(w) = &self.layers[il].experts else {
            return Err(format!(
                "layer {il}: the routed experts are not on the device"
            ));
        };
        let k = routing.k;
        if k == 0 || routing.ids.len() != n * k || routing.weights.len() != n * k {
            return Err(format!(
                "layer {il}: a routing of {} choices for {n} tokens of {k}",
                routing.ids.len()
            ));
        }
        // [K, n] ids and [1, K, n] weights, token-major as the router gives them.
        let ids: Vec<i32> = routing.ids.iter().map(|&e| e as i32).collect();
        let wts: Vec<f32> = routing.weights.to_vec();
        let (n, k) = (n as i64, k as i64);
        self.run(x, n as usize, out, |o, x| {
            let ids_in = o.input_i32(&[k, n]);
            let wts_in = o.input(&[1, k, n]);
            Built {
                writes: vec![],
                y: experts::routed(o, w, x, ids_in, wts_in),
                inputs: vec![Input::I32(ids_in, &ids), Input::F32(wts_in, &wts)],
            }
        })
    }
}

/// [`GgmlDecoder`] as the language model's layer offload.
pub(crate) fn offload(
    lm: &LanguageModel,
    choice: Option<&DeviceChoice>,
    budget: Option<u64>,
    threads: usize,
    parts: Offload,
) -> Result<Arc<dyn LayerOffload>, BackendError> {
    Ok(Arc::new(GgmlDecoder::new(
        lm, choice, budget, threads, parts,
    )?))
}
