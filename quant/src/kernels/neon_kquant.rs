//! aarch64 NEON dots of the K-quants (Q2_K to Q6_K against Q8_K), plain
//! NEON and `sdot` tiers through [`Dot4`] (Q2_K's: one tile of
//! `neon_kquant_gemm`). Per block they form the same
//! integer sums as the scalar twins (Σ scale·Σq_w·q_a and, for Q2_K/Q4_K/Q5_K,
//! Σ min·bsum) and combine them in f32 as `sum += d·Σ − dmin·Σmin`; the scalar
//! twins keep eight lane sums instead, so results agree up to f32 rounding
//! (`tier_tests`).

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::neon::{h2f, load16, nibbles, Dot4, Plain, Sdot};
use super::neon_kquant_gemm::{gemm_k, Q2K};
use crate::block::{
    as_blocks, get_scale_min_k4, q3k_scale, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};

/// The blocks of a weight row and an activation row (`nb` = the common count).
#[inline(always)]
fn blocks<'a, W: crate::block::ByteBlock>(
    k: usize,
    w: &'a [u8],
    a: &'a [u8],
) -> (&'a [W], &'a [BlockQ8K]) {
    let wb = as_blocks::<W>(w).unwrap_or(&[]);
    let ab = as_blocks::<BlockQ8K>(a).unwrap_or(&[]);
    let nb = (k / 256).min(wb.len()).min(ab.len());
    debug_assert!(nb * 256 == k);
    (&wb[..nb], &ab[..nb])
}

/// Σ_j bsum_j·min_{j/2} of a Q4_K/Q5_K block against its Q8_K block: the
/// 16 sums of 16 activations, paired into 8 sums of 32 (≤ 4064: no i16
/// overflow), times the 8 minimums.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn min_term(y: &BlockQ8K, mins: &[u8; 8]) -> i32 {
    let b0 = vreinterpretq_s16_s8(load16(&y.bsums[..16]));
    let b1 = vreinterpretq_s16_s8(load16(&y.bsums[16..]));
    let b = vpaddq_s16(b0, b1);
    // SAFETY: mins is 8 readable bytes.
    let m = vreinterpretq_s16_u16(vmovl_u8(unsafe { vld1_u8(mins.as_ptr()) }));
    let p = vmull_s16(vget_low_s16(b), vget_low_s16(m));
    let p = vmlal_high_s16(p, b, m);
    vaddvq_s32(p)
}

/// The 8 scales and 8 minimums of a Q4_K/Q5_K block.
#[inline(always)]
fn scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = get_scale_min_k4(j, s);
    }
    (sc, mn)
}

/// Σ over the 32 elements of (w0, w1) · (a[0..16], a[16..32]) into lanes.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot32<M: Dot4>(w0: uint8x16_t, w1: uint8x16_t, a: &[i8]) -> int32x4_t {
    // SAFETY: forwarded caller contract.
    unsafe {
        let p = M::dot4(vdupq_n_s32(0), vreinterpretq_s8_u8(w0), load16(&a[..16]));
        M::dot4(p, vreinterpretq_s8_u8(w1), load16(&a[16..32]))
    }
}

/// Q4_K·Q8_K (or Q5_K·Q8_K with `FIFTH`).
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot_q45_k<M: Dot4, const FIFTH: bool>(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    y: &BlockQ8K,
) -> f32 {
    let (sc, mn) = scales_mins(scales);
    let mut acc = vdupq_n_s32(0);
    let qh = qh.map(|h| {
        (
            vreinterpretq_u8_s8(load16(&h[..16])),
            vreinterpretq_u8_s8(load16(&h[16..])),
        )
    });
    let hbit = |v: uint8x16_t, bit: u8| vandq_u8(vtstq_u8(v, vdupq_n_u8(bit)), vdupq_n_u8(0x10));
    for c in 0..4 {
        // Elements 64c..64c+32 are the low nibbles of qs[32c..32c+32], the
        // next 32 the high nibbles.
        let (mut l0, mut h0) = nibbles(&qs[32 * c..32 * c + 16]);
        let (mut l1, mut h1) = nibbles(&qs[32 * c + 16..32 * c + 32]);
        if FIFTH {
            if let Some((qh0, qh1)) = qh {
                let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                l0 = vorrq_u8(l0, hbit(qh0, u1));
                l1 = vorrq_u8(l1, hbit(qh1, u1));
                h0 = vorrq_u8(h0, hbit(qh0, u2));
                h1 = vorrq_u8(h1, hbit(qh1, u2));
            }
        }
        let ya = &y.qs[64 * c..64 * c + 64];
        // SAFETY: forwarded caller contract.
        let (pl, ph) = unsafe { (dot32::<M>(l0, l1, &ya[..32]), dot32::<M>(h0, h1, &ya[32..])) };
        acc = vmlaq_n_s32(acc, pl, sc[2 * c] as i32);
        acc = vmlaq_n_s32(acc, ph, sc[2 * c + 1] as i32);
    }
    let sumi = vaddvq_s32(acc);
    let summ = min_term(y, &mn);
    let yd = y.d();
    (h2f(d) * yd) * sumi as f32 - (h2f(dmin) * yd) * summ as f32
}

/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot_q4_k<M: Dot4>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = blocks::<BlockQ4K>(k, w, a);
    let mut sum = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        // SAFETY: forwarded caller contract.
        sum += unsafe { dot_q45_k::<M, false>(x.d, x.dmin, &x.scales, &x.qs, None, y) };
    }
    sum
}

/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot_q5_k<M: Dot4>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = blocks::<BlockQ5K>(k, w, a);
    let mut sum = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        // SAFETY: forwarded caller contract.
        sum += unsafe { dot_q45_k::<M, true>(x.d, x.dmin, &x.scales, &x.qs, Some(&x.qh), y) };
    }
    sum
}

/// Q6_K·Q8_K: 16 sub-blocks of 16, each Σq_w·q_a times its i8 scale.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot_q6_k<M: Dot4>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = blocks::<BlockQ6K>(k, w, a);
    let mut sum = 0f32;
    let low = vdupq_n_u8(0x0f);
    let three = vdupq_n_u8(3);
    for (x, y) in wb.iter().zip(ab) {
        let mut acc = vdupq_n_s32(0);
        for h in 0..2 {
            for half in 0..2 {
                // Elements 128h + 32g + 16·half + l, l < 16, for g = 0..4.
                let o = 16 * half;
                let ql0 = vreinterpretq_u8_s8(load16(&x.ql[64 * h + o..]));
                let ql1 = vreinterpretq_u8_s8(load16(&x.ql[64 * h + 32 + o..]));
                let qh = vreinterpretq_u8_s8(load16(&x.qh[32 * h + o..]));
                let q = [
                    vorrq_u8(vandq_u8(ql0, low), vshlq_n_u8::<4>(vandq_u8(qh, three))),
                    vorrq_u8(
                        vandq_u8(ql1, low),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), three)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(ql0),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), three)),
                    ),
                    vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                ];
                for (g, &qg) in q.iter().enumerate() {
                    let e = 128 * h + 32 * g + o;
                    let qs = vsubq_s8(vreinterpretq_s8_u8(qg), vdupq_n_s8(32));
                    // SAFETY: forwarded caller contract.
                    let p = unsafe { M::dot4(vdupq_n_s32(0), qs, load16(&y.qs[e..])) };
                    acc = vmlaq_n_s32(acc, p, x.scales[e / 16] as i32);
                }
            }
        }
        sum += (h2f(x.d) * y.d()) * vaddvq_s32(acc) as f32;
    }
    sum
}

/// Q3_K·Q8_K: 16 sub-blocks of 16, each Σq_w·q_a (q_w = 2 low bits | 3rd bit
/// from `hmask`, − 4) times its 6-bit scale − 32.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot_q3_k<M: Dot4>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = blocks::<BlockQ3K>(k, w, a);
    let mut sum = 0f32;
    let three = vdupq_n_u8(3);
    let four = vdupq_n_u8(4);
    for (x, y) in wb.iter().zip(ab) {
        let sc: [i32; 16] = std::array::from_fn(|j| q3k_scale(j, &x.scales) as i32);
        // Element 32g' + l (g' < 8) has its 3rd bit at bit g' of hmask[l].
        let hm = [load16(&x.hmask[..16]), load16(&x.hmask[16..])].map(|v| vreinterpretq_u8_s8(v));
        let mut acc = vdupq_n_s32(0);
        for h in 0..2 {
            // Elements 128h + 32g + l: bits 2g of qs[32h + l].
            let qs = [load16(&x.qs[32 * h..]), load16(&x.qs[32 * h + 16..])]
                .map(|v| vreinterpretq_u8_s8(v));
            for g in 0..4 {
                for half in 0..2 {
                    let low = vandq_u8(vshlq_u8(qs[half], vdupq_n_s8(-2 * g as i8)), three);
                    let bit = vdupq_n_u8(1 << (4 * h + g));
                    let high = vandq_u8(vtstq_u8(hm[half], bit), four);
                    let q = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(4));
                    let e = 128 * h + 32 * g + 16 * half;
                    // SAFETY: forwarded caller contract.
                    let p = unsafe { M::dot4(vdupq_n_s32(0), q, load16(&y.qs[e..])) };
                    acc = vmlaq_n_s32(acc, p, sc[e / 16]);
                }
            }
        }
        sum += (h2f(x.d) * y.d()) * vaddvq_s32(acc) as f32;
    }
    sum
}

/// Q2_K·Q8_K: one 1 × 1 tile of `neon_kquant_gemm`'s (its `KFormat` decode: 2-bit quants,
/// 4-bit scales and minimums per 16 elements).
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn dot_q2_k<M: Dot4>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0f32];
    // SAFETY: forwarded caller contract.
    unsafe { gemm_k::<Q2K, M>(k, w, 1, a, 1, &mut out, 1) };
    out[0]
}

/// Safe [`super::DotFn`] wrappers for the kernel table, plain and `sdot`.
macro_rules! kquant_entry_points {
    ($($kernel:ident => $dot:ident, $dot_dp:ident;)*) => {$(
        pub(crate) fn $dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: plain NEON is part of every aarch64 CPU.
            unsafe { $kernel::<Plain>(k, w, a) }
        }
        pub(crate) fn $dot_dp(k: usize, w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "dotprod")]
            fn dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: this function's target features include dotprod.
                unsafe { $kernel::<Sdot>(k, w, a) }
            }
            // SAFETY: only installed in the kernel table after `has_dotprod()`.
            unsafe { dot(k, w, a) }
        }
    )*};
}

kquant_entry_points! {
    dot_q2_k => dot_q2_k_q8_k, dot_q2_k_q8_k_dotprod;
    dot_q3_k => dot_q3_k_q8_k, dot_q3_k_q8_k_dotprod;
    dot_q4_k => dot_q4_k_q8_k, dot_q4_k_q8_k_dotprod;
    dot_q5_k => dot_q5_k_q8_k, dot_q5_k_q8_k_dotprod;
    dot_q6_k => dot_q6_k_q8_k, dot_q6_k_q8_k_dotprod;
}
