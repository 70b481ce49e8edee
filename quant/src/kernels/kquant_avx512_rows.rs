//! AVX-512 VNNI GEMM for batches of tokens on K-quant weights (Q4_K, Q5_K, Q6_K: the K-quant
//! recipes' gate and up experts; Q3_K, Q2_K: the cold experts' low-bit copies) and Q8_K
//! activations, with the weight rows in the vector lanes, as `q0_avx512_rows` does for the
//! 32-element formats (see there for why).
//!
//! Each 16-row group is decoded once per call into a per-thread scratch, per super-block
//! of 256: its 8 sub-blocks' unsigned quants (Q5_K: the nibble plus 16 times its 5th bit)
//! as dword-interleaved blocks (`q0_rows16`'s layout, lane r = row r), the rows' 6-bit scales as one i32 vector per sub-block, their 6-bit
//! minimums as i16 pairs (two sub-blocks per vector), and `d`, `dmin` as f32 vectors.
//! Per token and sub-block 8 `vpdpbusd` give each row's exact integer sub-block sum, one
//! `vpmulld` by the scales and an add gather the super-block's `Σ sc·Σq·a`; 4 `vpdpwssd`
//! against the token's 32-element sums (from Q8_K's `bsums`) give `Σ m·Σa`. Two converts,
//! two multiplies and two FMAs finish the super-block for all 16 rows.
//!
//! Each output sums its super-blocks in order (the integers exactly, then
//! `d_w·d_a·Σ sc·Σq·a − dmin_w·d_a·Σ m·Σa` in f32); the tier tests hold it within the
//! rounding bound of the scalar twin. Fewer than [`MIN_TOKENS`] tokens
//! ([`MIN_TOKENS_Q6_K`] and its neighbours for the 16-element formats) run `kquant_avx512`'s
//! GEMV, which reads each weight byte once for up to 4 tokens.
//!
//! The 16-element formats ([`Rows16`] over `SixteenBlock`) have 16 sub-blocks of 16 with
//! their own scales: Q6_K and Q3_K signed ones (8- and 6-bit) and quants stored with an
//! offset (32, 4), Q2_K 4-bit scales and minimums. Their quants decode unsigned in the same
//! layout, per 32-element chunk two sub-blocks of 4 `vpdpbusd` each and a `vpmulld` by each
//! one's scales; per super-block 8 `vpdpwssd` of i16 pairs against the token's 16-element
//! sums give the offset's `Σ sc·Σa` (taken back in i32 before the one FMA) or Q2_K's
//! `Σ m·Σa` (scaled by `dmin`, as Q4_K's).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::kquant_avx2::{
    act_sums16, act_supers, folds_offset, k4_scales_mins, ActSums16, ActSuper, RowBlock, Shape,
    SixteenBlock, Q2K, Q3K,
};
use super::q0_rows16::transpose;
use super::row_lanes::{kquant_shape, row_lane_gemms, store16, Call, RowLanes, Tile};
use crate::block::{as_blocks, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// Fewest tokens this kernel serves for Q4_K and Q5_K, and for the 16-element formats,
/// whose decoding (16 scales per row and super-block) costs more; fewer run
/// `kquant_avx512`'s multi-token GEMV (measured with `examples/gemm_bench.rs`, one thread,
/// 6,848 rows of 1,280, GEMV against this kernel: Q4_K at 5 tokens 155.5-156.0 against
/// 146.8-148.2 GOP/s, at 6 163.0-163.3 against 158.2-164.7; Q5_K at 5 123.0-124.0 against
/// 119.2-123.0, at 6 132.5-133.2 against 135.0-137.0; Q6_K at 11 135.8-136.4 against
/// 128.2-128.8, at 12 136.3-139.1 against 133.9-137.0; Q3_K at 9 110.0-110.6 against
/// 114.1-114.8; Q2_K at 11 133.2-133.8 against 131.3-133.8, at 12 131.8-132.9 against
/// 137.7-141.2).
pub(super) const MIN_TOKENS: usize = 6;
pub(super) const MIN_TOKENS_Q6_K: usize = 12;
pub(super) const MIN_TOKENS_Q3_K: usize = 9;
pub(super) const MIN_TOKENS_Q2_K: usize = 11;

/// Layout of one super-block's decoded 16 rows in the scratch (byte offsets).
const QUANTS: usize = 0; // 8 sub-blocks x 8 vectors
const SCALES: usize = 8 * 512; // 8 vectors of i32
const MINS: usize = SCALES + 8 * 64; // 4 vectors of i16 pairs
const D: usize = MINS + 4 * 64; // f32
const DMIN: usize = D + 64; // f32
const SB_BYTES: usize = DMIN + 64;

/// Byte `j` of each of 16 rows' u64 (rows 0..8 in `lo`, 8..16 in `hi`) as i32 lane r.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn byte_column(lo: __m512i, hi: __m512i, j: usize) -> __m512i {
    let pick = |v: __m512i| {
        let shifted = _mm512_srl_epi64(v, _mm_cvtsi32_si128(8 * j as i32));
        _mm512_cvtepi64_epi32(_mm512_and_si512(shifted, _mm512_set1_epi64(0xff)))
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(pick(lo)), pick(hi))
}

/// 32 bytes of super-block `s` of each row, picked by `bytes` (zero for the rows past the
/// group's, which `group_rows` leaves empty), rows 2i and 2i + 1 in the halves of vector i.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn row_pairs<B>(rows: &[&[B]; 16], s: usize, bytes: impl Fn(&B) -> &[u8]) -> [__m512i; 8] {
    let half = |r: usize| match rows[r].get(s) {
        // SAFETY: the slice holds at least 32 bytes; loadu has no alignment requirement.
        Some(b) => unsafe { _mm256_loadu_si256(bytes(b)[..32].as_ptr().cast()) },
        None => _mm256_setzero_si256(),
    };
    std::array::from_fn(|i| {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(2 * i)), half(2 * i + 1))
    })
}

/// Decodes the `nr ≤ 16` rows (`rows[r]`, `nsb` super-blocks each) into `bp`
/// (`nsb · SB_BYTES`, 64-byte aligned); rows past `nr` are zero.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn pack<B: RowBlock>(rows: &[&[B]; 16], nr: usize, nsb: usize, bp: &mut [u8]) {
    assert!(bp.len() >= nsb * SB_BYTES && nr <= 16);
    let (m4, one) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(1));
    let store = |dst: &mut [u8], v: __m512i| {
        let dst = &mut dst[..64];
        // SAFETY: dst is 64 writable bytes; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
    };
    for s in 0..nsb {
        let sb = &mut bp[s * SB_BYTES..][..SB_BYTES];
        let qh = if B::HIGH_BIT {
            row_pairs(rows, s, |b| b.qh().map_or(&[], |h| &h[..]))
        } else {
            [_mm512_setzero_si512(); 8]
        };
        // Chunk c of 64 elements: the low nibbles of qs[32c..32c + 32] are sub-block 2c,
        // the high ones sub-block 2c + 1; sub-block j's 5th bits are bit j of qh.
        for c in 0..4 {
            let pairs = row_pairs(rows, s, |b| &b.qs()[32 * c..]);
            let mut low = pairs.map(|q| _mm512_and_si512(q, m4));
            let mut high = pairs.map(|q| _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
            if B::HIGH_BIT {
                // 16 where sub-block j's 5th bit is set: bit j of qh moved to bit 4.
                for (x, j) in [(&mut low, 2 * c), (&mut high, 2 * c + 1)] {
                    let n = _mm_cvtsi32_si128(j as i32);
                    for (x, h) in x.iter_mut().zip(&qh) {
                        let bit = _mm512_and_si512(_mm512_srl_epi16(*h, n), one);
                        *x = _mm512_add_epi8(*x, _mm512_slli_epi16::<4>(bit));
                    }
                }
            }
            for (h, x) in [low, high].iter().enumerate() {
                let j = 2 * c + h;
                for (v, y) in transpose(x).into_iter().enumerate() {
                    store(&mut sb[QUANTS + 512 * j + 64 * v..], y);
                }
            }
        }
        // Each row's 8 scales and 8 minimums, one per byte of two u64, then per
        // sub-block a vector of the 16 rows' values.
        let (mut sc, mut mn) = ([0u64; 16], [0u64; 16]);
        let (mut d, mut dmin) = ([0u16; 16], [0u16; 16]);
        for r in 0..nr {
            let blk = &rows[r][s];
            (sc[r], mn[r]) = k4_scales_mins(blk.scales());
            d[r] = u16::from_le_bytes(blk.d());
            dmin[r] = u16::from_le_bytes(blk.dmin());
        }
        // SAFETY: sc and mn are 16 u64 each (two vectors), d and dmin 16 u16 each.
        let (sc, mn, d, dmin) = unsafe {
            let v = |p: *const u64| {
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(8).cast()),
                )
            };
            let h = |p: *const u16| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            (
                v(sc.as_ptr()),
                v(mn.as_ptr()),
                h(d.as_ptr()),
                h(dmin.as_ptr()),
            )
        };
        for j in 0..8 {
            store(&mut sb[SCALES + 64 * j..], byte_column(sc.0, sc.1, j));
        }
        for i in 0..4 {
            let (m0, m1) = (
                byte_column(mn.0, mn.1, 2 * i),
                byte_column(mn.0, mn.1, 2 * i + 1),
            );
            store(
                &mut sb[MINS + 64 * i..],
                _mm512_or_si512(m0, _mm512_slli_epi32::<16>(m1)),
            );
        }
        store(&mut sb[D..], _mm512_castps_si512(d));
        store(&mut sb[DMIN..], _mm512_castps_si512(dmin));
    }
}

/// This kernel on format `B`.
pub(super) struct Rows<B>(PhantomData<B>);

impl<B: RowBlock> RowLanes<16> for Rows<B> {
    type W = B;
    type Act = ActSuper;
    const TT: usize = 8;
    const MIN_TOKENS: usize = MIN_TOKENS;
    const BLOCK_BYTES: usize = SB_BYTES;
    /// `d` and `dmin` sit with the integer lanes.
    const BLOCK_F32: usize = 0;

    fn shape(c: &Call) -> Option<Shape> {
        kquant_shape(B::FORMAT, c)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSuper>) {
        act_supers(&as_blocks::<BlockQ8K>(a).unwrap_or(&[])[..n], out);
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pack(rows: &[&[B]; 16], nr: usize, nsb: usize, bp: &mut [u8], _: &mut [f32]) {
        pack(rows, nr, nsb, bp);
    }

    /// Per sub-block 8 `vpdpbusd` per token and a `vpmulld` by the scales; per
    /// super-block 4 `vpdpwssd` of the minimums and two FMAs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSuper>) {
        let mut acc = [_mm512_setzero_ps(); NT];
        for s in 0..t.nb {
            // SAFETY: super-block s < nb of the scratch (caller), 64-byte aligned.
            let p = unsafe { t.bp.add(SB_BYTES * s) };
            let mut isum = [_mm512_setzero_si512(); NT];
            for j in 0..8 {
                // SAFETY: sub-block j's 8 vectors and scale vector lie in super-block s.
                let (w, sc): ([__m512i; 8], __m512i) = unsafe {
                    (
                        std::array::from_fn(|i| _mm512_load_si512(p.add(512 * j + 64 * i).cast())),
                        _mm512_load_si512(p.add(SCALES + 64 * j).cast()),
                    )
                };
                for (i, isum) in isum.iter_mut().enumerate() {
                    // SAFETY: token i < NT's super-block s: its quants start after the f32
                    // scale at byte 292s (caller); sub-block j's 32 are at 32j.
                    unsafe {
                        let q = t.a.add(i * t.arb + 292 * s + 4 + 32 * j);
                        let mut sj = _mm512_setzero_si512();
                        for (v, w) in w.iter().enumerate() {
                            let aq = _mm512_set1_epi32(q.add(4 * v).cast::<i32>().read_unaligned());
                            sj = _mm512_dpbusd_epi32(sj, *w, aq);
                        }
                        *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(sj, sc));
                    }
                }
            }
            // SAFETY: the mins, d and dmin vectors lie in super-block s.
            let (m, d, dmin): ([__m512i; 4], __m512, __m512) = unsafe {
                (
                    std::array::from_fn(|i| _mm512_load_si512(p.add(MINS + 64 * i).cast())),
                    _mm512_load_ps(p.add(D).cast()),
                    _mm512_load_ps(p.add(DMIN).cast()),
                )
            };
            for (i, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
                // SAFETY: token i's entry i·nb + s lies in `act` (caller).
                let x = unsafe { *t.act.add(i * t.nb + s) };
                let mut ms = _mm512_setzero_si512();
                for (v, m) in m.iter().enumerate() {
                    ms = _mm512_dpwssd_epi32(ms, *m, _mm512_set1_epi32(x.sums[v]));
                }
                let da = _mm512_set1_ps(x.d);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*isum), _mm512_mul_ps(d, da), *acc);
                *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_mul_ps(dmin, da), *acc);
            }
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store16(&t, &acc) };
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<Self, 16>(c) }
    }
}

/// Layout of one super-block's decoded 16 rows of a 16-element format in the scratch (byte
/// offsets).
const S16_QUANTS: usize = 0; // 8 chunks of 32 elements x 8 vectors
const S16_SCALES: usize = 8 * 512; // 16 vectors of i32: the rows' scales of sub-block j
const S16_PAIRS: usize = S16_SCALES + 16 * 64; // 8 vectors of i16 pairs (x_2i, x_2i+1)
const S16_D: usize = S16_PAIRS + 8 * 64; // f32
const S16_DMIN: usize = S16_D + 64; // f32
const S16_BYTES: usize = S16_DMIN + 64;

/// Decodes the `nr ≤ 16` rows (`rows[r]`, `nsb` super-blocks each) of a 16-element format
/// into `bp` (`nsb · S16_BYTES`, 64-byte aligned): per 32-element chunk the unsigned quants
/// dword-interleaved, the rows' 16 scales as i32 vectors, as i16 pairs the scales (signed
/// formats: the offset's factors) or the minimums, and `d`, `dmin`; rows past `nr` are zero.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn pack16<B: SixteenBlock>(rows: &[&[B]; 16], nr: usize, nsb: usize, bp: &mut [u8]) {
    assert!(bp.len() >= nsb * S16_BYTES && nr <= 16);
    let store = |dst: &mut [u8], v: __m512i| {
        let dst = &mut dst[..64];
        // SAFETY: dst is 64 writable bytes; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
    };
    let count = |n: i32| _mm_cvtsi32_si128(n);
    for s in 0..nsb {
        let sb = &mut bp[s * S16_BYTES..][..S16_BYTES];
        for c in 0..8 {
            let (ls, lm) = B::low_bits(c);
            let low = row_pairs(rows, s, |b| b.low(c));
            let mut u =
                low.map(|q| _mm512_and_si512(_mm512_srl_epi16(q, count(ls)), _mm512_set1_epi8(lm)));
            if B::HIGH {
                let (hs, hm, hp) = B::high_bits(c);
                let high = row_pairs(rows, s, |b| b.high(c));
                for (u, h) in u.iter_mut().zip(high) {
                    let bits =
                        _mm512_and_si512(_mm512_srl_epi16(h, count(hs)), _mm512_set1_epi8(hm));
                    *u = _mm512_or_si512(*u, _mm512_sll_epi16(bits, count(hp)));
                }
            }
            for (v, y) in transpose(&u).into_iter().enumerate() {
                store(&mut sb[S16_QUANTS + 512 * c + 64 * v..], y);
            }
        }
        let (mut sc, mut mn) = ([[0i32; 16]; 16], [[0i32; 16]; 16]);
        let (mut d, mut dmin) = ([0u16; 16], [0u16; 16]);
        for r in 0..nr {
            let blk = &rows[r][s];
            let (scales, mins) = (blk.scales(), blk.mins());
            for j in 0..16 {
                (sc[j][r], mn[j][r]) = (scales[j], mins[j]);
            }
            d[r] = u16::from_le_bytes(blk.d());
            dmin[r] = u16::from_le_bytes(blk.dmin());
        }
        // SAFETY: each v is 16 i32; loadu has no alignment requirement.
        let lanes = |v: &[i32; 16]| unsafe { _mm512_loadu_si512(v.as_ptr().cast()) };
        for (j, v) in sc.iter().enumerate() {
            store(&mut sb[S16_SCALES + 64 * j..], lanes(v));
        }
        // The bsums' factors: the scales themselves (times the offset) or the minimums.
        let factors = if folds_offset(B::FORMAT) { &sc } else { &mn };
        for i in 0..8 {
            let (lo, hi) = (lanes(&factors[2 * i]), lanes(&factors[2 * i + 1]));
            let pair = _mm512_or_si512(
                _mm512_and_si512(lo, _mm512_set1_epi32(0xffff)),
                _mm512_slli_epi32::<16>(hi),
            );
            store(&mut sb[S16_PAIRS + 64 * i..], pair);
        }
        // SAFETY: d and dmin are 16 u16.
        let h = |v: &[u16; 16]| unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().cast())) };
        store(&mut sb[S16_D..], _mm512_castps_si512(h(&d)));
        store(&mut sb[S16_DMIN..], _mm512_castps_si512(h(&dmin)));
    }
}

/// This kernel on a format of 16-element sub-blocks: Q6_K and Q3_K (signed 8- and 6-bit
/// scales, offsets of 32 and 4), Q2_K (4-bit scales and minimums).
pub(super) struct Rows16<B>(PhantomData<B>);

impl<B: SixteenBlock> RowLanes<16> for Rows16<B> {
    type W = B;
    type Act = ActSums16;
    const TT: usize = 8;
    const MIN_TOKENS: usize = match B::FORMAT {
        Q3K => MIN_TOKENS_Q3_K,
        Q2K => MIN_TOKENS_Q2_K,
        _ => MIN_TOKENS_Q6_K,
    };
    const BLOCK_BYTES: usize = S16_BYTES;
    /// `d` and `dmin` sit with the integer lanes.
    const BLOCK_F32: usize = 0;

    fn shape(c: &Call) -> Option<Shape> {
        kquant_shape(B::FORMAT, c)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSums16>) {
        act_sums16(&as_blocks::<BlockQ8K>(a).unwrap_or(&[])[..n], out);
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pack(rows: &[&[B]; 16], nr: usize, nsb: usize, bp: &mut [u8], _: &mut [f32]) {
        pack16(rows, nr, nsb, bp);
    }

    /// Per 32-element chunk 4 + 4 `vpdpbusd` per token (one sub-block each) and two
    /// `vpmulld` by the scales; per super-block 8 `vpdpwssd` of the factor pairs against the
    /// token's 16-element sums give the offset (signed formats: `offset·Σ sc·Σa`, taken
    /// back in i32, one FMA finishes) or `Σ m·Σa` (Q2_K: two FMAs, as the minimums of
    /// Q4_K).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSums16>) {
        let mut acc = [_mm512_setzero_ps(); NT];
        for s in 0..t.nb {
            // SAFETY: super-block s < nb of the scratch (caller), 64-byte aligned.
            let p = unsafe { t.bp.add(S16_BYTES * s) };
            let mut isum = [_mm512_setzero_si512(); NT];
            for c in 0..8 {
                // SAFETY: chunk c's 8 vectors and its two scale vectors lie in super-block s.
                let (w, s0, s1): ([__m512i; 8], __m512i, __m512i) = unsafe {
                    (
                        std::array::from_fn(|i| _mm512_load_si512(p.add(512 * c + 64 * i).cast())),
                        _mm512_load_si512(p.add(S16_SCALES + 128 * c).cast()),
                        _mm512_load_si512(p.add(S16_SCALES + 128 * c + 64).cast()),
                    )
                };
                for (i, isum) in isum.iter_mut().enumerate() {
                    // SAFETY: token i < NT's super-block s: its quants start after the f32
                    // scale at byte 292s (caller); chunk c's 32 are at 32c.
                    unsafe {
                        let q = t.a.add(i * t.arb + 292 * s + 4 + 32 * c);
                        let aq = |v: usize| {
                            _mm512_set1_epi32(q.add(4 * v).cast::<i32>().read_unaligned())
                        };
                        let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                        for v in 0..4 {
                            lo = _mm512_dpbusd_epi32(lo, w[v], aq(v));
                            hi = _mm512_dpbusd_epi32(hi, w[4 + v], aq(4 + v));
                        }
                        let both = _mm512_add_epi32(
                            _mm512_mullo_epi32(lo, s0),
                            _mm512_mullo_epi32(hi, s1),
                        );
                        *isum = _mm512_add_epi32(*isum, both);
                    }
                }
            }
            // SAFETY: the factor pairs, d and dmin lie in super-block s.
            let (pairs, d, dmin): ([__m512i; 8], __m512, __m512) = unsafe {
                (
                    std::array::from_fn(|i| _mm512_load_si512(p.add(S16_PAIRS + 64 * i).cast())),
                    _mm512_load_ps(p.add(S16_D).cast()),
                    _mm512_load_ps(p.add(S16_DMIN).cast()),
                )
            };
            for (i, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
                // SAFETY: token i's entry i·nb + s lies in `act` (caller).
                let x = unsafe { *t.act.add(i * t.nb + s) };
                let mut ms = _mm512_setzero_si512();
                for (v, pair) in pairs.iter().enumerate() {
                    ms = _mm512_dpwssd_epi32(ms, *pair, _mm512_set1_epi32(x.sums[v]));
                }
                let da = _mm512_set1_ps(x.d);
                if folds_offset(B::FORMAT) {
                    // Σ sc·Σ(u − o)·a = Σ sc·Σ u·a − o·Σ sc·Σa, exact in i32.
                    let off = _mm512_sll_epi32(ms, _mm_cvtsi32_si128(B::OFFSET_SHIFT));
                    let total = _mm512_sub_epi32(*isum, off);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(d, da), *acc);
                } else {
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*isum), _mm512_mul_ps(d, da), *acc);
                    *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_mul_ps(dmin, da), *acc);
                }
            }
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store16(&t, &acc) };
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<Self, 16>(c) }
    }
}

row_lane_gemms! {
    gemm_q4_k_q8_k => Rows<BlockQ4K>, 16, super::kquant_avx512::gemm_q4_k_q8_k;
    gemm_q5_k_q8_k => Rows<BlockQ5K>, 16, super::kquant_avx512::gemm_q5_k_q8_k;
    gemm_q6_k_q8_k => Rows16<BlockQ6K>, 16, super::kquant_avx512::gemm_q6_k_q8_k;
    gemm_q3_k_q8_k => Rows16<BlockQ3K>, 16, super::kquant_avx512::gemm_q3_k_q8_k;
    gemm_q2_k_q8_k => Rows16<BlockQ2K>, 16, super::kquant_avx512::gemm_q2_k_q8_k;
}
