//! Q5_K: as Q4_K with a 5th bit per quant in `qh`; value = d·sc·q − dmin·m, q ∈ 0..=31.
//! Quantizer: ggml `quantize_row_q5_K_ref` (fit nmax 31, rmin −0.5, rdelta 0.1, 15 steps).

use super::kfit::{get_scale_min_k4, quantize_kx, KxParts, Q5_K_FIT};
use super::{f16_to_f32, ByteBlock};

/// `block_q5_K` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    /// Super-block scale of the scales, f16.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16.
    pub dmin: [u8; 2],
    /// Packed 6-bit scales and mins, as Q4_K.
    pub scales: [u8; 12],
    /// 5th bit of element 64c+l is bit 2c of qh[l]; of element 64c+32+l bit 2c+1.
    pub qh: [u8; 32],
    /// Low 4 bits, placed as in Q4_K.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ5K {}

pub(super) fn quantize_block(x: &[f32; 256]) -> BlockQ5K {
    pack(quantize_kx(x, Q5_K_FIT))
}

/// The block of a super-block's packed parts (scales, mins and final quants).
pub(super) fn pack((d, dmin, scales, l): KxParts) -> BlockQ5K {
    let mut qs = [0u8; 128];
    let mut qh = [0u8; 32];
    for c in 0..4 {
        let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for j in 0..32 {
            let mut l1 = l[64 * c + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[64 * c + 32 + j];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[32 * c + j] = l1 | (l2 << 4);
        }
    }
    BlockQ5K {
        d,
        dmin,
        scales,
        qh,
        qs,
    }
}

pub(super) fn dequantize_block(b: &BlockQ5K, y: &mut [f32; 256]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for i in 0..32 {
            let q = b.qs[32 * c + i];
            let h1 = if b.qh[i] & u1 != 0 { 16 } else { 0 };
            let h2 = if b.qh[i] & u2 != 0 { 16 } else { 0 };
            y[64 * c + i] = d1 * ((q & 0x0f) + h1) as f32 - m1;
            y[64 * c + 32 + i] = d2 * ((q >> 4) + h2) as f32 - m2;
        }
    }
}
