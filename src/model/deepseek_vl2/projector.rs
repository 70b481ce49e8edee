//! The `downsample_mlp_gelu` projector and the image-token layout (spec §5, §6.1; reference:
//! `MlpProjector` in deepseek_vl2/models/modeling_deepseek_vl_v2.py and the tile assembly in
//! `DeepseekVLV2ForCausalLM.prepare_inputs_embeds`).
//!
//! Per tile: 27x27 features, zero-padded bottom/right to 28x28, every 2x2 block concatenated
//! **channel-major** (`F.unfold` order: feature `c * 4 + dy * 2 + dx`), then
//! Linear(4W -> N), exact-erf GELU, Linear(N -> N): 196 tokens of N.
//!
//! Layout per image ("2D" tile tag, global view first): 14 rows of (14 global tokens +
//! `image_newline`), `view_seperator`, then the local tiles stitched into one
//! (14 * down) x (14 * across) grid with one `image_newline` after each grid row.

use quant::schema::vtensor as vt;
use quant::GgmlType;
use rayon::prelude::*;

use super::preprocess::Preprocessed;
use super::vision_config::{VisionError, VisionHparams};
use super::vision_math::{add_bias, tower_matmul};
use crate::loader::{LoaderError, ModelFile, Weight};
use crate::ops::gelu_erf;

/// Types accepted for vectors (biases, norms, position embedding, tile tags): `--quant f16`
/// and `bf16` store every tensor in that type, and both widen to f32 exactly.
const VECTOR_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// Projector weights and the two learned tile-tag vectors (the weights crate-visible for the
/// ggml backend, src/backend).
pub struct Projector {
    /// Patches per side of the tower output (27).
    pub(crate) grid: usize,
    /// 2x2 downsample.
    pub(crate) ratio: usize,
    /// Tower width W.
    pub(crate) n_in: usize,
    /// Output width N.
    pub(crate) n_out: usize,
    pub(crate) mm0: Weight,
    pub(crate) mm0_b: Vec<f32>,
    pub(crate) mm2: Weight,
    pub(crate) mm2_b: Vec<f32>,
    image_newline: Vec<f32>,
    view_seperator: Vec<f32>,
}

impl Projector {
    pub fn load(file: &ModelFile, hp: &VisionHparams) -> Result<Self, LoaderError> {
        let (w, n, r) = (hp.n_embd as u64, hp.n_proj as u64, hp.downsample as u64);
        let f = |name: &str, ne: &[u64]| -> Result<Vec<f32>, LoaderError> {
            Ok(file.weight_of(name, ne, VECTOR_TYPES)?.to_f32())
        };
        Ok(Projector {
            grid: hp.grid(),
            ratio: hp.downsample,
            n_in: hp.n_embd,
            n_out: hp.n_proj,
            mm0: file.weight(vt::MM0_W, &[w * r * r, n])?,
            mm0_b: f(vt::MM0_B, &[n])?,
            mm2: file.weight(vt::MM2_W, &[n, n])?,
            mm2_b: f(vt::MM2_B, &[n])?,
            image_newline: f(vt::IMAGE_NEWLINE, &[n])?,
            view_seperator: f(vt::VIEW_SEPERATOR, &[n])?,
        })
    }

    /// Tokens per side of a projected tile: `ceil(27 / 2)` = 14.
    pub fn side(&self) -> usize {
        self.grid.div_ceil(self.ratio)
    }

    /// Output width N.
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// `[n_tiles, G*G, W]` tower output -> `[n_tiles, side*side, N]`.
    pub fn forward(&self, feats: &[f32], n_tiles: usize) -> Result<Vec<f32>, VisionError> {
        let (g, w) = (self.grid, self.n_in);
        if feats.len() != n_tiles * g * g * w {
            return Err(VisionError::Shape {
                what: "projector input [n_tiles, 729, W]",
                expected: n_tiles * g * g * w,
                found: feats.len(),
            });
        }
        let (side, r) = (self.side(), self.ratio);
        let k = w * r * r;
        let n_tok = n_tiles * side * side;
        // Pad to side*r with zeros (bottom/right) and unfold channel-major.
        let mut x = vec![0.0f32; n_tok * k]; // [n_tok, r*r*W]
        x.par_chunks_mut(side * side * k)
            .enumerate()
            .for_each(|(t, dst)| {
                let tile = &feats[t * g * g * w..(t + 1) * g * g * w];
                for bi in 0..side {
                    for bj in 0..side {
                        let v = &mut dst[(bi * side + bj) * k..(bi * side + bj + 1) * k];
                        for dy in 0..r {
                            for dx in 0..r {
                                let (y, xx) = (bi * r + dy, bj * r + dx);
                                if y >= g || xx >= g {
                                    continue; // the zero padding
                                }
                                let f = &tile[(y * g + xx) * w..(y * g + xx + 1) * w];
                                for (c, &val) in f.iter().enumerate() {
                                    v[c * r * r + dy * r + dx] = val;
                                }
                            }
                        }
                    }
                }
            });
        let n = self.n_out;
        let mut h = vec![0.0f32; n_tok * n];
        tower_matmul(&self.mm0.view(), &x, n_tok, &mut h); // [n_tok, N]
        add_bias(&mut h, &self.mm0_b);
        h.par_chunks_mut(4096).for_each(gelu_erf);
        let mut out = vec![0.0f32; n_tok * n];
        tower_matmul(&self.mm2.view(), &h, n_tok, &mut out);
        add_bias(&mut out, &self.mm2_b);
        Ok(out)
    }

    /// The image-token embeddings of a request, images in prompt order (§6.1):
    /// `[sum of n_tokens, N]`. `projected` holds the projector output of every unique tile
    /// (`[pre.unique_tiles.len(), side*side, N]`).
    pub fn assemble(&self, projected: &[f32], pre: &Preprocessed) -> Result<Vec<f32>, VisionError> {
        let (side, n) = (self.side(), self.n_out);
        let per_tile = side * side * n;
        if projected.len() != pre.unique_tiles.len() * per_tile {
            return Err(VisionError::Shape {
                what: "projected tiles [n_unique, side*side, N]",
                expected: pre.unique_tiles.len() * per_tile,
                found: projected.len(),
            });
        }
        let total: usize = pre.images.iter().map(|l| l.n_tokens).sum();
        let mut out = Vec::with_capacity(total * n);
        let tile = |i: usize| -> Result<&[f32], VisionError> {
            let u = *pre
                .tile_index
                .get(i)
                .ok_or_else(|| VisionError::Layout(format!("tile {i} is missing")))?;
            projected
                .get(u * per_tile..(u + 1) * per_tile)
                .ok_or_else(|| VisionError::Layout(format!("unique tile {u} is missing")))
        };
        for (im, l) in pre.images.iter().enumerate() {
            let start = out.len();
            // Global view: side rows of (side tokens + newline).
            let g = tile(l.first_tile)?;
            for row in g.chunks_exact(side * n) {
                out.extend_from_slice(row);
                out.extend_from_slice(&self.image_newline);
            }
            out.extend_from_slice(&self.view_seperator);
            // Local view: the tiles stitched row-major into one grid, newline per grid row.
            for ty in 0..l.tiles_down {
                for r in 0..side {
                    for tx in 0..l.tiles_across {
                        let t = tile(l.first_tile + 1 + ty * l.tiles_across + tx)?;
                        out.extend_from_slice(&t[r * side * n..(r + 1) * side * n]);
                    }
                    out.extend_from_slice(&self.image_newline);
                }
            }
            let got = (out.len() - start) / n;
            if got != l.n_tokens {
                return Err(VisionError::Layout(format!(
                    "image {im}: assembled {got} tokens, the prompt reserves {}",
                    l.n_tokens
                )));
            }
        }
        Ok(out)
    }
}
