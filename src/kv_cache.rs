//! The attention cache: per layer, one key row and one value row per
//! position.
//!
//! - MHA: key row = post-RoPE K of all kv heads, value row = V of all heads.
//! - MLA (absorbed): key row = `[c ; k_rope]` (normalised latent and the
//!   post-RoPE shared rope key), no separate value rows: the value is the
//!   latent `c`, a prefix of the key row (DEEPSEEK-VL2.md §7.10). That is 576
//!   floats per token and layer for the released MLA models instead of the
//!   ~5k a decompressed cache would need.
//!
//! Buffers grow with the sequence up to the context length, so a short chat
//! does not pay for 4096 positions. `truncate` keeps a prefix: a new chat turn
//! reuses every position whose tokens did not change.

/// Bytes of one cached value (rows are f32).
const ELEM_BYTES: usize = std::mem::size_of::<f32>();

/// Per-layer cache rows.
#[derive(Debug, Default, Clone)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The cache of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    k_width: usize,
    v_width: usize,
    n_ctx: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `n_layer` layers of `k_width`/`v_width` floats per
    /// position (`v_width` 0 when values live inside the key rows), holding at
    /// most `n_ctx` positions.
    pub fn new(n_layer: usize, k_width: usize, v_width: usize, n_ctx: usize) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); n_layer],
            k_width,
            v_width,
            n_ctx,
            len: 0,
        }
    }

    /// Positions cached (valid in every layer).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache may hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn k_width(&self) -> usize {
        self.k_width
    }

    pub fn v_width(&self) -> usize {
        self.v_width
    }

    /// Keeps positions `0..n` (no-op if `n >= len`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len {
            self.len = n;
            for l in &mut self.layers {
                l.k.truncate(n * self.k_width);
                l.v.truncate(n * self.v_width);
            }
        }
    }

    /// Mutable rows `pos0..pos0 + n` of layer `il` (keys, values), growing
    /// the buffers as needed. `pos0 + n <= n_ctx` and `pos0 <= len` are the
    /// caller's invariants (the model checks them before a forward pass).
    pub fn rows_mut(&mut self, il: usize, pos0: usize, n: usize) -> (&mut [f32], &mut [f32]) {
        let (kw, vw, cap) = (self.k_width, self.v_width, self.n_ctx);
        let l = &mut self.layers[il];
        grow(&mut l.k, (pos0 + n) * kw, cap * kw);
        grow(&mut l.v, (pos0 + n) * vw, cap * vw);
        (
            &mut l.k[pos0 * kw..(pos0 + n) * kw],
            &mut l.v[pos0 * vw..(pos0 + n) * vw],
        )
    }

    /// Rows `0..n` of layer `il` (keys, values).
    pub fn rows(&self, il: usize, n: usize) -> (&[f32], &[f32]) {
        let l = &self.layers[il];
        (&l.k[..n * self.k_width], &l.v[..n * self.v_width])
    }

    /// Declares positions `0..n` valid in every layer (after a forward pass
    /// wrote them).
    pub fn set_len(&mut self, n: usize) {
        self.len = n;
    }

    /// Bytes currently held by the cache buffers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.capacity() + l.v.capacity()) * ELEM_BYTES)
            .sum()
    }

    /// Bytes one position holds over all layers (what attention reads per cached position).
    pub fn bytes_per_position(&self) -> usize {
        (self.k_width + self.v_width) * ELEM_BYTES * self.layers.len()
    }
}

/// Resizes `v` to `need` elements, growing capacity geometrically but never
/// beyond `cap` elements.
fn grow(v: &mut Vec<f32>, need: usize, cap: usize) {
    if need > v.capacity() {
        let target = need.max((v.capacity() * 2).min(cap));
        v.reserve_exact(target - v.len());
    }
    if need > v.len() {
        v.resize(need, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_truncate_rewrite() {
        let mut c = KvCache::new(2, 3, 2, 10);
        let (k, v) = c.rows_mut(1, 0, 4);
        k.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        v.iter_mut().for_each(|x| *x = 7.0);
        c.set_len(4);
        c.truncate(2);
        assert_eq!(c.len(), 2);
        let (k, v) = c.rows(1, 2);
        assert_eq!(k, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(v, &[7.0; 4]);
        let (k, _) = c.rows_mut(1, 2, 1);
        assert_eq!(k, &[0.0; 3]);
        assert!(c.bytes() <= 2 * 10 * 5 * 4);
    }
}
