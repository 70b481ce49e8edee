//! AVX2 (+ FMA, F16C) GEMM for batches of tokens on K-quant weights (Q4_K, Q5_K, Q6_K: the
//! K-quant recipes' gate and up experts; Q3_K, Q2_K: the cold experts' low-bit copies) and
//! Q8_K activations, with 8 weight rows in the 8 lanes: the AVX2 counterpart of
//! `kquant_avx512_rows` for CPUs without AVX-512 (most laptops), built as `q0_avx2_rows`
//! builds its 32-element formats.
//!
//! Each 8-row group is decoded once per call into a per-thread scratch, per super-block
//! of 256: its 8 sub-blocks' unsigned quants (Q5_K: the nibble plus 16 times its 5th bit)
//! as 8 vectors each whose 32-bit lane r holds row r's 4 quants of that vector's 4
//! elements (an 8 x 8 dword transpose), the rows' 6-bit scales
//! as i16 pairs (the scale twice per lane), their 6-bit minimums as i16 pairs (two
//! sub-blocks per lane), and `d`, `dmin` as f32 vectors. Per token and sub-block, 8
//! `maddubs` against the token's quants broadcast 4 bytes at a time add up in i16 without
//! overflow ([`RowBlock::RUN`] at a time: all 8 for Q4_K, 4 for Q5_K), and a `madd` by the
//! scale pairs (instead of by ones) leaves each lane `sc · Σq·a` exactly; 4 `madd` of the
//! minimum pairs against
//! the token's sub-block sums (from Q8_K's `bsums`) give `Σ m·Σa`. Two converts, two
//! multiplies and two FMAs finish the super-block for all 8 rows.
//!
//! Each output sums its super-blocks in order (the integers exactly, then
//! `d_w·d_a·Σ sc·Σq·a − dmin_w·d_a·Σ m·Σa` in f32), the same f32 operations as
//! `kquant_avx512_rows`; the tier tests hold it within the rounding bound of the scalar
//! twin. Fewer than [`MIN_TOKENS`] tokens ([`MIN_TOKENS_16`] for the 16-element formats) run
//! `kquant_avx2`'s tiles. The 16-element formats ([`Rows16`]: Q6_K, Q3_K, Q2_K) decode as
//! `kquant_avx512_rows` describes, and run `SixteenBlock::RUN` `maddubs` per i16 sum (2
//! for 6-bit quants, a sub-block's 4 for 2- and 3-bit ones) with a `madd` by each
//! 16-element sub-block's scale pair.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::kquant_avx2::{
    act_sums16, act_supers, folds_offset, k4_scales_mins, ActSums16, ActSuper, RowBlock, Shape,
    SixteenBlock,
};
use super::q0_avx2_rows::transpose8;
use super::q0_x86::{h2f, prefetch_ahead};
use super::row_lanes::{kquant_shape, row_lane_gemms, store8, Call, RowLanes, Tile};
use crate::block::{as_blocks, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// Fewest tokens this kernel serves for Q4_K and Q5_K, and for the 16-element formats, whose
/// decoding (16 scales per row and super-block) costs more (measured with
/// `examples/gemm_bench.rs` against `kquant_avx2`'s tiles: Q4_K and Q5_K behind at 4 tokens,
/// ahead from 5 (Q5_K 81-84 against 70-77 GOP/s); Q6_K, Q3_K and Q2_K behind at 8, ahead at
/// 10 (Q3_K 93-94 against 75-81, Q2_K 110-112 against 90)).
pub(super) const MIN_TOKENS: usize = 5;
pub(super) const MIN_TOKENS_16: usize = 10;

/// Layout of one super-block's decoded 8 rows in the scratch (byte offsets).
const QUANTS: usize = 0; // 8 sub-blocks x 8 vectors
const SCALES: usize = 8 * 256; // 8 vectors of i16 pairs (sc, sc)
const MINS: usize = SCALES + 8 * 32; // 4 vectors of i16 pairs (m_2i, m_2i+1)
const D: usize = MINS + 4 * 32; // f32
const DMIN: usize = D + 32; // f32
const SB_BYTES: usize = DMIN + 32;

/// 32 bytes of super-block `s` of each row, picked by `bytes` (zero for the rows past the
/// group's, which `group_rows` leaves empty).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_bytes<B>(rows: &[&[B]; 8], s: usize, bytes: impl Fn(&B) -> &[u8]) -> [__m256i; 8] {
    std::array::from_fn(|r| match rows[r].get(s) {
        // SAFETY: the slice holds at least 32 bytes; loadu has no alignment requirement.
        Some(b) => unsafe { _mm256_loadu_si256(bytes(b)[..32].as_ptr().cast()) },
        None => _mm256_setzero_si256(),
    })
}

/// Decodes the `nr ≤ 8` rows (`rows[r]`, `nsb` super-blocks each) into `bp`
/// (`nsb · SB_BYTES`, 32-byte aligned); rows past `nr` are zero.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack<B: RowBlock>(rows: &[&[B]; 8], nr: usize, nsb: usize, bp: &mut [u8]) {
    assert!(bp.len() >= nsb * SB_BYTES && nr <= 8);
    let (m4, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
    let store = |dst: &mut [u8], v: __m256i| {
        let dst = &mut dst[..32];
        // SAFETY: dst is 32 writable bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
    };
    for s in 0..nsb {
        prefetch_ahead(rows, nr, s);
        let sb = &mut bp[s * SB_BYTES..][..SB_BYTES];
        let qh = if B::HIGH_BIT {
            row_bytes(rows, s, |b| b.qh().map_or(&[], |h| &h[..]))
        } else {
            [_mm256_setzero_si256(); 8]
        };
        // Chunk c of 64 elements: the low nibbles of qs[32c..32c + 32] are sub-block 2c,
        // the high ones sub-block 2c + 1; sub-block j's 5th bits are bit j of qh.
        for c in 0..4 {
            let q = row_bytes(rows, s, |b| &b.qs()[32 * c..]);
            let mut low = q.map(|q| _mm256_and_si256(q, m4));
            let mut high = q.map(|q| _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4));
            if B::HIGH_BIT {
                // 16 where sub-block j's 5th bit is set: bit j of qh moved to bit 4.
                for (x, j) in [(&mut low, 2 * c), (&mut high, 2 * c + 1)] {
                    let n = _mm_cvtsi32_si128(j as i32);
                    for (x, h) in x.iter_mut().zip(&qh) {
                        let bit = _mm256_and_si256(_mm256_srl_epi16(*h, n), one);
                        *x = _mm256_add_epi8(*x, _mm256_slli_epi16::<4>(bit));
                    }
                }
            }
            for (h, x) in [low, high].iter().enumerate() {
                let j = 2 * c + h;
                for (v, y) in transpose8(x).into_iter().enumerate() {
                    store(&mut sb[QUANTS + 256 * j + 32 * v..], y);
                }
            }
        }
        // Per sub-block the 8 rows' scale as an i16 pair, per pair of sub-blocks their
        // minimums as one; rows past nr stay zero.
        let (mut sc, mut mn) = ([[0i32; 8]; 8], [[0i32; 8]; 4]);
        let (mut d, mut dmin) = ([0f32; 8], [0f32; 8]);
        for r in 0..nr {
            let blk = &rows[r][s];
            let (scales, mins) = k4_scales_mins(blk.scales());
            let byte = |v: u64, j: usize| ((v >> (8 * j)) & 0xff) as i32;
            for (j, sc) in sc.iter_mut().enumerate() {
                sc[r] = byte(scales, j) | byte(scales, j) << 16;
            }
            for (i, mn) in mn.iter_mut().enumerate() {
                mn[r] = byte(mins, 2 * i) | byte(mins, 2 * i + 1) << 16;
            }
            d[r] = h2f(blk.d());
            dmin[r] = h2f(blk.dmin());
        }
        let lanes = |v: &[i32; 8]| {
            // SAFETY: v is 8 i32; loadu has no alignment requirement.
            unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
        };
        for (j, v) in sc.iter().enumerate() {
            store(&mut sb[SCALES + 32 * j..], lanes(v));
        }
        for (i, v) in mn.iter().enumerate() {
            store(&mut sb[MINS + 32 * i..], lanes(v));
        }
        // SAFETY: d and dmin are 8 f32 each; loadu has no alignment requirement.
        let (d, dmin) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(dmin.as_ptr())) };
        store(&mut sb[D..], _mm256_castps_si256(d));
        store(&mut sb[DMIN..], _mm256_castps_si256(dmin));
    }
}

/// This kernel on format `B`.
pub(super) struct Rows<B>(PhantomData<B>);

impl<B: RowBlock> RowLanes<8> for Rows<B> {
    type W = B;
    type Act = ActSuper;
    /// AVX2 has 16 vector registers.
    const TT: usize = 4;
    const MIN_TOKENS: usize = MIN_TOKENS;
    const BLOCK_BYTES: usize = SB_BYTES;
    /// `d` and `dmin` sit with the integer lanes.
    const BLOCK_F32: usize = 0;

    fn shape(c: &Call) -> Option<Shape> {
        kquant_shape(B::FORMAT, c)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSuper>) {
        act_supers(&as_blocks::<BlockQ8K>(a).unwrap_or(&[])[..n], out);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(rows: &[&[B]; 8], nr: usize, nsb: usize, bp: &mut [u8], _: &mut [f32]) {
        pack(rows, nr, nsb, bp);
    }

    /// Per token and sub-block 8 `maddubs` summed [`RowBlock::RUN`] at a time in i16 and
    /// a `madd` by the scale pairs; per super-block 4 `madd` of the minimum pairs and two
    /// FMAs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSuper>) {
        let mut acc = [_mm256_setzero_ps(); NT];
        for s in 0..t.nb {
            // SAFETY: super-block s < nb of the scratch (caller), 32-byte aligned.
            let p = unsafe { t.bp.add(SB_BYTES * s) };
            let mut isum = [_mm256_setzero_si256(); NT];
            for j in 0..8 {
                // SAFETY: sub-block j's 8 vectors and scale vector lie in super-block s.
                let (w, sc): ([__m256i; 8], __m256i) = unsafe {
                    (
                        std::array::from_fn(|i| _mm256_load_si256(p.add(256 * j + 32 * i).cast())),
                        _mm256_load_si256(p.add(SCALES + 32 * j).cast()),
                    )
                };
                for (i, isum) in isum.iter_mut().enumerate() {
                    // SAFETY: token i < NT's super-block s: its quants start after the f32
                    // scale at byte 292s (caller); sub-block j's 32 are at 32j.
                    unsafe {
                        let q = t.a.add(i * t.arb + 292 * s + 4 + 32 * j);
                        for (ci, run) in w.chunks_exact(B::RUN).enumerate() {
                            let mut s16 = _mm256_setzero_si256();
                            for (v, w) in run.iter().enumerate() {
                                let at = q.add(4 * (ci * B::RUN + v));
                                let aq = _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
                                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*w, aq));
                            }
                            *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(s16, sc));
                        }
                    }
                }
            }
            // SAFETY: the mins, d and dmin vectors lie in super-block s.
            let (m, d, dmin): ([__m256i; 4], __m256, __m256) = unsafe {
                (
                    std::array::from_fn(|i| _mm256_load_si256(p.add(MINS + 32 * i).cast())),
                    _mm256_load_ps(p.add(D).cast()),
                    _mm256_load_ps(p.add(DMIN).cast()),
                )
            };
            for (i, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
                // SAFETY: token i's entry i·nb + s lies in `act` (caller).
                let x = unsafe { *t.act.add(i * t.nb + s) };
                let mut ms = _mm256_setzero_si256();
                for (v, m) in m.iter().enumerate() {
                    let pair = _mm256_set1_epi32(x.sums[v]);
                    ms = _mm256_add_epi32(ms, _mm256_madd_epi16(*m, pair));
                }
                let da = _mm256_set1_ps(x.d);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*isum), _mm256_mul_ps(d, da), *acc);
                *acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dmin, da), *acc);
            }
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store8(&t, &acc) };
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<Self, 8>(c) }
    }
}

/// Layout of one super-block's decoded 8 rows of a 16-element format in the scratch (byte
/// offsets).
const S16_QUANTS: usize = 0; // 8 chunks of 32 elements x 8 vectors
const S16_SCALES: usize = 8 * 256; // 16 vectors of i16 pairs (sc, sc) per sub-block
const S16_PAIRS: usize = S16_SCALES + 16 * 32; // 8 vectors of i16 pairs (x_2i, x_2i+1)
const S16_D: usize = S16_PAIRS + 8 * 32; // f32
const S16_DMIN: usize = S16_D + 32; // f32
const S16_BYTES: usize = S16_DMIN + 32;

/// Decodes the `nr ≤ 8` rows (`rows[r]`, `nsb` super-blocks each) of a 16-element format
/// into `bp` (`nsb · S16_BYTES`, 32-byte aligned), as `kquant_avx512_rows`' decoding does
/// for 16 rows; the scales as `(sc, sc)` pairs for `madd`. Rows past `nr` are zero.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack16<B: SixteenBlock>(rows: &[&[B]; 8], nr: usize, nsb: usize, bp: &mut [u8]) {
    assert!(bp.len() >= nsb * S16_BYTES && nr <= 8);
    let store = |dst: &mut [u8], v: __m256i| {
        let dst = &mut dst[..32];
        // SAFETY: dst is 32 writable bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
    };
    let count = |n: i32| _mm_cvtsi32_si128(n);
    for s in 0..nsb {
        prefetch_ahead(rows, nr, s);
        let sb = &mut bp[s * S16_BYTES..][..S16_BYTES];
        for c in 0..8 {
            let (ls, lm) = B::low_bits(c);
            let low = row_bytes(rows, s, |b| b.low(c));
            let mut u =
                low.map(|q| _mm256_and_si256(_mm256_srl_epi16(q, count(ls)), _mm256_set1_epi8(lm)));
            if B::HIGH {
                let (hs, hm, hp) = B::high_bits(c);
                let high = row_bytes(rows, s, |b| b.high(c));
                for (u, h) in u.iter_mut().zip(high) {
                    let bits =
                        _mm256_and_si256(_mm256_srl_epi16(h, count(hs)), _mm256_set1_epi8(hm));
                    *u = _mm256_or_si256(*u, _mm256_sll_epi16(bits, count(hp)));
                }
            }
            for (v, y) in transpose8(&u).into_iter().enumerate() {
                store(&mut sb[S16_QUANTS + 256 * c + 32 * v..], y);
            }
        }
        let (mut sc, mut pairs) = ([[0i32; 8]; 16], [[0i32; 8]; 8]);
        let (mut d, mut dmin) = ([0f32; 8], [0f32; 8]);
        for r in 0..nr {
            let blk = &rows[r][s];
            let scales = blk.scales();
            // The bsums' factors: the scales themselves (times the offset) or the minimums.
            let factors = if folds_offset(B::FORMAT) {
                scales
            } else {
                blk.mins()
            };
            for (j, sc) in sc.iter_mut().enumerate() {
                sc[r] = (scales[j] & 0xffff) | scales[j] << 16;
            }
            for (i, pair) in pairs.iter_mut().enumerate() {
                pair[r] = (factors[2 * i] & 0xffff) | factors[2 * i + 1] << 16;
            }
            (d[r], dmin[r]) = (h2f(blk.d()), h2f(blk.dmin()));
        }
        // SAFETY: v is 8 i32; loadu has no alignment requirement.
        let lanes = |v: &[i32; 8]| unsafe { _mm256_loadu_si256(v.as_ptr().cast()) };
        for (j, v) in sc.iter().enumerate() {
            store(&mut sb[S16_SCALES + 32 * j..], lanes(v));
        }
        for (i, v) in pairs.iter().enumerate() {
            store(&mut sb[S16_PAIRS + 32 * i..], lanes(v));
        }
        // SAFETY: d and dmin are 8 f32.
        let f = |v: &[f32; 8]| unsafe { _mm256_castps_si256(_mm256_loadu_ps(v.as_ptr())) };
        store(&mut sb[S16_D..], f(&d));
        store(&mut sb[S16_DMIN..], f(&dmin));
    }
}

/// This kernel on a format of 16-element sub-blocks (see `kquant_avx512_rows::Rows16`).
pub(super) struct Rows16<B>(PhantomData<B>);

impl<B: SixteenBlock> RowLanes<8> for Rows16<B> {
    type W = B;
    type Act = ActSums16;
    /// AVX2 has 16 vector registers.
    const TT: usize = 4;
    const MIN_TOKENS: usize = MIN_TOKENS_16;
    const BLOCK_BYTES: usize = S16_BYTES;
    /// `d` and `dmin` sit with the integer lanes.
    const BLOCK_F32: usize = 0;

    fn shape(c: &Call) -> Option<Shape> {
        kquant_shape(B::FORMAT, c)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSums16>) {
        act_sums16(&as_blocks::<BlockQ8K>(a).unwrap_or(&[])[..n], out);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(rows: &[&[B]; 8], nr: usize, nsb: usize, bp: &mut [u8], _: &mut [f32]) {
        pack16(rows, nr, nsb, bp);
    }

    /// Per 16-element sub-block runs of [`SixteenBlock::RUN`] `maddubs` (Q6_K: two runs of
    /// 2, 2·63·128 per pair; the 2- and 3-bit formats: one run of 4) and a `madd` of each by
    /// the `(sc, sc)` pairs; per super-block 8 `madd` of the factor pairs against the token's
    /// 16-element sums give the offset (taken back in i32, one FMA finishes) or `Σ m·Σa`
    /// (two FMAs).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSums16>) {
        let mut acc = [_mm256_setzero_ps(); NT];
        for s in 0..t.nb {
            // SAFETY: super-block s < nb of the scratch (caller), 32-byte aligned.
            let p = unsafe { t.bp.add(S16_BYTES * s) };
            let mut isum = [_mm256_setzero_si256(); NT];
            for c in 0..8 {
                // SAFETY: chunk c's 8 vectors lie in super-block s.
                let w: [__m256i; 8] = unsafe {
                    std::array::from_fn(|i| _mm256_load_si256(p.add(256 * c + 32 * i).cast()))
                };
                for (i, isum) in isum.iter_mut().enumerate() {
                    // SAFETY: token i < NT's super-block s: its quants start after the f32
                    // scale at byte 292s (caller); chunk c's 32 are at 32c. Sub-block 2c + h's
                    // scale pairs lie in super-block s.
                    unsafe {
                        let q = t.a.add(i * t.arb + 292 * s + 4 + 32 * c);
                        let aq = |v: usize| {
                            _mm256_set1_epi32(q.add(4 * v).cast::<i32>().read_unaligned())
                        };
                        for h in 0..2 {
                            let sc = _mm256_load_si256(p.add(S16_SCALES + 32 * (2 * c + h)).cast());
                            for run in (0..4).step_by(B::RUN) {
                                let mut s16 = _mm256_setzero_si256();
                                let v0 = 4 * h + run;
                                for (v, w) in w.iter().enumerate().skip(v0).take(B::RUN) {
                                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*w, aq(v)));
                                }
                                *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(s16, sc));
                            }
                        }
                    }
                }
            }
            // SAFETY: the factor pairs, d and dmin lie in super-block s.
            let (pairs, d, dmin): ([__m256i; 8], __m256, __m256) = unsafe {
                (
                    std::array::from_fn(|i| _mm256_load_si256(p.add(S16_PAIRS + 32 * i).cast())),
                    _mm256_load_ps(p.add(S16_D).cast()),
                    _mm256_load_ps(p.add(S16_DMIN).cast()),
                )
            };
            for (i, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
                // SAFETY: token i's entry i·nb + s lies in `act` (caller).
                let x = unsafe { *t.act.add(i * t.nb + s) };
                let mut ms = _mm256_setzero_si256();
                for (v, pair) in pairs.iter().enumerate() {
                    ms = _mm256_add_epi32(
                        ms,
                        _mm256_madd_epi16(*pair, _mm256_set1_epi32(x.sums[v])),
                    );
                }
                let da = _mm256_set1_ps(x.d);
                if folds_offset(B::FORMAT) {
                    // Σ sc·Σ(u − o)·a = Σ sc·Σ u·a − o·Σ sc·Σa, exact in i32.
                    let off = _mm256_sll_epi32(ms, _mm_cvtsi32_si128(B::OFFSET_SHIFT));
                    let total = _mm256_sub_epi32(*isum, off);
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, da), *acc);
                } else {
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*isum), _mm256_mul_ps(d, da), *acc);
                    *acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dmin, da), *acc);
                }
            }
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store8(&t, &acc) };
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<Self, 8>(c) }
    }
}

row_lane_gemms! {
    gemm_q4_k_q8_k => Rows<BlockQ4K>, 8, super::kquant_avx2::gemm_q4_k_q8_k;
    gemm_q5_k_q8_k => Rows<BlockQ5K>, 8, super::kquant_avx2::gemm_q5_k_q8_k;
    gemm_q6_k_q8_k => Rows16<BlockQ6K>, 8, super::kquant_avx2::gemm_q6_k_q8_k;
    gemm_q3_k_q8_k => Rows16<BlockQ3K>, 8, super::kquant_avx2::gemm_q3_k_q8_k;
    gemm_q2_k_q8_k => Rows16<BlockQ2K>, 8, super::kquant_avx2::gemm_q2_k_q8_k;
}
