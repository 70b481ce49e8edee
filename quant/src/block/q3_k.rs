//! Q3_K: 256 elements in 16 sub-blocks of 16; f16 `d` (stored last), 6-bit
//! signed sub-block scales (stored + 32), 3-bit quants split in `qs` (low 2 bits)
//! and `hmask` (high bit); value = d·(scale − 32)·(q − 4), q ∈ 0..=7.
//! Quantizer: ggml `quantize_row_q3_K_ref` (`make_q3_quants` with the rmse
//! refinement per sub-block, scales relative to the largest |scale| as −32/max).
//! pocketvl uses it for the low-bit fallback copy of cold routed experts.
//!
//! Element e of a block: low bits in `qs[32·(e/128) + e%32]` at bit 2·((e%128)/32),
//! high bit in `hmask[e%32]` at bit e/32, scale index e/16.

use super::kfit::GROUP_MAX_EPS;
use super::q4_0::signed_absmax;
use super::{f16_to_f32, f32_to_f16, nearest_int, ByteBlock};

/// `block_q3_K` of ggml-common.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3K {
    /// High (third) bit of each quant: element e is bit e/32 of byte e%32.
    pub hmask: [u8; 32],
    /// Low 2 bits: element e in byte 32·(e/128) + e%32 at bit 2·((e%128)/32).
    pub qs: [u8; 64],
    /// Sixteen 6-bit scales (+32): low nibbles in bytes 0..8 (sub-blocks 0..8
    /// low nibble, 8..16 high nibble), top 2 bits in bytes 8..12.
    pub scales: [u8; 12],
    /// Super-block scale, f16.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
// SAFETY: repr(C), only u8 arrays.
unsafe impl ByteBlock for BlockQ3K {}

/// Sub-block j's scale minus 32 (−32..=31), ggml's unpacking of the 12 bytes.
#[inline]
pub fn q3k_scale(j: usize, s: &[u8; 12]) -> i8 {
    let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// The 256 quants of a block, each q − 4 ∈ −4..=3, in element order.
#[inline]
pub fn unpack_q3k(b: &BlockQ3K) -> [i8; 256] {
    let mut q = [0i8; 256];
    for (e, o) in q.iter_mut().enumerate() {
        let low = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        let high = (b.hmask[e % 32] >> (e / 32)) & 1;
        *o = (low | (high << 2)) as i8 - 4;
    }
    q
}

/// ggml `make_q3_quants(16, 4, x, L, do_rmse = true)`: signed fit with weights
/// x², then up to 5 passes moving single quants while the weighted fit improves.
/// Writes L + 4 (0..=7; 0 for an all-zero group) and returns the scale.
fn make_q3_quants(x: &[f32; 16], l_out: &mut [u8; 16]) -> f32 {
    const NMAX: i32 = 4;
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        *l_out = [0; 16];
        return 0.0;
    }
    let iscale = -(NMAX as f32) / max;
    let mut l = [0i32; 16];
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..16 {
        l[i] = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
        let w = x[i] * x[i];
        sumlx += w * x[i] * l[i] as f32;
        suml2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..16 {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-NMAX, NMAX - 1);
                if new_l != l[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (o, &v) in l_out.iter_mut().zip(&l) {
        *o = (v + NMAX) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

pub(super) fn quantize_block(x: &[f32; 256]) -> BlockQ3K {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 16];
    for j in 0..16 {
        let mut xs = [0f32; 16];
        xs.copy_from_slice(&x[16 * j..16 * j + 16]);
        let mut lj = [0u8; 16];
        scales[j] = make_q3_quants(&xs, &mut lj);
        l[16 * j..16 * j + 16].copy_from_slice(&lj);
    }
    finish(x, &scales, l)
}

/// The rest of the reference after the sub-block fits (scales, quants L + 4): 6-bit scales
/// relative to the largest |scale|, then the quants recomputed from the stored f16 d. Inlined
/// so that the SIMD tiers' callers compile it with their instructions.
#[inline]
pub(super) fn finish(x: &[f32; 256], scales: &[f32; 16], mut l: [u8; 256]) -> BlockQ3K {
    let max_scale = signed_absmax(scales);
    let mut packed = [0u8; 12];
    // C: `if (max_scale)`, true for NaN as well.
    let d16 = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            // C stores nearest_int into int8_t (wrapping) before clamping.
            let v = (nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
            if j < 8 {
                packed[j] = (v & 0x0f) as u8;
            } else {
                packed[j - 8] |= ((v & 0x0f) << 4) as u8;
            }
            packed[8 + j % 4] |= ((v >> 4) << (2 * (j / 4))) as u8;
        }
        f32_to_f16(1.0 / iscale)
    } else {
        f32_to_f16(0.0)
    };
    let d_stored = f16_to_f32(d16);
    for j in 0..16 {
        let d = d_stored * q3k_scale(j, &packed) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as u8;
        }
    }
    let mut hmask = [0u8; 32];
    for (e, v) in l.iter_mut().enumerate() {
        if *v > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            *v -= 4;
        }
    }
    let mut qs = [0u8; 64];
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            qs[32 * h + i] = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
        }
    }
    BlockQ3K {
        hmask,
        qs,
        scales: packed,
        d: d16,
    }
}

pub(super) fn dequantize_block(b: &BlockQ3K, y: &mut [f32; 256]) {
    let d = f16_to_f32(b.d);
    let q = unpack_q3k(b);
    for (e, (o, &qv)) in y.iter_mut().zip(&q).enumerate() {
        *o = d * q3k_scale(e / 16, &b.scales) as f32 * qv as f32;
    }
}
