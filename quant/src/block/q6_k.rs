//! Q6_K: 256 elements in 16 sub-blocks of 16; i8 scales, f16 `d` (stored last),
//! 6-bit quants split in `ql` (low 4) and `qh` (high 2); value = d·scale·(q − 32).
//! Quantizer: ggml `quantize_row_q6_K_ref` (`make_qx_quants` per sub-block, d = −max/128).

use super::kfit::{make_qx_quants, GROUP_MAX_EPS};
use super::q4_0::signed_absmax;
use super::{f16_to_f32, f32_to_f16, nearest_int, ByteBlock};

/// `block_q6_K` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    /// Low 4 bits: half n uses ql[64n..64n+64] (see module docs in DEEPSEEK-VL2.md §9.4).
    pub ql: [u8; 128],
    /// High 2 bits, four elements per byte.
    pub qh: [u8; 64],
    /// Per-sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale, f16.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
// SAFETY: repr(C), only u8/i8 arrays.
unsafe impl ByteBlock for BlockQ6K {}

pub(super) fn quantize_block(x: &[f32; 256]) -> BlockQ6K {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 16];
    for ib in 0..16 {
        let mut xs = [0f32; 16];
        xs.copy_from_slice(&x[16 * ib..16 * ib + 16]);
        let mut lb = [0u8; 16];
        scales[ib] = make_qx_quants(&xs, &mut lb);
        l[16 * ib..16 * ib + 16].copy_from_slice(&lb);
    }
    finish(x, &scales, l)
}

/// The rest of the reference after the sub-block fits (scales, quants L + 32): i8 scales
/// relative to the largest, then the quants recomputed from the stored f16 d. Inlined so that
/// the SIMD tiers' callers compile it with their instructions.
#[inline]
pub(super) fn finish(x: &[f32; 256], scales: &[f32; 16], mut l: [u8; 256]) -> BlockQ6K {
    let max_scale = signed_absmax(scales);
    let max_abs_scale = max_scale.abs();
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: f32_to_f16(0.0),
        };
    }
    let iscale = -128.0 / max_scale;
    let d16 = f32_to_f16(1.0 / iscale);
    let mut sc = [0i8; 16];
    for (s, &v) in sc.iter_mut().zip(scales) {
        // C: MIN(127, nearest_int(·)) stored into int8_t.
        *s = nearest_int(iscale * v).min(127) as i8;
    }
    let d_stored = f16_to_f32(d16);
    for j in 0..16 {
        let d = d_stored * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for h in 0..2 {
        let (lo, ql_h, qh_h) = (128 * h, 64 * h, 32 * h);
        for i in 0..32 {
            let q1 = l[lo + i] & 0x0f;
            let q2 = l[lo + i + 32] & 0x0f;
            let q3 = l[lo + i + 64] & 0x0f;
            let q4 = l[lo + i + 96] & 0x0f;
            ql[ql_h + i] = q1 | (q3 << 4);
            ql[ql_h + i + 32] = q2 | (q4 << 4);
            qh[qh_h + i] = (l[lo + i] >> 4)
                | ((l[lo + i + 32] >> 4) << 2)
                | ((l[lo + i + 64] >> 4) << 4)
                | ((l[lo + i + 96] >> 4) << 6);
        }
    }
    BlockQ6K {
        ql,
        qh,
        scales: sc,
        d: d16,
    }
}

/// The 256 quants of a block, each q − 32 ∈ −32..=31, in element order.
#[inline]
pub fn unpack_q6k(b: &BlockQ6K) -> [i8; 256] {
    let mut a = [0i8; 256];
    for h in 0..2 {
        for l in 0..32 {
            let ql0 = b.ql[64 * h + l];
            let ql1 = b.ql[64 * h + l + 32];
            let qh = b.qh[32 * h + l];
            a[128 * h + l] = ((ql0 & 0x0f) | ((qh & 3) << 4)) as i8 - 32;
            a[128 * h + l + 32] = ((ql1 & 0x0f) | (((qh >> 2) & 3) << 4)) as i8 - 32;
            a[128 * h + l + 64] = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) as i8 - 32;
            a[128 * h + l + 96] = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

pub(super) fn dequantize_block(b: &BlockQ6K, y: &mut [f32; 256]) {
    let d = f16_to_f32(b.d);
    let q = unpack_q6k(b);
    for (e, (o, &qv)) in y.iter_mut().zip(&q).enumerate() {
        *o = d * b.scales[e / 16] as f32 * qv as f32;
    }
}
