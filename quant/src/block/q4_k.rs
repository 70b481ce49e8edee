//! Q4_K: 256-element super-block of 8 sub-blocks of 32; f16 `d`/`dmin`, 6-bit
//! per-sub-block scales and mins, 4-bit quants; value = d·sc·q − dmin·m.
//! Quantizer: ggml `quantize_row_q4_K_ref` (fit nmax 15, rmin −1, rdelta 0.1, 20 steps).

use super::kfit::{get_scale_min_k4, quantize_kx, KxParts, Q4_K_FIT};
use super::{f16_to_f32, ByteBlock};

/// `block_q4_K` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    /// Super-block scale of the scales, f16.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed (see `get_scale_min_k4`).
    pub scales: [u8; 12],
    /// Chunk c of 64 elements uses qs[32c..32c+32]: low nibbles first 32, high nibbles next 32.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ4K {}

pub(super) fn quantize_block(x: &[f32; 256]) -> BlockQ4K {
    pack(quantize_kx(x, Q4_K_FIT))
}

/// The block of a super-block's packed parts (scales, mins and final quants).
pub(super) fn pack((d, dmin, scales, l): KxParts) -> BlockQ4K {
    let mut qs = [0u8; 128];
    for c in 0..4 {
        for i in 0..32 {
            qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
    BlockQ4K {
        d,
        dmin,
        scales,
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ4K, y: &mut [f32; 256]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for i in 0..32 {
            let q = b.qs[32 * c + i];
            y[64 * c + i] = d1 * (q & 0x0f) as f32 - m1;
            y[64 * c + 32 + i] = d2 * (q >> 4) as f32 - m2;
        }
    }
}
