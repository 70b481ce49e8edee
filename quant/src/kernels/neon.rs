//! aarch64 NEON kernels of the 32-element block formats (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0 against Q8_0/Q8_1) and of the float dots (F32, F16, BF16
//! against F32), in three tiers chosen at run time (`kernels::select`):
//!
//! - plain NEON (every aarch64 CPU: Cortex-A53/A55/A72);
//! - `dotprod` (`sdot`, ARMv8.2+: Cortex-A76 = Raspberry Pi 5, Neoverse N1);
//! - `i8mm` (`smmla`, ARMv8.6+: Neoverse V1/N2, Apple M2+), GEMM only.
//!
//! The 8-bit products go through [`Dot4`], whose two impls compute exactly
//! what `sdot` computes (lane i = Σ of 4 adjacent byte products), so every
//! tier sums the same integers. Per block a dot then does, in f32 and in this
//! order, `sum += Σq·(d_w·d_a) [+ m_w·s_a]` (no fused multiply-add), and the
//! `smmla` GEMM does the same operations per (row, token) lane: a GEMM output
//! is bit-identical to the tier's own dot, and equal to the scalar twin up to
//! f32 rounding (`tier_tests`).
//!
//! `sdot` and `smmla` are written as inline assembly: their intrinsics are
//! still unstable in Rust, the instructions are not.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;
use std::arch::asm;
use std::arch::is_aarch64_feature_detected;

use super::float_gemm::Float;
use crate::block::{
    as_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, ByteBlock,
};

/// Whether this CPU has `sdot`/`udot` (FEAT_DotProd).
pub fn has_dotprod() -> bool {
    is_aarch64_feature_detected!("dotprod")
}

/// Whether this CPU has `smmla` (FEAT_I8MM).
pub fn has_i8mm() -> bool {
    is_aarch64_feature_detected!("i8mm")
}

/// 8-bit dot products in `sdot`'s shape: lane i of the result is
/// `acc[i] + Σ_{j<4} a[4i+j]·b[4i+j]`.
pub(super) trait Dot4 {
    /// # Safety
    /// The CPU must have the instructions of the impl (plain NEON: any aarch64).
    unsafe fn dot4(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Base NEON: widening multiplies and pairwise adds.
pub(super) struct Plain;
/// FEAT_DotProd `sdot`.
pub(super) struct Sdot;

impl Dot4 for Plain {
    #[inline(always)]
    unsafe fn dot4(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        let hi = vpaddlq_s16(vmull_high_s8(a, b));
        vaddq_s32(acc, vpaddq_s32(lo, hi))
    }
}

impl Dot4 for Sdot {
    #[inline(always)]
    unsafe fn dot4(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: register-only instruction; the caller guarantees FEAT_DotProd
        // (this impl is only reached from `dotprod` entry points installed after
        // `has_dotprod()`).
        unsafe {
            asm!(
                // The directive lets the assembler accept the instruction whatever
                // the enclosing function's features (the table checked the CPU).
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
}

/// FEAT_I8MM `smmla`: `acc += A·Bᵀ` for the 2×8 byte matrices `a` (rows = its
/// two 8-byte halves) and `b`; lanes are (a0·b0, a0·b1, a1·b0, a1·b1).
///
/// # Safety
/// The CPU must have FEAT_I8MM.
#[inline(always)]
pub(super) unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; FEAT_I8MM is the caller's contract.
    unsafe {
        asm!(
            ".arch_extension i8mm",
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// f16 → f32 through `fcvtl` (base ARMv8: exact, no FEAT_FP16 needed); the
/// `half` crate's portable conversion costs ~30 instructions per call here.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn h2f(b: [u8; 2]) -> f32 {
    let h = vreinterpret_f16_u16(vdup_n_u16(u16::from_le_bytes(b)));
    vgetq_lane_f32::<0>(vcvt_f32_f16(h))
}

/// Loads 16 bytes.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn load16<T: Copy>(p: &[T]) -> int8x16_t {
    assert!(std::mem::size_of_val(p) >= 16 && std::mem::size_of::<T>() == 1);
    // SAFETY: 16 readable bytes (checked above); vld1q has no alignment requirement.
    unsafe { vld1q_s8(p.as_ptr().cast()) }
}

/// 16 packed nibbles → (low nibbles, high nibbles) as bytes 0..=15.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn nibbles(qs: &[u8]) -> (uint8x16_t, uint8x16_t) {
    let q = vreinterpretq_u8_s8(load16(qs));
    (vandq_u8(q, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(q))
}

/// The 5th bits of a Q5_0/Q5_1 block: byte e of the pair is 0x10 when bit e
/// of `qh` is set (elements 0..16, 16..32).
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // Byte e / 8 of `qh` in bytes e = 0..16 (a table lookup; broadcasting
    // each byte from a general register took ~20 instructions a block).
    const SPREAD: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    // SAFETY: BITS and SPREAD are 16 readable bytes each.
    let (bit, idx) = unsafe { (vld1q_u8(BITS.as_ptr()), vld1q_u8(SPREAD.as_ptr())) };
    let q = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    let spread = |idx: uint8x16_t| {
        let v = vqtbl1q_u8(q, idx);
        vandq_u8(vtstq_u8(v, bit), vdupq_n_u8(0x10))
    };
    (spread(idx), spread(vaddq_u8(idx, vdupq_n_u8(2))))
}

/// An activation block (Q8_0 or Q8_1): scale, quants, and for Q8_1 `s = d·Σq`.
pub(super) trait ActBlock: ByteBlock {
    fn d(&self) -> [u8; 2];
    fn qs(&self) -> &[i8; 32];
    /// `s` of Q8_1 (f16 bytes); Q8_0 has none and is never asked.
    fn s(&self) -> [u8; 2];
}

impl ActBlock for BlockQ8_0 {
    #[inline(always)]
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn s(&self) -> [u8; 2] {
        [0, 0]
    }
}

impl ActBlock for BlockQ8_1 {
    #[inline(always)]
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn s(&self) -> [u8; 2] {
        self.s
    }
}

/// A 32-element weight format and the activation block it pairs with.
pub(super) trait Q0Format {
    type W: ByteBlock;
    type A: ActBlock;
    /// Whether the block has a minimum `m` (value = q·d + m; dot adds m_w·s_a).
    const HAS_MIN: bool;
    fn d(b: &Self::W) -> [u8; 2];
    /// The minimum (f16 bytes) of a format with `HAS_MIN`.
    fn m(b: &Self::W) -> [u8; 2];
    /// The 32 quants as the dot multiplies them (offset removed), elements
    /// 0..16 and 16..32.
    ///
    /// # Safety
    /// NEON only: part of every aarch64 CPU.
    unsafe fn quants(b: &Self::W) -> (int8x16_t, int8x16_t);
}

pub(super) struct Q4_0;
pub(super) struct Q4_1;
pub(super) struct Q5_0;
pub(super) struct Q5_1;
pub(super) struct Q8_0;

impl Q0Format for Q4_0 {
    type W = BlockQ4_0;
    type A = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn d(b: &BlockQ4_0) -> [u8; 2] {
        b.d
    }
    #[inline(always)]
    fn m(_: &BlockQ4_0) -> [u8; 2] {
        [0, 0]
    }
    #[inline(always)]
    unsafe fn quants(b: &BlockQ4_0) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&b.qs);
        let off = vdupq_n_s8(8);
        (
            vsubq_s8(vreinterpretq_s8_u8(lo), off),
            vsubq_s8(vreinterpretq_s8_u8(hi), off),
        )
    }
}

impl Q0Format for Q4_1 {
    type W = BlockQ4_1;
    type A = BlockQ8_1;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn d(b: &BlockQ4_1) -> [u8; 2] {
        b.d
    }
    #[inline(always)]
    fn m(b: &BlockQ4_1) -> [u8; 2] {
        b.m
    }
    #[inline(always)]
    unsafe fn quants(b: &BlockQ4_1) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&b.qs);
        (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
    }
}

impl Q0Format for Q5_0 {
    type W = BlockQ5_0;
    type A = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn d(b: &BlockQ5_0) -> [u8; 2] {
        b.d
    }
    #[inline(always)]
    fn m(_: &BlockQ5_0) -> [u8; 2] {
        [0, 0]
    }
    #[inline(always)]
    unsafe fn quants(b: &BlockQ5_0) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&b.qs);
        let (h0, h1) = fifth_bits(b.qh);
        let off = vdupq_n_s8(16);
        (
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, h0)), off),
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(hi, h1)), off),
        )
    }
}

impl Q0Format for Q5_1 {
    type W = BlockQ5_1;
    type A = BlockQ8_1;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn d(b: &BlockQ5_1) -> [u8; 2] {
        b.d
    }
    #[inline(always)]
    fn m(b: &BlockQ5_1) -> [u8; 2] {
        b.m
    }
    #[inline(always)]
    unsafe fn quants(b: &BlockQ5_1) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&b.qs);
        let (h0, h1) = fifth_bits(b.qh);
        (
            vreinterpretq_s8_u8(vorrq_u8(lo, h0)),
            vreinterpretq_s8_u8(vorrq_u8(hi, h1)),
        )
    }
}

impl Q0Format for Q8_0 {
    type W = BlockQ8_0;
    type A = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn d(b: &BlockQ8_0) -> [u8; 2] {
        b.d
    }
    #[inline(always)]
    fn m(_: &BlockQ8_0) -> [u8; 2] {
        [0, 0]
    }
    #[inline(always)]
    unsafe fn quants(b: &BlockQ8_0) -> (int8x16_t, int8x16_t) {
        (load16(&b.qs[..16]), load16(&b.qs[16..]))
    }
}

/// The blocks of a weight row and an activation row (`nb` = the common count;
/// a length mismatch is a caller bug reported in debug builds).
#[inline(always)]
fn blocks<'a, F: Q0Format>(k: usize, w: &'a [u8], a: &'a [u8]) -> (&'a [F::W], &'a [F::A]) {
    let wb = as_blocks::<F::W>(w).unwrap_or(&[]);
    let ab = as_blocks::<F::A>(a).unwrap_or(&[]);
    let nb = (k / 32).min(wb.len()).min(ab.len());
    debug_assert!(nb * 32 == k);
    (&wb[..nb], &ab[..nb])
}

/// One row times one activation row: per block the exact integer sum, then
/// `sum += Σq·(d_w·d_a) [+ m_w·s_a]` in f32.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
pub(super) unsafe fn dot_q0<F: Q0Format, M: Dot4>(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = blocks::<F>(k, w, a);
    let mut sum = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let (q0, q1) = F::quants(x);
        let qa = y.qs();
        // SAFETY: M's instructions are the caller's contract.
        let p = unsafe {
            let p = M::dot4(vdupq_n_s32(0), q0, load16(&qa[..16]));
            M::dot4(p, q1, load16(&qa[16..]))
        };
        let v = vaddvq_s32(p) as f32 * (h2f(F::d(x)) * h2f(y.d()));
        sum += if F::HAS_MIN {
            v + h2f(F::m(x)) * h2f(y.s())
        } else {
            v
        };
    }
    sum
}

/// The 32 quants of a block as four 8-byte chunks paired with another
/// block's: `smmla` operand c holds chunk c of `x` (low half) and of `y`.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn pair_chunks(
    x: (int8x16_t, int8x16_t),
    y: (int8x16_t, int8x16_t),
) -> [int8x16_t; 4] {
    let z = |a: int8x16_t, b: int8x16_t, hi: bool| {
        let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
        vreinterpretq_s8_s64(if hi {
            vzip2q_s64(a, b)
        } else {
            vzip1q_s64(a, b)
        })
    };
    [
        z(x.0, y.0, false),
        z(x.0, y.0, true),
        z(x.1, y.1, false),
        z(x.1, y.1, true),
    ]
}

/// Weight row pairs × token pairs of the `smmla` tile: 4 rows × 4 tokens, 4
/// integer and 4 f32 accumulators.
const RP: usize = 2;
const TP: usize = 2;

/// `out[t·ldo + r]` for the `2·RP` weight rows `rows` and `2·TP` tokens
/// `toks` through `smmla`; lane (i, j) of pair (p, q) does exactly the f32
/// operations of [`dot_q0`] for row 2p+i and token 2q+j.
///
/// # Safety
/// The CPU must have FEAT_I8MM.
#[inline(always)]
unsafe fn tile_i8mm<F: Q0Format>(
    rows: [&[F::W]; 2 * RP],
    toks: [&[F::A]; 2 * TP],
    out: &mut [f32],
    ldo: usize,
) {
    let nb = rows[0].len();
    let mut acc = [[vdupq_n_f32(0.0); TP]; RP];
    for b in 0..nb {
        let mut av = [[vdupq_n_s8(0); 4]; TP];
        let mut da = [vdupq_n_f32(0.0); TP];
        let mut sa = [vdupq_n_f32(0.0); TP];
        for q in 0..TP {
            let (y0, y1) = (&toks[2 * q][b], &toks[2 * q + 1][b]);
            let (a0, a1) = (y0.qs(), y1.qs());
            av[q] = pair_chunks(
                (load16(&a0[..16]), load16(&a0[16..])),
                (load16(&a1[..16]), load16(&a1[16..])),
            );
            // Lanes (row i, token j) = (0,0), (0,1), (1,0), (1,1).
            let (d0, d1) = (h2f(y0.d()), h2f(y1.d()));
            da[q] = pair_lanes(d0, d1, d0, d1);
            if F::HAS_MIN {
                let (s0, s1) = (h2f(y0.s()), h2f(y1.s()));
                sa[q] = pair_lanes(s0, s1, s0, s1);
            }
        }
        for p in 0..RP {
            let (x0, x1) = (&rows[2 * p][b], &rows[2 * p + 1][b]);
            let wv = pair_chunks(F::quants(x0), F::quants(x1));
            let (d0, d1) = (h2f(F::d(x0)), h2f(F::d(x1)));
            let dw = pair_lanes(d0, d0, d1, d1);
            let mw = if F::HAS_MIN {
                let (m0, m1) = (h2f(F::m(x0)), h2f(F::m(x1)));
                pair_lanes(m0, m0, m1, m1)
            } else {
                vdupq_n_f32(0.0)
            };
            for q in 0..TP {
                let mut s = vdupq_n_s32(0);
                for c in 0..4 {
                    // SAFETY: FEAT_I8MM is the caller's contract.
                    s = unsafe { smmla(s, wv[c], av[q][c]) };
                }
                let v = vmulq_f32(vcvtq_f32_s32(s), vmulq_f32(dw, da[q]));
                let v = if F::HAS_MIN {
                    vaddq_f32(v, vmulq_f32(mw, sa[q]))
                } else {
                    v
                };
                acc[p][q] = vaddq_f32(acc[p][q], v);
            }
        }
    }
    for p in 0..RP {
        for q in 0..TP {
            let mut l = [0f32; 4];
            // SAFETY: l is 4 writable f32.
            unsafe { vst1q_f32(l.as_mut_ptr(), acc[p][q]) };
            for i in 0..2 {
                for j in 0..2 {
                    out[(2 * q + j) * ldo + 2 * p + i] = l[2 * i + j];
                }
            }
        }
    }
}

/// A vector from four lanes.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn pair_lanes(l0: f32, l1: f32, l2: f32, l3: f32) -> float32x4_t {
    let l = [l0, l1, l2, l3];
    // SAFETY: l is 4 readable f32.
    unsafe { vld1q_f32(l.as_ptr()) }
}

/// The [`super::GemmFn`] of a block format through `smmla` tiles; the rows
/// and tokens left over at the edges go through the `sdot` dot (same f32
/// operations per output, see the module doc).
///
/// # Safety
/// The CPU must have FEAT_I8MM and FEAT_DotProd.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_q0_i8mm<F: Q0Format>(
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
    let (r_end, t_end) = (n_rows - n_rows % (2 * RP), n_tok - n_tok % (2 * TP));
    for t0 in (0..t_end).step_by(2 * TP) {
        let toks: [&[F::A]; 2 * TP] = std::array::from_fn(|j| &ab[(t0 + j) * nb..][..nb]);
        for r0 in (0..r_end).step_by(2 * RP) {
            let rows: [&[F::W]; 2 * RP] = std::array::from_fn(|i| &wb[(r0 + i) * nb..][..nb]);
            // SAFETY: FEAT_I8MM is the caller's contract.
            unsafe { tile_i8mm::<F>(rows, toks, &mut out[t0 * ldo + r0..], ldo) };
        }
    }
    // Edges: rows r_end.. for the tiled tokens, every row for the other tokens.
    for t in 0..n_tok {
        let from = if t < t_end { r_end } else { 0 };
        let at = &a[t * arb..][..arb];
        for r in from..n_rows {
            // SAFETY: FEAT_DotProd is the caller's contract.
            out[t * ldo + r] = unsafe { dot_q0::<F, Sdot>(k, &w[r * wrb..][..wrb], at) };
        }
    }
}

/// Safe [`super::DotFn`] / [`super::GemmFn`] wrappers for the kernel table, one
/// per tier.
macro_rules! q0_entry_points {
    ($($fmt:ident => $dot:ident, $dot_dp:ident, $gemm_mm:ident;)*) => {$(
        pub(crate) fn $dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: plain NEON is part of every aarch64 CPU.
            unsafe { dot_q0::<$fmt, Plain>(k, w, a) }
        }
        pub(crate) fn $dot_dp(k: usize, w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "dotprod")]
            fn dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: this function's target features include dotprod.
                unsafe { dot_q0::<$fmt, Sdot>(k, w, a) }
            }
            // SAFETY: only installed in the kernel table after `has_dotprod()`.
            unsafe { dot(k, w, a) }
        }
        pub(crate) fn $gemm_mm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            #[target_feature(enable = "dotprod,i8mm")]
            fn gemm(
                k: usize,
                w: &[u8],
                n_rows: usize,
                a: &[u8],
                n_tok: usize,
                out: &mut [f32],
                ldo: usize,
            ) {
                // SAFETY: this function's target features include dotprod and i8mm.
                unsafe { gemm_q0_i8mm::<$fmt>(k, w, n_rows, a, n_tok, out, ldo) }
            }
            // SAFETY: only installed in the kernel table after `has_dotprod()`
            // and `has_i8mm()`.
            unsafe { gemm(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

q0_entry_points! {
    Q4_0 => dot_q4_0_q8_0, dot_q4_0_q8_0_dotprod, gemm_q4_0_q8_0_i8mm;
    Q4_1 => dot_q4_1_q8_1, dot_q4_1_q8_1_dotprod, gemm_q4_1_q8_1_i8mm;
    Q5_0 => dot_q5_0_q8_0, dot_q5_0_q8_0_dotprod, gemm_q5_0_q8_0_i8mm;
    Q5_1 => dot_q5_1_q8_1, dot_q5_1_q8_1_dotprod, gemm_q5_1_q8_1_i8mm;
    Q8_0 => dot_q8_0_q8_0, dot_q8_0_q8_0_dotprod, gemm_q8_0_q8_0_i8mm;
}

/// Eight weights from `w` (type `ty`) widened to f32.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn widen8(ty: Float, w: &[u8]) -> (float32x4_t, float32x4_t) {
    match ty {
        Float::F32 => {
            assert!(w.len() >= 32);
            // SAFETY: 32 readable bytes (checked); vld1q has no alignment requirement.
            unsafe {
                (
                    vld1q_f32(w.as_ptr().cast()),
                    vld1q_f32(w.as_ptr().add(16).cast()),
                )
            }
        }
        Float::F16 => {
            let h = vreinterpretq_u16_s8(load16(w));
            let h = vreinterpretq_f16_u16(h);
            (vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h))
        }
        Float::BF16 => {
            // bf16 is the top half of an f32.
            let h = vreinterpretq_u16_s8(load16(w));
            (
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
            )
        }
    }
}

/// Float weight row · f32 activation row, 16 elements a step into four f32
/// accumulators (fused multiply-add), the tail through the scalar twin.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn dot_float(ty: Float, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let es = ty.size();
    let n = n.min(w.len() / es).min(a.len() / 4);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for h in 0..2 {
            let e = i + 8 * h;
            let (w0, w1) = widen8(ty, &w[e * es..(e + 8) * es]);
            let y = &a[4 * e..4 * (e + 8)];
            // SAFETY: y is 32 readable bytes; vld1q has no alignment requirement.
            let (a0, a1) = unsafe {
                (
                    vld1q_f32(y.as_ptr().cast()),
                    vld1q_f32(y.as_ptr().add(16).cast()),
                )
            };
            acc[2 * h] = vfmaq_f32(acc[2 * h], w0, a0);
            acc[2 * h + 1] = vfmaq_f32(acc[2 * h + 1], w1, a1);
        }
        i += 16;
    }
    let v = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let tail = match ty {
        Float::F32 => super::scalar::dot_f32_f32(n - i, &w[i * 4..n * 4], &a[i * 4..n * 4]),
        Float::F16 => super::scalar::dot_f16_f32(n - i, &w[i * 2..n * 2], &a[i * 4..n * 4]),
        Float::BF16 => super::scalar::dot_bf16_f32(n - i, &w[i * 2..n * 2], &a[i * 4..n * 4]),
    };
    vaddvq_f32(v) + tail
}

pub(crate) fn dot_f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: NEON is part of every aarch64 CPU.
    unsafe { dot_float(Float::F32, n, w, a) }
}

pub(crate) fn dot_f16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: NEON is part of every aarch64 CPU.
    unsafe { dot_float(Float::F16, n, w, a) }
}

pub(crate) fn dot_bf16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: NEON is part of every aarch64 CPU.
    unsafe { dot_float(Float::BF16, n, w, a) }
}

/// Safe [`super::GemmFn`] entry points of the GEMM tiles (`neon_sdot_gemm`,
/// `neon_kquant_gemm`, `neon_kquant_i8mm`): each `$gemm` runs the generic
/// `$kernel::<$fmt, $m>` ($m: the tier's [`Dot4`]) inside a function compiled with
/// `$features`.
macro_rules! gemm_entry_points {
    ($features:tt, $kernel:ident, $m:ty; $($fmt:ident => $gemm:ident;)*) => {$(
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            #[target_feature(enable = $features)]
            fn gemm(
                k: usize,
                w: &[u8],
                n_rows: usize,
                a: &[u8],
                n_tok: usize,
                out: &mut [f32],
                ldo: usize,
            ) {
                // SAFETY: this function is compiled with the features the kernel needs.
                unsafe { $kernel::<$fmt, $m>(k, w, n_rows, a, n_tok, out, ldo) }
            }
            // SAFETY: the kernel table installs these entry points only after detecting
            // the features at run time (`has_dotprod()`, and `has_i8mm()` for i8mm; plain
            // NEON is part of every aarch64 CPU).
            unsafe { gemm(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}
pub(super) use gemm_entry_points;
