//! AVX-512 (F, BW, VL with VNNI) kernels. The tier sits on top of the AVX2
//! table: a slot without an AVX-512 kernel keeps its AVX2 one.
//!
//! The 32-element block formats Q4_1 and Q5_1 (Q4_0, Q5_0 and Q8_0: see
//! `q0_avx512_units`, which replaced this path for them) multiply with
//! 512-bit `vpdpbusd` (AVX512-VNNI) on two blocks at once, one per 256-bit
//! half: one instruction per (weight block pair, activation block pair), on
//! the unsigned quants of `q0_x86`, started from `−OFFSET·Σa` so every
//! integer block sum equals the scalar twin's exactly. Against the first
//! version (256-bit, one block per instruction) this halved the float work
//! per block and measured 1.05× (Q4_0, Q8_0) to 1.3× (Q4_1) in gemm_bench.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::q0_x86::{h2f, load32, ActBlock, Q0Format, Q4_1, Q5_1};
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

/// Two 8-lane halves → one 16-lane vector (AVX-512F only, no DQ needed).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn join_ps(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
        _mm256_castps_pd(hi),
    ))
}

/// Blocks `b` and `b + 1` of a weight row: unsigned quants (one block per
/// 256-bit half), d and m broadcast per half. Without `TWO` the high half is
/// zero (the odd last block of a row).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn weight_pair<F: Q0Format, const TWO: bool>(row: &[F::W], b: usize) -> (__m512i, __m512, __m512) {
    let half = |x: &F::W| {
        // SAFETY: this function's target features include AVX2 + FMA + F16C.
        let u = unsafe { F::unsigned(x) };
        let m = if F::HAS_MIN { h2f(F::m(x)) } else { 0.0 };
        (u, _mm256_set1_ps(h2f(F::d(x))), _mm256_set1_ps(m))
    };
    let (u0, d0, m0) = half(&row[b]);
    let (u1, d1, m1) = if TWO {
        half(&row[b + 1])
    } else {
        (
            _mm256_setzero_si256(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        )
    };
    (
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(u0), u1),
        join_ps(d0, d1),
        join_ps(m0, m1),
    )
}

/// Blocks `b` and `b + 1` of an activation row: quants, d broadcast per half,
/// s in the first lane of each half (zero elsewhere), as `weight_pair`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn act_pair<F: Q0Format, const TWO: bool>(row: &[F::A], b: usize) -> (__m512i, __m512, __m512) {
    let half = |y: &F::A| {
        let s = if F::HAS_MIN { h2f(y.s()) } else { 0.0 };
        (
            load32(y.qs()),
            _mm256_set1_ps(h2f(y.d())),
            _mm256_zextps128_ps256(_mm_set_ss(s)),
        )
    };
    let (q0, d0, s0) = half(&row[b]);
    let (q1, d1, s1) = if TWO {
        half(&row[b + 1])
    } else {
        (
            _mm256_setzero_si256(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        )
    };
    (
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1),
        join_ps(d0, d1),
        join_ps(s0, s1),
    )
}

/// Adds blocks `b`, `b + 1` (only `b` without `TWO`) of the tile to `acc`:
/// one 512-bit `vpdpbusd` per (row, token) covers both blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn tile_step<F: Q0Format, const R: usize, const T: usize, const TWO: bool>(
    rows: &[&[F::W]; R],
    toks: &[&[F::A]; T],
    b: usize,
    acc: &mut [[__m512; T]; R],
) {
    let zero = _mm512_setzero_si512();
    let offset = _mm512_set1_epi8(F::OFFSET as i8);
    let mut av = [zero; T];
    // −OFFSET·Σa per 4-byte group: the start value of every dpbusd.
    let mut base = [zero; T];
    let mut da = [_mm512_setzero_ps(); T];
    let mut sa = [_mm512_setzero_ps(); T];
    for t in 0..T {
        (av[t], da[t], sa[t]) = act_pair::<F, TWO>(toks[t], b);
        if F::OFFSET != 0 {
            base[t] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, av[t]));
        }
    }
    for r in 0..R {
        let (u, dw, mw) = weight_pair::<F, TWO>(rows[r], b);
        for t in 0..T {
            let s = _mm512_dpbusd_epi32(base[t], u, av[t]);
            acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, da[t]), acc[r][t]);
            if F::HAS_MIN {
                acc[r][t] = _mm512_fmadd_ps(mw, sa[t], acc[r][t]);
            }
        }
    }
}

/// `out[t·ldo + r] = Σ_b d_w·d_a·Σ(q_w·q_a) (+ m_w·s_a)` for the `R` weight rows
/// in `w` and the `T` activation rows in `a`, `nb` blocks each, two blocks per
/// step. Every weight block is decoded once and used for the `T` tokens.
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
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for b in (0..nb / 2 * 2).step_by(2) {
        tile_step::<F, R, T, true>(&rows, &toks, b, &mut acc);
    }
    if nb % 2 == 1 {
        tile_step::<F, R, T, false>(&rows, &toks, nb - 1, &mut acc);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, &v) in acc.iter().enumerate() {
            out[t * ldo + r] = _mm512_reduce_add_ps(v);
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
    Q4_1 => dot_q4_1_q8_1, gemm_q4_1_q8_1;
    Q5_1 => dot_q5_1_q8_1, gemm_q5_1_q8_1;
}
