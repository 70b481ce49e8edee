//! aarch64 NEON pieces of the packed float matrix product (`float_gemm.rs`, the
//! vision tower's and the f32/f16/bf16 recipes' GEMM): f32 widening of weight
//! rows (`fcvtl` for f16, a shift for bf16) and a 6-token × 16-row microkernel
//! (24 of the 32 vector registers accumulate; per column four panel loads, six
//! broadcasts, 24 fused multiply-adds).
//!
//! The products are summed in f32, like the x86 tiers. An f16-arithmetic
//! kernel (`fmla .8h`, FEAT_FP16) would halve the work per instruction but
//! accumulate in f16, far outside the f32 parity bound the tests hold every
//! tier to, so f16 weights are widened instead. Plain NEON is enough: this
//! serves every aarch64 tier.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::float_gemm::{gemm_packed, Float, Isa, Tile};
use super::{neon, DotFn};

pub(super) const ISA: Isa = Isa {
    nr: 16,
    mt: 6,
    widen,
    tile,
};

pub(crate) fn gemm_f32(k: usize, w: &[u8], n: usize, a: &[u8], nt: usize, o: &mut [f32], l: usize) {
    let dot: DotFn = neon::dot_f32_f32;
    gemm_packed(&ISA, Float::F32, dot, k, w, n, a, nt, o, l)
}

pub(crate) fn gemm_f16(k: usize, w: &[u8], n: usize, a: &[u8], nt: usize, o: &mut [f32], l: usize) {
    let dot: DotFn = neon::dot_f16_f32;
    gemm_packed(&ISA, Float::F16, dot, k, w, n, a, nt, o, l)
}

pub(crate) fn gemm_bf16(
    k: usize,
    w: &[u8],
    n: usize,
    a: &[u8],
    nt: usize,
    o: &mut [f32],
    l: usize,
) {
    let dot: DotFn = neon::dot_bf16_f32;
    gemm_packed(&ISA, Float::BF16, dot, k, w, n, a, nt, o, l)
}

/// `dst[..n]` = the `n` elements of `src` widened to f32 (exact for every type).
fn widen(ty: Float, src: &[u8], dst: &mut [f32]) {
    // SAFETY: NEON is part of every aarch64 CPU.
    unsafe { widen_neon(ty, src, dst) }
}

/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn widen_neon(ty: Float, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let es = ty.size();
    debug_assert!(src.len() >= n * es);
    let mut i = 0;
    while i + 8 <= n {
        let (lo, hi) = neon::widen8(ty, &src[i * es..(i + 8) * es]);
        let d = &mut dst[i..i + 8];
        // SAFETY: d is 8 writable floats; vst1q has no alignment requirement.
        unsafe {
            vst1q_f32(d.as_mut_ptr(), lo);
            vst1q_f32(d.as_mut_ptr().add(4), hi);
        }
        i += 8;
    }
    for j in i..n {
        let s = &src[j * es..(j + 1) * es];
        dst[j] = match ty {
            Float::F32 => f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
            Float::F16 => crate::block::f16_to_f32([s[0], s[1]]),
            Float::BF16 => crate::block::bf16::bf16_to_f32(u16::from_le_bytes([s[0], s[1]])),
        };
    }
}

fn tile(t: &Tile<'_>, out: &mut [f32], ldo: usize) {
    // SAFETY: NEON is part of every aarch64 CPU.
    unsafe {
        match t.nt {
            1 => tile_fma::<1>(t, out, ldo),
            2 => tile_fma::<2>(t, out, ldo),
            3 => tile_fma::<3>(t, out, ldo),
            4 => tile_fma::<4>(t, out, ldo),
            5 => tile_fma::<5>(t, out, ldo),
            _ => tile_fma::<6>(t, out, ldo),
        }
    }
}

/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn tile_fma<const NT: usize>(t: &Tile<'_>, out: &mut [f32], ldo: usize) {
    // The reads below index with these bounds.
    assert!(t.nt == NT && t.rows <= 16 && t.b.len() >= t.kc * 16);
    assert!(t.a.len() >= ((NT - 1) * t.lda + t.kc) * 4);
    assert!(out.len() >= (NT - 1) * ldo + t.rows);
    let mut acc = [[vdupq_n_f32(0.0); 4]; NT];
    let (a, b) = (t.a.as_ptr().cast::<f32>(), t.b.as_ptr());
    for i in 0..t.kc {
        // SAFETY: column i < kc of the panel is 16 floats at 16·i (b.len() ≥ 16·kc);
        // token tt < NT, column i is float tt·lda + i < a.len()/4 (asserted above);
        // vld1q and the broadcast load have no alignment requirement.
        unsafe {
            let bv = [
                vld1q_f32(b.add(16 * i)),
                vld1q_f32(b.add(16 * i + 4)),
                vld1q_f32(b.add(16 * i + 8)),
                vld1q_f32(b.add(16 * i + 12)),
            ];
            for (tt, acc) in acc.iter_mut().enumerate() {
                let x = vld1q_dup_f32(a.add(tt * t.lda + i));
                for v in 0..4 {
                    acc[v] = vfmaq_f32(acc[v], x, bv[v]);
                }
            }
        }
    }
    for (tt, acc) in acc.iter().enumerate() {
        let mut lanes = [0f32; 16];
        for (v, &x) in acc.iter().enumerate() {
            // SAFETY: lanes[4v..4v+4] is 4 writable floats.
            unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * v), x) };
        }
        let o = &mut out[tt * ldo..tt * ldo + t.rows];
        for (o, &l) in o.iter_mut().zip(&lanes) {
            *o = if t.accumulate { *o + l } else { l };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::float_gemm::{Float, FloatPanels};
    use crate::GgmlType;

    #[test]
    fn neon_float_gemms_match_scalar_twins() {
        let check = super::super::float_gemm::tests::check_against_scalar;
        check(super::gemm_f32, GgmlType::F32);
        check(super::gemm_f16, GgmlType::F16);
        check(super::gemm_bf16, GgmlType::BF16);
        let panels = super::super::float_gemm::tests::check_panels_match_gemm;
        let isa = |ty| FloatPanels::new(&super::ISA, ty);
        panels(isa(Float::F32), super::gemm_f32, GgmlType::F32);
        panels(isa(Float::F16), super::gemm_f16, GgmlType::F16);
        panels(isa(Float::BF16), super::gemm_bf16, GgmlType::BF16);
    }
}
