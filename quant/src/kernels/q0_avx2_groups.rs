//! AVX2 (+ FMA, F16C) GEMV and GEMM for Q4_0, Q5_0 and Q8_0 weights against Q8_0
//! activations and Q4_1, Q5_1 against Q8_1, in *groups* of 4 blocks (128
//! elements), the activations laid out once per call in the weight's element
//! order.
//!
//! Why: the block-at-a-time tiles this replaced (since removed) paid per
//! block and row a scalar f16 scale conversion, a broadcast,
//! the nibble split with a lane insert, the `−8` and the sign trick on both
//! operands, a convert and a multiply: ~17 vector operations per 18 Q4_0
//! bytes, 8.5 GB/s with the rows in cache on an AMD Zen 4, so decode was
//! compute-bound at ~0.2 of the memory's speed. Here, per group and row:
//!
//! - Q4_0: two 16 + 16-byte loads, the nibble masks (the *unsigned* nibbles
//!   0..15 go straight into `maddubs`, 2·15·128 < 2¹⁵, and `−8·Σa` is one
//!   subtraction of a per-lane value prepared with the activations; Q5_0
//!   adds its 5th bits, spread from `qh` by one shuffle and compare per
//!   vector, and subtracts 16·Σa); Q8_0: the sign trick (|w| × sign(w)·a)
//!   per block;
//! - `maddubs` / `madd` into i32 lanes, `hadd` until one vector holds the 4
//!   blocks' exact integer sums (two lanes per block for Q4_0, two for Q8_0);
//! - the 4 weight scales in one `vcvtph2ps` and one lane permute, one
//!   convert, one multiply by the activation scales (prepared per lane) and
//!   one FMA into the row's accumulator; Q4_1 and Q5_1 (unsigned quants, no
//!   offset) add their 4 minimums, gathered as the scales are, times the
//!   activation blocks' `s = d·Σa` with one more FMA.
//!
//! That is ~33 instructions per 72 Q4_0 bytes (was ~68): 22–25 GB/s with
//! the rows in cache, Q8_0 21 → 34 (BENCHMARKS.md). Decode
//! (one token) reads the rows one after the other, each group prefetching
//! the same group `PREFETCH_BYTES` further into L2, so a call is one
//! sequential stream (as `q0_avx512_units.rs`, whose measurements chose it).
//! A few tokens (an expert's share of a short prompt) run the same GEMV with
//! each weight group decoded once and met by each token in turn, up to 4 per
//! pass (a 2-row × 4-token tile before it read two strided streams without
//! prefetch: Q4_0 at 2 tokens 76-78 GOP/s against the GEMV's 111).
//!
//! The integer block sums equal the scalar twins' exactly; every output,
//! whatever the tile, sums the same f32 terms in the same order (lanes per
//! group, then `hsum_ps`, then k-chunks in order), so the GEMM is
//! bit-identical to the dot of the same row and token.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::kquant_avx2::Shape;
use super::q0_avx512_units::PREFETCH_BYTES;
use super::q0_x86::{even_runs, h2f, hsum_ps, q0_shape, ActBlock, KChunk, M_BYTE};
use crate::block::{
    as_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, ByteBlock,
};

/// Blocks of 32 elements per group.
const BLOCKS: usize = 4;
/// Groups of prepared activations per pass (24 KB: they stay in L1 beside a
/// weight tile while every row tile runs over them).
const GROUPS: usize = 128;
/// Tokens of one [`gemv_rows`] pass at most: one accumulator each beside the
/// decoded weight group (Q8_0's is 9 of the 16 registers).
const TN: usize = 4;

/// One group of prepared activations: the quants facing the weight's 4
/// quant vectors, the `base` of each i32 lane of the group's sums, and the
/// activation scale of each lane's block.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Group {
    q: [__m256i; 4],
    /// `−OFFSET·Σa` per lane (Q4_0, Q5_0); for the formats with minimums
    /// (Q4_1, Q5_1, no offset) instead the f32 bits of Q8_1's `s = d·Σa` in
    /// the first lane of each block (0 in its second), which the weights'
    /// minimums multiply: the group stays 192 bytes, 24 KB per pass in L1.
    base: __m256i,
    d: __m256,
}

/// One weight group decoded for a tile's tokens.
#[derive(Clone, Copy)]
struct Weights {
    /// Unsigned quants, one vector per `maddubs` (Q4_0: nibbles; Q8_0: |w|).
    m: [__m256i; 4],
    /// Q8_0: the signed quants, whose signs go onto the activations.
    s: [__m256i; 4],
    /// The scale of each lane's block.
    d: __m256,
    /// Q4_1, Q5_1: the minimum of each lane's block (else 0).
    min: __m256,
}

/// A weight format served here.
trait GroupFormat {
    /// The activation block it pairs with.
    type A: ActBlock;
    /// Whether the blocks have minimums (see [`Group::base`]).
    const HAS_MIN: bool = false;
    /// The weight block, and its bytes.
    type W: ByteBlock;
    const BLOCK_BYTES: usize = std::mem::size_of::<Self::W>();
    /// Signed quant = unsigned quant − OFFSET (the nibble formats without
    /// minimums).
    const OFFSET: i8 = 0;
    /// The block (0..4) of each i32 lane of [`GroupFormat::sums`]: nibble
    /// order unless a format says otherwise.
    #[inline]
    fn lanes() -> [i32; 8] {
        NIBBLE_LANES
    }
    /// The group of 4 blocks at `p`.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `p` points at 4 readable weight blocks.
    unsafe fn decode(p: *const u8) -> Weights;
    /// The exact integer sums Σ w·a of the group (from `−OFFSET·Σa`), lanes as
    /// [`GroupFormat::lanes`]; a nibble format's unless a format says
    /// otherwise.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sums(w: &Weights, x: &Group) -> __m256i {
        if Self::HAS_MIN {
            nibble_order_sums(w, x)
        } else {
            _mm256_add_epi32(nibble_order_sums(w, x), x.base)
        }
    }
    /// The group of the activation `blocks` (1..=4; missing ones are zero);
    /// a nibble format's unless a format says otherwise.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prep(blocks: &[Self::A]) -> Group
    where
        Self: Sized,
    {
        prep_nibble_order::<Self>(blocks)
    }
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

/// The f16 scales of the 4 blocks at `p` (stride `bb`), lane l taking block
/// `lanes[l]`'s: word i of the 16 bytes at `p + (bb − 2)·i` is block i's
/// scale, so three word blends of overlapping loads gather the four (fewer
/// operations than assembling them in a general register).
///
/// # Safety
/// AVX2 + FMA + F16C; `p` points at 4 readable blocks of `bb` ≥ 18 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weight_scales(p: *const u8, bb: usize, lanes: [i32; 8]) -> __m256 {
    debug_assert!(bb >= 18);
    // SAFETY: load i covers bytes (bb − 2)·i .. (bb − 2)·i + 16 ≤ 4·bb (caller).
    let at = |i: usize| unsafe { load16(p.add((bb - 2) * i)) };
    let h = _mm_blend_epi16::<0b0010>(at(0), at(1));
    let h = _mm_blend_epi16::<0b0100>(h, at(2));
    let h = _mm_blend_epi16::<0b1000>(h, at(3));
    // SAFETY: lanes is 8 i32.
    let idx = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(h)), idx)
}

/// The activation scales of `blocks` (missing ones 0), lane l taking block `lanes[l]`'s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn act_scales<A: ActBlock>(blocks: &[A], lanes: [i32; 8]) -> __m256 {
    let d: [f32; 8] =
        std::array::from_fn(|l| blocks.get(lanes[l] as usize).map_or(0.0, |b| h2f(b.d())));
    // SAFETY: d is 8 f32.
    unsafe { _mm256_loadu_ps(d.as_ptr()) }
}

/// 16 bytes at `p`.
///
/// # Safety
/// AVX2; `p` points at 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16(p: *const u8) -> __m128i {
    // SAFETY: caller; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// Pairs of i16 lanes summed into i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pairs(v: __m256i) -> __m256i {
    _mm256_madd_epi16(v, _mm256_set1_epi16(1))
}

/// Σ u·a of a group in nibble order (Q4_0, Q4_1, Q5_0, Q5_1: vector 2i + h
/// holds elements 16h..16h + 16 of blocks 2i and 2i + 1): unit i's madd
/// lanes are blocks [2i ×4, 2i + 1 ×4], and `hadd` takes pairs from unit 0
/// then unit 1 in each half, so the lanes are blocks [0 0 2 2 1 1 3 3].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_order_sums(w: &Weights, x: &Group) -> __m256i {
    // u ≤ 31, |a| ≤ 128: each maddubs pair ≤ 7936, two added ≤ 15872 < 2¹⁵.
    let unit = |i: usize| {
        pairs(_mm256_add_epi16(
            _mm256_maddubs_epi16(w.m[2 * i], x.q[2 * i]),
            _mm256_maddubs_epi16(w.m[2 * i + 1], x.q[2 * i + 1]),
        ))
    };
    _mm256_hadd_epi32(unit(0), unit(1))
}

/// Lanes of [`nibble_order_sums`].
const NIBBLE_LANES: [i32; 8] = [0, 0, 2, 2, 1, 1, 3, 3];

/// The group of `blocks` facing weights in nibble order whose signed quant is
/// `u − offset`, or (`F::HAS_MIN`) whose value is `u·d + m`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prep_nibble_order<F: GroupFormat>(blocks: &[F::A]) -> Group {
    let mut q = [[0i8; 32]; 4];
    for (j, b) in blocks.iter().enumerate() {
        let (u, lane) = (j / 2, j % 2);
        q[2 * u][16 * lane..16 * lane + 16].copy_from_slice(&b.qs()[..16]);
        q[2 * u + 1][16 * lane..16 * lane + 16].copy_from_slice(&b.qs()[16..]);
    }
    // SAFETY: each q[i] is 32 bytes.
    let q = q.map(|v| unsafe { _mm256_loadu_si256(v.as_ptr().cast()) });
    let base = if F::HAS_MIN {
        // s in the first of each block's two lanes ([0 0 2 2 1 1 3 3]).
        let s: [f32; 8] = std::array::from_fn(|l| match blocks.get(NIBBLE_LANES[l] as usize) {
            Some(b) if l % 2 == 0 => h2f(b.s()),
            _ => 0.0,
        });
        // SAFETY: s is 8 f32.
        _mm256_castps_si256(unsafe { _mm256_loadu_ps(s.as_ptr()) })
    } else {
        let offsets = Weights {
            m: [_mm256_set1_epi8(F::OFFSET); 4],
            s: [_mm256_setzero_si256(); 4],
            d: _mm256_setzero_ps(),
            min: _mm256_setzero_ps(),
        };
        let x = Group {
            q,
            base: _mm256_setzero_si256(),
            d: _mm256_setzero_ps(),
        };
        _mm256_sub_epi32(_mm256_setzero_si256(), nibble_order_sums(&offsets, &x))
    };
    Group {
        q,
        base,
        d: act_scales(blocks, NIBBLE_LANES),
    }
}

/// The 16 nibble pairs of blocks i (low half) and j (high half) of a
/// nibble-order group: low nibbles, then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(lo: __m128i, hi: __m128i) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    let v = _mm256_set_m128i(hi, lo);
    (
        _mm256_and_si256(v, m4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
    )
}

/// The quants of the 4 nibble-format blocks at `p` (`bb` bytes each, their 16
/// quant bytes at `qs`) as unsigned vectors in nibble order.
///
/// # Safety
/// AVX2 + FMA + F16C; `p` points at 4 readable blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_quants(p: *const u8, bb: usize, qs: usize) -> [__m256i; 4] {
    // SAFETY: block i's 16 quant bytes lie at bb·i + qs (caller).
    let q = |i: usize| unsafe { load16(p.add(bb * i + qs)) };
    let (a0, a1) = nibbles(q(0), q(1));
    let (b0, b1) = nibbles(q(2), q(3));
    [a0, a1, b0, b1]
}

/// [`Weights`] of a format without minimums or signed quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unsigned_weights(m: [__m256i; 4], d: __m256) -> Weights {
    Weights {
        m,
        s: [_mm256_setzero_si256(); 4],
        d,
        min: _mm256_setzero_ps(),
    }
}

/// [`Weights`] of a format with minimums (the f16 `M_BYTE` into each block).
///
/// # Safety
/// AVX2 + FMA + F16C; `p` points at 4 readable blocks of `bb` bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weights_with_min(p: *const u8, bb: usize, m: [__m256i; 4]) -> Weights {
    // SAFETY: weight_scales' loads from p + M_BYTE end at 3·bb + 14 < 4·bb (caller).
    let (d, min) = unsafe {
        (
            weight_scales(p, bb, NIBBLE_LANES),
            weight_scales(p.add(M_BYTE), bb, NIBBLE_LANES),
        )
    };
    Weights {
        m,
        s: [_mm256_setzero_si256(); 4],
        d,
        min,
    }
}

impl GroupFormat for Q4_0 {
    type A = BlockQ8_0;
    const OFFSET: i8 = 8;
    type W = BlockQ4_0;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> Weights {
        // SAFETY: 4 blocks at p (caller), quants after the f16 scale.
        unsafe { unsigned_weights(q4_quants(p, 18, 2), weight_scales(p, 18, NIBBLE_LANES)) }
    }
}

impl GroupFormat for Q4_1 {
    type A = BlockQ8_1;
    const HAS_MIN: bool = true;
    type W = BlockQ4_1;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> Weights {
        // SAFETY: 4 blocks at p (caller), quants after the f16 scale and minimum.
        unsafe { weights_with_min(p, 20, q4_quants(p, 20, 4)) }
    }
}

/// The 5th bits of a Q5_0 nibble pair vector: byte l of half h is 0x10 when
/// bit `shift + l` of `qh[h]` is set (`shift` 0 for the low nibbles, 16 for
/// the high ones).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits<const SHIFT: i8>(qh: __m256i) -> __m256i {
    // Byte l takes byte (SHIFT + l) / 8 of its half's qh, then tests bit l % 8.
    let (b0, b1) = (SHIFT / 8, SHIFT / 8 + 1);
    let pick = _mm256_setr_epi8(
        b0, b0, b0, b0, b0, b0, b0, b0, b1, b1, b1, b1, b1, b1, b1, b1, b0, b0, b0, b0, b0, b0, b0,
        b0, b1, b1, b1, b1, b1, b1, b1, b1,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(qh, pick), bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// The quants of the 4 Q5 blocks at `$p` (`$bb` bytes each, their 4 high-bit
/// bytes at `$qh`, their 16 quant bytes at `$qs`) as unsigned vectors in
/// nibble order, in an `unsafe` AVX2 context whose `$p` points at 4 readable
/// blocks. A macro, not a function: as an `#[inline]` function it stayed a
/// call in the decode loop, which then ran at a third of its speed.
macro_rules! q5_quants {
    ($p:expr, $bb:expr, $qh:expr, $qs:expr) => {{
        let q = |i: usize| load16($p.add($bb * i + $qs));
        let h = |i: usize| _mm_set1_epi32($p.add($bb * i + $qh).cast::<i32>().read_unaligned());
        let m: [__m256i; 4] = std::array::from_fn(|u| {
            let (i, j) = (2 * (u / 2), 2 * (u / 2) + 1);
            let (lo, hi) = nibbles(q(i), q(j));
            let bits = _mm256_set_m128i(h(j), h(i));
            if u % 2 == 0 {
                _mm256_or_si256(lo, fifth_bits::<0>(bits))
            } else {
                _mm256_or_si256(hi, fifth_bits::<16>(bits))
            }
        });
        m
    }};
}

impl GroupFormat for Q5_0 {
    type A = BlockQ8_0;
    const OFFSET: i8 = 16;
    type W = BlockQ5_0;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> Weights {
        // SAFETY: 4 blocks at p (caller): scale, 4 high-bit bytes, 16 quant bytes.
        unsafe { unsigned_weights(q5_quants!(p, 22, 2, 6), weight_scales(p, 22, NIBBLE_LANES)) }
    }
}

impl GroupFormat for Q5_1 {
    type A = BlockQ8_1;
    const HAS_MIN: bool = true;
    type W = BlockQ5_1;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> Weights {
        // SAFETY: 4 blocks at p (caller): scale, minimum, 4 high-bit bytes, 16 quant
        // bytes.
        unsafe { weights_with_min(p, 24, q5_quants!(p, 24, 4, 8)) }
    }
}

impl GroupFormat for Q8_0 {
    type A = BlockQ8_0;
    type W = BlockQ8_0;

    /// Block i's madd lanes are all i; `hadd(hadd(0, 1), hadd(2, 3))`.
    #[inline]
    fn lanes() -> [i32; 8] {
        [0, 1, 2, 3, 0, 1, 2, 3]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> Weights {
        // SAFETY: block i's 32 quant bytes lie at 34i + 2 (caller).
        let s: [__m256i; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_si256(p.add(34 * i + 2).cast()) });
        Weights {
            // |−128| reads as the unsigned byte 128.
            m: s.map(|v| _mm256_sign_epi8(v, v)),
            s,
            // SAFETY: 4 blocks at p (caller).
            d: unsafe { weight_scales(p, 34, Self::lanes()) },
            min: _mm256_setzero_ps(),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sums(w: &Weights, x: &Group) -> __m256i {
        // |w| ≤ 128, |sign(w)·a| ≤ 127: each maddubs pair ≤ 32512 < 2¹⁵.
        let block = |i: usize| {
            pairs(_mm256_maddubs_epi16(
                w.m[i],
                _mm256_sign_epi8(x.q[i], w.s[i]),
            ))
        };
        _mm256_hadd_epi32(
            _mm256_hadd_epi32(block(0), block(1)),
            _mm256_hadd_epi32(block(2), block(3)),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prep(blocks: &[BlockQ8_0]) -> Group {
        let q = std::array::from_fn(|i| match blocks.get(i) {
            // SAFETY: qs is 32 bytes.
            Some(b) => unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) },
            None => _mm256_setzero_si256(),
        });
        Group {
            q,
            base: _mm256_setzero_si256(),
            d: act_scales(blocks, Self::lanes()),
        }
    }
}

/// `acc += d_w·d_a·Σ(w·a)` per lane of one weight group and one token's group
/// (and `+ m_w·s_a` for the formats with minimums).
#[inline(always)]
fn step<F: GroupFormat>(w: &Weights, x: &Group, acc: &mut __m256) {
    // SAFETY: only reached from functions compiled with AVX2 + FMA + F16C
    // (the `target_feature` callers below), which this inlines into.
    unsafe {
        let s = _mm256_cvtepi32_ps(F::sums(w, x));
        *acc = _mm256_fmadd_ps(s, _mm256_mul_ps(w.d, x.d), *acc);
        if F::HAS_MIN {
            *acc = _mm256_fmadd_ps(w.min, _mm256_castsi256_ps(x.base), *acc);
        }
    }
}

/// Weight group `g` (chunk-relative) of the row at `row`: a partial last
/// group is copied beside zero blocks first, so no read passes the row.
///
/// # Safety
/// AVX2 + FMA + F16C.
#[inline(always)]
unsafe fn weight_group<F: GroupFormat>(row: &[u8], kc: &KChunk, g: usize) -> Weights {
    let gb = BLOCKS * F::BLOCK_BYTES;
    let off = (kc.u0 + g) * gb;
    if g + 1 == kc.units && kc.last_blocks < BLOCKS {
        let mut pad = [0u8; BLOCKS * 34];
        debug_assert!(F::BLOCK_BYTES <= 34);
        let n = kc.last_blocks * F::BLOCK_BYTES;
        pad[..n].copy_from_slice(&row[off..off + n]);
        // SAFETY: pad holds 4 blocks; the features are the caller's.
        return unsafe { F::decode(pad.as_ptr()) };
    }
    let p = row[off..off + gb].as_ptr();
    // SAFETY: the group's 4 blocks lie in the row (sliced above).
    unsafe { F::decode(p) }
}

/// Adds (or, in the first k-chunk, stores) `v` to `*o`.
#[inline(always)]
fn put(o: &mut f32, v: f32, first: bool) {
    *o = if first { v } else { *o + v };
}

/// `out[t·ldo + r] (+)=` the k-chunk's sums of each of the `n_rows` rows at `w`
/// against the `NT` tokens whose groups start at `x` (token t's at
/// `x[t·stride..]`), read as one stream: each row's groups in order, each
/// decoded once and met by every token, into the (row, token)'s own
/// accumulator, then the next row (rows are adjacent), each group prefetching
/// the bytes `ahead` further (the same group of a later row: what this chunk
/// reads that much later) into L2 (`prefetcht1`: no L1 miss buffer held while
/// DRAM answers). The points lie at most 64 bytes apart along the stream, so
/// every line is named.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn gemv_rows<F: GroupFormat, const NT: usize>(
    kc: &KChunk,
    w: &[u8],
    wrb: usize,
    n_rows: usize,
    x: &[Group],
    stride: usize,
    out: &mut [f32],
    ldo: usize,
    ahead: usize,
) {
    let gb = BLOCKS * F::BLOCK_BYTES;
    let whole = kc.units - usize::from(kc.last_blocks < BLOCKS);
    assert!(
        w.len() >= n_rows * wrb
            && x.len() >= (NT - 1) * stride + kc.units
            && out.len() >= (NT - 1) * ldo + n_rows,
        "gemv rows: operand sizes"
    );
    assert!((kc.u0 + whole) * gb <= wrb, "gemv rows: chunk");
    for r in 0..n_rows {
        let row = &w[r * wrb..][..wrb];
        let base = row.as_ptr().wrapping_add(kc.u0 * gb);
        let mut acc = [_mm256_setzero_ps(); NT];
        // The first token's groups drive the loop (with one token this is the
        // plain GEMV; an index over a tokens × groups walk measured 14 % slower
        // for Q5_0 there), the others follow by index.
        for (g, x0) in x[..whole].iter().enumerate() {
            let p = base.wrapping_add(g * gb);
            let mut at = 0;
            while at < gb {
                // Prefetches never fault: the address is only computed.
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead + at).cast());
                at += 64;
            }
            // SAFETY: group g < whole lies in the row (asserted above);
            // AVX2 is this function's.
            let wv = unsafe { F::decode(p) };
            step::<F>(&wv, x0, &mut acc[0]);
            for (t, acc) in acc.iter_mut().enumerate().skip(1) {
                step::<F>(&wv, &x[t * stride + g], acc);
            }
        }
        if whole < kc.units {
            // SAFETY: AVX2 is this function's.
            let wv = unsafe { weight_group::<F>(row, kc, whole) };
            for (t, acc) in acc.iter_mut().enumerate() {
                step::<F>(&wv, &x[t * stride + whole], acc);
            }
        }
        for (t, &acc) in acc.iter().enumerate() {
            put(&mut out[t * ldo + r], hsum_ps(acc), kc.first);
        }
    }
}

/// The [`super::GemmFn`] of format `F`: per k-chunk (at most `GROUPS / TN`
/// groups, the same chunks for every call shape), tokens in passes whose
/// groups fill `GROUPS`, each pass's tokens in [`gemv_rows`] of at most `TN`
/// (split evenly): every weight byte read and decoded once per `TN` tokens.
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_groups<F: GroupFormat>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let Some(Shape { nb, wrb, .. }) = q0_shape::<F::W, F::A>(k, w, n_rows, a, n_tok, out, ldo)
    else {
        return;
    };
    let ng = nb.div_ceil(BLOCKS);
    let ab = as_blocks::<F::A>(a).unwrap_or(&[]);
    let mut buf = [const { MaybeUninit::<Group>::uninit() }; GROUPS];
    let kg = ng.min(GROUPS / TN);
    for g0 in (0..ng).step_by(kg) {
        let kc = KChunk::at(g0, kg, ng, nb, BLOCKS);
        let groups = kc.units;
        // The rows `PREFETCH_BYTES` of this chunk's stream ahead.
        let ahead = PREFETCH_BYTES.div_ceil(groups * BLOCKS * F::BLOCK_BYTES) * wrb;
        let pass = (GROUPS / groups) / TN * TN;
        for p0 in (0..n_tok).step_by(pass) {
            let np = pass.min(n_tok - p0);
            for t in 0..np {
                let blocks = &ab[(p0 + t) * nb..][..nb];
                for g in 0..groups {
                    let b0 = (g0 + g) * BLOCKS;
                    let b1 = (b0 + BLOCKS).min(nb);
                    // SAFETY: AVX2 is this function's.
                    buf[t * groups + g].write(unsafe { F::prep(&blocks[b0..b1]) });
                }
            }
            // SAFETY: the first np·groups groups were written just above;
            // MaybeUninit<Group> has Group's layout.
            let x: &[Group] =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<Group>(), np * groups) };
            for (t0, nt) in even_runs(np, TN) {
                let (xt, o) = (&x[t0 * groups..], &mut out[(p0 + t0) * ldo..]);
                match nt {
                    1 => gemv_rows::<F, 1>(&kc, w, wrb, n_rows, xt, groups, o, ldo, ahead),
                    2 => gemv_rows::<F, 2>(&kc, w, wrb, n_rows, xt, groups, o, ldo, ahead),
                    3 => gemv_rows::<F, 3>(&kc, w, wrb, n_rows, xt, groups, o, ldo, ahead),
                    _ => gemv_rows::<F, TN>(&kc, w, wrb, n_rows, xt, groups, o, ldo, ahead),
                }
            }
        }
    }
}

/// Safe [`super::DotFn`] / [`super::GemmFn`] wrappers for the kernel table;
/// the dot is the GEMM of one row and one token (the same bits).
macro_rules! entry_points {
    ($($fmt:ident => $dot:ident, $gemm:ident;)*) => {$(
        pub(crate) fn $dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut o = [0f32];
            $gemm(k, w, 1, a, 1, &mut o, 1);
            o[0]
        }
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            // SAFETY: only installed in the kernel table after `avx2::detected()`.
            unsafe { gemm_groups::<$fmt>(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

entry_points! {
    Q4_0 => dot_q4_0_q8_0, gemm_q4_0_q8_0;
    Q4_1 => dot_q4_1_q8_1, gemm_q4_1_q8_1;
    Q5_0 => dot_q5_0_q8_0, gemm_q5_0_q8_0;
    Q5_1 => dot_q5_1_q8_1, gemm_q5_1_q8_1;
    Q8_0 => dot_q8_0_q8_0, gemm_q8_0_q8_0;
}
