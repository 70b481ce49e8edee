//! The SigLIP-SO400M vision tower of DeepSeek-VL2 (spec §4; reference: timm
//! `VisionTransformer` built by `deepseek_vl2/models/siglip_vit.py`, `ignore_head=True`).
//!
//! Per 384x384 tile: 14x14 stride-14 patch conv (the last 6 pixel rows/columns are never
//! seen) -> 27x27 = 729 tokens, + learned position embedding (no class token), then pre-norm
//! blocks `x += proj(attn(LN1 x)); x += fc2(gelu_tanh(fc1(LN2 x)))` with non-causal attention,
//! then the final LayerNorm. The attention-pool head is not run.
//!
//! All tiles of a request are batched through each matmul (weights read once per chunk of
//! tiles); attention (`vision_attention.rs`) runs per tile in parallel tasks.

use quant::kernels::split_tiles;
use quant::schema::vtensor as vt;
use quant::GgmlType;
use rayon::prelude::*;

use super::vision_attention::{bf16_attention_runs, full_attention, Arith, Panels};
use super::vision_config::{VisionError, VisionHparams};
pub use super::vision_math::VisionPrecision;
use super::vision_math::{layer_norm, tower_matmul, tower_matmul_then, Then};
use crate::loader::{LoaderError, ModelFile, Preload, Weight};
use crate::ops::MatView;

/// Tiles pushed through the tower together: bounds activation memory
/// (`TILE_CHUNK * 729 * n_ff` floats for the MLP) while keeping matmuls wide. Five, so that
/// the common 2x2 layout (global view + 4 local tiles) and 3x3 one (1 + 9) are whole
/// chunks: every chunk packs each layer's weights again, and a 2x2 request cut 4 + 1 did
/// so twice (2-4 % of its tower time on the 2-core Zen 4 VM; BENCHMARKS.md).
const TILE_CHUNK: usize = 5;

/// Types accepted for vectors (biases, norms, position embedding, tile tags): `--quant f16`
/// and `bf16` store every tensor in that type, and both widen to f32 exactly.
const VECTOR_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// One pre-norm transformer block. Fields are crate-visible for the ggml backend
/// (src/backend), which uploads the same weights to a device.
pub(crate) struct Block {
    pub(crate) ln1_w: Vec<f32>,
    pub(crate) ln1_b: Vec<f32>,
    /// [3W rows: q | k | v, each head-major] x W.
    pub(crate) qkv: Weight,
    pub(crate) qkv_b: Vec<f32>,
    pub(crate) out: Weight,
    pub(crate) out_b: Vec<f32>,
    pub(crate) ln2_w: Vec<f32>,
    pub(crate) ln2_b: Vec<f32>,
    pub(crate) up: Weight,
    pub(crate) up_b: Vec<f32>,
    pub(crate) down: Weight,
    pub(crate) down_b: Vec<f32>,
}

/// The SigLIP tower with its weights (mapped from the mmproj file).
pub struct VisionTower {
    hp: VisionHparams,
    /// Conv kernel as a matrix: W rows of `3 * P * P` (c, ky, kx) values.
    pub(crate) patch_w: Weight,
    pub(crate) patch_b: Vec<f32>,
    /// `[729, W]`.
    pub(crate) pos: Vec<f32>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) post_w: Vec<f32>,
    pub(crate) post_b: Vec<f32>,
    /// The blocks' product arithmetic ([`VisionModel::set_precision`]).
    precision: VisionPrecision,
}

fn f32_vec(file: &ModelFile, name: &str, ne: &[u64]) -> Result<Vec<f32>, LoaderError> {
    Ok(file.weight_of(name, ne, VECTOR_TYPES)?.to_f32())
}

impl VisionTower {
    /// Fetches every tower tensor with its expected shape.
    pub fn load(file: &ModelFile, hp: &VisionHparams) -> Result<Self, LoaderError> {
        let u = |v: usize| v as u64;
        let (w, p, ff) = (u(hp.n_embd), u(hp.patch_size), u(hp.n_ff));
        let patch_w = file.weight(vt::PATCH_EMBD_W, &[p, p, 3, w])?;
        let patch_b = f32_vec(file, vt::PATCH_EMBD_B, &[w])?;
        let pos = f32_vec(file, vt::POSITION_EMBD, &[w, u(hp.n_patches())])?;
        let mut blocks = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| vt::vblk(il, s);
            blocks.push(Block {
                ln1_w: f32_vec(file, &n(vt::LN1_W), &[w])?,
                ln1_b: f32_vec(file, &n(vt::LN1_B), &[w])?,
                qkv: file.weight(&n(vt::ATTN_QKV_W), &[w, 3 * w])?,
                qkv_b: f32_vec(file, &n(vt::ATTN_QKV_B), &[3 * w])?,
                out: file.weight(&n(vt::ATTN_OUT_W), &[w, w])?,
                out_b: f32_vec(file, &n(vt::ATTN_OUT_B), &[w])?,
                ln2_w: f32_vec(file, &n(vt::LN2_W), &[w])?,
                ln2_b: f32_vec(file, &n(vt::LN2_B), &[w])?,
                up: file.weight(&n(vt::FFN_UP_W), &[w, ff])?,
                up_b: f32_vec(file, &n(vt::FFN_UP_B), &[ff])?,
                down: file.weight(&n(vt::FFN_DOWN_W), &[ff, w])?,
                down_b: f32_vec(file, &n(vt::FFN_DOWN_B), &[w])?,
            });
        }
        Ok(VisionTower {
            hp: hp.clone(),
            patch_w,
            patch_b,
            pos,
            blocks,
            post_w: f32_vec(file, vt::POST_LN_W, &[w])?,
            post_b: f32_vec(file, vt::POST_LN_B, &[w])?,
            precision: VisionPrecision::Exact,
        })
    }

    pub fn hparams(&self) -> &VisionHparams {
        &self.hp
    }

    /// Runs the tower on normalised pixels `[n_tiles, 3, S, S]`; returns `[n_tiles, 729, W]`
    /// (after the final LayerNorm).
    pub fn forward(&self, pixels: &[f32], n_tiles: usize) -> Result<Vec<f32>, VisionError> {
        let s = self.hp.image_size;
        let tile_len = 3 * s * s;
        if pixels.len() != n_tiles * tile_len {
            return Err(VisionError::Shape {
                what: "vision tower pixels [n_tiles, 3, S, S]",
                expected: n_tiles * tile_len,
                found: pixels.len(),
            });
        }
        let per_tile = self.hp.n_patches() * self.hp.n_embd;
        let mut out = vec![0.0f32; n_tiles * per_tile];
        for (px, dst) in pixels
            .chunks(TILE_CHUNK * tile_len)
            .zip(out.chunks_mut(TILE_CHUNK * per_tile))
        {
            self.forward_chunk(px, px.len() / tile_len, dst)?;
        }
        Ok(out)
    }

    fn forward_chunk(
        &self,
        pixels: &[f32],
        n_tiles: usize,
        out: &mut [f32],
    ) -> Result<(), VisionError> {
        let hp = &self.hp;
        let (w, np) = (hp.n_embd, hp.n_patches());
        let n_tok = n_tiles * np;

        // Patch embedding: the stride-P conv as a matmul over unfolded patches.
        let patches = unfold_patches(pixels, n_tiles, hp.image_size, hp.patch_size); // [n_tok, 3*P*P]
        let k = 3 * hp.patch_size * hp.patch_size;
        let pw = self.patch_w.view();
        let pw = MatView::new(pw.ty, k, w, pw.data)
            .map_err(|e| VisionError::Layout(format!("{}: {e}", vt::PATCH_EMBD_W)))?;
        let mut x = vec![0.0f32; n_tok * w]; // [n_tok, W]
        tower_matmul(&pw, &patches, n_tok, &mut x);
        for tile in x.chunks_exact_mut(np * w) {
            for (row, pos) in tile.chunks_exact_mut(w).zip(self.pos.chunks_exact(w)) {
                for ((v, b), p) in row.iter_mut().zip(&self.patch_b).zip(pos) {
                    *v += b + p;
                }
            }
        }

        let mut h = vec![0.0f32; n_tok * w];
        let mut qkv = vec![0.0f32; n_tok * 3 * w];
        let mut attn = vec![0.0f32; n_tok * w];
        let mut proj = vec![0.0f32; n_tok * w];
        let mut ff = vec![0.0f32; n_tok * hp.n_ff];
        let mut panels = Panels::default(); // attention's packed k and v, reused by every layer
        for b in &self.blocks {
            // x = x + proj(attn(LN1(x)))
            layer_norm(&x, &b.ln1_w, &b.ln1_b, hp.eps, &mut h);
            let qkv_b = Then::Bias(&b.qkv_b);
            tower_matmul_then(&b.qkv.view(), &h, n_tok, &mut qkv, qkv_b, self.precision); // [n_tok, 3W]
            let (nh, hd) = (hp.n_head, hp.head_dim());
            let arith = self.attention_arith(b.qkv.ty(), hd);
            full_attention(&qkv, n_tiles, np, nh, hd, arith, &mut panels, &mut attn); // [n_tok, W]
            let into_x = Then::BiasInto(&b.out_b, &mut x);
            tower_matmul_then(
                &b.out.view(),
                &attn,
                n_tok,
                &mut proj,
                into_x,
                self.precision,
            );
            // x = x + fc2(gelu_tanh(fc1(LN2(x))))
            layer_norm(&x, &b.ln2_w, &b.ln2_b, hp.eps, &mut h);
            let up_b = Then::BiasGelu(&b.up_b);
            tower_matmul_then(&b.up.view(), &h, n_tok, &mut ff, up_b, self.precision); // [n_tok, n_ff]
            let into_x = Then::BiasInto(&b.down_b, &mut x);
            tower_matmul_then(
                &b.down.view(),
                &ff,
                n_tok,
                &mut proj,
                into_x,
                self.precision,
            );
        }
        layer_norm(&x, &self.post_w, &self.post_b, hp.eps, out);
        Ok(())
    }

    /// The attention's arithmetic for a block whose qkv matrix is `qkv_ty`: a tower of bf16
    /// matrices on an AMX CPU takes its attention there too (split operands, f32-accurate);
    /// `--vision-precision bf16` rounds q, k, v and the probabilities to bf16 on
    /// `vdpbf16ps` where the CPU has it (measured cost: BENCHMARKS.md, twenty-second
    /// session); everything else the exact f32 FMA path.
    fn attention_arith(&self, qkv_ty: GgmlType, hd: usize) -> Arith {
        if qkv_ty != GgmlType::BF16 {
            return Arith::Exact;
        }
        if let Some(tiles) = split_tiles() {
            return Arith::Split(tiles);
        }
        if self.precision == VisionPrecision::Bf16 && bf16_attention_runs(hd) {
            return Arith::Bf16;
        }
        Arith::Exact
    }
}

/// `[n_tiles, 3, S, S]` pixels to `[n_tiles * G * G, 3 * P * P]` patch rows (row-major patch
/// order; inside a patch (c, ky, kx), the conv kernel's order). Pixels past `G * P` are
/// ignored, as the stride-P conv without padding ignores them.
pub(crate) fn unfold_patches(pixels: &[f32], n_tiles: usize, s: usize, p: usize) -> Vec<f32> {
    let g = s / p;
    let k = 3 * p * p;
    let mut out = vec![0.0f32; n_tiles * g * g * k];
    out.par_chunks_mut(g * g * k)
        .enumerate()
        .for_each(|(t, dst)| {
            let tile = &pixels[t * 3 * s * s..(t + 1) * 3 * s * s];
            for py in 0..g {
                for px in 0..g {
                    let row = &mut dst[(py * g + px) * k..(py * g + px + 1) * k];
                    for c in 0..3 {
                        for ky in 0..p {
                            let src = c * s * s + (py * p + ky) * s + px * p;
                            row[c * p * p + ky * p..c * p * p + (ky + 1) * p]
                                .copy_from_slice(&tile[src..src + p]);
                        }
                    }
                }
            }
        });
    out
}

/// Tower + projector run elsewhere (a ggml device, src/backend) on whole tiles. The CPU
/// tower and projector stay the reference it is tested against.
pub trait TileEncoder: Send + Sync {
    /// Where it runs (a device name), for logs and stats.
    fn device(&self) -> String;
    /// Normalised pixels `[n_tiles, 3, S, S]` -> projector output `[n_tiles, side*side, N]`.
    fn encode_tiles(&self, pixels: &[f32], n_tiles: usize) -> Result<Vec<f32>, VisionError>;
}

/// Everything the image side of a request needs, loaded from one mmproj file: the
/// processor settings, the tower and the projector.
pub struct VisionModel {
    pub config: super::preprocess::PreprocessConfig,
    pub hparams: VisionHparams,
    /// The `<image>` placeholder id the converter recorded (`deepseekvl2.image_token_id`).
    pub image_token_id: Option<u32>,
    tower: VisionTower,
    projector: super::projector::Projector,
    /// Runs tower + projector instead of the CPU when set (`--offload vision`).
    offload: Option<std::sync::Arc<dyn TileEncoder>>,
    /// The file being read in behind the load ([`VisionModel::load_with`]).
    preload: Option<Preload>,
}

impl VisionModel {
    /// Opens an mmproj GGUF; fails if a tensor is missing, mis-shaped, or left unused.
    pub fn load(path: &std::path::Path) -> Result<Self, VisionError> {
        Self::load_with(path, false, None)
    }

    /// [`VisionModel::load`], reading the file in on a background thread from the start
    /// when `preload` is set (and it fits in memory; [`Preload`]): the first tile then
    /// finds its layers' weights in memory instead of faulting them in as it goes.
    /// `ahead_of` (the language model's preload, whose file an image needs only after this
    /// one) holds from now until this file's preload has ended, or until the load ends
    /// where there is none.
    pub fn load_with(
        path: &std::path::Path,
        preload: bool,
        ahead_of: Option<&Preload>,
    ) -> Result<Self, VisionError> {
        let hold = ahead_of.map(Preload::hold);
        let file = ModelFile::open(path)?;
        // Every tower and projector matrix is read whole per image (packed per product).
        file.gguf().advise_huge_pages(&[]);
        let mut model = Self::from_file(&file)?;
        // Not before the norms and biases are widened to f32 above: each of their faults
        // would wait behind the preload's reads.
        if preload {
            model.preload = Preload::start(&file, &[]);
        }
        if let (Some(hold), Some(p)) = (hold, &model.preload) {
            p.release_when_done(hold);
        }
        Ok(model)
    }

    fn from_file(file: &ModelFile) -> Result<Self, VisionError> {
        let hparams = VisionHparams::from_file(file)?;
        let config = super::preprocess::PreprocessConfig::from_mmproj(file, &hparams)?;
        let tower = VisionTower::load(file, &hparams)?;
        let projector = super::projector::Projector::load(file, &hparams)?;
        file.check_all_used()?;
        let image_token_id = file
            .gguf()
            .get(quant::schema::vl2::IMAGE_TOKEN_ID)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok());
        Ok(VisionModel {
            config,
            hparams,
            image_token_id,
            tower,
            projector,
            offload: None,
            preload: None,
        })
    }

    /// The background read of the file started at load, where one runs.
    pub fn preload(&self) -> Option<&Preload> {
        self.preload.as_ref()
    }

    /// The tower blocks' product arithmetic from now on (default
    /// [`VisionPrecision::Exact`]; a device the tower is offloaded to keeps its own).
    pub fn set_precision(&mut self, precision: VisionPrecision) {
        self.tower.precision = precision;
    }

    /// Sends every later [`VisionModel::encode`] through `encoder`.
    pub fn set_offload(&mut self, encoder: std::sync::Arc<dyn TileEncoder>) {
        self.offload = Some(encoder);
    }

    /// The device tower + projector run on, when not the CPU path.
    pub fn offload_device(&self) -> Option<String> {
        self.offload.as_ref().map(|e| e.device())
    }

    pub fn tower(&self) -> &VisionTower {
        &self.tower
    }

    pub fn projector(&self) -> &super::projector::Projector {
        &self.projector
    }

    /// Tiles all images of a request (the tiling decision depends on their number).
    pub fn preprocess(
        &self,
        images: &[crate::image_io::RgbImage],
    ) -> Result<super::preprocess::Preprocessed, super::preprocess::PreprocessError> {
        super::preprocess::preprocess(images, &self.config)
    }

    /// Tower + projector on every unique tile, then the §6.1 layout: the embeddings that
    /// replace the `<image>` tokens, `[sum of n_tokens, N]`, images in prompt order.
    pub fn encode(&self, pre: &super::preprocess::Preprocessed) -> Result<Vec<f32>, VisionError> {
        let n = pre.unique_tiles.len();
        let pixels = pre.unique_pixels_f32(&self.config);
        let projected = match &self.offload {
            Some(e) => e.encode_tiles(&pixels, n)?,
            None => {
                let feats = self.tower.forward(&pixels, n)?;
                self.projector.forward(&feats, n)?
            }
        };
        self.projector.assemble(&projected, pre)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfold_matches_conv_indexing() {
        // 2 tiles of 5x5, patch 2 -> grid 2 (the last row/column is never read).
        let (s, p) = (5, 2);
        let pixels: Vec<f32> = (0..2 * 3 * s * s).map(|i| i as f32).collect();
        let u = unfold_patches(&pixels, 2, s, p);
        let k = 3 * p * p;
        assert_eq!(u.len(), 2 * 4 * k);
        // tile 1, patch (1, 0), channel 2, (ky, kx) = (1, 1): pixel (c2, y3, x1).
        let want = pixels[3 * s * s + 2 * s * s + 3 * s + 1];
        assert_eq!(u[(4 + 2) * k + 2 * p * p + p + 1], want);
    }
}
