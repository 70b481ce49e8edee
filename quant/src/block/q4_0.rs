//! Q4_0: 32 elements, f16 scale `d`, 4-bit quants; value = (q − 8)·d.
//! Quantizer: ggml `quantize_row_q4_0_ref` (d = signed max / −8, truncation after +8.5).

use super::{f16_to_f32, f32_to_f16, ByteBlock};

/// `block_q4_0` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Element j in the low nibble of qs[j], element j+16 in the high nibble.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ4_0 {}

/// The element of largest magnitude, with its sign (first one on ties).
#[inline]
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

pub(super) fn quantize_block(x: &[f32; 32]) -> BlockQ4_0 {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; 16];
    for j in 0..16 {
        // C: MIN(15, (int8_t)(x*id + 8.5f)); the cast truncates toward zero.
        let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        qs[j] = q0 | (q1 << 4);
    }
    BlockQ4_0 {
        d: f32_to_f16(d),
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ4_0, y: &mut [f32; 32]) {
    let d = f16_to_f32(b.d);
    for j in 0..16 {
        y[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}
