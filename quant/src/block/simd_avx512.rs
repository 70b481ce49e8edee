//! AVX-512 (F/BW/VL) row quantizers, byte-identical twins of the scalar references (see
//! `simd_quantize.rs` for how exactness is kept). One 512-bit vector is half a Q8_0/Q4_0 block
//! or one 16-quant group of Q8_K, and `vpmovdb` narrows i32 to bytes in order. The safe
//! wrappers are only reachable through the quantizer table, which holds them only after
//! `detected()`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::simd_quantize::{FromBf16, RowQuantizers};
use super::{
    as_blocks_mut, bf16, f16, f32_to_f16, q4_0, q8_0, q8_1, q8_k, BlockQ4_0, BlockQ8K, BlockQ8_0,
    BlockQ8_1,
};

/// Whether this CPU runs every function of this file.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

pub(super) fn quantizers() -> RowQuantizers {
    // SAFETY (every closure): the table holding these is only used after `detected()`.
    RowQuantizers {
        f16: |s, d| unsafe { f32_to_f16_row(s, d) },
        bf16: |s, d| unsafe { f32_to_bf16_row(s, d) },
        bf16_to_f32: |s, d| unsafe { bf16_to_f32_row(s, d) },
        q4_0: |s, d| unsafe { q4_0_row(s, d) },
        q8_0: |s, d| unsafe { q8_0_row(s, d) },
        q8_1: |s, d| unsafe { q8_1_row(s, d) },
        q8_k: |s, d| unsafe { q8_k_row(s, d) },
        from_bf16: FromBf16 {
            f16: |s, d| unsafe { bf16_to_f16_row(s, d) },
            bf16: |s, d| unsafe { bf16_to_bf16_row(s, d) },
            q8_0: |s, d| unsafe { bf16_to_q8_0_row(s, d) },
            q4_0: |s, d| unsafe { bf16_to_q4_0_row(s, d) },
        },
    }
}

/// Loads the 16 floats at `x[16k..16k+16]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn load16<const N: usize>(x: &[f32; N], k: usize) -> __m512 {
    assert!(16 * k + 16 <= N);
    // SAFETY: the range was just checked to lie inside `x`; loadu has no alignment needs.
    unsafe { _mm512_loadu_ps(x.as_ptr().add(16 * k)) }
}

/// Narrows 16 i32 in −128..=127 to bytes and stores them at `dst[..16]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn store16(dst: &mut [i8], v: __m512i) {
    assert!(dst.len() >= 16);
    // SAFETY: dst has at least 16 writable bytes (checked); storeu has no alignment needs.
    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(v)) }
}

/// |x| as integer bits (non-negative, ordered like the floats; NaN and inf largest).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn abs_bits(v: __m512) -> __m512i {
    _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fff_ffff))
}

/// Largest |x| as bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn amax_bits<const N: usize>(x: &[f32; N]) -> u32 {
    let mut m = _mm512_setzero_si512();
    for k in 0..N / 16 {
        m = _mm512_max_epi32(m, abs_bits(load16(x, k)));
    }
    _mm512_reduce_max_epi32(m) as u32
}

/// The first element whose |x| has the bits `amax` (which must occur in `x`), with its sign:
/// the scalar references' "signed max, first one on ties".
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn first_with_abs<const N: usize>(x: &[f32; N], amax: u32) -> f32 {
    let target = _mm512_set1_epi32(amax as i32);
    for k in 0..N / 16 {
        let mask = _mm512_cmpeq_epi32_mask(abs_bits(load16(x, k)), target);
        if mask != 0 {
            return x[16 * k + mask.trailing_zeros() as usize];
        }
    }
    0.0
}

/// C's `roundf` (half away from zero) of each lane, as i32; lanes must be finite and small.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round_away(v: __m512) -> __m512i {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    // v − trunc(v) is exact; a fraction of magnitude ≥ ½ moves one away from zero.
    let frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
    let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
    let step = _mm512_castsi512_ps(_mm512_or_si512(
        sign,
        _mm512_castps_si512(_mm512_set1_ps(1.0)),
    ));
    _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step))
}

/// Q8_0's (d, the two halves' quants, Σ quants) for one block, or `None` when the scalar
/// reference must handle it (a non-finite value, or 1/d overflowing).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_block(x: &[f32; 32]) -> Option<(f32, [__m512i; 2], i32)> {
    let amax = amax_bits(x);
    if amax >= 0x7f80_0000 {
        return None;
    }
    let d = f32::from_bits(amax) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() {
        return None;
    }
    let idv = _mm512_set1_ps(id);
    let q = [0, 1].map(|k| round_away(_mm512_mul_ps(load16(x, k), idv)));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
    Some((d, q, sum))
}

/// One Q8_0 block of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_0_block(b: &mut BlockQ8_0, x: &[f32; 32]) {
    match q8_block(x) {
        Some((d, q, _)) => {
            b.d = f32_to_f16(d);
            store16(&mut b.qs[..16], q[0]);
            store16(&mut b.qs[16..], q[1]);
        }
        None => *b = q8_0::quantize_block(x),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_0>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(32)) {
        if let Ok(x) = <&[f32; 32]>::try_from(x) {
            q8_0_block(b, x);
        }
    }
}

/// The 32 bf16 values at `src[..64]` widened to f32 (exact): a block, kept in registers by
/// the fused converters below (it is never stored as a row).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn widen_bf16_block(src: &[u8]) -> [f32; 32] {
    assert!(src.len() >= 64);
    let mut x = [0f32; 32];
    for k in 0..2 {
        // SAFETY: 32 bytes read at 32k < 64 ≤ src.len() (checked) and 16 floats written at
        // 16k inside x; unaligned loads and stores.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(32 * k).cast());
            let w = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
            _mm512_storeu_si512(x.as_mut_ptr().add(16 * k).cast(), w);
        }
    }
    x
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_to_q8_0_row(src: &[u8], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_0>(dst).unwrap_or_default();
    for (b, s) in blocks.iter_mut().zip(src.chunks_exact(64)) {
        q8_0_block(b, &widen_bf16_block(s));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_to_q4_0_row(src: &[u8], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ4_0>(dst).unwrap_or_default();
    for (b, s) in blocks.iter_mut().zip(src.chunks_exact(64)) {
        q4_0_block(b, &widen_bf16_block(s));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_to_f16_row(src: &[u8], dst: &mut [u8]) {
    let n = (src.len() / 2).min(dst.len() / 2);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n keeps the 32 bytes read and 32 bytes written in bounds.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(2 * i).cast());
            let v = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
            let o = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i).cast(), o);
        }
        i += 16;
    }
    (FromBf16::scalar().f16)(&src[2 * i..2 * n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_to_bf16_row(src: &[u8], dst: &mut [u8]) {
    let n = (src.len() / 2).min(dst.len() / 2);
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 ≤ n keeps the 64 bytes read and written in bounds.
        unsafe {
            let v = _mm512_loadu_si512(src.as_ptr().add(2 * i).cast());
            // Widening then rounding back is exact except for NaN, which is made quiet.
            let abs = _mm512_and_si512(v, _mm512_set1_epi16(0x7fff));
            let nan = _mm512_cmpgt_epi16_mask(abs, _mm512_set1_epi16(0x7f80));
            let quiet = _mm512_or_si512(v, _mm512_set1_epi16(0x40));
            let o = _mm512_mask_blend_epi16(nan, v, quiet);
            _mm512_storeu_si512(dst.as_mut_ptr().add(2 * i).cast(), o);
        }
        i += 32;
    }
    (FromBf16::scalar().bf16)(&src[2 * i..2 * n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_1_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_1>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(32)) {
        let Ok(x) = <&[f32; 32]>::try_from(x) else {
            continue;
        };
        match q8_block(x) {
            Some((d, q, sum)) => {
                b.d = f32_to_f16(d);
                b.s = f32_to_f16(sum as f32 * d);
                store16(&mut b.qs[..16], q[0]);
                store16(&mut b.qs[16..], q[1]);
            }
            None => *b = q8_1::quantize_block(x),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q4_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ4_0>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(32)) {
        if let Ok(x) = <&[f32; 32]>::try_from(x) {
            q4_0_block(b, x);
        }
    }
}

/// One Q4_0 block of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q4_0_block(b: &mut BlockQ4_0, x: &[f32; 32]) {
    let amax = amax_bits(x);
    let max = if amax == 0 {
        0.0
    } else {
        first_with_abs(x, amax)
    };
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if amax >= 0x7f80_0000 || !id.is_finite() {
        *b = q4_0::quantize_block(x);
        return;
    }
    let (idv, half, fifteen) = (
        _mm512_set1_ps(id),
        _mm512_set1_ps(8.5),
        _mm512_set1_epi32(15),
    );
    // C: MIN(15, (int8_t)(x*id + 8.5f)): a separate multiply and add, then truncation.
    let q = [0, 1].map(|k| {
        let v = _mm512_add_ps(_mm512_mul_ps(load16(x, k), idv), half);
        _mm512_min_epi32(_mm512_cvttps_epi32(v), fifteen)
    });
    let packed = _mm512_or_si512(q[0], _mm512_slli_epi32::<4>(q[1]));
    // SAFETY: qs is exactly 16 writable bytes.
    unsafe { _mm_storeu_si128(b.qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(packed)) };
    b.d = f32_to_f16(d);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_k_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8K>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(256)) {
        let Ok(x) = <&[f32; 256]>::try_from(x) else {
            continue;
        };
        let amax = amax_bits(x);
        if amax == 0 {
            *b = q8_k::quantize_block(x);
            continue;
        }
        let iscale = -127.0 / first_with_abs(x, amax);
        if amax >= 0x7f80_0000 || !iscale.is_finite() {
            *b = q8_k::quantize_block(x);
            continue;
        }
        let (isv, max_q) = (_mm512_set1_ps(iscale), _mm512_set1_epi32(127));
        for (j, qs) in b.qs.chunks_exact_mut(16).enumerate() {
            // nearest_int rounds half to even for these small values: the default rounding.
            let v = _mm512_mul_ps(isv, load16(x, j));
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let q = _mm512_min_epi32(_mm512_cvtps_epi32(r), max_q);
            store16(qs, q);
            let s = _mm512_reduce_add_epi32(q) as i16;
            b.bsums[2 * j..2 * j + 2].copy_from_slice(&s.to_le_bytes());
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn f32_to_f16_row(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n keeps the 16 floats read and 32 bytes written in bounds.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i).cast(), h);
        }
        i += 16;
    }
    f16::quantize(&src[i..n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn f32_to_bf16_row(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n keeps the 16 floats read and 32 bytes written in bounds.
        unsafe {
            let u = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            // Round to nearest even on the upper half; NaN keeps its top bits and is made quiet.
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
            let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd);
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(u, bias));
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(64));
            let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fff_ffff));
            let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
            let w = _mm512_mask_blend_epi32(nan, rounded, quiet);
            _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i).cast(), _mm512_cvtepi32_epi16(w));
        }
        i += 16;
    }
    bf16::quantize(&src[i..n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_to_f32_row(src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / 2);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n keeps the 32 bytes read and 16 floats written in bounds.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(2 * i).cast());
            let w = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), w);
        }
        i += 16;
    }
    bf16::dequantize(&src[2 * i..2 * n], &mut dst[i..n]);
}
