//! Q8_0: 32 elements, f16 scale, i8 quants; value = q·d.
//! Quantizer: ggml `quantize_row_q8_0_ref` (d = max|x|/127, `roundf`: half away from zero).

use super::{f16_to_f32, f32_to_f16, ByteBlock};

/// `block_q8_0` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Quants.
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
// SAFETY: repr(C), only u8/i8 arrays.
unsafe impl ByteBlock for BlockQ8_0 {}

/// (d, 1/d or 0, quants) shared with Q8_1.
#[inline]
pub(super) fn quantize_q8(x: &[f32; 32]) -> (f32, [i8; 32]) {
    let mut amax = 0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

pub(super) fn quantize_block(x: &[f32; 32]) -> BlockQ8_0 {
    let (d, qs) = quantize_q8(x);
    BlockQ8_0 {
        d: f32_to_f16(d),
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ8_0, y: &mut [f32; 32]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}
