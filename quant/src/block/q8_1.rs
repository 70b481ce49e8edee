//! Q8_1: Q8_0 plus `s = d·Σq` (f16), the activation format paired with Q4_1/Q5_1
//! so their dot product can add the minimum term without touching the quants.
//! Quantizer: ggml `quantize_row_q8_1_ref`.

use super::q8_0::quantize_q8;
use super::{f16_to_f32, f32_to_f16, ByteBlock};

/// `block_q8_1` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// d · Σ qs, f16.
    pub s: [u8; 2],
    /// Quants.
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
// SAFETY: repr(C), only u8/i8 arrays.
unsafe impl ByteBlock for BlockQ8_1 {}

pub(super) fn quantize_block(x: &[f32; 32]) -> BlockQ8_1 {
    let (d, qs) = quantize_q8(x);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    BlockQ8_1 {
        d: f32_to_f16(d),
        s: f32_to_f16(sum as f32 * d),
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ8_1, y: &mut [f32; 32]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}
