//! Q8_K: the activation format of the K-quant dot products. f32 `d` (may be
//! negative), 256 i8 quants and the sums of each 16 (used for the min terms).
//! Quantizer: ggml `quantize_row_q8_K_ref` (iscale = −127/signed max, `nearest_int`).

use super::{nearest_int, ByteBlock};

/// `block_q8_K` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8K {
    /// Scale, f32 little-endian.
    pub d: [u8; 4],
    /// Quants.
    pub qs: [i8; 256],
    /// Sixteen little-endian i16 sums of 16 consecutive quants.
    pub bsums: [u8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
// SAFETY: repr(C), only u8/i8 arrays.
unsafe impl ByteBlock for BlockQ8K {}

impl BlockQ8K {
    /// The scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    /// Sum of quants 16j..16j+16.
    #[inline]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes([self.bsums[2 * j], self.bsums[2 * j + 1]])
    }
}

pub(super) fn quantize_block(x: &[f32; 256]) -> BlockQ8K {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut b = BlockQ8K {
        d: [0; 4],
        qs: [0; 256],
        bsums: [0; 32],
    };
    if amax == 0.0 {
        return b;
    }
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for j in 0..16 {
        let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
        b.bsums[2 * j..2 * j + 2].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    b.d = (1.0 / iscale).to_le_bytes();
    b
}

pub(super) fn dequantize_block(b: &BlockQ8K, y: &mut [f32; 256]) {
    let d = b.d();
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = d * q as f32;
    }
}
