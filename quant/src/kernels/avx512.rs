//! AVX-512 (F, BW, VL with VNNI) kernels. The tier sits on top of the AVX2
//! table: a slot without an AVX-512 kernel keeps its AVX2 one.
//!
//! The 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) multiply with
//! 256-bit `vpdpbusd` (AVX512-VNNI + VL): one instruction per (weight block,
//! activation block) pair, on the unsigned quants of `q0_x86`, started from
//! `−OFFSET·Σa` so the integer block sum equals the scalar twin's exactly.
//! 256-bit keeps one block per register (no cross-block shuffles) and leaves
//! 32 registers for a 4 rows × 4 tokens tile.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::q0_x86::{h2f, hsum_ps, load32, ActBlock, Q0Format, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::block::as_blocks;

/// Whether this CPU runs every kernel of this file (AVX-512 F/BW/VL + VNNI).
pub fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Weight rows × tokens of the GEMM tile (16 accumulators of 32 registers).
const RM: usize = 4;
const TN: usize = 4;
/// Weight rows in flight for a lone token (GEMV, decode): 8 independent
/// streams keep the loads ahead of the multiplies.
const RV: usize = 8;
/// Activation bytes per token chunk of the GEMM: stays in L1 (with the
/// weight tile) while every weight tile passes over it (24 KB measured
/// faster than 256 KB at 64 and 512 tokens).
const CHUNK_BYTES: usize = 24 * 1024;

/// `out[t·ldo + r] = Σ_b d_w·d_a·Σ(q_w·q_a) (+ m_w·s_a)` for the `R` weight rows
/// in `w` and the `T` activation rows in `a`, `nb` blocks each. Every weight
/// block is decoded once and used for the `T` tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn tile<F: Q0Format, const R: usize, const T: usize>(
    w: &[F::W],
    nb: usize,
    a: &[F::A],
    out: &mut [f32],
    ldo: usize,
) {
    let rows: [&[F::W]; R] = std::array::from_fn(|r| &w[r * nb..][..nb]);
    let toks: [&[F::A]; T] = std::array::from_fn(|t| &a[t * nb..][..nb]);
    let zero = _mm256_setzero_si256();
    let offset = _mm256_set1_epi8(F::OFFSET as i8);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut av = [zero; T];
        // −OFFSET·Σa per 4-byte group: the start value of every dpbusd.
        let mut base = [zero; T];
        let mut da = [_mm256_setzero_ps(); T];
        // s_a in lane 0 only, so m_w·s_a is added once per block.
        let mut sa = [_mm256_setzero_ps(); T];
        for t in 0..T {
            let y = &toks[t][b];
            av[t] = load32(y.qs());
            da[t] = _mm256_set1_ps(h2f(y.d()));
            if F::OFFSET != 0 {
                base[t] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, offset, av[t]));
            }
            if F::HAS_MIN {
                sa[t] = _mm256_zextps128_ps256(_mm_set_ss(h2f(y.s())));
            }
        }
        for r in 0..R {
            let x = &rows[r][b];
            // SAFETY: this function's target features include AVX2 + FMA + F16C.
            let u = unsafe { F::unsigned(x) };
            let dw = _mm256_set1_ps(h2f(F::d(x)));
            let mw = if F::HAS_MIN {
                _mm256_set1_ps(h2f(F::m(x)))
            } else {
                _mm256_setzero_ps()
            };
            for t in 0..T {
                let s = _mm256_dpbusd_epi32(base[t], u, av[t]);
                acc[r][t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da[t]), acc[r][t]);
                if F::HAS_MIN {
                    acc[r][t] = _mm256_fmadd_ps(mw, sa[t], acc[r][t]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, &v) in acc.iter().enumerate() {
            out[t * ldo + r] = hsum_ps(v);
        }
    }
}

/// The [`super::GemmFn`] of format `F`. Tokens go in chunks whose
/// activations stay in L1 (`CHUNK_BYTES`); inside a chunk every RM-row weight
/// tile (a few KB, in L1) meets all the chunk's tokens, TN at a time, the row
/// tail one row at a time. Tokens past the last whole TN (all of them for
/// GEMV) run one at a time over groups of RV rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_q0<F: Q0Format>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = k / 32;
    let wb = as_blocks::<F::W>(w).unwrap_or(&[]);
    let ab = as_blocks::<F::A>(a).unwrap_or(&[]);
    debug_assert!(k.is_multiple_of(32) && wb.len() >= n_rows * nb && ab.len() >= n_tok * nb);
    let whole_t = n_tok / TN * TN;
    let whole_r = n_rows / RM * RM;
    let chunk = (CHUNK_BYTES / (nb * size_of::<F::A>()).max(1) / TN).max(1) * TN;
    for c0 in (0..whole_t).step_by(chunk) {
        let c1 = (c0 + chunk).min(whole_t);
        for r0 in (0..whole_r).step_by(RM) {
            let wr = &wb[r0 * nb..(r0 + RM) * nb];
            for t0 in (c0..c1).step_by(TN) {
                let o = &mut out[t0 * ldo + r0..];
                tile::<F, RM, TN>(wr, nb, &ab[t0 * nb..(t0 + TN) * nb], o, ldo);
            }
        }
        for r0 in whole_r..n_rows {
            let wr = &wb[r0 * nb..(r0 + 1) * nb];
            for t0 in (c0..c1).step_by(TN) {
                let o = &mut out[t0 * ldo + r0..];
                tile::<F, 1, TN>(wr, nb, &ab[t0 * nb..(t0 + TN) * nb], o, ldo);
            }
        }
    }
    let whole_v = n_rows / RV * RV;
    for t0 in whole_t..n_tok {
        let at = &ab[t0 * nb..(t0 + 1) * nb];
        for r0 in (0..whole_v).step_by(RV) {
            let o = &mut out[t0 * ldo + r0..];
            tile::<F, RV, 1>(&wb[r0 * nb..(r0 + RV) * nb], nb, at, o, ldo);
        }
        for r0 in whole_v..n_rows {
            let o = &mut out[t0 * ldo + r0..];
            tile::<F, 1, 1>(&wb[r0 * nb..(r0 + 1) * nb], nb, at, o, ldo);
        }
    }
}

/// One row times one activation row through the 1×1 tile.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_q0<F: Q0Format>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let wb = as_blocks::<F::W>(w).unwrap_or(&[]);
    let ab = as_blocks::<F::A>(a).unwrap_or(&[]);
    let nb = (k / 32).min(wb.len()).min(ab.len());
    debug_assert!(nb * 32 == k);
    let mut out = [0f32];
    tile::<F, 1, 1>(wb, nb, ab, &mut out, 1);
    out[0]
}

/// Safe [`super::DotFn`] / [`super::GemmFn`] wrappers for the kernel table.
macro_rules! entry_points {
    ($($fmt:ident => $dot:ident, $gemm:ident;)*) => {$(
        pub(crate) fn $dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: only installed in the kernel table after `detected()`
            // (and `avx2::detected()`).
            unsafe { dot_q0::<$fmt>(k, w, a) }
        }
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            // SAFETY: as above.
            unsafe { gemm_q0::<$fmt>(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

entry_points! {
    Q4_0 => dot_q4_0_q8_0, gemm_q4_0_q8_0;
    Q4_1 => dot_q4_1_q8_1, gemm_q4_1_q8_1;
    Q5_0 => dot_q5_0_q8_0, gemm_q5_0_q8_0;
    Q5_1 => dot_q5_1_q8_1, gemm_q5_1_q8_1;
    Q8_0 => dot_q8_0_q8_0, gemm_q8_0_q8_0;
}
