//! `smmla` GEMM tiles of the K-quants (Q2_K to Q6_K against Q8_K) for the
//! neon-i8mm tier (FEAT_I8MM: Neoverse V1/N2, Cortex-A710 and later).
//!
//! One `smmla` multiplies a pair of weight rows by a pair of tokens over 8
//! elements, four (row, token) sums in one instruction, where `sdot` gives one
//! sum's four partial lanes. [`tile`] holds 2 row pairs × 2 token pairs: per
//! 64-element chunk the rows' decoded quants (the [`KFormat`] decode shared
//! with the `sdot` tiles) and the tokens' quants are paired into `smmla`
//! operands (8-byte halves zipped), each scale group's four sums come out as
//! one vector whose lanes are (row, token) pairs, weighed by the rows'
//! scales with one `mla`. The lanes need no horizontal add; the min term and
//! the f32 scaling follow the `sdot` tiles. Rows and tokens past the last
//! whole 4 × 4 tile go through the `sdot` GEMM.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::neon::{gemm_entry_points, load16, pair_chunks, smmla, Dot4, Sdot};
use super::neon_kquant_gemm::{
    gemm_k, min_lanes, min_sums, sum_lanes, Head, KFormat, Q2K, Q3K, Q4K, Q5K, Q6K,
};
use crate::block::{as_blocks, BlockQ8K};

/// Row pairs × token pairs of a tile.
const RP: usize = 2;
const TP: usize = 2;
/// Activation bytes per token chunk, as in the `sdot` tiles.
const CHUNK_BYTES: usize = 64 * 1024;

/// Lanes (row 2p + i, token 2q + j) at 2i + j of a row-pair value and a
/// token-pair value.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn row_lanes(r0: f32, r1: f32) -> float32x4_t {
    vcombine_f32(vdup_n_f32(r0), vdup_n_f32(r1))
}

/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn tok_lanes(t0: f32, t1: f32) -> float32x4_t {
    let v = vset_lane_f32::<1>(t1, vdup_n_f32(t0));
    vcombine_f32(v, v)
}

/// `out[t·ldo + r] = dot(rows[r], toks[t])` for 4 rows and 4 tokens.
///
/// # Safety
/// The CPU must have FEAT_I8MM.
#[inline(always)]
unsafe fn tile<F: KFormat>(
    rows: [&[F::W]; 2 * RP],
    toks: [&[BlockQ8K]; 2 * TP],
    out: &mut [f32],
    ldo: usize,
) {
    let nb = rows[0].len();
    let mut facc = [[vdupq_n_f32(0.0); TP]; RP];
    for b in 0..nb {
        let heads: [Head; 2 * RP] = std::array::from_fn(|r| F::head(&rows[r][b]));
        // The scales of each group as lanes (s_r0, s_r0, s_r1, s_r1) per row pair.
        let sc: [[int32x4_t; 16]; RP] = std::array::from_fn(|p| {
            std::array::from_fn(|g| {
                let (s0, s1) = (heads[2 * p].scales[g], heads[2 * p + 1].scales[g]);
                vcombine_s32(vdup_n_s32(s0), vdup_n_s32(s1))
            })
        });
        let mut acc = [[vdupq_n_s32(0); TP]; RP];
        for c in 0..4 {
            let offs = F::offsets(c);
            // Per token pair, per vector: its two smmla operands.
            let av: [[[int8x16_t; 2]; 4]; TP] = std::array::from_fn(|q| {
                let (y0, y1) = (&toks[2 * q][b].qs, &toks[2 * q + 1][b].qs);
                offs.map(|o| pair16(load16(&y0[o..]), load16(&y1[o..])))
            });
            // The chunk's scale vectors, picked once for both token pairs.
            let scc: [[int32x4_t; 4]; RP] =
                std::array::from_fn(|p| std::array::from_fn(|v| sc[p][F::group(c, v)]));
            for p in 0..RP {
                let (w0, w1) = (
                    F::chunk(&rows[2 * p][b], c),
                    F::chunk(&rows[2 * p + 1][b], c),
                );
                let wv: [[int8x16_t; 2]; 4] = std::array::from_fn(|v| pair16(w0[v], w1[v]));
                for q in 0..TP {
                    for v in (0..4).step_by(F::GROUP) {
                        let mut s = vdupq_n_s32(0);
                        for i in v..v + F::GROUP {
                            // SAFETY: FEAT_I8MM is the caller's contract.
                            s = unsafe {
                                smmla(smmla(s, wv[i][0], av[q][i][0]), wv[i][1], av[q][i][1])
                            };
                        }
                        acc[p][q] = vmlaq_s32(acc[p][q], s, scc[p][v]);
                    }
                }
            }
        }
        let da: [f32; 2 * TP] = std::array::from_fn(|t| toks[t][b].d());
        let bs: [[int16x8_t; 2]; 2 * TP] = std::array::from_fn(|t| {
            if F::HAS_MIN {
                min_sums::<F>(&toks[t][b])
            } else {
                [vdupq_n_s16(0); 2]
            }
        });
        for p in 0..RP {
            let (h0, h1) = (&heads[2 * p], &heads[2 * p + 1]);
            for q in 0..TP {
                let da = tok_lanes(da[2 * q], da[2 * q + 1]);
                let sumi = vcvtq_f32_s32(acc[p][q]);
                let mut v = vmulq_f32(vmulq_f32(row_lanes(h0.d, h1.d), da), sumi);
                if F::HAS_MIN {
                    let (b0, b1) = (&bs[2 * q], &bs[2 * q + 1]);
                    let m = [
                        min_lanes::<F>(b0, &h0.mins),
                        min_lanes::<F>(b1, &h0.mins),
                        min_lanes::<F>(b0, &h1.mins),
                        min_lanes::<F>(b1, &h1.mins),
                    ];
                    let summ = vcvtq_f32_s32(sum_lanes(m));
                    let dmin = vmulq_f32(row_lanes(h0.dmin, h1.dmin), da);
                    v = vsubq_f32(v, vmulq_f32(dmin, summ));
                }
                facc[p][q] = vaddq_f32(facc[p][q], v);
            }
        }
    }
    for p in 0..RP {
        for q in 0..TP {
            let mut l = [0f32; 4];
            // SAFETY: l is 4 writable f32.
            unsafe { vst1q_f32(l.as_mut_ptr(), facc[p][q]) };
            for i in 0..2 {
                for j in 0..2 {
                    out[(2 * q + j) * ldo + 2 * p + i] = l[2 * i + j];
                }
            }
        }
    }
}

/// 16 quants of one row (or token) and the same 16 of another as the two
/// `smmla` operands that cover them (8-byte halves zipped).
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn pair16(x: int8x16_t, y: int8x16_t) -> [int8x16_t; 2] {
    let [a, b, _, _] = pair_chunks((x, x), (y, y));
    [a, b]
}

/// The [`super::GemmFn`] of format `F` through 4 × 4 `smmla` tiles; the rows
/// and tokens past the last whole tile go through the `M` (`sdot`) GEMM.
///
/// # Safety
/// The CPU must have FEAT_I8MM and FEAT_DotProd.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_k_i8mm<F: KFormat, M: Dot4>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = k / 256;
    let (wrb, arb) = (
        nb * std::mem::size_of::<F::W>(),
        nb * std::mem::size_of::<BlockQ8K>(),
    );
    assert!(
        nb * 256 == k && w.len() >= n_rows * wrb && a.len() >= n_tok * arb,
        "gemm: input sizes"
    );
    assert!(
        n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "gemm: output size"
    );
    let (r_end, t_end) = (n_rows / (2 * RP) * (2 * RP), n_tok / (2 * TP) * (2 * TP));
    let wb = as_blocks::<F::W>(&w[..n_rows * wrb]).unwrap_or(&[]);
    let ab = as_blocks::<BlockQ8K>(&a[..n_tok * arb]).unwrap_or(&[]);
    let chunk = (CHUNK_BYTES / arb.max(1) / (2 * TP)).max(1) * (2 * TP);
    for c0 in (0..t_end).step_by(chunk) {
        let c1 = (c0 + chunk).min(t_end);
        for r0 in (0..r_end).step_by(2 * RP) {
            let rows = std::array::from_fn(|i| &wb[(r0 + i) * nb..][..nb]);
            for t0 in (c0..c1).step_by(2 * TP) {
                let toks = std::array::from_fn(|j| &ab[(t0 + j) * nb..][..nb]);
                // SAFETY: FEAT_I8MM is the caller's contract.
                unsafe { tile::<F>(rows, toks, &mut out[t0 * ldo + r0..], ldo) };
            }
        }
    }
    // SAFETY: FEAT_DotProd is the caller's contract (both calls).
    unsafe {
        if r_end < n_rows {
            let (w, o) = (&w[r_end * wrb..], &mut out[r_end..]);
            gemm_k::<F, M>(k, w, n_rows - r_end, a, n_tok, o, ldo);
        }
        if t_end < n_tok && r_end > 0 {
            let (a, o) = (&a[t_end * arb..], &mut out[t_end * ldo..]);
            gemm_k::<F, M>(k, w, r_end, a, n_tok - t_end, o, ldo);
        }
    }
}

gemm_entry_points! {
    "dotprod,i8mm", gemm_k_i8mm, Sdot;
    Q2K => gemm_q2_k_q8_k_i8mm;
    Q3K => gemm_q3_k_q8_k_i8mm;
    Q4K => gemm_q4_k_q8_k_i8mm;
    Q5K => gemm_q5_k_q8_k_i8mm;
    Q6K => gemm_q6_k_q8_k_i8mm;
}
