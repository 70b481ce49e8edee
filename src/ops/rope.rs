//! Rotary position embedding.
//!
//! Frequencies `inv_freq_i = theta^(-2i/d)` and angles `pos * inv_freq_i` are
//! computed in float32, as the reference builds its tables
//! (DEEPSEEK-VL2.md §7.5). Two pair layouts exist:
//! - [`RopeLayout::Adjacent`] (ggml "NORM"): pairs (2i, 2i+1). pocketvl's GGUF
//!   files need only this one: MLA's rope part is interleaved in the checkpoint,
//!   and the converter permutes MHA q/k rows so that it applies there too.
//! - [`RopeLayout::HalfSplit`] (ggml "NEOX", transformers' `rotate_half`):
//!   pairs (i, i + d/2), what the reference applies to un-permuted MHA weights.

use rayon::prelude::*;

use super::SERIAL_ELEMS;

/// Which elements form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1).
    Adjacent,
    /// Pairs (i, i + d/2).
    HalfSplit,
}

/// Precomputed cos/sin tables for positions `0..max_pos` over `dim` rotary dims.
#[derive(Clone, Debug)]
pub struct Rope {
    dim: usize,
    layout: RopeLayout,
    max_pos: usize,
    /// `[max_pos, dim/2]`
    cos: Vec<f32>,
    /// `[max_pos, dim/2]`
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for `dim` (even) rotary dimensions, base `theta`, positions below `max_pos`.
    pub fn new(dim: usize, theta: f32, layout: RopeLayout, max_pos: usize) -> Rope {
        let half = dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope {
            dim,
            layout,
            max_pos,
            cos,
            sin,
        }
    }

    /// Rotary dimensions.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Positions the tables cover.
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// [`Rope::apply`] to each `row`-sized slice of `x` (one token's heads), the `t`-th
    /// at position `pos0 + t`; a large batch in parallel.
    pub fn apply_rows(&self, x: &mut [f32], row: usize, pos0: usize) {
        let one = |(t, r): (usize, &mut [f32])| self.apply(r, pos0 + t);
        if x.len() < SERIAL_ELEMS {
            x.chunks_mut(row).enumerate().for_each(one);
        } else {
            x.par_chunks_mut(row).enumerate().for_each(one);
        }
    }

    /// Rotates every `dim`-sized vector in `x` (e.g. all heads of one token)
    /// for position `pos`. `pos < max_pos` is the caller's invariant (the
    /// context length is checked before a forward pass).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.dim / 2;
        debug_assert!(pos < self.max_pos);
        debug_assert_eq!(x.len() % self.dim, 0);
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for v in x.chunks_exact_mut(self.dim) {
            for i in 0..half {
                let (a, b) = match self.layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::HalfSplit => (i, i + half),
                };
                let (x0, x1) = (v[a], v[b]);
                v[a] = x0 * cos[i] - x1 * sin[i];
                v[b] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half-split RoPE on the reference's layout equals adjacent-pair RoPE on
    /// the converter's permuted layout (new index 2i = old i, 2i+1 = old i+d/2),
    /// element for element after un-permuting, and therefore in every q·k.
    /// Rows of a batch large enough to run in parallel get their own positions: each
    /// row's bits equal [`Rope::apply`] on it alone.
    #[test]
    fn apply_rows_equals_apply_per_row() {
        let (dim, heads) = (64, 4);
        let row = dim * heads;
        let n = 2 * SERIAL_ELEMS / row + 5;
        let rope = Rope::new(dim, 10000.0, RopeLayout::Adjacent, 4096);
        let x = crate::ops::lcg(3, n * row, 2.0);
        let mut batch = x.clone();
        rope.apply_rows(&mut batch, row, 7);
        for t in 0..n {
            let mut one = x[t * row..][..row].to_vec();
            rope.apply(&mut one, 7 + t);
            assert_eq!(one, batch[t * row..][..row], "row {t}");
        }
    }

    #[test]
    fn half_split_equals_adjacent_on_permuted_rows() {
        let d = 16;
        let half = Rope::new(d, 10000.0, RopeLayout::HalfSplit, 64);
        let adj = Rope::new(d, 10000.0, RopeLayout::Adjacent, 64);
        let x: Vec<f32> = (0..d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let permute = |v: &[f32]| {
            let mut p = vec![0.0; d];
            for i in 0..d / 2 {
                p[2 * i] = v[i];
                p[2 * i + 1] = v[i + d / 2];
            }
            p
        };
        for pos in [0usize, 1, 5, 63] {
            let mut a = x.clone();
            half.apply(&mut a, pos);
            let mut b = permute(&x);
            adj.apply(&mut b, pos);
            assert_eq!(permute(&a), b, "pos {pos}");
        }
    }

    /// RoPE is a rotation: the dot product of a query at p and a key at s
    /// depends only on p - s.
    #[test]
    fn scores_depend_on_relative_position() {
        let d = 8;
        let r = Rope::new(d, 10000.0, RopeLayout::Adjacent, 32);
        let q: Vec<f32> = (0..d).map(|i| i as f32 * 0.1 - 0.3).collect();
        let k: Vec<f32> = (0..d).map(|i| 0.5 - i as f32 * 0.07).collect();
        let dot = |p: usize, s: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            r.apply(&mut a, p);
            r.apply(&mut b, s);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot(7, 3) - dot(10, 6)).abs() < 1e-5);
        assert!((dot(4, 4) - dot(0, 0)).abs() < 1e-5);
    }
}
