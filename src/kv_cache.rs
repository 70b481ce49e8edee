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
//! Rows are f32 by default (the fixtures' parity), or f16 (`--cache-type f16`, llama.cpp's
//! default type): half the bytes, which decode reads once per token and layer, so after an
//! image prompt of ~1,000 positions Tiny's step reads ~63 MB less beside its ~500 MB of
//! weights (its cost on the fixtures is in BENCHMARKS.md). The forward pass computes the
//! new rows in f32 either way ([`KvCache::write`]); an f16 cache rounds them to nearest
//! once as they are stored, and attention widens them exactly.
//!
//! Buffers grow with the sequence up to the context length, so a short chat
//! does not pay for 4096 positions. `truncate` keeps a prefix: a new chat turn
//! reuses every position whose tokens did not change.

use half::f16;

/// The element type of the cache rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    #[default]
    F32,
    F16,
}

names!(CacheType, "cache type", F32 => "f32", F16 => "f16");

impl CacheType {
    /// Bytes of one cached value.
    pub fn elem_bytes(self) -> usize {
        match self {
            CacheType::F32 => std::mem::size_of::<f32>(),
            CacheType::F16 => std::mem::size_of::<f16>(),
        }
    }
}

/// Rows of one layer's keys or values, in the cache's element type.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Per-layer cache rows.
#[derive(Debug, Clone, Default)]
struct LayerKv<T> {
    k: Vec<T>,
    v: Vec<T>,
}

impl<T> LayerKv<T> {
    fn truncate(&mut self, k: usize, v: usize) {
        self.k.truncate(k);
        self.v.truncate(v);
    }

    fn capacity(&self) -> usize {
        self.k.capacity() + self.v.capacity()
    }
}

/// Every layer's rows, in the cache's element type.
#[derive(Debug, Clone)]
enum Layers {
    F32(Vec<LayerKv<f32>>),
    F16(Vec<LayerKv<f16>>),
}

/// The cache of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Layers,
    k_width: usize,
    v_width: usize,
    n_ctx: usize,
    len: usize,
    /// An f16 cache's new rows in f32, as the forward pass writes them, before they are
    /// rounded into the layer's rows (unused by an f32 cache, which is written in place).
    stage_k: Vec<f32>,
    stage_v: Vec<f32>,
}

impl KvCache {
    /// An empty cache for `n_layer` layers of `k_width`/`v_width` values per
    /// position (`v_width` 0 when values live inside the key rows), holding at
    /// most `n_ctx` positions, stored as `ty`.
    pub fn new(
        n_layer: usize,
        k_width: usize,
        v_width: usize,
        n_ctx: usize,
        ty: CacheType,
    ) -> KvCache {
        let layers = match ty {
            CacheType::F32 => Layers::F32(vec![LayerKv::default(); n_layer]),
            CacheType::F16 => Layers::F16(vec![LayerKv::default(); n_layer]),
        };
        KvCache {
            layers,
            k_width,
            v_width,
            n_ctx,
            len: 0,
            stage_k: Vec::new(),
            stage_v: Vec::new(),
        }
    }

    /// The element type of the rows.
    pub fn cache_type(&self) -> CacheType {
        match self.layers {
            Layers::F32(_) => CacheType::F32,
            Layers::F16(_) => CacheType::F16,
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
            let (k, v) = (n * self.k_width, n * self.v_width);
            match &mut self.layers {
                Layers::F32(ls) => ls.iter_mut().for_each(|l| l.truncate(k, v)),
                Layers::F16(ls) => ls.iter_mut().for_each(|l| l.truncate(k, v)),
            }
        }
    }

    /// Rows `pos0..pos0 + n` of layer `il` (keys, values), written by `fill` in f32 and
    /// stored in the cache's type, the buffers growing as needed. `pos0 + n <= n_ctx` and
    /// `pos0 <= len` are the caller's invariants (the model checks them before a forward
    /// pass); `fill` may read what it wrote (RoPE rotates the keys in place).
    pub fn write<R>(
        &mut self,
        il: usize,
        pos0: usize,
        n: usize,
        fill: impl FnOnce(&mut [f32], &mut [f32]) -> R,
    ) -> R {
        let (kw, vw, cap) = (self.k_width, self.v_width, self.n_ctx);
        let (k, v) = ((pos0 * kw, n * kw), (pos0 * vw, n * vw));
        match &mut self.layers {
            Layers::F32(ls) => {
                let l = &mut ls[il];
                grow(&mut l.k, k.0 + k.1, cap * kw);
                grow(&mut l.v, v.0 + v.1, cap * vw);
                fill(&mut l.k[k.0..][..k.1], &mut l.v[v.0..][..v.1])
            }
            Layers::F16(ls) => {
                let l = &mut ls[il];
                let (sk, sv) = (&mut self.stage_k, &mut self.stage_v);
                sk.clear();
                sk.resize(k.1, 0.0);
                sv.clear();
                sv.resize(v.1, 0.0);
                let r = fill(sk, sv);
                grow(&mut l.k, k.0 + k.1, cap * kw);
                grow(&mut l.v, v.0 + v.1, cap * vw);
                round_into(sk, &mut l.k[k.0..][..k.1]);
                round_into(sv, &mut l.v[v.0..][..v.1]);
                r
            }
        }
    }

    /// Rows `0..n` of layer `il` (keys, values).
    pub fn rows(&self, il: usize, n: usize) -> (Rows<'_>, Rows<'_>) {
        let (k, v) = (n * self.k_width, n * self.v_width);
        match &self.layers {
            Layers::F32(ls) => (Rows::F32(&ls[il].k[..k]), Rows::F32(&ls[il].v[..v])),
            Layers::F16(ls) => (Rows::F16(&ls[il].k[..k]), Rows::F16(&ls[il].v[..v])),
        }
    }

    /// Declares positions `0..n` valid in every layer (after a forward pass
    /// wrote them).
    pub fn set_len(&mut self, n: usize) {
        self.len = n;
    }

    /// Bytes currently held by the cache buffers.
    pub fn bytes(&self) -> usize {
        let rows: usize = match &self.layers {
            Layers::F32(ls) => ls.iter().map(LayerKv::capacity).sum(),
            Layers::F16(ls) => ls.iter().map(LayerKv::capacity).sum(),
        };
        rows * self.cache_type().elem_bytes()
            + (self.stage_k.capacity() + self.stage_v.capacity()) * std::mem::size_of::<f32>()
    }

    /// Bytes one position holds over all layers (what attention reads per cached position).
    pub fn bytes_per_position(&self) -> usize {
        let n_layer = match &self.layers {
            Layers::F32(ls) => ls.len(),
            Layers::F16(ls) => ls.len(),
        };
        (self.k_width + self.v_width) * self.cache_type().elem_bytes() * n_layer
    }
}

/// `dst` = `src` rounded to the nearest f16 (ties to even; F16C or NEON where the CPU has
/// them, the same bits as the software rounding).
fn round_into(src: &[f32], dst: &mut [f16]) {
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src);
}

/// Resizes `v` to `need` elements, growing capacity geometrically but never
/// beyond `cap` elements.
fn grow<T: Copy + Default>(v: &mut Vec<T>, need: usize, cap: usize) {
    if need > v.capacity() {
        let target = need.max((v.capacity() * 2).min(cap));
        v.reserve_exact(target - v.len());
    }
    if need > v.len() {
        v.resize(need, T::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_rows(r: Rows<'_>) -> Vec<f32> {
        match r {
            Rows::F32(r) => r.to_vec(),
            Rows::F16(r) => r.iter().map(|x| x.to_f32()).collect(),
        }
    }

    #[test]
    fn write_truncate_rewrite() {
        for ty in [CacheType::F32, CacheType::F16] {
            let mut c = KvCache::new(2, 3, 2, 10, ty);
            c.write(1, 0, 4, |k, v| {
                k.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
                v.iter_mut().for_each(|x| *x = 7.0);
            });
            c.set_len(4);
            c.truncate(2);
            assert_eq!(c.len(), 2);
            let (k, v) = c.rows(1, 2);
            assert_eq!(f32_rows(k), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
            assert_eq!(f32_rows(v), [7.0; 4]);
            // A rewrite sees zeroed staging rows, never the previous call's.
            c.write(1, 2, 1, |k, _| assert_eq!(k, &[0.0; 3]));
            assert!(c.bytes() <= 2 * 10 * 5 * ty.elem_bytes() + 5 * 4);
            assert_eq!(c.bytes_per_position(), 2 * 5 * ty.elem_bytes());
        }
    }

    /// An f16 cache stores each value rounded to nearest, ties to even, as `half` does
    /// one value at a time (whichever conversion the slice call took).
    #[test]
    fn f16_rows_round_to_nearest() {
        let vals: Vec<f32> = (0..4099)
            .map(|i| ((i as f32) * 0.37 - 700.0) * (1.0 + 1e-4 * i as f32))
            .chain([65504.0, 65520.0, -1e-7, 6e-8, 1e-3 + 1e-9, f32::INFINITY])
            .collect();
        let mut c = KvCache::new(1, vals.len(), 0, 1, CacheType::F16);
        c.write(0, 0, 1, |k, _| k.copy_from_slice(&vals));
        let (k, _) = c.rows(0, 1);
        let Rows::F16(k) = k else {
            panic!("an f16 cache gives f16 rows")
        };
        for (x, h) in vals.iter().zip(k) {
            assert_eq!(h.to_bits(), f16::from_f32(*x).to_bits(), "{x}");
        }
    }
}
