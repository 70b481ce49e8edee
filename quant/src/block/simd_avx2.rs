//! AVX2 (+ F16C) row quantizers, byte-identical twins of the scalar references (see
//! `simd_quantize.rs` for how exactness is kept). The safe wrappers are only reachable
//! through the quantizer table, which holds them only after `detected()`.

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
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
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

/// Loads the 8 floats at `x[8k..8k+8]`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn load8<const N: usize>(x: &[f32; N], k: usize) -> __m256 {
    assert!(8 * k + 8 <= N);
    // SAFETY: the range was just checked to lie inside `x`; loadu has no alignment needs.
    unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) }
}

/// |x| as integer bits (non-negative, ordered like the floats; NaN and inf largest).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn abs_bits(v: __m256) -> __m256i {
    _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fff_ffff))
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn hmax_epi32(v: __m256i) -> i32 {
    let m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
    _mm_cvtsi128_si32(m)
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Largest |x| as bits over `x[8k]` for k in 0..N/8.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn amax_bits<const N: usize>(x: &[f32; N]) -> u32 {
    let mut m = _mm256_setzero_si256();
    for k in 0..N / 8 {
        m = _mm256_max_epi32(m, abs_bits(load8(x, k)));
    }
    hmax_epi32(m) as u32
}

/// The first element whose |x| has the bits `amax` (which must occur in `x`), with its sign:
/// the scalar references' "signed max, first one on ties".
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn first_with_abs<const N: usize>(x: &[f32; N], amax: u32) -> f32 {
    let target = _mm256_set1_epi32(amax as i32);
    for k in 0..N / 8 {
        let eq = _mm256_cmpeq_epi32(abs_bits(load8(x, k)), target);
        let mask = _mm256_movemask_ps(_mm256_castsi256_ps(eq)) as u32;
        if mask != 0 {
            return x[8 * k + mask.trailing_zeros() as usize];
        }
    }
    0.0
}

/// Packs four vectors of i32 in −128..=127 into 32 i8, in element order.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn pack_i8(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    // packs works per 128-bit lane: the bytes come out as 4-element groups
    // a0 b0 c0 d0 a1 b1 c1 d1; the permute puts each vector's two groups together.
    let ab = _mm256_packs_epi32(a, b);
    let cd = _mm256_packs_epi32(c, d);
    let bytes = _mm256_packs_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// C's `roundf` (half away from zero) of each lane, as i32, for lanes below 2²³ in magnitude
/// (the quantizers' are at most ~127): v + copysign(0.5⁻, v), truncated, as in
/// `simd_avx512::round_away`, which says why that is exact.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn round_away(v: __m256) -> __m256i {
    let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
    let bias = _mm256_or_ps(sign, _mm256_castsi256_ps(_mm256_set1_epi32(0x3eff_ffff)));
    _mm256_cvttps_epi32(_mm256_add_ps(v, bias))
}

/// Q8_0's (d, quants, Σ quants) for one block, or `None` when the scalar reference must
/// handle it (a non-finite value, or 1/d overflowing).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q8_block(x: &[f32; 32]) -> Option<(f32, __m256i, i32)> {
    let amax = amax_bits(x);
    if amax >= 0x7f80_0000 {
        return None;
    }
    let d = f32::from_bits(amax) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() {
        return None;
    }
    let idv = _mm256_set1_ps(id);
    let q: [__m256i; 4] = std::array::from_fn(|k| round_away(_mm256_mul_ps(load8(x, k), idv)));
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    Some((d, pack_i8(q[0], q[1], q[2], q[3]), hsum_epi32(sum)))
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn store32(dst: &mut [i8], v: __m256i) {
    assert!(dst.len() >= 32);
    // SAFETY: dst has at least 32 writable bytes (checked); storeu has no alignment needs.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) }
}

/// One Q8_0 block of `x`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q8_0_block(b: &mut BlockQ8_0, x: &[f32; 32]) {
    match q8_block(x) {
        Some((d, qs, _)) => {
            b.d = f32_to_f16(d);
            store32(&mut b.qs, qs);
        }
        None => *b = q8_0::quantize_block(x),
    }
}

#[target_feature(enable = "avx2,f16c")]
fn q8_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 32);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let x = &src[32 * g..32 * (g + m)];
        let block = |j: usize| quarters(x, j);
        let group = &mut blocks[g..g + m];
        match q8_0_scales(abs_maxima(m, &block)) {
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

/// Blocks whose Q8_0 scales are computed together, one vector lane each (as in
/// `simd_avx512.rs`, which says why).
const GROUP_BLOCKS: usize = 8;

/// Loads the 8 floats at `x[at..at + 8]`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn load8_at(x: &[f32], at: usize) -> __m256 {
    assert!(at + 8 <= x.len());
    // SAFETY: the range was just checked to lie inside `x`; loadu has no alignment needs.
    unsafe { _mm256_loadu_ps(x.as_ptr().add(at)) }
}

/// Block j of `x` (the 32 floats at 32j) as its four quarters.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn quarters(x: &[f32], j: usize) -> [__m256; 4] {
    [
        load8_at(x, 32 * j),
        load8_at(x, 32 * j + 8),
        load8_at(x, 32 * j + 16),
        load8_at(x, 32 * j + 24),
    ]
}

/// The largest |x| (f32 bits) of each of the first `m` blocks (`block(j)`: block j's
/// quarters) in lanes 0..m; the lanes past them hold 0, a block of zeros whose scale is
/// never stored.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn abs_maxima(m: usize, block: &impl Fn(usize) -> [__m256; 4]) -> __m256i {
    // Plain loops, not `array::from_fn`: its closure is a function of its own, which the
    // compiler may leave uninlined and without this function's target features.
    let mut parts = [_mm256_setzero_si256(); 8];
    for (j, p) in parts.iter_mut().enumerate().take(m) {
        let [a, b, c, d] = block(j);
        *p = _mm256_max_epi32(
            _mm256_max_epi32(abs_bits(a), abs_bits(b)),
            _mm256_max_epi32(abs_bits(c), abs_bits(d)),
        );
    }
    lane_maxima(parts)
}

/// Lane j of the result is the largest (signed) i32 lane of `v[j]`: halves, then 64- and
/// 32-bit pieces of two inputs paired so that each piece keeps one input's partial maximum,
/// and a last permutation that puts input j in lane j.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn lane_maxima(v: [__m256i; 8]) -> __m256i {
    // Half 0: input 2i's partials, half 1: input 2i + 1's.
    let mut l1 = [_mm256_setzero_si256(); 4];
    for (i, o) in l1.iter_mut().enumerate() {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        *o = _mm256_max_epi32(
            _mm256_permute2x128_si256::<0x20>(a, b),
            _mm256_permute2x128_si256::<0x31>(a, b),
        );
    }
    // Half h: inputs 4i + h and 4i + 2 + h, two partials each.
    let mut l2 = [_mm256_setzero_si256(); 2];
    for (i, o) in l2.iter_mut().enumerate() {
        let (a, b) = (l1[2 * i], l1[2 * i + 1]);
        *o = _mm256_max_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    }
    // Half h: inputs h, 2 + h, 4 + h and 6 + h, one 32-bit value each.
    let (a, b) = (_mm256_castsi256_ps(l2[0]), _mm256_castsi256_ps(l2[1]));
    let r = _mm256_max_epi32(
        _mm256_castps_si256(_mm256_shuffle_ps::<0x88>(a, b)),
        _mm256_castps_si256(_mm256_shuffle_ps::<0xdd>(a, b)),
    );
    // Input j sits at 32-bit position 4 (j % 2) + j / 2.
    _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Q8_0's scales of [`GROUP_BLOCKS`] blocks from their largest |x| (f32 bits, block j in
/// lane j), lane by lane the scalar reference's operations: d = amax / 127 as f16 bits, and
/// 1 / d (0 where d is 0). `None` when a block needs the scalar reference: a non-finite
/// value, or 1 / d overflowing.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q8_0_scales(amax: __m256i) -> Option<([u16; 8], [f32; 8])> {
    let finite = |bits| _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7f80_0000), bits);
    if _mm256_movemask_ps(_mm256_castsi256_ps(finite(amax))) != 0xff {
        return None;
    }
    let d = _mm256_div_ps(_mm256_castsi256_ps(amax), _mm256_set1_ps(127.0));
    stored_scales(d)
}

/// A group's scales d (lane j: block j) as f16 bits, with 1 / d (0 where d is 0) as the
/// references compute it; `None` when an inverse overflows (the scalar reference then
/// takes the group).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn stored_scales(d: __m256) -> Option<([u16; 8], [f32; 8])> {
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_OQ>(d, _mm256_setzero_ps());
    // 1 / 0 is +inf in the lanes the mask then clears.
    let id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), d), nonzero);
    let finite = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7f80_0000), abs_bits(id));
    if _mm256_movemask_ps(_mm256_castsi256_ps(finite)) != 0xff {
        return None;
    }
    let (mut dh, mut idv) = ([0u16; 8], [0f32; 8]);
    // SAFETY: 8 u16 and 8 f32 written into arrays of exactly that size; unaligned stores.
    unsafe {
        _mm_storeu_si128(
            dh.as_mut_ptr().cast(),
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        _mm256_storeu_ps(idv.as_mut_ptr(), id);
    }
    Some((dh, idv))
}

/// The Q8_0 blocks of a group given their scales ([`q8_0_scales`]) and their values
/// (`block(j)`: block j's four quarters).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q8_0_store_group(
    group: &mut [BlockQ8_0],
    (d, id): ([u16; 8], [f32; 8]),
    block: impl Fn(usize) -> [__m256; 4],
) {
    for (j, b) in group.iter_mut().enumerate() {
        let idv = _mm256_set1_ps(id[j]);
        let [p, q, r, s] = block(j);
        let quant = |v| round_away(_mm256_mul_ps(v, idv));
        b.d = d[j].to_le_bytes();
        store32(&mut b.qs, pack_i8(quant(p), quant(q), quant(r), quant(s)));
    }
}

/// The 32 bf16 values at `src[..64]` widened to f32 (exact): a block, kept in registers by
/// the fused converters below (it is never stored as a row).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn widen_bf16_block(src: &[u8]) -> [f32; 32] {
    assert!(src.len() >= 64);
    let mut x = [0f32; 32];
    for k in 0..4 {
        // SAFETY: 16 bytes read at 16k < 64 ≤ src.len() (checked) and 8 floats written at
        // 8k inside x; unaligned loads and stores.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(16 * k).cast());
            let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
            _mm256_storeu_si256(x.as_mut_ptr().add(8 * k).cast(), w);
        }
    }
    x
}

#[target_feature(enable = "avx2,f16c")]
fn bf16_to_q8_0_row(src: &[u8], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 64);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let s = &src[64 * g..64 * (g + m)];
        // |x| of a bf16 value is its low 15 bits, ordered like the float (see
        // `simd_avx512::bf16_abs_maxima`). Lanes past the last block hold 0.
        let mut parts = [_mm256_setzero_si256(); 8];
        for (j, p) in parts.iter_mut().enumerate().take(m) {
            // SAFETY: j < m, so the 64 bytes at 64j lie inside `s` (64m bytes).
            let (v, w) = unsafe {
                let p = s.as_ptr().add(64 * j);
                (
                    _mm256_loadu_si256(p.cast()),
                    _mm256_loadu_si256(p.add(32).cast()),
                )
            };
            let abs = _mm256_set1_epi16(0x7fff);
            let a = _mm256_max_epu16(_mm256_and_si256(v, abs), _mm256_and_si256(w, abs));
            *p = _mm256_max_epi32(
                _mm256_and_si256(a, _mm256_set1_epi32(0xffff)),
                _mm256_srli_epi32::<16>(a),
            );
        }
        let amax = _mm256_slli_epi32::<16>(lane_maxima(parts));
        let group = &mut blocks[g..g + m];
        match q8_0_scales(amax) {
            Some(scales) => q8_0_store_group(group, scales, |j| widen_bf16_quarters(&s[64 * j..])),
            None => {
                for (b, s) in group.iter_mut().zip(s.chunks_exact(64)) {
                    q8_0_block(b, &widen_bf16_block(s));
                }
            }
        }
    }
}

/// The 32 bf16 values at `src[..64]` widened to f32 (exact), as a block's four quarters.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn widen_bf16_quarters(src: &[u8]) -> [__m256; 4] {
    assert!(src.len() >= 64);
    let widen = |k: usize| {
        // SAFETY: 16 bytes read at 16k < 64 ≤ src.len() (checked); unaligned load.
        let h = unsafe { _mm_loadu_si128(src.as_ptr().add(16 * k).cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    };
    [widen(0), widen(1), widen(2), widen(3)]
}

#[target_feature(enable = "avx2,f16c")]
fn bf16_to_q4_0_row(src: &[u8], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ4_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 64);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let s = &src[64 * g..64 * (g + m)];
        let block = |j: usize| widen_bf16_quarters(&s[64 * j..]);
        q4_0_group(&mut blocks[g..g + m], abs_maxima(m, &block), block);
    }
}

/// Q4_K with 8 sub-block fits at once (`kfit_lanes.rs`), in 256-bit vectors.
#[target_feature(enable = "avx2,f16c")]
fn q4_k_row(src: &[f32], dst: &mut [u8]) {
    kx_row::<F256, BlockQ4K>(src, dst, Q4_K_FIT, q4_k::pack, q4_k::quantize_block)
}

/// Q5_K as [`q4_k_row`].
#[target_feature(enable = "avx2,f16c")]
fn q5_k_row(src: &[f32], dst: &mut [u8]) {
    kx_row::<F256, BlockQ5K>(src, dst, Q5_K_FIT, q5_k::pack, q5_k::quantize_block)
}

/// Q2_K as [`q4_k_row`] (one super-block's 16 sub-blocks of 16 values per pass).
#[target_feature(enable = "avx2,f16c")]
fn q2_k_row(src: &[f32], dst: &mut [u8]) {
    kfit_lanes::q2_k_row::<F256>(src, dst)
}

/// Q6_K with its signed sub-block fits in lanes (`kfit_lanes.rs`).
#[target_feature(enable = "avx2,f16c")]
fn q6_k_row(src: &[f32], dst: &mut [u8]) {
    kfit_lanes::signed16_row::<F256, BlockQ6K>(src, dst)
}

/// Q3_K with its sub-block fits in lanes (`kfit_lanes.rs`).
#[target_feature(enable = "avx2,f16c")]
fn q3_k_row(src: &[f32], dst: &mut [u8]) {
    kfit_lanes::signed16_row::<F256, BlockQ3K>(src, dst)
}

/// 8 f32 lanes for the K-quant fits (`kfit_lanes.rs`). The type is private to this file and
/// its values are made only inside the K-quant row quantizers ([`q2_k_row`] ... [`q6_k_row`]),
/// which the quantizer table holds only after `detected()`: the CPU runs the intrinsics of
/// every method below.
#[derive(Clone, Copy)]
struct F256(__m256);

// SAFETY (every `unsafe` block in this impl): AVX2 and F16C are present, see `F256`; the
// memory accesses are bounds-checked where they occur.
impl Lanes for F256 {
    const W: usize = 8;
    /// All ones in the lanes that are set, as `vcmpps` makes them.
    type Mask = __m256;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        unsafe { F256(_mm256_set1_ps(v)) }
    }
    #[inline(always)]
    fn gather(x: &[f32], stride: usize) -> Self {
        assert!(stride * 7 < x.len() && stride * 7 <= i32::MAX as usize);
        let s = stride as i32;
        unsafe {
            let idx = _mm256_mullo_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(s),
            );
            F256(_mm256_i32gather_ps::<4>(x.as_ptr(), idx))
        }
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        assert!(out.len() >= 8);
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        unsafe { F256(_mm256_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        unsafe { F256(_mm256_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        unsafe { F256(_mm256_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        unsafe { F256(_mm256_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        unsafe { F256(_mm256_sqrt_ps(self.0)) }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        unsafe { F256(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0)) }
    }
    #[inline(always)]
    fn neg(self) -> Self {
        unsafe { F256(_mm256_xor_ps(self.0, _mm256_set1_ps(-0.0))) }
    }
    #[inline(always)]
    fn lt(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn gt(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn eq(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn ne(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_NEQ_UQ>(self.0, o.0) }
    }
    #[inline(always)]
    fn and(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_and_ps(a, b) }
    }
    #[inline(always)]
    fn any(m: __m256) -> bool {
        unsafe { _mm256_movemask_ps(m) != 0 }
    }
    #[inline(always)]
    fn select(m: __m256, a: Self, b: Self) -> Self {
        unsafe { F256(_mm256_blendv_ps(b.0, a.0, m)) }
    }
    #[inline(always)]
    fn nearest_clamped(self, lo: i32, hi: i32) -> Self {
        unsafe {
            let t = _mm256_castps_si256(_mm256_add_ps(self.0, _mm256_set1_ps(12_582_912.0)));
            let i = _mm256_sub_epi32(
                _mm256_and_si256(t, _mm256_set1_epi32(0x007f_ffff)),
                _mm256_set1_epi32(0x0040_0000),
            );
            let c = _mm256_min_epi32(
                _mm256_max_epi32(i, _mm256_set1_epi32(lo)),
                _mm256_set1_epi32(hi),
            );
            F256(_mm256_cvtepi32_ps(c))
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
fn bf16_to_f16_row(src: &[u8], dst: &mut [u8]) {
    let n = (src.len() / 2).min(dst.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n keeps the 16 bytes read and 16 bytes written in bounds.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i).cast());
            let v = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
            let o = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(2 * i).cast(), o);
        }
        i += 8;
    }
    (FromBf16::scalar().f16)(&src[2 * i..2 * n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx2,f16c")]
fn bf16_to_bf16_row(src: &[u8], dst: &mut [u8]) {
    let n = (src.len() / 2).min(dst.len() / 2);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n keeps the 32 bytes read and written in bounds.
        unsafe {
            let v = _mm256_loadu_si256(src.as_ptr().add(2 * i).cast());
            // Widening then rounding back is exact except for NaN, which is made quiet.
            let abs = _mm256_and_si256(v, _mm256_set1_epi16(0x7fff));
            let nan = _mm256_cmpgt_epi16(abs, _mm256_set1_epi16(0x7f80));
            let o = _mm256_or_si256(v, _mm256_and_si256(nan, _mm256_set1_epi16(0x40)));
            _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i).cast(), o);
        }
        i += 16;
    }
    (FromBf16::scalar().bf16)(&src[2 * i..2 * n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx2,f16c")]
fn q8_1_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ8_1>(dst).unwrap_or_default();
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(32)) {
        let Ok(x) = <&[f32; 32]>::try_from(x) else {
            continue;
        };
        match q8_block(x) {
            Some((d, qs, sum)) => {
                b.d = f32_to_f16(d);
                b.s = f32_to_f16(sum as f32 * d);
                store32(&mut b.qs, qs);
            }
            None => *b = q8_1::quantize_block(x),
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
fn q4_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ4_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 32);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let x = &src[32 * g..32 * (g + m)];
        let block = |j: usize| quarters(x, j);
        q4_0_group(&mut blocks[g..g + m], abs_maxima(m, &block), block);
    }
}

/// The Q4_0 blocks of a group (`block(j)`: block j's four quarters) given their largest |x|
/// (f32 bits, block j in lane j), scales from [`signed_scales`]; a group it refuses goes block
/// by block through [`q4_0_block`].
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q4_0_group(group: &mut [BlockQ4_0], amax: __m256i, block: impl Fn(usize) -> [__m256; 4]) {
    let Some((dh, idv)) = signed_scales(group.len(), amax, &block, -8.0) else {
        for (j, b) in group.iter_mut().enumerate() {
            q4_0_block(b, &stored(block(j)));
        }
        return;
    };
    for (j, b) in group.iter_mut().enumerate() {
        let q = |v| offset_quants(v, idv[j], 8.5, 15);
        let [p0, p1, p2, p3] = block(j);
        store_nibbles(&mut b.qs, [q(p0), q(p1), q(p2), q(p3)]);
        b.d = dh[j].to_le_bytes();
    }
}

/// Q4_0's / Q5_0's quants of 8 values: C's `MIN(top, (int8_t)(x*id + offset))`, a separate
/// multiply and add, then truncation.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn offset_quants(v: __m256, id: f32, offset: f32, top: i32) -> __m256i {
    let v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(id)), _mm256_set1_ps(offset));
    _mm256_min_epi32(_mm256_cvttps_epi32(v), _mm256_set1_epi32(top))
}

#[target_feature(enable = "avx2,f16c")]
fn q5_0_row(src: &[f32], dst: &mut [u8]) {
    let blocks = as_blocks_mut::<BlockQ5_0>(dst).unwrap_or_default();
    let n = blocks.len().min(src.len() / 32);
    for g in (0..n).step_by(GROUP_BLOCKS) {
        let m = GROUP_BLOCKS.min(n - g);
        let x = &src[32 * g..32 * (g + m)];
        let block = |j: usize| quarters(x, j);
        let group = &mut blocks[g..g + m];
        let Some((dh, idv)) = signed_scales(m, abs_maxima(m, &block), &block, -16.0) else {
            for (b, x) in group.iter_mut().zip(x.chunks_exact(32)) {
                if let Ok(x) = <&[f32; 32]>::try_from(x) {
                    *b = q5_0::quantize_block(x);
                }
            }
            continue;
        };
        for (j, b) in group.iter_mut().enumerate() {
            let q = |v| offset_quants(v, idv[j], 16.5, 31);
            let [p0, p1, p2, p3] = block(j);
            let quants = [q(p0), q(p1), q(p2), q(p3)];
            // The 5th bits: element i's is bit i of qh (bit 4 moved to the sign for movemask).
            let mut qh = 0u32;
            for (k, &v) in quants.iter().enumerate() {
                let top_bit = _mm256_castsi256_ps(_mm256_slli_epi32::<27>(v));
                qh |= (_mm256_movemask_ps(top_bit) as u32) << (8 * k);
            }
            let nibbles = _mm256_set1_epi32(0x0f);
            let low = |v| _mm256_and_si256(v, nibbles);
            let [q0, q1, q2, q3] = quants;
            store_nibbles(&mut b.qs, [low(q0), low(q1), low(q2), low(q3)]);
            b.qh = qh.to_le_bytes();
            b.d = dh[j].to_le_bytes();
        }
    }
}

/// A block's four quarters stored as its 32 floats.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn stored(q: [__m256; 4]) -> [f32; 32] {
    let mut x = [0f32; 32];
    for (k, v) in q.into_iter().enumerate() {
        // SAFETY: 8 floats stored at 8k < 32 inside x; unaligned store.
        unsafe { _mm256_storeu_ps(x.as_mut_ptr().add(8 * k), v) };
    }
    x
}

/// Q4_0's / Q5_0's scales of the `m` blocks of a group (`block(j)`: block j's quarters)
/// given their largest |x| (f32 bits, block j in lane j): each block's signed maximum (the
/// first value of largest |x|, as the reference keeps it; +0 for a block of zeros), then
/// d = max / `divisor` (−8, −16) as f16 bits and 1 / d (0 where d is 0), lane by lane the
/// reference's operations. `None` when a block needs the scalar reference: a non-finite
/// value, or 1 / d overflowing.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn signed_scales(
    m: usize,
    amax: __m256i,
    block: &impl Fn(usize) -> [__m256; 4],
    divisor: f32,
) -> Option<([u16; 8], [f32; 8])> {
    let finite = |bits| _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7f80_0000), bits);
    let mut amax_bits = [0u32; 8];
    // SAFETY: 8 u32 stored into an array of 8; unaligned store.
    unsafe { _mm256_storeu_si256(amax_bits.as_mut_ptr().cast(), amax) };
    let mut negative = [0i32; 8];
    for (j, (&a, neg)) in amax_bits.iter().zip(&mut negative).enumerate() {
        if j >= m || a == 0 {
            continue;
        }
        let t = _mm256_set1_epi32(a as i32);
        let (mut at, mut signs) = (0u32, 0u32);
        for (k, v) in block(j).into_iter().enumerate() {
            let eq = _mm256_cmpeq_epi32(abs_bits(v), t);
            at |= (_mm256_movemask_ps(_mm256_castsi256_ps(eq)) as u32) << (8 * k);
            signs |= (_mm256_movemask_ps(v) as u32) << (8 * k);
        }
        if signs & at & at.wrapping_neg() != 0 {
            *neg = i32::MIN;
        }
    }
    if _mm256_movemask_ps(_mm256_castsi256_ps(finite(amax))) != 0xff {
        return None;
    }
    // SAFETY: 8 i32 loaded from an array of 8; unaligned load.
    let sign = unsafe { _mm256_loadu_si256(negative.as_ptr().cast()) };
    let max = _mm256_castsi256_ps(_mm256_or_si256(amax, sign));
    let d = _mm256_div_ps(max, _mm256_set1_ps(divisor));
    stored_scales(d)
}

/// One Q4_0 block of `x`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
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
        _mm256_set1_ps(id),
        _mm256_set1_ps(8.5),
        _mm256_set1_epi32(15),
    );
    // C: MIN(15, (int8_t)(x*id + 8.5f)): a separate multiply and add, then truncation.
    let q: [__m256i; 4] = std::array::from_fn(|k| {
        let v = _mm256_add_ps(_mm256_mul_ps(load8(x, k), idv), half);
        _mm256_min_epi32(_mm256_cvttps_epi32(v), fifteen)
    });
    store_nibbles(&mut b.qs, q);
    b.d = f32_to_f16(d);
}

/// A Q4_0 block's 16 bytes from its quants (0..=15, four vectors in element order): element i
/// in the low nibble of byte i, element 16 + i in the high one.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn store_nibbles(qs: &mut [u8; 16], q: [__m256i; 4]) {
    let lo = _mm256_or_si256(q[0], _mm256_slli_epi32::<4>(q[2]));
    let hi = _mm256_or_si256(q[1], _mm256_slli_epi32::<4>(q[3]));
    let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(lo, hi));
    let bytes = _mm_packus_epi16(
        _mm256_castsi256_si128(words),
        _mm256_extracti128_si256::<1>(words),
    );
    // SAFETY: qs is exactly 16 writable bytes.
    unsafe { _mm_storeu_si128(qs.as_mut_ptr().cast(), bytes) };
}

#[target_feature(enable = "avx2,f16c")]
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
        let (isv, max_q) = (_mm256_set1_ps(iscale), _mm256_set1_epi32(127));
        // nearest_int rounds half to even for these small values: the default rounding.
        let quant = |k: usize| {
            let v = _mm256_mul_ps(isv, load8(x, k));
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm256_min_epi32(_mm256_cvtps_epi32(r), max_q)
        };
        for (g, qs) in b.qs.chunks_exact_mut(32).enumerate() {
            let q: [__m256i; 4] = std::array::from_fn(|k| quant(4 * g + k));
            store32(qs, pack_i8(q[0], q[1], q[2], q[3]));
            for h in 0..2 {
                let s = hsum_epi32(_mm256_add_epi32(q[2 * h], q[2 * h + 1])) as i16;
                let j = 2 * g + h;
                b.bsums[2 * j..2 * j + 2].copy_from_slice(&s.to_le_bytes());
            }
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

#[target_feature(enable = "avx2,f16c")]
fn f32_to_f16_row(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n keeps the 8 floats read and 16 bytes written in bounds.
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(2 * i).cast(), h);
        }
        i += 8;
    }
    f16::quantize(&src[i..n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx2,f16c")]
fn f32_to_bf16_row(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let bf16_of = |u: __m256i| {
        // Round to nearest even on the upper half; NaN keeps its top bits and is made quiet.
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd);
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
        let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(64));
        let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
        let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
        _mm256_blendv_epi8(rounded, quiet, nan)
    };
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n keeps the 16 floats read and 32 bytes written in bounds.
        unsafe {
            let a = bf16_of(_mm256_loadu_si256(src.as_ptr().add(i).cast()));
            let b = bf16_of(_mm256_loadu_si256(src.as_ptr().add(i + 8).cast()));
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
            _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i).cast(), w);
        }
        i += 16;
    }
    bf16::quantize(&src[i..n], &mut dst[2 * i..2 * n]);
}

#[target_feature(enable = "avx2,f16c")]
fn bf16_to_f32_row(src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n keeps the 16 bytes read and 8 floats written in bounds.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i).cast());
            let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), w);
        }
        i += 8;
    }
    bf16::dequantize(&src[2 * i..2 * n], &mut dst[i..n]);
}

#[cfg(test)]
mod tests {
    use super::super::simd_quantize::check_round_away;
    use super::*;

    /// [`round_away`] of 8 floats.
    fn round(x: [f32; 8]) -> [i32; 8] {
        let mut out = [0i32; 8];
        // SAFETY: callers checked `detected()`; 8 lanes loaded and stored.
        unsafe {
            _mm256_storeu_si256(
                out.as_mut_ptr().cast(),
                round_away(_mm256_loadu_ps(x.as_ptr())),
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
