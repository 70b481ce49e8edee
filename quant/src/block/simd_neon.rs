//! aarch64 NEON activation quantizers (f32 → Q8_0 / Q8_1 / Q8_K, what every quantized matmul
//! runs on its input), byte-identical twins of the scalar references (see `simd_quantize.rs`
//! for how exactness is kept). NEON is part of every aarch64 CPU, so this tier needs no
//! detection. The row codecs convert uses (F16, BF16, Q4_0) stay scalar on aarch64: they run
//! once per weight at conversion, not per token.
//!
//! Rounding comes from the conversion instructions themselves: `fcvtas` rounds half away from
//! zero (C's `roundf`, Q8_0/Q8_1), `fcvtns` half to even (ggml's `nearest_int`, Q8_K), both
//! exact for the small finite products met here.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::simd_quantize::RowQuantizers;
use super::{as_blocks_mut, f32_to_f16, q8_0, q8_1, q8_k, BlockQ8K, BlockQ8_0, BlockQ8_1};

pub(super) fn quantizers() -> RowQuantizers {
    RowQuantizers {
        q8_0: q8_0_row,
        q8_1: q8_1_row,
        q8_k: q8_k_row,
        ..RowQuantizers::scalar()
    }
}

/// The 4 floats at `x[4k..4k+4]`.
#[inline(always)]
fn load4<const N: usize>(x: &[f32; N], k: usize) -> float32x4_t {
    assert!(4 * k + 4 <= N);
    // SAFETY: the range was just checked to lie inside `x`; ld1 has no alignment needs.
    unsafe { vld1q_f32(x.as_ptr().add(4 * k)) }
}

/// |x| as integer bits (ordered like the magnitudes; NaN and inf largest).
#[inline(always)]
fn abs_bits(v: float32x4_t) -> uint32x4_t {
    // SAFETY: register-only NEON (every aarch64 CPU).
    unsafe { vandq_u32(vreinterpretq_u32_f32(v), vdupq_n_u32(0x7fff_ffff)) }
}

/// Largest |x| as bits over the whole array.
#[inline(always)]
fn amax_bits<const N: usize>(x: &[f32; N]) -> u32 {
    // SAFETY: register-only NEON (every aarch64 CPU).
    unsafe {
        let mut m = vdupq_n_u32(0);
        for k in 0..N / 4 {
            m = vmaxq_u32(m, abs_bits(load4(x, k)));
        }
        vmaxvq_u32(m)
    }
}

/// The first element whose |x| has the bits `amax` (which must occur in `x`), with its sign:
/// the scalar references' "signed max, first one on ties".
#[inline(always)]
fn first_with_abs<const N: usize>(x: &[f32; N], amax: u32) -> f32 {
    for k in 0..N / 4 {
        // SAFETY: register-only NEON (every aarch64 CPU).
        let hit = unsafe { vmaxvq_u32(vceqq_u32(abs_bits(load4(x, k)), vdupq_n_u32(amax))) };
        if hit != 0 {
            let lanes = &x[4 * k..4 * k + 4];
            return lanes
                .iter()
                .copied()
                .find(|v| v.abs().to_bits() == amax)
                .unwrap_or(0.0);
        }
    }
    0.0
}

/// Narrows four vectors of i32 in −128..=127 to 16 i8, in element order (saturating, as the
/// references' `as i8`).
#[inline(always)]
fn narrow(a: int32x4_t, b: int32x4_t, c: int32x4_t, d: int32x4_t) -> int8x16_t {
    // SAFETY: register-only NEON (every aarch64 CPU).
    unsafe {
        let ab = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
        let cd = vcombine_s16(vqmovn_s32(c), vqmovn_s32(d));
        vcombine_s8(vqmovn_s16(ab), vqmovn_s16(cd))
    }
}

/// Stores 16 i8 at `dst[..16]`.
#[inline(always)]
fn store16(dst: &mut [i8], v: int8x16_t) {
    assert!(dst.len() >= 16);
    // SAFETY: dst has at least 16 writable bytes (checked); st1 has no alignment needs.
    unsafe { vst1q_s8(dst.as_mut_ptr(), v) }
}

/// Q8_0's (d, quants, Σ quants) for one block, or `None` when the scalar reference must
/// handle it (a non-finite value, or 1/d overflowing).
#[inline(always)]
fn q8_block(x: &[f32; 32], qs: &mut [i8; 32]) -> Option<(f32, i32)> {
    let amax = amax_bits(x);
    if amax >= 0x7f80_0000 {
        return None;
    }
    let d = f32::from_bits(amax) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() {
        return None;
    }
    // SAFETY: register-only NEON (every aarch64 CPU).
    unsafe {
        let idv = vdupq_n_f32(id);
        // C: roundf(x * id): a plain multiply, then fcvtas (half away from zero).
        let q: [int32x4_t; 8] =
            std::array::from_fn(|k| vcvtaq_s32_f32(vmulq_f32(load4(x, k), idv)));
        store16(&mut qs[..16], narrow(q[0], q[1], q[2], q[3]));
        store16(&mut qs[16..], narrow(q[4], q[5], q[6], q[7]));
        let s = vaddq_s32(
            vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])),
            vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])),
        );
        Some((d, vaddvq_s32(s)))
    }
}

fn q8_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_0>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(32)) {
        let Ok(x) = <&[f32; 32]>::try_from(x) else {
            continue;
        };
        match q8_block(x, &mut b.qs) {
            Some((d, _)) => b.d = f32_to_f16(d),
            None => *b = q8_0::quantize_block(x),
        }
    }
}

fn q8_1_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_1>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(32)) {
        let Ok(x) = <&[f32; 32]>::try_from(x) else {
            continue;
        };
        match q8_block(x, &mut b.qs) {
            Some((d, sum)) => {
                b.d = f32_to_f16(d);
                b.s = f32_to_f16(sum as f32 * d);
            }
            None => *b = q8_1::quantize_block(x),
        }
    }
}

fn q8_k_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8K>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(256)) {
        let Ok(x) = <&[f32; 256]>::try_from(x) else {
            continue;
        };
        let amax = amax_bits(x);
        if amax == 0 || amax >= 0x7f80_0000 {
            *b = q8_k::quantize_block(x);
            continue;
        }
        let iscale = -127.0 / first_with_abs(x, amax);
        if !iscale.is_finite() {
            *b = q8_k::quantize_block(x);
            continue;
        }
        // SAFETY: register-only NEON (every aarch64 CPU).
        unsafe {
            let (isv, max_q) = (vdupq_n_f32(iscale), vdupq_n_s32(127));
            // nearest_int(iscale * x) (half to even: fcvtns), capped at 127 as the reference.
            let quant = |k: usize| vminq_s32(vcvtnq_s32_f32(vmulq_f32(isv, load4(x, k))), max_q);
            for (j, qs) in b.qs.chunks_exact_mut(16).enumerate() {
                let q: [int32x4_t; 4] = std::array::from_fn(|i| quant(4 * j + i));
                store16(qs, narrow(q[0], q[1], q[2], q[3]));
                let s = vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
                b.bsums[2 * j..2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
            }
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
