//! AVX-512 (F/BW/VL) row quantizers, byte-identical twins of the scalar references (see
//! `simd_quantize.rs` for how exactness is kept). One 512-bit vector is half a Q8_0/Q4_0 block
//! or one 16-quant group of Q8_K, and `vpmovdb` narrows i32 to bytes in order. The safe
//! wrappers are only reachable through the quantizer table, which holds them only after
//! `detected()`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kfit::{Q4_K_FIT, Q5_K_FIT};
use super::kfit_lanes::{self, kx_row, Lanes};
use super::simd_quantize::{FromBf16, RowQuantizers};
use super::{
    as_blocks_mut, bf16, f16, f32_to_f16, q4_0, q4_k, q5_0, q5_k, q8_0, q8_1, q8_k, BlockQ3K,
    BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
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
        q5_0: |s, d| unsafe { q5_0_row(s, d) },
        q8_0: |s, d| unsafe { q8_0_row(s, d) },
        q8_1: |s, d| unsafe { q8_1_row(s, d) },
        q8_k: |s, d| unsafe { q8_k_row(s, d) },
        q2_k: |s, d| unsafe { q2_k_row(s, d) },
        q3_k: |s, d| unsafe { q3_k_row(s, d) },
        q4_k: |s, d| unsafe { q4_k_row(s, d) },
        q5_k: |s, d| unsafe { q5_k_row(s, d) },
        q6_k: |s, d| unsafe { q6_k_row(s, d) },
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

/// C's `roundf` (half away from zero) of each lane, as i32, for lanes below 2²³ in magnitude
/// (the quantizers' are at most ~127): v + copysign(0.5⁻, v), truncated, where 0.5⁻ is the
/// float just below ½. Adding ½ itself would carry 0.49999997 up to 1; with 0.5⁻ every float
/// of that range rounds as `roundf` does (`simd_quantize::check_round_away`: the test
/// `round_away_is_roundf` on the boundaries, the ignored `round_away_is_roundf_everywhere` on
/// every one of them).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round_away(v: __m512) -> __m512i {
    let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
    let bias = _mm512_or_si512(sign, _mm512_set1_epi32(0x3eff_ffff));
    _mm512_cvttps_epi32(_mm512_add_ps(v, _mm512_castsi512_ps(bias)))
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
    let n = blocks.len().min(src.len() / 32);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let x = &src[32 * g..32 * (g + m)];
        let block = |j: usize| halves(x, j);
        let group = &mut blocks[g..g + m];
        match q8_0_scales(abs_maxima(x, m)) {
            Some(scales) => q8_0_store_group(group, scales, block),
            None => {
                for (b, x) in group.iter_mut().zip(x.chunks_exact(32)) {
                    if let Ok(x) = <&[f32; 32]>::try_from(x) {
                        q8_0_block(b, x);
                    }
                }
            }
        }
    }
}

/// Blocks whose Q8_0 scales are computed together, one vector lane each: the maxima's
/// reductions, the divisions and the f16 conversions of 16 blocks then take a few vector
/// instructions instead of a dependent scalar chain per block (bf16 rows to Q8_0: 11.3 ns
/// per block that way on a Zen 4 core, ~5 ns grouped; `examples/convert_bench.rs`).
const GROUP_BLOCKS: usize = 16;

/// Loads the 16 floats at `x[at..at + 16]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn load16_at(x: &[f32], at: usize) -> __m512 {
    assert!(at + 16 <= x.len());
    // SAFETY: the range was just checked to lie inside `x`; loadu has no alignment needs.
    unsafe { _mm512_loadu_ps(x.as_ptr().add(at)) }
}

/// Lane j of the result is the largest (signed) i32 lane of `v[j]`. Each step halves the
/// number of vectors: two inputs' halves, then quarters, then 64- and 32-bit pieces are
/// paired so that every piece keeps one input's partial maximum; a last permutation puts
/// input j in lane j.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn lane_maxima(v: [__m512i; 16]) -> __m512i {
    // Plain loops, not `array::from_fn`: its closure is a function of its own, which the
    // compiler may leave uninlined and without this function's target features.
    // Lanes (128-bit) 0-1: input 2i's partials, 2-3: input 2i + 1's.
    let mut l1 = [_mm512_setzero_si512(); 8];
    for (i, o) in l1.iter_mut().enumerate() {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        *o = _mm512_max_epi32(
            _mm512_shuffle_i64x2::<0x44>(a, b),
            _mm512_shuffle_i64x2::<0xee>(a, b),
        );
    }
    // Lane k: input 4i + k's four partials.
    let mut l2 = [_mm512_setzero_si512(); 4];
    for (i, o) in l2.iter_mut().enumerate() {
        let (a, b) = (l1[2 * i], l1[2 * i + 1]);
        *o = _mm512_max_epi32(
            _mm512_shuffle_i64x2::<0x88>(a, b),
            _mm512_shuffle_i64x2::<0xdd>(a, b),
        );
    }
    // Lane k: inputs 8i + k and 8i + 4 + k, two partials each.
    let mut l3 = [_mm512_setzero_si512(); 2];
    for (i, o) in l3.iter_mut().enumerate() {
        let (a, b) = (l2[2 * i], l2[2 * i + 1]);
        *o = _mm512_max_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    }
    // Lane k: inputs k, 4 + k, 8 + k and 12 + k, one 32-bit value each.
    let (a, b) = (_mm512_castsi512_ps(l3[0]), _mm512_castsi512_ps(l3[1]));
    let r = _mm512_max_epi32(
        _mm512_castps_si512(_mm512_shuffle_ps::<0x88>(a, b)),
        _mm512_castps_si512(_mm512_shuffle_ps::<0xdd>(a, b)),
    );
    // Input j sits at 32-bit position 4 (j % 4) + j / 4.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_epi32(order, r)
}

/// Block j of `x` (the 32 floats at 32j) as its two halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn halves(x: &[f32], j: usize) -> [__m512; 2] {
    [load16_at(x, 32 * j), load16_at(x, 32 * j + 16)]
}

/// The largest |x| (f32 bits) of each of the first `m` blocks of `x` in lanes 0..m; the
/// lanes past them hold 0, a block of zeros whose scale is never stored.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn abs_maxima(x: &[f32], m: usize) -> __m512i {
    let mut parts = [_mm512_setzero_si512(); 16];
    for (j, p) in parts.iter_mut().enumerate().take(m) {
        let [lo, hi] = halves(x, j);
        *p = _mm512_max_epi32(abs_bits(lo), abs_bits(hi));
    }
    lane_maxima(parts)
}

/// Block j of bf16 bytes `s` (the 64 bytes at 64j), raw.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_block(s: &[u8], j: usize) -> __m512i {
    assert!(64 * j + 64 <= s.len());
    // SAFETY: the 64 bytes at 64j were just checked to lie inside `s`; unaligned load.
    unsafe { _mm512_loadu_si512(s.as_ptr().add(64 * j).cast()) }
}

/// As [`abs_maxima`] for blocks of bf16 bytes: |x| of a bf16 value is its low 15 bits,
/// ordered like the float, so the block's largest, widened, is the largest |x| of the
/// widened block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_abs_maxima(s: &[u8], m: usize) -> __m512i {
    let mut parts = [_mm512_setzero_si512(); 16];
    for (j, p) in parts.iter_mut().enumerate().take(m) {
        let a = _mm512_and_si512(bf16_block(s, j), _mm512_set1_epi16(0x7fff));
        *p = _mm512_max_epi32(
            _mm512_and_si512(a, _mm512_set1_epi32(0xffff)),
            _mm512_srli_epi32::<16>(a),
        );
    }
    _mm512_slli_epi32::<16>(lane_maxima(parts))
}

/// Q8_0's scales of [`GROUP_BLOCKS`] blocks from their largest |x| (f32 bits, block j in
/// lane j), lane by lane the scalar reference's operations: d = amax / 127 as f16 bits, and
/// 1 / d (0 where d is 0). `None` when a block needs the scalar reference: a non-finite
/// value, or 1 / d overflowing.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_0_scales(amax: __m512i) -> Option<([u16; 16], [f32; 16])> {
    let inf = _mm512_set1_epi32(0x7f80_0000);
    if _mm512_cmpge_epi32_mask(amax, inf) != 0 {
        return None;
    }
    let d = _mm512_div_ps(_mm512_castsi512_ps(amax), _mm512_set1_ps(127.0));
    stored_scales(d)
}

/// A group's scales d (lane j: block j) as f16 bits, with 1 / d (0 where d is 0) as the
/// references compute it; `None` when an inverse overflows (the scalar reference then
/// takes the group).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn stored_scales(d: __m512) -> Option<([u16; 16], [f32; 16])> {
    let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(d, _mm512_setzero_ps());
    let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
    if _mm512_cmpge_epi32_mask(abs_bits(id), _mm512_set1_epi32(0x7f80_0000)) != 0 {
        return None;
    }
    let (mut dh, mut idv) = ([0u16; 16], [0f32; 16]);
    // SAFETY: 16 u16 and 16 f32 written into arrays of exactly that size; unaligned stores.
    unsafe {
        _mm256_storeu_si256(
            dh.as_mut_ptr().cast(),
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        _mm512_storeu_ps(idv.as_mut_ptr(), id);
    }
    Some((dh, idv))
}

/// The Q8_0 blocks of a group given their scales ([`q8_0_scales`]) and their values
/// (`block(j)`: block j's two halves).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q8_0_store_group(
    group: &mut [BlockQ8_0],
    (d, id): ([u16; 16], [f32; 16]),
    block: impl Fn(usize) -> [__m512; 2],
) {
    for (j, b) in group.iter_mut().enumerate() {
        let idv = _mm512_set1_ps(id[j]);
        let [lo, hi] = block(j);
        b.d = d[j].to_le_bytes();
        store16(&mut b.qs[..16], round_away(_mm512_mul_ps(lo, idv)));
        store16(&mut b.qs[16..], round_away(_mm512_mul_ps(hi, idv)));
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
    let n = blocks.len().min(src.len() / 64);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let s = &src[64 * g..64 * (g + m)];
        let group = &mut blocks[g..g + m];
        match q8_0_scales(bf16_abs_maxima(s, m)) {
            Some(scales) => q8_0_store_group(group, scales, |j| widen_bf16_halves(&s[64 * j..])),
            None => {
                for (b, s) in group.iter_mut().zip(s.chunks_exact(64)) {
                    q8_0_block(b, &widen_bf16_block(s));
                }
            }
        }
    }
}

/// The 32 bf16 values at `src[..64]` widened to f32 (exact), as a block's two halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn widen_bf16_halves(src: &[u8]) -> [__m512; 2] {
    assert!(src.len() >= 64);
    // SAFETY: 32 bytes read at 0 and at 32, inside src (checked); unaligned loads.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(src.as_ptr().cast()),
            _mm256_loadu_si256(src.as_ptr().add(32).cast()),
        )
    };
    let widen = |h| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
    [widen(lo), widen(hi)]
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn bf16_to_q4_0_row(src: &[u8], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ4_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 64);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let s = &src[64 * g..64 * (g + m)];
        let amax = bf16_abs_maxima(s, m);
        let mut amax_bits = [0u32; 16];
        // SAFETY: 16 u32 stored into an array of 16; unaligned store.
        unsafe { _mm512_storeu_si512(amax_bits.as_mut_ptr().cast(), amax) };
        // The sign of each block's first value of largest |x| (what the reference keeps).
        let mut negative: __mmask16 = 0;
        for (j, &a) in amax_bits.iter().enumerate().take(m) {
            let v = bf16_block(s, j);
            let abs = _mm512_and_si512(v, _mm512_set1_epi16(0x7fff));
            let at = _mm512_cmpeq_epi16_mask(abs, _mm512_set1_epi16((a >> 16) as i16));
            let signs = _mm512_movepi16_mask(v);
            negative |= ((((signs & at) & at.wrapping_neg()) != 0) as u16) << j;
        }
        let group = &mut blocks[g..g + m];
        match signed_scales(amax, negative, -8.0) {
            Some(scales) => q4_0_store_group(group, scales, |j| widen_bf16_halves(&s[64 * j..])),
            None => {
                for (b, s) in group.iter_mut().zip(s.chunks_exact(64)) {
                    q4_0_block(b, &widen_bf16_block(s));
                }
            }
        }
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
    let n = blocks.len().min(src.len() / 32);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let x = &src[32 * g..32 * (g + m)];
        let block = |j: usize| halves(x, j);
        let group = &mut blocks[g..g + m];
        match signed_max_scales(x, -8.0) {
            Some(scales) => q4_0_store_group(group, scales, block),
            None => {
                for (b, x) in group.iter_mut().zip(x.chunks_exact(32)) {
                    if let Ok(x) = <&[f32; 32]>::try_from(x) {
                        q4_0_block(b, x);
                    }
                }
            }
        }
    }
}

/// Q4_0's / Q5_0's quants of 16 values: C's `MIN(top, (int8_t)(x*id + offset))`, a separate
/// multiply and add, then truncation.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn offset_quants(v: __m512, id: f32, offset: f32, top: i32) -> __m512i {
    let v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(id)), _mm512_set1_ps(offset));
    _mm512_min_epi32(_mm512_cvttps_epi32(v), _mm512_set1_epi32(top))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q5_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ5_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 32);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let x = &src[32 * g..32 * (g + m)];
        let group = &mut blocks[g..g + m];
        let Some((d, id)) = signed_max_scales(x, -16.0) else {
            for (b, x) in group.iter_mut().zip(x.chunks_exact(32)) {
                if let Ok(x) = <&[f32; 32]>::try_from(x) {
                    *b = q5_0::quantize_block(x);
                }
            }
            continue;
        };
        for (j, b) in group.iter_mut().enumerate() {
            let q = |at| offset_quants(load16_at(x, at), id[j], 16.5, 31);
            let (lo, hi) = (q(32 * j), q(32 * j + 16));
            let nibbles = _mm512_set1_epi32(0x0f);
            let packed = _mm512_or_si512(
                _mm512_and_si512(lo, nibbles),
                _mm512_slli_epi32::<4>(_mm512_and_si512(hi, nibbles)),
            );
            // The 5th bits: element j's is bit j of qh.
            let fifth = _mm512_set1_epi32(0x10);
            let qh = (_mm512_test_epi32_mask(hi, fifth) as u32) << 16
                | _mm512_test_epi32_mask(lo, fifth) as u32;
            b.d = d[j].to_le_bytes();
            b.qh = qh.to_le_bytes();
            // SAFETY: qs is exactly 16 writable bytes.
            unsafe { _mm_storeu_si128(b.qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(packed)) };
        }
    }
}

/// The scales of the Q4_0 / Q5_0 blocks of `x` (at most [`GROUP_BLOCKS`] whole blocks):
/// each block's largest |x|, the sign of its first value of that magnitude (what the
/// reference keeps), then [`signed_scales`] with `divisor` (−8, −16).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn signed_max_scales(x: &[f32], divisor: f32) -> Option<([u16; 16], [f32; 16])> {
    let m = (x.len() / 32).min(GROUP_BLOCKS);
    let amax = abs_maxima(x, m);
    let mut amax_bits = [0u32; 16];
    // SAFETY: 16 u32 stored into an array of 16; unaligned store.
    unsafe { _mm512_storeu_si512(amax_bits.as_mut_ptr().cast(), amax) };
    let mut negative: __mmask16 = 0;
    for (j, &a) in amax_bits.iter().enumerate().take(m) {
        let [lo, hi] = halves(x, j);
        let t = _mm512_set1_epi32(a as i32);
        let at = (_mm512_cmpeq_epi32_mask(abs_bits(hi), t) as u32) << 16
            | _mm512_cmpeq_epi32_mask(abs_bits(lo), t) as u32;
        let i = at.trailing_zeros() as usize;
        negative |= ((i < 32 && x[32 * j + i].is_sign_negative()) as u16) << j;
    }
    signed_scales(amax, negative, divisor)
}

/// Q4_0's / Q5_0's scales of [`GROUP_BLOCKS`] blocks from their largest |x| (f32 bits, block
/// j in lane j) and the signs of the values that have it (bit j: negative), lane by lane the
/// scalar reference's operations: max = the signed value (+0 for a block of zeros), d = max /
/// `divisor` as f16 bits, and 1 / d (0 where d is 0). `None` when a block needs the scalar
/// reference: a non-finite value, or 1 / d overflowing.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn signed_scales(
    amax: __m512i,
    negative: __mmask16,
    divisor: f32,
) -> Option<([u16; 16], [f32; 16])> {
    let inf = _mm512_set1_epi32(0x7f80_0000);
    if _mm512_cmpge_epi32_mask(amax, inf) != 0 {
        return None;
    }
    let negative = negative & _mm512_test_epi32_mask(amax, amax);
    let max = _mm512_mask_or_epi32(amax, negative, amax, _mm512_set1_epi32(i32::MIN));
    let d = _mm512_div_ps(_mm512_castsi512_ps(max), _mm512_set1_ps(divisor));
    stored_scales(d)
}

/// The Q4_0 blocks of a group given their scales ([`signed_scales`]) and their values
/// (`block(j)`: block j's two halves).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q4_0_store_group(
    group: &mut [BlockQ4_0],
    (d, id): ([u16; 16], [f32; 16]),
    block: impl Fn(usize) -> [__m512; 2],
) {
    for (j, b) in group.iter_mut().enumerate() {
        let [lo, hi] = block(j);
        let q = |v| offset_quants(v, id[j], 8.5, 15);
        let packed = _mm512_or_si512(q(lo), _mm512_slli_epi32::<4>(q(hi)));
        b.d = d[j].to_le_bytes();
        // SAFETY: qs is exactly 16 writable bytes.
        unsafe { _mm_storeu_si128(b.qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(packed)) };
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

/// Q4_K with 16 sub-block fits at once (`kfit_lanes.rs`), in 512-bit vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q4_k_row(src: &[f32], dst: &mut [u8]) {
    kx_row::<F512, BlockQ4K>(src, dst, Q4_K_FIT, q4_k::pack, q4_k::quantize_block)
}

/// Q5_K as [`q4_k_row`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q5_k_row(src: &[f32], dst: &mut [u8]) {
    kx_row::<F512, BlockQ5K>(src, dst, Q5_K_FIT, q5_k::pack, q5_k::quantize_block)
}

/// Q2_K as [`q4_k_row`] (one super-block's 16 sub-blocks of 16 values per pass).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q2_k_row(src: &[f32], dst: &mut [u8]) {
    kfit_lanes::q2_k_row::<F512>(src, dst)
}

/// Q6_K with its signed sub-block fits in lanes (`kfit_lanes.rs`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q6_k_row(src: &[f32], dst: &mut [u8]) {
    kfit_lanes::signed16_row::<F512, BlockQ6K>(src, dst)
}

/// Q3_K with its sub-block fits in lanes (`kfit_lanes.rs`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q3_k_row(src: &[f32], dst: &mut [u8]) {
    kfit_lanes::signed16_row::<F512, BlockQ3K>(src, dst)
}

/// 16 f32 lanes for the K-quant fits (`kfit_lanes.rs`). The type is private to this file and
/// its values are made only inside the K-quant row quantizers ([`q2_k_row`] ... [`q6_k_row`]),
/// which the quantizer table holds only after `detected()`: the CPU runs the intrinsics of
/// every method below.
#[derive(Clone, Copy)]
struct F512(__m512);

// SAFETY (every `unsafe` block in this impl): AVX-512 F/BW/VL are present, see `F512`; the
// memory accesses are bounds-checked where they occur.
impl Lanes for F512 {
    const W: usize = 16;
    type Mask = __mmask16;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        unsafe { F512(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    fn gather(x: &[f32], stride: usize) -> Self {
        assert!(stride * 15 < x.len() && stride * 15 <= i32::MAX as usize);
        let s = stride as i32;
        unsafe {
            let idx = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(s),
            );
            F512(_mm512_i32gather_ps::<4>(idx, x.as_ptr()))
        }
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        assert!(out.len() >= 16);
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        unsafe { F512(_mm512_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        unsafe { F512(_mm512_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        unsafe { F512(_mm512_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        unsafe { F512(_mm512_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        unsafe { F512(_mm512_sqrt_ps(self.0)) }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        unsafe { F512(_mm512_abs_ps(self.0)) }
    }
    #[inline(always)]
    fn neg(self) -> Self {
        unsafe {
            let sign = _mm512_set1_epi32(i32::MIN);
            F512(_mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(self.0),
                sign,
            )))
        }
    }
    #[inline(always)]
    fn lt(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn gt(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn eq(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn ne(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    fn any(m: __mmask16) -> bool {
        m != 0
    }
    #[inline(always)]
    fn select(m: __mmask16, a: Self, b: Self) -> Self {
        unsafe { F512(_mm512_mask_blend_ps(m, b.0, a.0)) }
    }
    #[inline(always)]
    fn nearest_clamped(self, lo: i32, hi: i32) -> Self {
        unsafe {
            let t = _mm512_castps_si512(_mm512_add_ps(self.0, _mm512_set1_ps(12_582_912.0)));
            let i = _mm512_sub_epi32(
                _mm512_and_si512(t, _mm512_set1_epi32(0x007f_ffff)),
                _mm512_set1_epi32(0x0040_0000),
            );
            let c = _mm512_min_epi32(
                _mm512_max_epi32(i, _mm512_set1_epi32(lo)),
                _mm512_set1_epi32(hi),
            );
            F512(_mm512_cvtepi32_ps(c))
        }
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

#[cfg(test)]
mod tests {
    use super::super::simd_quantize::check_round_away;
    use super::*;

    /// [`round_away`] of 16 floats.
    fn round(x: [f32; 16]) -> [i32; 16] {
        let mut out = [0i32; 16];
        // SAFETY: callers checked `detected()`; 16 lanes loaded and stored.
        unsafe {
            _mm512_storeu_si512(
                out.as_mut_ptr().cast(),
                round_away(_mm512_loadu_ps(x.as_ptr())),
            )
        };
        out
    }

    #[test]
    fn round_away_is_roundf() {
        if detected() {
            check_round_away(false, round);
        }
    }

    /// Every float below 2²³ in magnitude: `cargo test --release -p pocketvl-quant --lib
    /// round_away -- --ignored`.
    #[test]
    #[ignore = "two billion floats; run in a release build with --ignored"]
    fn round_away_is_roundf_everywhere() {
        if detected() {
            check_round_away(true, round);
        }
    }
}
