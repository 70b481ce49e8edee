//! The two attention flavours of DeepSeek-VL2's language model.
//!
//! - MHA (`LlamaAttention`-like, Tiny): q/k/v/o projections, RoPE over whole
//!   heads. The converter permuted q/k rows so adjacent-pair RoPE applies.
//! - MLA (`DeepseekV2Attention`, Small/VL2), absorbed form (DEEPSEEK-VL2.md
//!   §7.4, §7.10): the cache holds only `[c ; k_rope]`; each query head is
//!   mapped into the latent space with `W_UKᵀ` (`attn_k_b`), attends as MQA
//!   over the shared latent key, and the attended latent is mapped back with
//!   `W_UV` (`attn_v_b`). The softmax scale stays `1/sqrt(nope + rope)`.

use crate::kv_cache::KvCache;
use crate::loader::Weight;

use crate::ops::spin_region::for_each_chunk;
use crate::ops::{
    causal_attention, matmul, matmul_group, matmul_view, matvec_serial, rms_norm, KvView, Rope,
};

/// eps of the MLA-internal norms (`q_a_layernorm`, `kv_a_layernorm`): the
/// reference class default, whatever `rms_norm_eps` says (README rule 11).
pub const MLA_NORM_EPS: f32 = 1e-6;

/// Activation buffers of the attention of one forward pass, reused across
/// layers and calls (the model owns one set).
#[derive(Default)]
pub struct AttnScratch {
    /// Queries `[n, H, head_dim]` (MLA: `[n, H, nope + rope]`).
    q: Vec<f32>,
    /// Attended values `[n, H, v_head]`, the output projection's input.
    att: Vec<f32>,
    /// MLA: low-rank query `[n, q_lora_rank]` and its normalised copy.
    qa: Vec<f32>,
    qa_norm: Vec<f32>,
    /// MLA: compressed kv `[n, r + rope]`.
    kva: Vec<f32>,
    /// MLA: absorbed queries `[n, H, r + rope]`.
    q_abs: Vec<f32>,
    /// MLA: one head's rows in and out of its per-head matrix.
    head_in: Vec<f32>,
    head_out: Vec<f32>,
    /// MLA: attended latents `[n, H, r]`.
    o_lat: Vec<f32>,
}

/// Multi-head attention weights (ggml shapes `[D, H*hd]` etc.).
#[derive(Clone, Debug)]
pub struct MhaWeights {
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub v_head_dim: usize,
}

/// How MLA computes its query.
#[derive(Clone, Debug)]
pub enum QProj {
    /// `q = attn_q(x)`.
    Plain(Weight),
    /// `q = attn_q_b(rms_norm(attn_q_a(x)))`.
    Lora {
        a: Weight,
        norm: Vec<f32>,
        b: Weight,
    },
}

/// Multi-head latent attention weights.
#[derive(Clone, Debug)]
pub struct MlaWeights {
    pub q: QProj,
    /// `[D, r + rope]`: latent first, rope key last.
    pub kv_a: Weight,
    /// `[r]`
    pub kv_a_norm: Vec<f32>,
    /// `[nope, r, H]`: per head `W_UKᵀ` (r rows of nope).
    pub k_b: Weight,
    /// `[r, v_head, H]`: per head `W_UV` (v_head rows of r).
    pub v_b: Weight,
    /// `[H*v_head, D]`
    pub o: Weight,
    pub n_head: usize,
    pub kv_lora_rank: usize,
    pub nope: usize,
    pub rope: usize,
    pub v_head_dim: usize,
}

impl MhaWeights {
    /// Cache widths (key, value) per position.
    pub fn cache_widths(&self) -> (usize, usize) {
        (
            self.n_head_kv * self.head_dim,
            self.n_head_kv * self.v_head_dim,
        )
    }

    /// Attention for `x` `[n, D]` (already normalised) at positions
    /// `pos0..pos0+n`, writing the new keys/values into layer `il` of the
    /// cache; `out` `[n, D]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rope: &Rope,
        cache: &mut KvCache,
        il: usize,
        x: &[f32],
        n: usize,
        pos0: usize,
        out: &mut [f32],
        sc: &mut AttnScratch,
    ) {
        let (h, hkv, hd, vd) = (self.n_head, self.n_head_kv, self.head_dim, self.v_head_dim);
        let q = &mut sc.q; // [n, H, hd]
        q.resize(n * h * hd, 0.0);
        // k: [n, Hkv, hd], v: [n, Hkv, vd], into the cache.
        cache.write(il, pos0, n, |kc, vc| {
            // The three products (decode: in one parallel region).
            let (wq, wk, wv) = (self.q.view(), self.k.view(), self.v.view());
            matmul_group([&wq, &wk, &wv], x, n, [&mut q[..], &mut *kc, &mut *vc]);
            rope.apply_rows(&mut kc[..n * hkv * hd], hkv * hd, pos0);
        });
        rope.apply_rows(q, h * hd, pos0);
        let (k, v) = cache.rows(il, pos0 + n);
        let kv = KvView {
            k,
            k_stride: hkv * hd,
            v,
            v_stride: hkv * vd,
            n_kv_head: hkv,
            d_k: hd,
            d_v: vd,
        };
        let att = &mut sc.att;
        att.resize(n * h * vd, 0.0);
        causal_attention(q, n, h, &kv, pos0, 1.0 / (hd as f32).sqrt(), att);
        matmul(&self.o, att, n, out);
    }
}

impl MlaWeights {
    /// Cache widths: key row `[c ; k_rope]`, no separate value rows.
    pub fn cache_widths(&self) -> (usize, usize) {
        (self.kv_lora_rank + self.rope, 0)
    }

    /// Absorbed MLA for `x` `[n, D]` (normalised) at positions `pos0..pos0+n`;
    /// `out` `[n, D]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rope: &Rope,
        cache: &mut KvCache,
        il: usize,
        x: &[f32],
        n: usize,
        pos0: usize,
        out: &mut [f32],
        sc: &mut AttnScratch,
    ) {
        let (h, r, nope, dr, vd) = (
            self.n_head,
            self.kv_lora_rank,
            self.nope,
            self.rope,
            self.v_head_dim,
        );
        let dq = nope + dr;
        let AttnScratch {
            q,
            att,
            qa,
            qa_norm,
            kva,
            q_abs,
            head_in,
            head_out,
            o_lat,
        } = sc;
        // q: [n, H, nope + rope]
        q.resize(n * h * dq, 0.0);
        // Compressed kv: [n, r + rope], computed beside q's first product (decode: in one
        // parallel region).
        kva.resize(n * (r + dr), 0.0);
        let kv_a = self.kv_a.view();
        match &self.q {
            QProj::Plain(w) => matmul_group([&w.view(), &kv_a], x, n, [q, kva]),
            QProj::Lora { a, norm, b } => {
                let rq = norm.len();
                qa.resize(n * rq, 0.0);
                matmul_group([&a.view(), &kv_a], x, n, [qa, kva]);
                qa_norm.resize(n * rq, 0.0);
                rms_norm(qa, norm, MLA_NORM_EPS, qa_norm);
                matmul(b, qa_norm, n, q);
            }
        }
        // -> cache rows [norm(c) ; rope(k_rope)].
        cache.write(il, pos0, n, |kc, _| {
            for t in 0..n {
                let src = &kva[t * (r + dr)..][..r + dr];
                let dst = &mut kc[t * (r + dr)..][..r + dr];
                rms_norm(&src[..r], &self.kv_a_norm, MLA_NORM_EPS, &mut dst[..r]);
                dst[r..].copy_from_slice(&src[r..]);
                rope.apply(&mut dst[r..], pos0 + t);
            }
        });
        // Absorbed queries: [n, H, r + rope] = [W_UKᵀ q_nope ; rope(q_rope)].
        q_abs.resize(n * h * (r + dr), 0.0);
        let kb = self.k_b.view();
        head_in.resize(n * nope, 0.0);
        head_out.resize(n * r, 0.0);
        if n == 1 {
            // Decode: one GEMV per head over the latent, all heads in one
            // parallel region.
            for_each_chunk(q_abs, r + dr, |hh, dst| {
                let qh = &q[hh * dq..][..dq];
                matvec_serial(&kb.rows(hh * r, r), &qh[..nope], &mut dst[..r]);
                dst[r..].copy_from_slice(&qh[nope..]);
                rope.apply(&mut dst[r..], pos0);
            });
        } else {
            for hh in 0..h {
                for t in 0..n {
                    head_in[t * nope..][..nope].copy_from_slice(&q[(t * h + hh) * dq..][..nope]);
                }
                matmul_view(&kb.rows(hh * r, r), head_in, n, head_out);
                for t in 0..n {
                    let dst = &mut q_abs[(t * h + hh) * (r + dr)..][..r + dr];
                    dst[..r].copy_from_slice(&head_out[t * r..][..r]);
                    dst[r..].copy_from_slice(&q[(t * h + hh) * dq + nope..][..dr]);
                    rope.apply(&mut dst[r..], pos0 + t);
                }
            }
        }
        // MQA over the shared latent key; the value is the latent prefix.
        let (k, _) = cache.rows(il, pos0 + n);
        let kv = KvView {
            k,
            k_stride: r + dr,
            v: k,
            v_stride: r + dr,
            n_kv_head: 1,
            d_k: r + dr,
            d_v: r,
        };
        o_lat.resize(n * h * r, 0.0); // [n, H, r]
        causal_attention(q_abs, n, h, &kv, pos0, 1.0 / (dq as f32).sqrt(), o_lat);
        // Back to per-head values: [n, H, v_head] = W_UV[h] o_lat.
        let vb = self.v_b.view();
        att.resize(n * h * vd, 0.0);
        head_in.resize(n * r, 0.0);
        head_out.resize(n * vd, 0.0);
        if n == 1 {
            for_each_chunk(att, vd, |hh, dst| {
                matvec_serial(&vb.rows(hh * vd, vd), &o_lat[hh * r..][..r], dst);
            });
        } else {
            for hh in 0..h {
                for t in 0..n {
                    head_in[t * r..][..r].copy_from_slice(&o_lat[(t * h + hh) * r..][..r]);
                }
                matmul_view(&vb.rows(hh * vd, vd), head_in, n, head_out);
                for t in 0..n {
                    att[(t * h + hh) * vd..][..vd].copy_from_slice(&head_out[t * vd..][..vd]);
                }
            }
        }
        matmul(&self.o, att, n, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::CacheType;
    use crate::ops::RopeLayout;

    /// Small deterministic pseudo-random numbers (no external RNG needed).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    /// The plain (decompressed) MLA of the reference in f64: per head
    /// k = [W_UK c ; k_rope], v = W_UV c, softmax(q·k * scale) v, o_proj.
    #[allow(clippy::too_many_arguments)]
    fn plain_mla(
        x: &[f32],
        n: usize,
        d: usize,
        h: usize,
        r: usize,
        nope: usize,
        dr: usize,
        vd: usize,
        wq: &[f32],
        wkva: &[f32],
        kvnorm: &[f32],
        wkb: &[f32],
        wvb: &[f32],
        wo: &[f32],
        rope: &Rope,
    ) -> Vec<f32> {
        let dq = nope + dr;
        let lin = |w: &[f32], x: &[f32], rows: usize, k: usize| -> Vec<f32> {
            (0..rows)
                .map(|i| {
                    (0..k)
                        .map(|j| w[i * k + j] as f64 * x[j] as f64)
                        .sum::<f64>() as f32
                })
                .collect()
        };
        let mut qs = Vec::new();
        let mut ks = Vec::new(); // per token: [H][dq]
        let mut vs = Vec::new(); // per token: [H][vd]
        for t in 0..n {
            let xt = &x[t * d..][..d];
            let mut q = lin(wq, xt, h * dq, d);
            for hh in 0..h {
                rope.apply(&mut q[hh * dq + nope..][..dr], t);
            }
            qs.push(q);
            let kva = lin(wkva, xt, r + dr, d);
            let mut c = vec![0.0f32; r];
            rms_norm(&kva[..r], kvnorm, MLA_NORM_EPS, &mut c);
            let mut kr = kva[r..].to_vec();
            rope.apply(&mut kr, t);
            let mut k = vec![0.0f32; h * dq];
            let mut v = vec![0.0f32; h * vd];
            for hh in 0..h {
                for i in 0..nope {
                    // W_UK[h][i][j] is stored transposed: k_b[h][j][i].
                    k[hh * dq + i] = (0..r)
                        .map(|j| wkb[(hh * r + j) * nope + i] as f64 * c[j] as f64)
                        .sum::<f64>() as f32;
                }
                k[hh * dq + nope..][..dr].copy_from_slice(&kr);
                for i in 0..vd {
                    v[hh * vd + i] = (0..r)
                        .map(|j| wvb[(hh * vd + i) * r + j] as f64 * c[j] as f64)
                        .sum::<f64>() as f32;
                }
            }
            ks.push(k);
            vs.push(v);
        }
        let scale = 1.0 / (dq as f64).sqrt();
        let mut out = vec![0.0f32; n * d];
        for t in 0..n {
            let mut att = vec![0.0f32; h * vd];
            for hh in 0..h {
                let sc: Vec<f64> = (0..=t)
                    .map(|s| {
                        (0..dq)
                            .map(|i| qs[t][hh * dq + i] as f64 * ks[s][hh * dq + i] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..vd {
                    att[hh * vd + i] = (0..=t)
                        .map(|s| e[s] / z * vs[s][hh * vd + i] as f64)
                        .sum::<f64>() as f32;
                }
            }
            out[t * d..][..d].copy_from_slice(&lin(wo, &att, d, h * vd));
        }
        out
    }

    #[test]
    fn absorbed_mla_equals_plain_mla_over_prefill_and_decode() {
        let (d, h, r, nope, dr, vd) = (24usize, 3usize, 10usize, 6usize, 4usize, 5usize);
        let n = 7;
        let mut g = Lcg(42);
        let wq = g.vec(h * (nope + dr) * d, 0.4);
        let wkva = g.vec((r + dr) * d, 0.4);
        let kvnorm: Vec<f32> = g.vec(r, 0.1).iter().map(|v| 1.0 + v).collect();
        let wkb = g.vec(h * r * nope, 0.5);
        let wvb = g.vec(h * vd * r, 0.5);
        let wo = g.vec(d * h * vd, 0.4);
        let x = g.vec(n * d, 1.0);
        let rope = Rope::new(dr, 10000.0, RopeLayout::Adjacent, 64);
        let w = MlaWeights {
            q: QProj::Plain(Weight::from_f32(&[d as u64, (h * (nope + dr)) as u64], &wq)),
            kv_a: Weight::from_f32(&[d as u64, (r + dr) as u64], &wkva),
            kv_a_norm: kvnorm.clone(),
            k_b: Weight::from_f32(&[nope as u64, r as u64, h as u64], &wkb),
            v_b: Weight::from_f32(&[r as u64, vd as u64, h as u64], &wvb),
            o: Weight::from_f32(&[(h * vd) as u64, d as u64], &wo),
            n_head: h,
            kv_lora_rank: r,
            nope,
            rope: dr,
            v_head_dim: vd,
        };
        let want = plain_mla(
            &x, n, d, h, r, nope, dr, vd, &wq, &wkva, &kvnorm, &wkb, &wvb, &wo, &rope,
        );
        // Prefill 4 tokens as one chunk, then 2 + 1 (chunked / decode).
        let (kw, vw) = w.cache_widths();
        let mut cache = KvCache::new(1, kw, vw, 64, CacheType::F32);
        let mut got = vec![0.0f32; n * d];
        for (p0, m) in [(0usize, 4usize), (4, 2), (6, 1)] {
            w.forward(
                &rope,
                &mut cache,
                0,
                &x[p0 * d..(p0 + m) * d],
                m,
                p0,
                &mut got[p0 * d..(p0 + m) * d],
                &mut AttnScratch::default(),
            );
            cache.set_len(p0 + m);
        }
        let max = max_abs_diff(&got, &want);
        assert!(max < 1e-5, "absorbed vs plain max |diff| {max}");
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    }

    #[test]
    fn mha_chunked_equals_single_pass() {
        let (d, h, hd) = (16usize, 2usize, 8usize);
        let n = 6;
        let mut g = Lcg(7);
        let mk =
            |g: &mut Lcg| Weight::from_f32(&[d as u64, (h * hd) as u64], &g.vec(d * h * hd, 0.4));
        let w = MhaWeights {
            q: mk(&mut g),
            k: mk(&mut g),
            v: mk(&mut g),
            o: Weight::from_f32(&[(h * hd) as u64, d as u64], &g.vec(d * h * hd, 0.4)),
            n_head: h,
            n_head_kv: h,
            head_dim: hd,
            v_head_dim: hd,
        };
        let x = g.vec(n * d, 1.0);
        let rope = Rope::new(hd, 10000.0, RopeLayout::Adjacent, 32);
        let (kw, vw) = w.cache_widths();
        for ty in [CacheType::F32, CacheType::F16] {
            let mut c1 = KvCache::new(1, kw, vw, 32, ty);
            let mut one = vec![0.0f32; n * d];
            w.forward(
                &rope,
                &mut c1,
                0,
                &x,
                n,
                0,
                &mut one,
                &mut AttnScratch::default(),
            );
            let mut c2 = KvCache::new(1, kw, vw, 32, ty);
            let mut two = vec![0.0f32; n * d];
            for (p0, m) in [(0usize, 2usize), (2, 3), (5, 1)] {
                w.forward(
                    &rope,
                    &mut c2,
                    0,
                    &x[p0 * d..(p0 + m) * d],
                    m,
                    p0,
                    &mut two[p0 * d..(p0 + m) * d],
                    &mut AttnScratch::default(),
                );
                c2.set_len(p0 + m);
            }
            let max = max_abs_diff(&one, &two);
            assert!(max < 1e-6, "{ty}: chunked vs single max |diff| {max}");
        }
    }
}
