//! Q5_0: 32 elements, f16 scale, 5-bit quants (4 low bits as Q4_0, 5th bits in
//! `qh`); value = (q − 16)·d. Quantizer: ggml `quantize_row_q5_0_ref`.

use super::q4_0::signed_absmax;
use super::{f16_to_f32, f32_to_f16, ByteBlock};

/// `block_q5_0` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16.
    pub d: [u8; 2],
    /// Bit j (little-endian u32) is the 5th bit of element j.
    pub qh: [u8; 4],
    /// Low nibbles placed as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ5_0 {}

pub(super) fn quantize_block(x: &[f32; 32]) -> BlockQ5_0 {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    BlockQ5_0 {
        d: f32_to_f16(d),
        qh: qh.to_le_bytes(),
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ5_0, y: &mut [f32; 32]) {
    let d = f16_to_f32(b.d);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as i32;
        let h1 = ((qh >> (j + 12)) & 0x10) as i32;
        y[j] = (((b.qs[j] & 0x0f) as i32 | h0) - 16) as f32 * d;
        y[j + 16] = (((b.qs[j] >> 4) as i32 | h1) - 16) as f32 * d;
    }
}
