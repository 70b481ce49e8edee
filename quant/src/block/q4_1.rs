//! Q4_1: 32 elements, f16 scale `d` and minimum `m`, 4-bit quants; value = q·d + m.
//! Quantizer: ggml `quantize_row_q4_1_ref` (d = (max − min)/15, truncation after +0.5).

use super::{f16_to_f32, f32_to_f16, ByteBlock};

/// `block_q4_1` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Minimum (offset), f16.
    pub m: [u8; 2],
    /// Nibbles placed as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ4_1 {}

/// (min, max) with ggml's initial values ±FLT_MAX and strict comparisons.
#[inline]
pub(super) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

pub(super) fn quantize_block(x: &[f32; 32]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        qs[j] = q0 | (q1 << 4);
    }
    BlockQ4_1 {
        d: f32_to_f16(d),
        m: f32_to_f16(min),
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ4_1, y: &mut [f32; 32]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    for j in 0..16 {
        y[j] = (b.qs[j] & 0x0f) as f32 * d + m;
        y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
    }
}
