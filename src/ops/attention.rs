//! Causal scaled-dot-product attention over a cache of keys and values.
//!
//! One routine serves plain multi-head attention (n_kv_head == n_head) and
//! the absorbed MLA form, which is multi-query attention with a single shared
//! key `[c; k_rope]` and the latent `c` as the value (DEEPSEEK-VL2.md §7.10):
//! there the value is a prefix of the key row, which [`KvView`]'s strides
//! express without copying.

use rayon::prelude::*;

/// Keys and values for positions `0..len`, row-major with arbitrary strides.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    /// Key rows: key of kv head `g` at position `s` is
    /// `k[s * k_stride + g * d_k ..][..d_k]`.
    pub k: &'a [f32],
    pub k_stride: usize,
    /// Value rows: `v[s * v_stride + g * d_v ..][..d_v]`.
    pub v: &'a [f32],
    pub v_stride: usize,
    pub n_kv_head: usize,
    pub d_k: usize,
    pub d_v: usize,
}

/// Query rows per task: the key rows of a block are reused by this many
/// queries while in L1.
const Q_BLOCK: usize = 16;
/// Key rows per online-softmax step: the score tile is `Q_BLOCK × K_BLOCK`.
const K_BLOCK: usize = 64;

/// Per-task buffers (score tile, running max and sum, output accumulators),
/// kept per worker thread between calls; taken out while in use so a nested
/// call on the same thread cannot alias them.
#[derive(Default)]
struct Tile {
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

thread_local! {
    static TILE: std::cell::Cell<Tile> = std::cell::Cell::new(Tile::default());
}

/// `out[t, h] = softmax_s(scale * q[t, h] · k[s, g(h)]) · v[s, g(h)]` over
/// `s <= pos0 + t`, where `g(h) = h / (n_head / n_kv_head)`.
///
/// `q` is `[n_tokens, n_head, d_k]`, `out` is `[n_tokens, n_head, d_v]`; the
/// cache must hold at least `pos0 + n_tokens` rows (caller's invariant).
///
/// Flash-style: no score matrix over the whole sequence. Each task takes a
/// block of [`Q_BLOCK`] queries of one head and walks the keys in blocks of
/// [`K_BLOCK`], keeping a running max and sum per query (online softmax) and
/// rescaling its output accumulators when the max grows. Parallel over
/// (query block, head), so decode (one token) still uses a task per head.
pub fn causal_attention(
    q: &[f32],
    n_tokens: usize,
    n_head: usize,
    kv: &KvView<'_>,
    pos0: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (d_k, d_v) = (kv.d_k, kv.d_v);
    debug_assert_eq!(q.len(), n_tokens * n_head * d_k);
    debug_assert_eq!(out.len(), n_tokens * n_head * d_v);
    debug_assert!(kv.n_kv_head > 0 && n_head.is_multiple_of(kv.n_kv_head));
    if n_tokens == 0 || n_head == 0 {
        return;
    }
    let group = n_head / kv.n_kv_head;
    let n_qb = n_tokens.div_ceil(Q_BLOCK);
    // Task (qb, h) writes rows t0..t1 of head h: strided in `out`, so each
    // task fills its own `[rows, d_v]` block and the blocks are copied out
    // per token afterwards. Blocks in task order: (qb, h) at qb*n_head + h.
    let mut blocks: Vec<f32> = Vec::new();
    let direct = n_tokens == 1;
    if !direct {
        blocks.resize(n_tokens * n_head * d_v, 0.0);
    }
    let task = |qb: usize, h: usize, dst: &mut [f32]| {
        let t0 = qb * Q_BLOCK;
        let rows = Q_BLOCK.min(n_tokens - t0);
        let g = h / group;
        let mut tile = TILE.with(|c| c.take());
        attend_block(q, t0, rows, h, n_head, g, kv, pos0, scale, &mut tile, dst);
        TILE.with(|c| c.set(tile));
    };
    if direct {
        out.par_chunks_mut(d_v)
            .enumerate()
            .for_each(|(h, dst)| task(0, h, dst));
        return;
    }
    // Block of (qb, h) starts at (qb * Q_BLOCK * n_head + h * rows) * d_v.
    let mut chunks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(n_qb * n_head);
    let mut rest = &mut blocks[..];
    for qb in 0..n_qb {
        let rows = Q_BLOCK.min(n_tokens - qb * Q_BLOCK);
        for h in 0..n_head {
            let (a, b) = rest.split_at_mut(rows * d_v);
            chunks.push((qb, h, a));
            rest = b;
        }
    }
    chunks
        .into_par_iter()
        .for_each(|(qb, h, dst)| task(qb, h, dst));
    out.par_chunks_mut(n_head * d_v)
        .enumerate()
        .for_each(|(t, ot)| {
            let (qb, i) = (t / Q_BLOCK, t % Q_BLOCK);
            let rows = Q_BLOCK.min(n_tokens - qb * Q_BLOCK);
            let base = qb * Q_BLOCK * n_head * d_v;
            for h in 0..n_head {
                ot[h * d_v..][..d_v].copy_from_slice(&blocks[base + (h * rows + i) * d_v..][..d_v]);
            }
        });
}

/// Queries `t0..t0 + rows` of head `h` (kv head `g`) into `dst`
/// `[rows, d_v]`: [`attend_block_body`] in the widest build this CPU runs. The
/// builds do the same f32 operations in the same order (no reassociation, no
/// contraction), so they give the same bits; AVX-512 only does 16 lanes at a
/// time where the baseline build does 4 (prefill attention was ~15% of a
/// 512-token prefill in the baseline build).
#[allow(clippy::too_many_arguments)]
fn attend_block(
    q: &[f32],
    t0: usize,
    rows: usize,
    h: usize,
    n_head: usize,
    g: usize,
    kv: &KvView<'_>,
    pos0: usize,
    scale: f32,
    tile: &mut Tile,
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::use_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked once in `use_avx512f`).
        return unsafe {
            attend_block_avx512(q, t0, rows, h, n_head, g, kv, pos0, scale, tile, dst)
        };
    }
    attend_block_body(q, t0, rows, h, n_head, g, kv, pos0, scale, tile, dst)
}

/// [`attend_block_body`] compiled with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn attend_block_avx512(
    q: &[f32],
    t0: usize,
    rows: usize,
    h: usize,
    n_head: usize,
    g: usize,
    kv: &KvView<'_>,
    pos0: usize,
    scale: f32,
    tile: &mut Tile,
    dst: &mut [f32],
) {
    attend_block_body(q, t0, rows, h, n_head, g, kv, pos0, scale, tile, dst)
}

/// The online-softmax loop itself; inlined into each build so it is vectorised
/// for that target.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_block_body(
    q: &[f32],
    t0: usize,
    rows: usize,
    h: usize,
    n_head: usize,
    g: usize,
    kv: &KvView<'_>,
    pos0: usize,
    scale: f32,
    tile: &mut Tile,
    dst: &mut [f32],
) {
    let (d_k, d_v) = (kv.d_k, kv.d_v);
    tile.scores.resize(rows * K_BLOCK, 0.0);
    tile.max.clear();
    tile.max.resize(rows, f32::NEG_INFINITY);
    tile.sum.clear();
    tile.sum.resize(rows, 0.0);
    tile.acc.clear();
    tile.acc.resize(rows * d_v, 0.0);
    // Keys visible to the last query of the block.
    let n_kv = pos0 + t0 + rows;
    for s0 in (0..n_kv).step_by(K_BLOCK) {
        let nk = K_BLOCK.min(n_kv - s0);
        for i in 0..rows {
            // Causal: query t0 + i sees keys 0..=pos0 + t0 + i.
            let visible = (pos0 + t0 + i + 1).saturating_sub(s0).min(nk);
            if visible == 0 {
                continue;
            }
            let qi = &q[((t0 + i) * n_head + h) * d_k..][..d_k];
            let sc = &mut tile.scores[i * K_BLOCK..][..visible];
            let mut bmax = f32::NEG_INFINITY;
            for (j, sj) in sc.iter_mut().enumerate() {
                let kj = &kv.k[(s0 + j) * kv.k_stride + g * d_k..][..d_k];
                *sj = dot(qi, kj) * scale;
                bmax = bmax.max(*sj);
            }
            let m_old = tile.max[i];
            let m_new = m_old.max(bmax);
            // exp(-inf) = 0 on the first block: nothing to rescale.
            let corr = (m_old - m_new).exp();
            let acc = &mut tile.acc[i * d_v..][..d_v];
            if corr != 1.0 {
                acc.iter_mut().for_each(|a| *a *= corr);
            }
            let mut bsum = 0.0f32;
            for (j, sj) in sc.iter().enumerate() {
                let p = (sj - m_new).exp();
                bsum += p;
                let vj = &kv.v[(s0 + j) * kv.v_stride + g * d_v..][..d_v];
                acc.iter_mut().zip(vj).for_each(|(a, v)| *a += p * v);
            }
            tile.sum[i] = tile.sum[i] * corr + bsum;
            tile.max[i] = m_new;
        }
    }
    for i in 0..rows {
        let inv = 1.0 / tile.sum[i];
        dst[i * d_v..][..d_v]
            .iter_mut()
            .zip(&tile.acc[i * d_v..][..d_v])
            .for_each(|(o, a)| *o = a * inv);
    }
}

/// Inner product with 16 independent partial sums, so the compiler can keep
/// them in vector registers (a single running sum is one long dependency
/// chain that cannot be vectorized without reassociating).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    for v in acc {
        s += v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct evaluation of the definition in f64, one query at a time.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        h: usize,
        d: usize,
        pos0: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; n * h * d];
        for t in 0..n {
            for hh in 0..h {
                let qh = &q[(t * h + hh) * d..][..d];
                let sc: Vec<f64> = (0..=pos0 + t)
                    .map(|s| {
                        let ks = &k[(s * h + hh) * d..][..d];
                        qh.iter()
                            .zip(ks)
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let acc: f64 = e
                        .iter()
                        .enumerate()
                        .map(|(s, p)| p / z * v[(s * h + hh) * d + i] as f64)
                        .sum();
                    out[(t * h + hh) * d + i] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_definition_with_cache_offset() {
        let (h, d, pos0, n) = (3, 8, 5, 4);
        let total = pos0 + n;
        let gen = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 31 + seed * 17) % 97) as f32 / 97.0 - 0.5) * 2.0)
                .collect()
        };
        let q = gen(1, n * h * d);
        let k = gen(2, total * h * d);
        let v = gen(3, total * h * d);
        let kv = KvView {
            k: &k,
            k_stride: h * d,
            v: &v,
            v_stride: h * d,
            n_kv_head: h,
            d_k: d,
            d_v: d,
        };
        let mut out = vec![0.0f32; n * h * d];
        causal_attention(&q, n, h, &kv, pos0, 0.35, &mut out);
        let want = reference(&q, &k, &v, n, h, d, pos0, 0.35);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// Several query and key blocks, grouped heads (2 query heads per kv
    /// head) and values read from the key rows with their own stride (as
    /// MLA's latent prefix is): the online softmax must equal the definition.
    #[test]
    fn blocked_gqa_with_prefix_values_matches_definition() {
        let (h, hkv, dk, dv, pos0, n) = (4usize, 2usize, 20usize, 12usize, 70usize, 37usize);
        let total = pos0 + n;
        let gen = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 37 + seed * 11) % 89) as f32 / 89.0 - 0.5) * 3.0)
                .collect()
        };
        let q = gen(1, n * h * dk);
        let k = gen(2, total * hkv * dk);
        let kv = KvView {
            k: &k,
            k_stride: hkv * dk,
            v: &k,
            v_stride: hkv * dk,
            n_kv_head: hkv,
            d_k: dk,
            d_v: dv,
        };
        let scale = 0.3;
        for (p0, m) in [(pos0, n), (pos0 + n - 1, 1)] {
            let qs = &q[(p0 - pos0) * h * dk..][..m * h * dk];
            let mut out = vec![0.0f32; m * h * dv];
            causal_attention(qs, m, h, &kv, p0, scale, &mut out);
            for t in 0..m {
                for hh in 0..h {
                    let g = hh / (h / hkv);
                    let qh = &qs[(t * h + hh) * dk..][..dk];
                    let sc: Vec<f64> = (0..=p0 + t)
                        .map(|s| {
                            let ks = &k[s * hkv * dk + g * dk..][..dk];
                            qh.iter()
                                .zip(ks)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..dv {
                        let want: f64 = e
                            .iter()
                            .enumerate()
                            .map(|(s, p)| p / z * k[s * hkv * dk + g * dv + i] as f64)
                            .sum();
                        let got = out[(t * h + hh) * dv + i];
                        assert!((got as f64 - want).abs() < 1e-5, "t {t} h {hh} i {i}");
                    }
                }
            }
        }
    }
}
