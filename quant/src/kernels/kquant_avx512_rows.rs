//! AVX-512 VNNI GEMM for batches of tokens on Q4_K and Q5_K weights (the Q4_K and Q5_K
//! recipes' gate and up experts) and Q8_K activations, with the weight rows in the vector
//! lanes, as `q0_avx512_rows` does for the 32-element formats (see there for why).
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
//! rounding bound of the scalar twin. Fewer than [`MIN_TOKENS`] tokens run
//! `kquant_avx512`'s kernel.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::Cell;

use super::kquant_avx2::{act_supers, k4_scales_mins, ActSuper, RowBlock, Shape};
use super::q0_rows16::{prefetch_part, transpose};
use super::q0_x86::{aligned, group_rows};
use crate::block::{as_blocks, BlockQ4K, BlockQ5K, BlockQ8K};

/// Fewest tokens this kernel serves (measured with `examples/gemm_bench.rs`).
pub(super) const MIN_TOKENS: usize = 5;
/// Tokens per register tile.
const TT: usize = 8;

/// Layout of one super-block's decoded 16 rows in the scratch (byte offsets).
const QUANTS: usize = 0; // 8 sub-blocks x 8 vectors
const SCALES: usize = 8 * 512; // 8 vectors of i32
const MINS: usize = SCALES + 8 * 64; // 4 vectors of i16 pairs
const D: usize = MINS + 4 * 64; // f32
const DMIN: usize = D + 64; // f32
const SB_BYTES: usize = DMIN + 64;

/// Per-thread scratch, reused between calls: one 16-row group's decoded super-blocks
/// (64-byte aligned within) and every token's [`ActSuper`]s.
#[derive(Default)]
struct Scratch {
    b: Vec<u8>,
    act: Vec<ActSuper>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

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
fn row_pairs<B: RowBlock>(
    rows: &[&[B]; 16],
    s: usize,
    bytes: impl Fn(&B) -> &[u8],
) -> [__m512i; 8] {
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

/// `out[t·ldo + r] = Σ_s` over the 16 decoded rows at `bp` and the `NT` tokens whose
/// rows start at `a` (stride `arb`, [`ActSuper`]s at `act`, stride `nsb`); lanes past
/// `mask` are not stored.
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI; `bp` holds `nsb` decoded super-blocks (64-byte aligned); the
/// `NT` token rows hold `nsb` Q8_K blocks each and `act` their `NT·nsb` entries;
/// `out + t·ldo` has the masked lanes writable for every t < NT.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const NT: usize>(
    nsb: usize,
    bp: *const u8,
    a: *const u8,
    arb: usize,
    act: *const ActSuper,
    out: *mut f32,
    ldo: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); NT];
    for s in 0..nsb {
        // SAFETY: super-block s < nsb of the scratch (caller), 64-byte aligned.
        let p = unsafe { bp.add(SB_BYTES * s) };
        let mut isum = [_mm512_setzero_si512(); NT];
        for j in 0..8 {
            // SAFETY: sub-block j's 8 vectors and scale vector lie in super-block s.
            let (w, sc): ([__m512i; 8], __m512i) = unsafe {
                (
                    std::array::from_fn(|i| _mm512_load_si512(p.add(512 * j + 64 * i).cast())),
                    _mm512_load_si512(p.add(SCALES + 64 * j).cast()),
                )
            };
            for (t, isum) in isum.iter_mut().enumerate() {
                // SAFETY: token t < NT's super-block s: its quants start after the f32
                // scale at byte 292s (caller); sub-block j's 32 are at 32j.
                unsafe {
                    let q = a.add(t * arb + 292 * s + 4 + 32 * j);
                    let mut sj = _mm512_setzero_si512();
                    for (i, w) in w.iter().enumerate() {
                        let aq = _mm512_set1_epi32(q.add(4 * i).cast::<i32>().read_unaligned());
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
        for (t, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
            // SAFETY: token t's entry t·nsb + s lies in `act` (caller).
            let x = unsafe { *act.add(t * nsb + s) };
            let mut ms = _mm512_setzero_si512();
            for (i, m) in m.iter().enumerate() {
                ms = _mm512_dpwssd_epi32(ms, *m, _mm512_set1_epi32(x.sums[i]));
            }
            let da = _mm512_set1_ps(x.d);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*isum), _mm512_mul_ps(d, da), *acc);
            *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_mul_ps(dmin, da), *acc);
        }
    }
    for (t, v) in acc.iter().enumerate() {
        // SAFETY: the masked lanes of token t's outputs are writable (caller).
        unsafe { _mm512_mask_storeu_ps(out.add(t * ldo), mask, *v) };
    }
}

/// The batch product for `n_tok ≥ MIN_TOKENS` (see the module comment).
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI (and AVX2/FMA/F16C).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_rows<B: RowBlock>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let Shape { nb: nsb, wrb, arb } = B::shape(k, w, n_rows, a, n_tok, out, ldo);
    if n_rows == 0 || n_tok == 0 || nsb == 0 {
        return;
    }
    let ab = as_blocks::<BlockQ8K>(a).unwrap_or(&[]);
    let mut s = SCRATCH.with(Cell::take);
    let Scratch { b, act } = &mut s;
    act_supers(&ab[..n_tok * nsb], act);
    let bp = aligned(b, nsb * SB_BYTES);
    for r0 in (0..n_rows).step_by(16) {
        let nr = 16.min(n_rows - r0);
        let rows = group_rows::<B, 16>(w, r0, nr, wrb);
        pack(&rows, nr, nsb, bp);
        // The next group's weights, spread over this group's token tiles.
        let next = &w[(r0 + nr) * wrb..(r0 + nr + 16).min(n_rows) * wrb];
        let tiles = n_tok.div_ceil(TT);
        let mask: __mmask16 = if nr == 16 { 0xffff } else { (1u16 << nr) - 1 };
        for t0 in (0..n_tok).step_by(TT) {
            prefetch_part(next, t0 / TT, tiles);
            let nt = TT.min(n_tok - t0);
            let bp = bp.as_ptr();
            let ap = a[t0 * arb..].as_ptr();
            let xp = act[t0 * nsb..].as_ptr();
            // Rows r0.. of token t0: the tile writes rows r0..r0 + nr of its tokens.
            let op = out[t0 * ldo + r0..].as_mut_ptr();
            macro_rules! run {
                ($($n:literal)*) => {
                    match nt {
                        // SAFETY: the scratch holds nsb decoded super-blocks; tokens
                        // t0..t0 + nt < n_tok have nsb blocks in `a` and entries in `act`;
                        // rows r0..r0 + nr ≤ n_rows of those tokens lie in `out`
                        // (asserted above).
                        $($n => unsafe { tile::<$n>(nsb, bp, ap, arb, xp, op, ldo, mask) },)*
                        _ => unreachable!("a tile has 1..=TT tokens"),
                    }
                };
            }
            run!(1 2 3 4 5 6 7 8);
        }
    }
    SCRATCH.with(|c| c.set(s));
}

/// Safe [`super::GemmFn`] entry points: this kernel from [`MIN_TOKENS`] tokens,
/// `kquant_avx512`'s below.
macro_rules! entry_points {
    ($($block:ty => $gemm:ident;)*) => {$(
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            if n_tok < MIN_TOKENS {
                return super::kquant_avx512::$gemm(k, w, n_rows, a, n_tok, out, ldo);
            }
            // SAFETY: only installed in the kernel table after `avx512::detected()` (and
            // `avx2::detected()`).
            unsafe { gemm_rows::<$block>(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

entry_points! {
    BlockQ4K => gemm_q4_k_q8_k;
    BlockQ5K => gemm_q5_k_q8_k;
}
