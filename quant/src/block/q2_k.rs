//! Q2_K: 256 elements in 16 sub-blocks of 16; per sub-block a 4-bit scale (low
//! nibble) and 4-bit min (high nibble) of `scales`, both relative to the f16
//! super-block `d` and `dmin` (stored last); 2-bit quants; value
//! = d·scale·q − dmin·min, q ∈ 0..=3.
//! Quantizer: ggml `quantize_row_q2_K_ref` (`make_qkx2_quants` over 16 values
//! with weights |x| and absolute error, then scales and mins as 4-bit fractions
//! of their largest). pocketvl uses it for the low-bit fallback copy of cold
//! routed experts.
//!
//! Element e of a block: `qs[32·(e/128) + e%32]` at bit 2·((e%128)/32), scale
//! and min index e/16.

use super::kfit::{make_qkx2_quants, FitError, KxFit};
use super::{f16_to_f32, f32_to_f16, nearest_int, ByteBlock};

/// `block_q2_K` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2K {
    /// Sub-block j: scale in the low nibble, min in the high nibble.
    pub scales: [u8; 16],
    /// Element e in byte 32·(e/128) + e%32 at bit 2·((e%128)/32).
    pub qs: [u8; 64],
    /// Super-block scale of the scales, f16.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16.
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ2K {}

/// The 256 quants of a block (0..=3), in element order.
#[inline]
pub fn unpack_q2k(b: &BlockQ2K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (e, o) in q.iter_mut().enumerate() {
        *o = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    }
    q
}

/// ggml `quantize_row_q2_K_ref`'s sub-block fit (with weights |x| and absolute errors).
pub(super) const Q2_K_FIT: KxFit = KxFit {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
};

pub(super) fn quantize_block(x: &[f32; 256]) -> BlockQ2K {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let p = Q2_K_FIT;
    for j in 0..16 {
        let mut xs = [0f32; 16];
        xs.copy_from_slice(&x[16 * j..16 * j + 16]);
        let weights = xs.map(f32::abs);
        let mut lj = [0u8; 16];
        (scales[j], mins[j]) = make_qkx2_quants(
            &xs,
            &weights,
            p.nmax,
            p.rmin,
            p.rdelta,
            p.nstep,
            FitError::Absolute,
            &mut lj,
        );
        l[16 * j..16 * j + 16].copy_from_slice(&lj);
    }
    finish(x, &scales, &mins, l)
}

/// The rest of the reference after the sub-block fits (scales, mins to subtract, quants L):
/// scales and mins as 4-bit fractions of their largest, then the quants recomputed from the
/// stored f16 d/dmin. Inlined so that the SIMD tiers' callers compile it with their
/// instructions.
#[inline]
pub(super) fn finish(
    x: &[f32; 256],
    scales: &[f32; 16],
    mins: &[f32; 16],
    mut l: [u8; 256],
) -> BlockQ2K {
    const Q4SCALE: f32 = 15.0;
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for (&sc, &mn) in scales.iter().zip(mins) {
        if sc > max_scale {
            max_scale = sc;
        }
        if mn > max_min {
            max_min = mn;
        }
    }
    let mut packed = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (p, &s) in packed.iter_mut().zip(scales) {
            // C stores the int into a uint8_t.
            *p = nearest_int(iscale * s) as u8;
        }
        f32_to_f16(max_scale / Q4SCALE)
    } else {
        f32_to_f16(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (p, &m) in packed.iter_mut().zip(mins) {
            *p |= (nearest_int(iscale * m) << 4) as u8;
        }
        f32_to_f16(max_min / Q4SCALE)
    } else {
        f32_to_f16(0.0)
    };
    let (d_stored, dmin_stored) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..16 {
        let dj = d_stored * (packed[j] & 0x0f) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin_stored * (packed[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3);
            l[16 * j + ii] = q as u8;
        }
    }
    let mut qs = [0u8; 64];
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            qs[32 * h + i] = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
        }
    }
    BlockQ2K {
        scales: packed,
        qs,
        d,
        dmin,
    }
}

pub(super) fn dequantize_block(b: &BlockQ2K, y: &mut [f32; 256]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    let q = unpack_q2k(b);
    for (e, (o, &qv)) in y.iter_mut().zip(&q).enumerate() {
        let sc = b.scales[e / 16];
        let dl = d * (sc & 0x0f) as f32;
        let ml = min * (sc >> 4) as f32;
        *o = dl * qv as f32 - ml;
    }
}
