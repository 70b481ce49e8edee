//! AVX-VNNI GEMM for batches of tokens on K-quant weights (Q4_K, Q5_K, Q6_K; the low-bit
//! cold-expert copies Q3_K, Q2_K) and Q8_K activations: `kquant_avx2_rows`' layout (8
//! weight rows in the 8 lanes, decoded once per call) with `kquant_avx512_rows`' tiles at
//! 256 bits, for CPUs with AVX-VNNI but without AVX-512 (see `avx_vnni`).
//!
//! Per token and 32-element sub-block (Q4_K, Q5_K), 8 `vpdpbusd` give each row's exact
//! integer sub-block sum and one `vpmulld` by the rows' scales adds it to the super-block's
//! `Σ sc·Σq·a`, where AVX2 needs a `maddubs` and a share of the i16 adds for each
//! `vpdpbusd` (Q5_K's 5-bit quants in two runs of 4). The 16-element formats ([`Rows16`])
//! run two sub-blocks of 4 `vpdpbusd` per 32-element chunk, each with its `vpmulld`. The
//! scales sit in the layout as `(sc, sc)` i16 pairs (AVX2's `madd` factors): one
//! arithmetic shift per sub-block, shared by the tile's tokens, makes them i32. The
//! super-block's minimums or offset and its f32 terms are `kquant_avx2_rows`' own
//! (`finish`, `finish16`), so each output sums the same f32 operations in the same order.
//! Fewer tokens than the AVX2 row-lane kernel's thresholds run `kquant_avx2`'s tiles.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::avx_vnni::{AvxVnni, Dpbusd};
use super::kquant_avx2::{
    act_sums16, act_supers, ActSums16, ActSuper, RowBlock, Shape, SixteenBlock,
};
use super::kquant_avx2_rows::{
    finish, finish16, pack, pack16, QUANTS, S16_BYTES, S16_QUANTS, S16_SCALES, SB_BYTES, SCALES,
};
use super::row_lanes::{kquant_shape, row_lane_gemms, store8, Call, RowLanes, Tile};
use crate::block::{as_blocks, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// Fewest tokens this kernel serves for Q4_K and Q5_K, and for the 16-element formats,
/// whose decoding costs more.
pub(super) const MIN_TOKENS: usize = 5;
pub(super) const MIN_TOKENS_16: usize = 10;

/// Scale vector `at` of the scratch: the `(sc, sc)` i16 pairs as i32 `sc`.
///
/// # Safety
/// `at` is a 32-byte aligned vector of the scratch; AVX2.
#[inline(always)]
unsafe fn scales(at: *const u8) -> __m256i {
    // SAFETY: forwarded caller contract.
    unsafe { _mm256_srai_epi32::<16>(_mm256_load_si256(at.cast())) }
}

/// This kernel on format `B`, its `vpdpbusd` from `V`.
pub(super) struct Rows<B, V>(PhantomData<(B, V)>);

impl<B: RowBlock, V: Dpbusd> RowLanes<8> for Rows<B, V> {
    type W = B;
    type Act = ActSuper;
    /// 8 quant vectors, the scales and 4 sums of the 16 vector registers.
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

    /// Per token and sub-block 8 `vpdpbusd` and a `vpmulld` by the scales.
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
                    let q = p.add(QUANTS + 256 * j);
                    (
                        std::array::from_fn(|i| _mm256_load_si256(q.add(32 * i).cast())),
                        scales(p.add(SCALES + 32 * j)),
                    )
                };
                for (i, isum) in isum.iter_mut().enumerate() {
                    // SAFETY: token i < NT's super-block s: its quants start after the f32
                    // scale at byte 292s (caller); sub-block j's 32 are at 32j. `V`'s
                    // features are the driver's.
                    unsafe {
                        let q = t.a.add(i * t.arb + 292 * s + 4 + 32 * j);
                        let mut sj = _mm256_setzero_si256();
                        for (v, w) in w.iter().enumerate() {
                            let aq = _mm256_set1_epi32(q.add(4 * v).cast::<i32>().read_unaligned());
                            sj = V::dpbusd(sj, *w, aq);
                        }
                        *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(sj, sc));
                    }
                }
            }
            // SAFETY: super-block s < nb (caller).
            unsafe { finish(p, &t, s, &isum, &mut acc) };
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store8(&t, &acc) };
    }

    unsafe fn run(c: Call) {
        // SAFETY: `V`'s features are the caller's contract.
        unsafe { V::drive::<Self>(c) }
    }
}

/// This kernel on a format of 16-element sub-blocks, its `vpdpbusd` from `V`.
pub(super) struct Rows16<B, V>(PhantomData<(B, V)>);

impl<B: SixteenBlock, V: Dpbusd> RowLanes<8> for Rows16<B, V> {
    type W = B;
    type Act = ActSums16;
    /// 8 quant vectors, two scale vectors and 4 sums of the 16 vector registers.
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

    /// Per token and 32-element chunk 4 + 4 `vpdpbusd` (one 16-element sub-block each) and
    /// a `vpmulld` of each by its scales.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSums16>) {
        let mut acc = [_mm256_setzero_ps(); NT];
        for s in 0..t.nb {
            // SAFETY: super-block s < nb of the scratch (caller), 32-byte aligned.
            let p = unsafe { t.bp.add(S16_BYTES * s) };
            let mut isum = [_mm256_setzero_si256(); NT];
            for c in 0..8 {
                // SAFETY: chunk c's 8 vectors and its sub-blocks' scale vectors lie in
                // super-block s.
                let (w, s0, s1): ([__m256i; 8], __m256i, __m256i) = unsafe {
                    let q = p.add(S16_QUANTS + 256 * c);
                    (
                        std::array::from_fn(|i| _mm256_load_si256(q.add(32 * i).cast())),
                        scales(p.add(S16_SCALES + 64 * c)),
                        scales(p.add(S16_SCALES + 64 * c + 32)),
                    )
                };
                for (i, isum) in isum.iter_mut().enumerate() {
                    // SAFETY: token i < NT's super-block s: its quants start after the f32
                    // scale at byte 292s (caller); chunk c's 32 are at 32c. `V`'s features
                    // are the driver's.
                    unsafe {
                        let q = t.a.add(i * t.arb + 292 * s + 4 + 32 * c);
                        let aq = |v: usize| {
                            _mm256_set1_epi32(q.add(4 * v).cast::<i32>().read_unaligned())
                        };
                        let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                        for v in 0..4 {
                            lo = V::dpbusd(lo, w[v], aq(v));
                            hi = V::dpbusd(hi, w[4 + v], aq(4 + v));
                        }
                        let both = _mm256_add_epi32(
                            _mm256_mullo_epi32(lo, s0),
                            _mm256_mullo_epi32(hi, s1),
                        );
                        *isum = _mm256_add_epi32(*isum, both);
                    }
                }
            }
            // SAFETY: super-block s < nb (caller).
            unsafe { finish16::<B, NT>(p, &t, s, &isum, &mut acc) };
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store8(&t, &acc) };
    }

    unsafe fn run(c: Call) {
        // SAFETY: `V`'s features are the caller's contract.
        unsafe { V::drive::<Self>(c) }
    }
}

row_lane_gemms! {
    gemm_q4_k_q8_k => Rows<BlockQ4K, AvxVnni>, 8, super::kquant_avx2::gemm_q4_k_q8_k;
    gemm_q5_k_q8_k => Rows<BlockQ5K, AvxVnni>, 8, super::kquant_avx2::gemm_q5_k_q8_k;
    gemm_q6_k_q8_k => Rows16<BlockQ6K, AvxVnni>, 8, super::kquant_avx2::gemm_q6_k_q8_k;
    gemm_q3_k_q8_k => Rows16<BlockQ3K, AvxVnni>, 8, super::kquant_avx2::gemm_q3_k_q8_k;
    gemm_q2_k_q8_k => Rows16<BlockQ2K, AvxVnni>, 8, super::kquant_avx2::gemm_q2_k_q8_k;
}

/// The same GEMMs with the emulated `vpdpbusd`, for the tier tests on CPUs without AVX-VNNI.
#[cfg(test)]
pub(super) mod emulated {
    use super::super::avx_vnni::Emulated;
    use super::super::row_lanes::row_lane_gemms;
    use super::{Rows, Rows16};
    use crate::block::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};

    row_lane_gemms! {
        gemm_q4_k_q8_k => Rows<BlockQ4K, Emulated>, 8, super::super::kquant_avx2::gemm_q4_k_q8_k;
        gemm_q5_k_q8_k => Rows<BlockQ5K, Emulated>, 8, super::super::kquant_avx2::gemm_q5_k_q8_k;
        gemm_q6_k_q8_k => Rows16<BlockQ6K, Emulated>, 8, super::super::kquant_avx2::gemm_q6_k_q8_k;
        gemm_q3_k_q8_k => Rows16<BlockQ3K, Emulated>, 8, super::super::kquant_avx2::gemm_q3_k_q8_k;
        gemm_q2_k_q8_k => Rows16<BlockQ2K, Emulated>, 8, super::super::kquant_avx2::gemm_q2_k_q8_k;
    }
}
