//! The SigLIP tower and the projector as one ggml graph per tile (spec §4-§5), built from
//! the weights the CPU path maps (uploaded once, resident on the device) and checked against
//! it: the same pre-norm blocks, LayerNorm eps, attention scale `1/sqrt(head_dim)`,
//! GELU(tanh) in the tower and exact-erf GELU in the projector, and the projector's zero
//! padding and channel-major 2x2 unfold done with reshapes and permutes on the device.
//!
//! Patches are unfolded on the host by the CPU tower's own `unfold_patches`, so the conv's
//! pixel order has one implementation.

use std::sync::{Arc, Mutex};

use super::device::{self, Backend};
use super::graph::{Allocator, Graph, Ops, Resident, Tensor, WeightUpload};
use crate::backend::{BackendError, DeviceChoice};
use crate::model::deepseek_vl2::vision::{unfold_patches, TileEncoder, VisionModel};
use crate::model::deepseek_vl2::vision_config::{VisionError, VisionHparams};

/// The weights of one block on the device.
struct BlockW {
    ln1: (Tensor, Tensor),
    qkv: (Tensor, Tensor),
    out: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
    up: (Tensor, Tensor),
    down: (Tensor, Tensor),
}

/// Every weight tower + projector read, on the device.
struct Weights {
    patch_w: Tensor,
    patch_b: Tensor,
    pos: Tensor,
    blocks: Vec<BlockW>,
    post: (Tensor, Tensor),
    mm0: (Tensor, Tensor),
    mm2: (Tensor, Tensor),
}

/// Shapes of one tile's graph.
#[derive(Clone, Copy)]
struct Shape {
    w: i64,
    n_head: i64,
    hd: i64,
    /// Patches per tile (729) and per side (27).
    np: i64,
    grid: i64,
    /// Conv inputs per patch: 3 * P * P.
    k: i64,
    eps: f32,
    /// Projector: downsample ratio, tokens per side (14), output width N.
    ratio: i64,
    side: i64,
    n_out: i64,
}

/// Uploads the tower's and projector's weights (`[k, n]` matrices in their file types,
/// vectors as f32).
fn upload<'a>(
    vision: &'a VisionModel,
    backend: &Backend,
) -> Result<(Weights, Resident), BackendError> {
    let tower = vision.tower();
    let proj = vision.projector();
    let hp = tower.hparams();
    let (w, ff) = (hp.n_embd, hp.n_ff);
    let k = 3 * hp.patch_size * hp.patch_size;
    // 3 embedding + 12 per block + 2 final norm + 4 projector tensors.
    let mut up = WeightUpload::new(9 + 12 * tower.blocks.len())?;
    let v = |up: &mut WeightUpload<'a>, x: &[f32]| up.floats(x, &[x.len() as i64]);
    let patch_w = up.matrix("patch embedding", &tower.patch_w.view(), k, w)?;
    let patch_b = v(&mut up, &tower.patch_b);
    let pos = up.floats(&tower.pos, &[w as i64, hp.n_patches() as i64]);
    let mut blocks = Vec::with_capacity(tower.blocks.len());
    for (il, b) in tower.blocks.iter().enumerate() {
        let name = |s: &str| format!("block {il} {s}");
        blocks.push(BlockW {
            ln1: (v(&mut up, &b.ln1_w), v(&mut up, &b.ln1_b)),
            qkv: (
                up.matrix(&name("qkv"), &b.qkv.view(), w, 3 * w)?,
                v(&mut up, &b.qkv_b),
            ),
            out: (
                up.matrix(&name("attn out"), &b.out.view(), w, w)?,
                v(&mut up, &b.out_b),
            ),
            ln2: (v(&mut up, &b.ln2_w), v(&mut up, &b.ln2_b)),
            up: (
                up.matrix(&name("fc1"), &b.up.view(), w, ff)?,
                v(&mut up, &b.up_b),
            ),
            down: (
                up.matrix(&name("fc2"), &b.down.view(), ff, w)?,
                v(&mut up, &b.down_b),
            ),
        });
    }
    let post = (v(&mut up, &tower.post_w), v(&mut up, &tower.post_b));
    let k0 = proj.n_in * proj.ratio * proj.ratio;
    let mm0 = (
        up.matrix("projector mm0", &proj.mm0.view(), k0, proj.n_out)?,
        v(&mut up, &proj.mm0_b),
    );
    let mm2 = (
        up.matrix("projector mm2", &proj.mm2.view(), proj.n_out, proj.n_out)?,
        v(&mut up, &proj.mm2_b),
    );
    let weights = Weights {
        patch_w,
        patch_b,
        pos,
        blocks,
        post,
        mm0,
        mm2,
    };
    Ok((weights, up.upload(backend)?))
}

/// Non-causal multi-head attention over one tile: `x` is `[3W, np]` (q | k | v columns,
/// head-major) -> `[W, np]`.
fn attention(o: &Ops<'_>, qkv: Tensor, s: Shape) -> Tensor {
    let f = std::mem::size_of::<f32>();
    let row = qkv.nb()[1];
    let part = |i: i64| {
        o.view_3d(
            qkv,
            s.hd,
            s.n_head,
            s.np,
            s.hd as usize * f,
            row,
            (i * s.w) as usize * f,
        )
    };
    // [hd, np, n_head]: one matrix of tokens per head.
    let q = o.cont(o.permute(part(0), 0, 2, 1, 3));
    let k = o.cont(o.permute(part(1), 0, 2, 1, 3));
    // [np, hd, n_head]: vᵀ per head.
    let vt = o.cont(o.permute(part(2), 1, 2, 0, 3));
    let scores = o.mul_mat(k, q); // [np keys, np queries, n_head]
    let probs = o.soft_max_scaled(scores, 1.0 / (s.hd as f32).sqrt());
    let heads = o.mul_mat(vt, probs); // [hd, np, n_head]
    let merged = o.cont(o.permute(heads, 0, 2, 1, 3)); // [hd, n_head, np]
    o.reshape_2d(merged, s.w, s.np)
}

/// The projector on one tile's tower output `[W, np]` -> `[N, side*side]`: zero-pad the
/// grid bottom/right to `side * ratio`, gather each `ratio x ratio` block channel-major
/// (feature `c * r*r + dy * r + dx`), then Linear, GELU(erf), Linear.
fn projector(o: &Ops<'_>, wt: &Weights, x: Tensor, s: Shape) -> Tensor {
    let (r, side, w) = (s.ratio, s.side, s.w);
    let pad = (side * r - s.grid) as i32;
    let grid = o.pad(o.reshape_3d(x, w, s.grid, s.grid), 0, pad, pad, 0); // [W, x, y]
                                                                          // (c, dx, bj, y) -> (dx, c, bj, y)
    let a = o.cont(o.permute(o.reshape_4d(grid, w, r, side, side * r), 1, 0, 2, 3));
    // (dx, c+W*bj, dy, bi) -> (dx, dy, c+W*bj, bi)
    let b = o.cont(o.permute(o.reshape_4d(a, r, w * side, r, side), 0, 2, 1, 3));
    let blocks = o.reshape_2d(b, r * r * w, side * side);
    let h = o.gelu_erf(o.linear(wt.mm0.0, wt.mm0.1, blocks));
    o.linear(wt.mm2.0, wt.mm2.1, h)
}

/// Tower (and projector) of one tile: patches `[k, np]` -> (tower output, projector output).
fn build(o: &Ops<'_>, wt: &Weights, patches: Tensor, s: Shape) -> (Tensor, Tensor) {
    let mut x = o.add(o.linear(wt.patch_w, wt.patch_b, patches), wt.pos); // [W, np]
    for b in &wt.blocks {
        let h = o.layer_norm(x, b.ln1.0, b.ln1.1, s.eps);
        let qkv = o.linear(b.qkv.0, b.qkv.1, h);
        let a = attention(o, qkv, s);
        x = o.add(x, o.linear(b.out.0, b.out.1, a));
        let h = o.layer_norm(x, b.ln2.0, b.ln2.1, s.eps);
        let f = o.gelu_tanh(o.linear(b.up.0, b.up.1, h));
        x = o.add(x, o.linear(b.down.0, b.down.1, f));
    }
    let tower = o.layer_norm(x, wt.post.0, wt.post.1, s.eps);
    (tower, projector(o, wt, tower, s))
}

/// What runs under the lock: the graph, the weights it reads, its compute buffer, the
/// backend (dropped in that order).
struct State {
    graph: Graph,
    patches: Tensor,
    tower_out: Tensor,
    proj_out: Tensor,
    _weights: Resident,
    _alloc: Allocator,
    backend: Backend,
}

// SAFETY: the ggml handles in `State` are owned by it alone and used only under the
// `Mutex` of `GgmlVision` (one thread at a time); ggml backends may be driven from any
// thread as long as calls on one are not concurrent.
unsafe impl Send for State {}

/// Tower + projector on a ggml device, one tile per graph run.
pub struct GgmlVision {
    state: Mutex<State>,
    hp: VisionHparams,
    device: String,
    /// Bytes on the device: weights, compute buffer.
    weight_bytes: usize,
    compute_bytes: usize,
}

impl GgmlVision {
    /// Uploads `vision`'s weights to the device `choice` names (the first GPU when `None`)
    /// and prepares the per-tile graph; fails when the device lacks an operation or the
    /// memory (`budget` bytes at most; default what the device reports free).
    pub fn new(
        vision: &VisionModel,
        choice: Option<&DeviceChoice>,
        budget: Option<u64>,
        threads: usize,
    ) -> Result<GgmlVision, BackendError> {
        let (dev, info) = device::find(choice)?;
        let backend = Backend::open(dev, info, threads)?;
        let hp = vision.tower().hparams().clone();
        let proj = vision.projector();
        let i = |v: usize| v as i64;
        let shape = Shape {
            w: i(hp.n_embd),
            n_head: i(hp.n_head),
            hd: i(hp.head_dim()),
            np: i(hp.n_patches()),
            grid: i(hp.grid()),
            k: i(3 * hp.patch_size * hp.patch_size),
            eps: hp.eps,
            ratio: i(proj.ratio),
            side: i(proj.side()),
            n_out: i(proj.n_out()),
        };
        let (weights, resident) = upload(vision, &backend)?;
        let mut io = None;
        let alloc = Allocator::new(&backend)?;
        let graph = Graph::new(&backend, &alloc, 64 * (hp.n_layer + 2), |o| {
            let patches = o.input(&[shape.k, shape.np]);
            let (tower, proj) = build(o, &weights, patches, shape);
            io = Some((patches, tower, proj));
            vec![tower, proj]
        })?;
        let (patches, tower_out, proj_out) = io.expect("the graph builder ran");
        debug_assert_eq!(proj_out.ne()[..2], [shape.n_out, shape.side * shape.side]);
        let (weight_bytes, compute_bytes) = (resident.bytes(), alloc.bytes());
        let need = (weight_bytes + compute_bytes) as u64;
        let allowed = budget.unwrap_or(backend.info.memory_free);
        if need > allowed {
            return Err(BackendError::Memory(format!(
                "the vision tower needs {} MiB on {} ({} MiB weights + {} MiB compute), {} \
                 allows {} MiB",
                need >> 20,
                backend.info.name,
                weight_bytes >> 20,
                compute_bytes >> 20,
                if budget.is_some() {
                    "--gpu-mem"
                } else {
                    "its free memory"
                },
                allowed >> 20
            )));
        }
        let device = format!("{} ({})", backend.info.name, backend.info.description);
        Ok(GgmlVision {
            state: Mutex::new(State {
                graph,
                patches,
                tower_out,
                proj_out,
                _weights: resident,
                _alloc: alloc,
                backend,
            }),
            hp,
            device,
            weight_bytes,
            compute_bytes,
        })
    }

    /// Device bytes held: (weights, compute buffer).
    pub fn device_bytes(&self) -> (usize, usize) {
        (self.weight_bytes, self.compute_bytes)
    }

    /// Both stages for `n_tiles` tiles of normalised pixels: the tower output
    /// `[n_tiles, 729, W]` (when `tower` asks for it; empty otherwise) and the projector
    /// output `[n_tiles, side*side, N]`.
    pub fn forward(
        &self,
        pixels: &[f32],
        n_tiles: usize,
        tower: bool,
    ) -> Result<(Vec<f32>, Vec<f32>), VisionError> {
        let s = self.hp.image_size;
        let tile_len = 3 * s * s;
        if pixels.len() != n_tiles * tile_len {
            return Err(VisionError::Shape {
                what: "vision tower pixels [n_tiles, 3, S, S]",
                expected: n_tiles * tile_len,
                found: pixels.len(),
            });
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let per_tower = st.tower_out.n_bytes() / 4;
        let per_proj = st.proj_out.n_bytes() / 4;
        let mut feats = vec![0.0f32; if tower { n_tiles * per_tower } else { 0 }];
        let mut out = vec![0.0f32; n_tiles * per_proj];
        for (t, px) in pixels.chunks_exact(tile_len).enumerate() {
            let patches = unfold_patches(px, 1, s, self.hp.patch_size);
            st.graph.set_input(st.patches, &patches);
            st.graph
                .compute(&st.backend)
                .map_err(|e| VisionError::Offload(e.to_string()))?;
            st.graph
                .get_output(st.proj_out, &mut out[t * per_proj..(t + 1) * per_proj]);
            if tower {
                st.graph
                    .get_output(st.tower_out, &mut feats[t * per_tower..(t + 1) * per_tower]);
            }
        }
        Ok((feats, out))
    }
}

impl TileEncoder for GgmlVision {
    fn device(&self) -> String {
        self.device.clone()
    }

    fn encode_tiles(&self, pixels: &[f32], n_tiles: usize) -> Result<Vec<f32>, VisionError> {
        Ok(self.forward(pixels, n_tiles, false)?.1)
    }
}

/// [`GgmlVision`] as the vision model's tile encoder.
pub(crate) fn encoder(
    vision: &VisionModel,
    choice: Option<&DeviceChoice>,
    budget: Option<u64>,
    threads: usize,
) -> Result<Arc<dyn TileEncoder>, BackendError> {
    Ok(Arc::new(GgmlVision::new(vision, choice, budget, threads)?))
}
