//! x86 decoding of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//! and of their activation blocks (Q8_0, Q8_1), shared by the AVX2 and the
//! AVX-512 tiers so both multiply exactly the same integers.
//!
//! A weight block becomes 32 *unsigned* bytes `u` in the activation's element
//! order plus `OFFSET`, such that the signed quant is `u − OFFSET`: the AVX-512
//! tier feeds `u` straight into `vpdpbusd` (unsigned × signed) and subtracts
//! `OFFSET·Σa` once per activation block; the AVX2 tier uses the signed value
//! with the sign trick (|w| unsigned × sign(w)·a) because `maddubs` would
//! saturate on u up to 255. Q4_1/Q5_1 (OFFSET 0) add `m_w·s_a` per block instead.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kquant_avx2::Shape;
use crate::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, ByteBlock};

/// f16 → f32 with the F16C instruction (exact, like `half`, without its
/// per-call feature check).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn h2f(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

/// Horizontal sum of 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `n` tokens in the fewest runs of at most `max`, split evenly (6 by 4 as 3 + 3, not
/// 4 + 2; the first `n % runs` runs take one token more): each run's (first token, length).
/// The small-batch GEMVs serve a few tokens per pass over the weights.
pub(super) fn even_runs(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let runs = n.div_ceil(max);
    (0..runs).scan(0, move |t0, i| {
        let (first, len) = (*t0, n / runs + usize::from(i < n % runs));
        *t0 += len;
        Some((first, len))
    })
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32<T: Copy>(p: &[T; 32]) -> __m256i {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    // SAFETY: p is 32 one-byte elements; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles (elements 0..16) in the
/// low lane, high nibbles (elements 16..32) in the high lane, as in Q8_0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: qs is 16 readable bytes; loadu has no alignment requirement.
    let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let low = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(q, low);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
    _mm256_set_m128i(hi, lo)
}

/// The 5th bits of Q5 blocks: byte j is 0x10 when bit j of `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let x = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte j takes byte j/8 of qh (shuffles stay inside 128-bit lanes, and
    // both lanes hold qh), then tests bit j%8.
    let spread = _mm256_shuffle_epi8(
        x,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// An activation block (Q8_0 or Q8_1): scale, quants, and for Q8_1 `s = d·Σq`.
pub(super) trait ActBlock: ByteBlock {
    /// Byte offset of the quants, the block's last 32 bytes.
    const QS_BYTE: usize = std::mem::size_of::<Self>() - 32;
    fn d(&self) -> [u8; 2];
    fn qs(&self) -> &[i8; 32];
    /// `s` of Q8_1 (f16 bytes); Q8_0 has none and is never asked.
    fn s(&self) -> [u8; 2];
}

impl ActBlock for BlockQ8_0 {
    #[inline]
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline]
    fn s(&self) -> [u8; 2] {
        [0, 0]
    }
}

impl ActBlock for BlockQ8_1 {
    #[inline]
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline]
    fn s(&self) -> [u8; 2] {
        self.s
    }
}

/// A 32-element weight format and the activation block it pairs with.
pub(super) trait Q0Format {
    type W: ByteBlock;
    type A: ActBlock;
    /// Signed quant = unsigned quant − OFFSET (0 for the formats with a minimum).
    const OFFSET: u8;
    /// Whether the block has a minimum `m` (value = q·d + m; dot adds m_w·s_a): the f16
    /// after the scale `d`, at byte [`M_BYTE`] of the block.
    const HAS_MIN: bool;
    fn d(b: &Self::W) -> [u8; 2];
    /// The minimum (f16 bytes) of a format with `HAS_MIN`.
    fn m(b: &Self::W) -> [u8; 2];
    /// The 32 unsigned quants in element order.
    ///
    /// # Safety
    /// The CPU must have AVX2 + FMA + F16C.
    unsafe fn unsigned(b: &Self::W) -> __m256i;
    /// The 32 signed quants `unsigned − OFFSET` in element order.
    ///
    /// # Safety
    /// The CPU must have AVX2 + FMA + F16C.
    #[inline]
    unsafe fn signed(b: &Self::W) -> __m256i {
        // SAFETY: forwarded caller contract (AVX2).
        unsafe { _mm256_sub_epi8(Self::unsigned(b), _mm256_set1_epi8(Self::OFFSET as i8)) }
    }
}

/// Byte offset of the minimum `m` in the blocks of the formats with one.
pub(super) const M_BYTE: usize = 2;
const _: () = assert!(
    std::mem::offset_of!(BlockQ4_1, m) == M_BYTE && std::mem::offset_of!(BlockQ5_1, m) == M_BYTE
);

pub(super) struct Q4_0;
pub(super) struct Q4_1;
pub(super) struct Q5_0;
pub(super) struct Q5_1;
pub(super) struct Q8_0;

impl Q0Format for Q4_0 {
    type W = BlockQ4_0;
    type A = BlockQ8_0;
    const OFFSET: u8 = 8;
    const HAS_MIN: bool = false;
    #[inline]
    fn d(b: &BlockQ4_0) -> [u8; 2] {
        b.d
    }
    #[inline]
    fn m(_: &BlockQ4_0) -> [u8; 2] {
        [0, 0]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unsigned(b: &BlockQ4_0) -> __m256i {
        nibbles(&b.qs)
    }
}

impl Q0Format for Q4_1 {
    type W = BlockQ4_1;
    type A = BlockQ8_1;
    const OFFSET: u8 = 0;
    const HAS_MIN: bool = true;
    #[inline]
    fn d(b: &BlockQ4_1) -> [u8; 2] {
        b.d
    }
    #[inline]
    fn m(b: &BlockQ4_1) -> [u8; 2] {
        b.m
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unsigned(b: &BlockQ4_1) -> __m256i {
        nibbles(&b.qs)
    }
}

impl Q0Format for Q5_0 {
    type W = BlockQ5_0;
    type A = BlockQ8_0;
    const OFFSET: u8 = 16;
    const HAS_MIN: bool = false;
    #[inline]
    fn d(b: &BlockQ5_0) -> [u8; 2] {
        b.d
    }
    #[inline]
    fn m(_: &BlockQ5_0) -> [u8; 2] {
        [0, 0]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unsigned(b: &BlockQ5_0) -> __m256i {
        _mm256_or_si256(nibbles(&b.qs), fifth_bits(b.qh))
    }
}

impl Q0Format for Q5_1 {
    type W = BlockQ5_1;
    type A = BlockQ8_1;
    const OFFSET: u8 = 0;
    const HAS_MIN: bool = true;
    #[inline]
    fn d(b: &BlockQ5_1) -> [u8; 2] {
        b.d
    }
    #[inline]
    fn m(b: &BlockQ5_1) -> [u8; 2] {
        b.m
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unsigned(b: &BlockQ5_1) -> __m256i {
        _mm256_or_si256(nibbles(&b.qs), fifth_bits(b.qh))
    }
}

impl Q0Format for Q8_0 {
    type W = BlockQ8_0;
    type A = BlockQ8_0;
    /// `qs ^ 0x80` is `qs + 128` as an unsigned byte.
    const OFFSET: u8 = 128;
    const HAS_MIN: bool = false;
    #[inline]
    fn d(b: &BlockQ8_0) -> [u8; 2] {
        b.d
    }
    #[inline]
    fn m(_: &BlockQ8_0) -> [u8; 2] {
        [0, 0]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unsigned(b: &BlockQ8_0) -> __m256i {
        _mm256_xor_si256(load32(&b.qs), _mm256_set1_epi8(-128))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed(b: &BlockQ8_0) -> __m256i {
        load32(&b.qs)
    }
}

/// The shape of a GEMM call on a 32-element format, weight blocks `W` against activation
/// blocks `A`: blocks per row, weight and activation row bytes. Checks the
/// [`super::GemmFn`] contract once per call (a violation is a caller bug; the kernels then
/// read through raw pointers, so it panics with the reason); `None` when there is nothing
/// to compute.
pub(super) fn q0_shape<W: ByteBlock, A: ActBlock>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &[f32],
    ldo: usize,
) -> Option<Shape> {
    let nb = k / 32;
    let wrb = nb * std::mem::size_of::<W>();
    let arb = nb * std::mem::size_of::<A>();
    assert!(
        k.is_multiple_of(32) && w.len() >= n_rows * wrb && a.len() >= n_tok * arb,
        "gemm: operand sizes"
    );
    assert!(
        n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "gemm: output size"
    );
    (n_rows > 0 && n_tok > 0 && nb > 0).then_some(Shape { nb, wrb, arb })
}

/// What the row-lane batch kernels (`q0_avx512_rows`, `q0_avx2_rows`) need of one
/// token's activation block besides its quants: the start value of its integer sums and
/// its scale, and for the formats with a minimum the block's `s`.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(super) struct ActSums {
    /// `−offset·Σa`: the weight quants the kernel multiplies exceed the signed ones by
    /// `offset` (0 where it multiplies the signed ones).
    pub base: i32,
    pub d: f32,
    /// Q8_1's `s = d·Σa` (0 for Q8_0): the weights' minimums multiply it.
    pub s: f32,
}

/// `out` = the [`ActSums`] of `blocks` for a weight offset of `offset`.
///
/// Every row-lane GEMM call (each thread's rows of a matrix, each expert's batch) runs this
/// over all its tokens' blocks, so it is vector code in one loop: as a per-block closure with
/// a scalar sum, which the compiler kept out of line, it took 7% of an AVX2 prefill's time
/// (Tiny Q4_0, 512 tokens, one thread; BENCHMARKS.md). A format without an offset skips the
/// sum.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn act_sums<A: ActBlock>(blocks: &[A], offset: i32, out: &mut Vec<ActSums>) {
    out.clear();
    out.reserve(blocks.len());
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    for b in blocks {
        let base = if offset == 0 {
            0
        } else {
            // SAFETY: the quants are 32 bytes; loadu has no alignment requirement.
            let q = unsafe { _mm256_loadu_si256(b.qs().as_ptr().cast()) };
            // Pairs summed in i16 (|q0 + q1| ≤ 256), then fours in i32: exact.
            let fours = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
            -offset * hsum(fours)
        };
        out.push(ActSums {
            base,
            d: h2f(b.d()),
            s: h2f(b.s()),
        });
    }
}

/// The `N` rows of a group of a GEMM call as blocks: rows `r0..r0 + nr` of `w` (`wrb`
/// bytes each), the slots past `nr` empty (the batch kernels decode them as zeros).
pub(super) fn group_rows<W: ByteBlock, const N: usize>(
    w: &[u8],
    r0: usize,
    nr: usize,
    wrb: usize,
) -> [&[W]; N] {
    std::array::from_fn(|r| {
        if r < nr {
            crate::block::as_blocks::<W>(&w[(r0 + r) * wrb..][..wrb]).unwrap_or(&[])
        } else {
            &[]
        }
    })
}

/// How far ahead in each row the batch kernels' decoding prefetches (bytes, into L1).
/// Measured on the Zen 4 VM (prefill, Q4_0, 512 tokens, AVX-512 row kernel): with only
/// `q0_rows16::prefetch_part` the decoding's row loads still waited on memory in the
/// first group of a call and in calls of few tokens (most expert batches); 256 bytes
/// ahead took prefill from 259-290 to 281-286 tok/s on one thread and 405-447 to 426-437
/// on two.
const PACK_AHEAD: usize = 256;

/// Prefetches, for each of the first `nr` rows, the block [`PACK_AHEAD`] bytes (rounded
/// up to whole blocks) past block `b`: called once per block as a group is decoded.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_ahead<W>(rows: &[&[W]], nr: usize, b: usize) {
    let bb = std::mem::size_of::<W>();
    let ahead = PACK_AHEAD.div_ceil(bb) * bb;
    for r in rows.iter().take(nr) {
        // Prefetches never fault: the address is only computed.
        _mm_prefetch::<_MM_HINT_T0>(r.as_ptr().cast::<u8>().wrapping_add(b * bb + ahead).cast());
    }
}

/// The first `len` bytes of `buf` from its first 64-byte-aligned one, `buf` resized to
/// hold them (the batch kernels' decoding scratch).
pub(super) fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.resize(len + 64, 0);
    let off = buf.as_ptr().align_offset(64);
    &mut buf[off..off + len]
}

/// Where a k-chunk sits in a row of the x86 kernels' units (the AVX-512
/// units, the AVX2 groups: `blocks` 32-element blocks each): its first unit,
/// its units, the blocks of its last unit (`blocks` unless the row ends in a
/// partial one), and whether it is the row's first chunk.
#[derive(Clone, Copy)]
pub(super) struct KChunk {
    pub u0: usize,
    pub units: usize,
    pub last_blocks: usize,
    pub first: bool,
}

impl KChunk {
    /// The chunk of at most `kg` units from unit `u0 < nu` of a row of `nu`
    /// units and `nb` blocks.
    pub fn at(u0: usize, kg: usize, nu: usize, nb: usize, blocks: usize) -> KChunk {
        let units = kg.min(nu - u0);
        KChunk {
            u0,
            units,
            last_blocks: if u0 + units == nu {
                nb - (nu - 1) * blocks
            } else {
                blocks
            },
            first: u0 == 0,
        }
    }
}
