//! GEMM tiles of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) for
//! the plain NEON tier (base NEON's widening multiplies: Cortex-A53/A72 of the
//! Raspberry Pi 3 and 4) and, with `sdot`, the neon-dotprod tier (FEAT_DotProd
//! without I8MM: the Cortex-A76 of the Raspberry Pi 5, Neoverse N1), the [`Dot4`]
//! of each. Without them those tiers would run one dot per (row, token) and
//! decode every weight block once per token.
//!
//! [`tile`] holds 4 weight rows × up to 4 tokens in registers: per block each
//! row is decoded once (the `Q0Format` decode of `neon.rs`) and meets the
//! tile's tokens, whose quants were loaded once for the 4 rows. The four
//! tokens' integer sums of one row are gathered into one vector by a pairwise
//! add tree (exact integers), so the f32 scaling runs 4 lanes at a time: per
//! lane it is exactly [`neon::dot_q0`]'s `sum += Σq·(d_w·d_a) [+ m_w·s_a]`,
//! unfused and in that order. A GEMM output is therefore bit-identical to the
//! tier's own dot, as `tier_tests` checks. [`gemv`] does the same with the
//! lanes over 4 rows for a lone token (decode, and a GEMM's last odd token).

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::neon::{
    dot_q0, gemm_entry_points, load16, ActBlock, Dot4, Plain, Q0Format, Sdot, Q4_0, Q4_1, Q5_0,
    Q5_1, Q8_0,
};
use crate::block::as_blocks;

/// Weight rows (f32 accumulators) × tokens (lanes) of a tile: 8 activation
/// vectors, 4 integer and 4 f32 accumulators, 2 weight vectors per row.
const R: usize = 4;
const T: usize = 4;
/// Activation bytes per token chunk: the chunk stays in the A76's 64 KB L1D
/// (with a 4-row weight tile) while every row tile passes over it.
const CHUNK_BYTES: usize = 32 * 1024;

/// Four f16 fields (bytes) as f32 lanes through one `fcvtl`: the same exact
/// conversion as `neon::h2f`.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn h2f4(h: [[u8; 2]; 4]) -> float32x4_t {
    let u = h.map(u16::from_le_bytes);
    // SAFETY: u is 4 readable u16.
    let v = unsafe { vld1_u16(u.as_ptr()) };
    vcvt_f32_f16(vreinterpret_f16_u16(v))
}

/// Lane i = the sum of `p[i]`'s lanes (exact integer adds).
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn sum_lanes(p: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]))
}

/// Stores lanes `..n` of `v` at `out[0], out[step], ...`.
#[inline(always)]
fn scatter(v: float32x4_t, n: usize, out: &mut [f32], step: usize) {
    let mut l = [0f32; 4];
    // SAFETY: l is 4 writable f32.
    unsafe { vst1q_f32(l.as_mut_ptr(), v) };
    for (i, &x) in l.iter().enumerate().take(n) {
        out[i * step] = x;
    }
}

/// `out[t·ldo + r] = dot(rows[r], toks[t])` for `NR` rows and `NT ≤ 4` tokens
/// (lanes of the missing tokens are zero and not stored).
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn tile<F: Q0Format, M: Dot4, const NR: usize, const NT: usize>(
    rows: [&[F::W]; NR],
    toks: [&[F::A]; NT],
    out: &mut [f32],
    ldo: usize,
) {
    let nb = rows[0].len();
    let mut acc = [vdupq_n_f32(0.0); NR];
    for b in 0..nb {
        let mut aq = [(vdupq_n_s8(0), vdupq_n_s8(0)); NT];
        let (mut dh, mut sh) = ([[0u8; 2]; 4], [[0u8; 2]; 4]);
        for t in 0..NT {
            let y = &toks[t][b];
            aq[t] = (load16(&y.qs()[..16]), load16(&y.qs()[16..]));
            dh[t] = y.d();
            if F::HAS_MIN {
                sh[t] = y.s();
            }
        }
        let da = h2f4(dh);
        let sa = if F::HAS_MIN {
            h2f4(sh)
        } else {
            vdupq_n_f32(0.0)
        };
        for r in 0..NR {
            let x = &rows[r][b];
            let (q0, q1) = F::quants(x);
            let mut p = [vdupq_n_s32(0); 4];
            for t in 0..NT {
                // SAFETY: `M`'s instructions are the caller's contract.
                p[t] = unsafe { M::dot4(M::dot4(p[t], q0, aq[t].0), q1, aq[t].1) };
            }
            let dw = super::neon::h2f(F::d(x));
            let v = vmulq_f32(vcvtq_f32_s32(sum_lanes(p)), vmulq_n_f32(da, dw));
            let v = if F::HAS_MIN {
                vaddq_f32(v, vmulq_n_f32(sa, super::neon::h2f(F::m(x))))
            } else {
                v
            };
            acc[r] = vaddq_f32(acc[r], v);
        }
    }
    for (r, &v) in acc.iter().enumerate() {
        scatter(v, NT, &mut out[r..], ldo);
    }
}

/// `out[r] = dot(rows[r], tok)` for 4 rows (lanes) and one token.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn gemv<F: Q0Format, M: Dot4>(rows: [&[F::W]; R], tok: &[F::A], out: &mut [f32]) {
    let mut acc = vdupq_n_f32(0.0);
    for (b, y) in tok.iter().enumerate() {
        let (a0, a1) = (load16(&y.qs()[..16]), load16(&y.qs()[16..]));
        let da = super::neon::h2f(y.d());
        let mut p = [vdupq_n_s32(0); 4];
        let (mut dh, mut mh) = ([[0u8; 2]; 4], [[0u8; 2]; 4]);
        for r in 0..R {
            let x = &rows[r][b];
            let (q0, q1) = F::quants(x);
            // SAFETY: `M`'s instructions are the caller's contract.
            p[r] = unsafe { M::dot4(M::dot4(p[r], q0, a0), q1, a1) };
            dh[r] = F::d(x);
            if F::HAS_MIN {
                mh[r] = F::m(x);
            }
        }
        let v = vmulq_f32(vcvtq_f32_s32(sum_lanes(p)), vmulq_n_f32(h2f4(dh), da));
        let v = if F::HAS_MIN {
            let sa = super::neon::h2f(y.s());
            vaddq_f32(v, vmulq_n_f32(h2f4(mh), sa))
        } else {
            v
        };
        acc = vaddq_f32(acc, v);
    }
    scatter(acc, R, out, 1);
}

/// The [`super::GemmFn`] of format `F`: tokens in chunks that stay in L1,
/// inside a chunk every 4-row weight tile meets the chunk's tokens 4 at a
/// time (the rows past the last whole tile one at a time); a lone token (and
/// a chunk's last odd one) goes through [`gemv`] and the dot.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_q0<F: Q0Format, M: Dot4>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = k / 32;
    let (wrb, arb) = (
        nb * std::mem::size_of::<F::W>(),
        nb * std::mem::size_of::<F::A>(),
    );
    assert!(
        w.len() >= n_rows * wrb && a.len() >= n_tok * arb,
        "gemm: input sizes"
    );
    assert!(
        n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "gemm: output size"
    );
    let wb = as_blocks::<F::W>(&w[..n_rows * wrb]).unwrap_or(&[]);
    let ab = as_blocks::<F::A>(&a[..n_tok * arb]).unwrap_or(&[]);
    let row = |r: usize| &wb[r * nb..][..nb];
    let tok = |t: usize| &ab[t * nb..][..nb];
    let whole_r = n_rows / R * R;
    let chunk = (CHUNK_BYTES / arb.max(1) / T).max(1) * T;
    for c0 in (0..n_tok).step_by(chunk) {
        let c1 = (c0 + chunk).min(n_tok);
        // Tokens c0..multi in tiles of 2..=4; a last lone one goes to gemv.
        let multi = if (c1 - c0) % T == 1 { c1 - 1 } else { c1 };
        for r0 in (0..n_rows).step_by(R) {
            let nr = R.min(n_rows - r0);
            for t0 in (c0..multi).step_by(T) {
                // SAFETY: `M`'s instructions are the caller's contract.
                unsafe {
                    macro_rules! go {
                        ($nr:literal, $nt:literal, $r0:expr) => {
                            tile::<F, M, $nr, $nt>(
                                std::array::from_fn(|i| row($r0 + i)),
                                std::array::from_fn(|j| tok(t0 + j)),
                                &mut out[t0 * ldo + $r0..],
                                ldo,
                            )
                        };
                    }
                    match (nr, multi - t0) {
                        (R, 2) => go!(4, 2, r0),
                        (R, 3) => go!(4, 3, r0),
                        (R, _) => go!(4, 4, r0),
                        (_, n) => {
                            for r in r0..r0 + nr {
                                match n {
                                    2 => go!(1, 2, r),
                                    3 => go!(1, 3, r),
                                    _ => go!(1, 4, r),
                                }
                            }
                        }
                    }
                }
            }
        }
        if multi < c1 {
            let t = multi;
            for r0 in (0..whole_r).step_by(R) {
                // SAFETY: `M`'s instructions are the caller's contract.
                unsafe {
                    gemv::<F, M>(
                        std::array::from_fn(|i| row(r0 + i)),
                        tok(t),
                        &mut out[t * ldo + r0..],
                    )
                };
            }
            for r in whole_r..n_rows {
                let (wr, at) = (&w[r * wrb..][..wrb], &a[t * arb..][..arb]);
                // SAFETY: `M`'s instructions are the caller's contract.
                out[t * ldo + r] = unsafe { dot_q0::<F, M>(k, wr, at) };
            }
        }
    }
}

gemm_entry_points! {
    "neon", gemm_q0, Plain;
    Q4_0 => gemm_q4_0_q8_0;
    Q4_1 => gemm_q4_1_q8_1;
    Q5_0 => gemm_q5_0_q8_0;
    Q5_1 => gemm_q5_1_q8_1;
    Q8_0 => gemm_q8_0_q8_0;
}

gemm_entry_points! {
    "dotprod", gemm_q0, Sdot;
    Q4_0 => gemm_q4_0_q8_0_dotprod;
    Q4_1 => gemm_q4_1_q8_1_dotprod;
    Q5_0 => gemm_q5_0_q8_0_dotprod;
    Q5_1 => gemm_q5_1_q8_1_dotprod;
    Q8_0 => gemm_q8_0_q8_0_dotprod;
}
