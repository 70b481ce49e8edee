//! Causal scaled-dot-product attention over a cache of keys and values.
//!
//! One routine serves plain multi-head attention (n_kv_head == n_head) and
//! the absorbed MLA form, which is multi-query attention with a single shared
//! key `[c; k_rope]` and the latent `c` as the value (DEEPSEEK-VL2.md §7.10):
//! there the value is a prefix of the key row, which [`KvView`]'s strides
//! express without copying.

use rayon::prelude::*;

use super::softmax;

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

/// `out[t, h] = softmax_s(scale * q[t, h] · k[s, g(h)]) · v[s, g(h)]` over
/// `s <= pos0 + t`, where `g(h) = h / (n_head / n_kv_head)`.
///
/// `q` is `[n_tokens, n_head, d_k]`, `out` is `[n_tokens, n_head, d_v]`; the
/// cache must hold at least `pos0 + n_tokens` rows (caller's invariant).
/// Parallel over (token, head) pairs; each worker reuses one score buffer.
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
    let group = n_head / kv.n_kv_head;
    // One task per (token, head): decode (one token) still uses every core.
    out.par_chunks_mut(d_v).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (th, oh)| {
            let (t, h) = (th / n_head, th % n_head);
            let n_kv = pos0 + t + 1;
            let g = h / group;
            let qh = &q[th * d_k..][..d_k];
            scores.clear();
            for s in 0..n_kv {
                let ks = &kv.k[s * kv.k_stride + g * d_k..][..d_k];
                let mut dot = 0.0f32;
                for i in 0..d_k {
                    dot += qh[i] * ks[i];
                }
                scores.push(dot * scale);
            }
            softmax(scores);
            oh.iter_mut().for_each(|v| *v = 0.0);
            for (s, p) in scores.iter().enumerate() {
                let vs = &kv.v[s * kv.v_stride + g * d_v..][..d_v];
                for i in 0..d_v {
                    oh[i] += p * vs[i];
                }
            }
        },
    );
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
}
