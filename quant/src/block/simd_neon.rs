//! aarch64 NEON activation quantizers (f32 → Q8_0 / Q8_1 / Q8_K, what every quantized matmul
//! runs on its input), byte-identical twins of the scalar references (see `simd_quantize.rs`
//! for how exactness is kept). NEON is part of every aarch64 CPU, so this tier needs no
//! detection. The K-quants' sub-block fits run one sub-block per lane (`kfit_lanes.rs`, 8 lanes
//! in two registers); the other row codecs convert uses (F16, BF16, Q4_0, Q5_0, Q8_0 from bf16)
//! stay scalar on aarch64: they run once per weight at conversion, not per token.
//!
//! Rounding comes from the conversion instructions themselves: `fcvtas` rounds half away from
//! zero (C's `roundf`, Q8_0/Q8_1), `fcvtns` half to even (ggml's `nearest_int`, Q8_K), both
//! exact for the small finite products met here.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::kfit::{Q4_K_FIT, Q5_K_FIT};
use super::kfit_lanes::{self, kx_row, Lanes};
use super::simd_quantize::RowQuantizers;
use super::{
    as_blocks_mut, f32_to_f16, q4_k, q5_k, q8_0, q8_1, q8_k, BlockQ3K, BlockQ4K, BlockQ5K,
    BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};

pub(super) fn quantizers() -> RowQuantizers {
    RowQuantizers {
        q8_0: q8_0_row,
        q8_1: q8_1_row,
        q8_k: q8_k_row,
        q2_k: |s, d| kfit_lanes::q2_k_row::<F2x4>(s, d),
        q3_k: |s, d| kfit_lanes::signed16_row::<F2x4, BlockQ3K>(s, d),
        q4_k: |s, d| kx_row::<F2x4, BlockQ4K>(s, d, Q4_K_FIT, q4_k::pack, q4_k::quantize_block),
        q5_k: |s, d| kx_row::<F2x4, BlockQ5K>(s, d, Q5_K_FIT, q5_k::pack, q5_k::quantize_block),
        q6_k: |s, d| kfit_lanes::signed16_row::<F2x4, BlockQ6K>(s, d),
        ..RowQuantizers::scalar()
    }
}

/// 8 f32 lanes in two NEON registers, for the K-quant fits (`kfit_lanes.rs`).
#[derive(Clone, Copy)]
struct F2x4([float32x4_t; 2]);

impl F2x4 {
    /// Each half through `f`.
    #[inline(always)]
    fn map(self, o: Self, f: impl Fn(float32x4_t, float32x4_t) -> float32x4_t) -> Self {
        F2x4([f(self.0[0], o.0[0]), f(self.0[1], o.0[1])])
    }
}

/// All ones in the lanes that are set, as the NEON comparisons make them.
type Mask2x4 = [uint32x4_t; 2];

// SAFETY (every `unsafe` block in this impl): register-only NEON, which every aarch64 CPU has;
// the memory accesses are bounds-checked where they occur.
impl Lanes for F2x4 {
    const W: usize = 8;
    type Mask = Mask2x4;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        unsafe { F2x4([vdupq_n_f32(v); 2]) }
    }
    #[inline(always)]
    fn gather(x: &[f32], stride: usize) -> Self {
        let mut lanes = [0f32; 8];
        for (l, o) in lanes.iter_mut().enumerate() {
            *o = x[stride * l];
        }
        unsafe { F2x4([vld1q_f32(lanes.as_ptr()), vld1q_f32(lanes.as_ptr().add(4))]) }
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        assert!(out.len() >= 8);
        unsafe {
            vst1q_f32(out.as_mut_ptr(), self.0[0]);
            vst1q_f32(out.as_mut_ptr().add(4), self.0[1]);
        }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.map(o, |a, b| unsafe { vaddq_f32(a, b) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.map(o, |a, b| unsafe { vsubq_f32(a, b) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.map(o, |a, b| unsafe { vmulq_f32(a, b) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self.map(o, |a, b| unsafe { vdivq_f32(a, b) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.map(self, |a, _| unsafe { vsqrtq_f32(a) })
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.map(self, |a, _| unsafe { vabsq_f32(a) })
    }
    #[inline(always)]
    fn neg(self) -> Self {
        self.map(self, |a, _| unsafe { vnegq_f32(a) })
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Mask2x4 {
        unsafe { [vcltq_f32(self.0[0], o.0[0]), vcltq_f32(self.0[1], o.0[1])] }
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Mask2x4 {
        unsafe { [vcgtq_f32(self.0[0], o.0[0]), vcgtq_f32(self.0[1], o.0[1])] }
    }
    #[inline(always)]
    fn eq(self, o: Self) -> Mask2x4 {
        unsafe { [vceqq_f32(self.0[0], o.0[0]), vceqq_f32(self.0[1], o.0[1])] }
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Mask2x4 {
        let [a, b] = self.eq(o);
        unsafe { [vmvnq_u32(a), vmvnq_u32(b)] }
    }
    #[inline(always)]
    fn and(a: Mask2x4, b: Mask2x4) -> Mask2x4 {
        unsafe { [vandq_u32(a[0], b[0]), vandq_u32(a[1], b[1])] }
    }
    #[inline(always)]
    fn any(m: Mask2x4) -> bool {
        unsafe { vmaxvq_u32(vorrq_u32(m[0], m[1])) != 0 }
    }
    #[inline(always)]
    fn select(m: Mask2x4, a: Self, b: Self) -> Self {
        unsafe {
            F2x4([
                vbslq_f32(m[0], a.0[0], b.0[0]),
                vbslq_f32(m[1], a.0[1], b.0[1]),
            ])
        }
    }
    #[inline(always)]
    fn nearest_clamped(self, lo: i32, hi: i32) -> Self {
        self.map(self, |v, _| unsafe {
            let t = vreinterpretq_s32_f32(vaddq_f32(v, vdupq_n_f32(12_582_912.0)));
            let i = vsubq_s32(
                vandq_s32(t, vdupq_n_s32(0x007f_ffff)),
                vdupq_n_s32(0x0040_0000),
            );
            let c = vminq_s32(vmaxq_s32(i, vdupq_n_s32(lo)), vdupq_n_s32(hi));
            vcvtq_f32_s32(c)
        })
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
