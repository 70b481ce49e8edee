//! AVX-512 (F, BW, VL + VNNI) dot products and small-batch GEMMs for the
//! K-quants (Q2_K to Q6_K weights against Q8_K activations), straight from the
//! GGUF block layout (no repacked copy); `kquant_avx512_rows` takes the larger
//! batches.
//!
//! [`gemv`] serves 1 to [`GEMV_TOKENS`] tokens (decode, the dots, and the few
//! tokens an expert gets from a short prompt) and spends as few instructions
//! per weight byte as it can: each token's blocks laid out once per call in
//! the weight's nibble order, one `vpdpbusd` per 64 quants and token, the
//! lanes packed to i16 so one `vpdpwssd` per two vectors applies the scales,
//! two rows side by side sharing the activation loads. Each weight
//! super-block is unpacked once ([`pair_k4`], [`row16`]) and used by every
//! token of the call, so a few tokens cost little more than one: the weight
//! bytes are read once, and only the dot products and their scaling repeat.
//! Q4_K/Q5_K pack the two rows' lanes into the same vectors (one scale
//! multiply per weight vector, one convert and one FMA per super-block for
//! both rows) and unpack their scale bytes together; the 16-element formats
//! (Q6_K, Q3_K, Q2_K: [`block16`]) have one FMA per super-block and row (Q2_K
//! a second for its minimums); each 16-row tile is read as one stream with an
//! L2 prefetch ahead. Each output sums exactly the one-token GEMV's terms in
//! its order, so a token's result does not depend on its batch; the integer
//! block sums equal the scalar twins' (`scalar.rs`), only the order of the
//! f32 additions differs.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::kquant_avx2::{
    block_bytes, check, k4_scale_bytes, kquant_entry_points, q3k_scales, Shape, Q2K, Q3K, Q4K, Q5K,
    Q6K, Q8K_BSUMS, Q8K_BYTES, Q8K_QS,
};
use super::q0_avx512_units::{reduce16, PREFETCH_BYTES};
use super::q0_x86::even_runs;

/// Splats a byte into the 8 bytes of a u64.
const fn bytes8(b: u8) -> i64 {
    (b as u64 * 0x0101_0101_0101_0101) as i64
}

/// Stores `out[r] = lane r of sums` for the tile's `nr` rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn store_rows(sums: __m512, nr: usize, out: &mut [f32]) {
    assert!(nr <= 16 && out.len() >= nr);
    // SAFETY: the mask selects lanes 0..nr, which lie in `out` (asserted);
    // a masked store touches no other memory.
    unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr(), ((1u32 << nr) - 1) as u16, sums) };
}

/// Super-blocks of the token a GEMV pass lays out at once: rows of k ≤ 4096
/// are read in one piece each (one sequential stream per tile); 5 KiB.
const GEMV_SB: usize = 16;

/// One token's super-block laid out for the GEMV, once per call (or per tile
/// and pass when k > 256·[`GEMV_SB`]) and read by every row.
#[derive(Clone, Copy)]
struct GemvAct {
    /// The quants facing the weight's four 64-quant vectors. Q4_K/Q5_K: the
    /// low, then high nibbles of qs[0..64], then of qs[64..128], i.e.
    /// elements 0..32 ∪ 64..96, 32..64 ∪ 96..128, 128..160 ∪ 192..224,
    /// 160..192 ∪ 224..256; the 16-element formats: element order.
    q: [__m512i; 4],
    /// Q4_K/Q5_K: the 8 32-group sums (i16) in each half (one per row of a
    /// pair); the 16-element formats: the 16 16-group sums negated (i16), the
    /// factors of −offset·scale (Q6_K, Q3_K) or of the minimums (Q2_K).
    sums: __m256i,
    /// d_a in all 4 lanes.
    d: __m128,
}

/// Lays out `blk` (one Q8_K block) for the GEMV of format `F`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv_act<const F: u8>(blk: &[u8]) -> GemvAct {
    assert_eq!(blk.len(), Q8K_BYTES);
    let p = blk.as_ptr();
    // SAFETY: qs[e..e + 32] (e ≤ 224) and the bsums lie in the block; loadu
    // has no alignment requirement.
    let half = |e: usize| unsafe { _mm256_loadu_si256(p.add(Q8K_QS + e).cast()) };
    // SAFETY: as above.
    let bsums = unsafe { _mm256_loadu_si256(p.add(Q8K_BSUMS).cast()) };
    let join =
        |lo: usize, hi: usize| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(lo)), half(hi));
    let (q, sums) = if sixteens(F) {
        // |bsum| ≤ 16·128: its negation fits an i16.
        let q = [join(0, 32), join(64, 96), join(128, 160), join(192, 224)];
        (q, _mm256_sub_epi16(_mm256_setzero_si256(), bsums))
    } else {
        // The sum of two bsums (≤ 32·128) fits an i16.
        let pairs = _mm256_madd_epi16(bsums, _mm256_set1_epi16(1));
        let q = [join(0, 64), join(32, 96), join(128, 192), join(160, 224)];
        let sums = _mm256_cvtepi32_epi16(pairs);
        (q, _mm256_set_m128i(sums, sums))
    };
    GemvAct {
        q,
        sums,
        d: _mm_set1_ps(f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]])),
    }
}

/// `vpshufb` indices (per 128-bit block, i16 lanes) spreading scales over
/// the words of `packs(P, P')`, P (P') the `vpdpbusd` lanes of one weight
/// vector of the first (second) row of a pair: block k holds lanes
/// 4k..4k+4 of P (words 0..4) and of P' (words 4..8).
///
/// Q4_K/Q5_K (`K4_SPREAD[c]`, weight vector c; the source block holds the
/// first row's 8 scale bytes, then the second row's): vector c's lanes
/// 0..8 are 32-group `[0, 1, 4, 5][c]`, lanes 8..16 that + 2. Q6_K (i16
/// scales, 8 per 128-bit block; one row, `packs(P0, P1)` and
/// `packs(P2, P3)`): P0's block k is 16-group k, P1's 4 + k (then P2's
/// 8 + k, P3's 12 + k from the high 8).
static K4_SPREAD: [[i8; 64]; 4] = [k4_spread(0), k4_spread(1), k4_spread(4), k4_spread(5)];
static Q6_SPREAD: [i8; 64] = q6_spread();

const fn k4_spread(first: i8) -> [i8; 64] {
    let mut s = [0i8; 64];
    let mut i = 0;
    while i < 64 {
        let (blk, word) = (i / 16, (i % 16) / 2);
        let group = first + if blk < 2 { 0 } else { 2 } + if word < 4 { 0 } else { 8 };
        s[i] = if i % 2 == 0 { group } else { -128 };
        i += 1;
    }
    s
}

const fn q6_spread() -> [i8; 64] {
    let mut s = [0i8; 64];
    let mut i = 0;
    while i < 64 {
        let (blk, word) = (i / 16, (i % 16) / 2);
        let group = (blk + if word < 4 { 0 } else { 4 }) as i8;
        s[i] = 2 * group + (i % 2) as i8;
        i += 1;
    }
    s
}

/// `vptestmb` selectors of Q5_K's fifth bits: weight vector c's elements
/// (see [`GemvAct::q`]) take bit `Q5_BITS[c]` (low 32 bytes) and that + 2
/// (high 32) of qh[l].
const Q5_BITS: [u32; 4] = [0, 1, 4, 5];

/// The quants of a weight super-block as four vectors of 64 unsigned bytes in
/// the order of [`GemvAct::q`]. Q6_K's quants are 0..64 (its −32 is applied
/// through the bsums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn quant_bytes<const F: u8>(b: &[u8]) -> [__m512i; 4] {
    assert_eq!(b.len(), block_bytes(F));
    let p = b.as_ptr();
    let m4 = _mm512_set1_epi8(0x0f);
    let mut u = [_mm512_setzero_si512(); 4];
    if F == Q3K || F == Q2K {
        // Vector c holds chunks 2c (low 32 bytes) and 2c + 1 of 32 elements; chunk
        // C = 4h + m takes bits 2m, 2m + 1 of qs[32h..32h + 32] (Q3_K's at byte 32,
        // Q2_K's at 16) and, for Q3_K, 4 where bit C of hmask[l] (bytes 0..32) is set.
        let qs = if F == Q3K { 32 } else { 16 };
        let three = _mm512_set1_epi8(3);
        // SAFETY: hmask is bytes 0..32 of the 110-byte Q3_K block; loadu is unaligned.
        let hm =
            (F == Q3K).then(|| unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast())) });
        for (c, u) in u.iter_mut().enumerate() {
            // SAFETY: qs[32h..32h + 32] lies in the block; loadu is unaligned.
            let q = unsafe {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(qs + 32 * (c / 2)).cast()))
            };
            let m = 2 * (c % 2) as i64;
            let shifts = _mm512_set_epi64(
                2 * m + 2,
                2 * m + 2,
                2 * m + 2,
                2 * m + 2,
                2 * m,
                2 * m,
                2 * m,
                2 * m,
            );
            *u = _mm512_and_si512(_mm512_srlv_epi64(q, shifts), three);
            if let Some(hm) = hm {
                let (lo, hi) = (bytes8(1 << (2 * c)), bytes8(2 << (2 * c)));
                let k = _mm512_test_epi8_mask(hm, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo));
                *u = _mm512_mask_add_epi8(*u, k, *u, _mm512_set1_epi8(4));
            }
        }
    } else if F == Q6K {
        // Vector 2h + 0 / 1: the low / high nibbles of ql[64h..64h+64] with
        // qh[32h + l] bits 0-1 / 4-5 (low 32 bytes) or 2-3 / 6-7 (high 32)
        // as bits 4-5.
        let m30 = _mm512_set1_epi8(0x30);
        for h in 0..2 {
            // SAFETY: ql[64h..64h+64] and qh[32h..32h+32] (offset 128) lie in
            // the 210-byte block; loadu has no alignment requirement.
            let (ql, qh) = unsafe {
                (
                    _mm512_loadu_si512(p.add(64 * h).cast()),
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h).cast())),
                )
            };
            let top_lo = _mm512_sllv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4));
            let top_hi = _mm512_srlv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0));
            // (a & m4) | top: 0xEA.
            u[2 * h] = _mm512_ternarylogic_epi64::<0xEA>(ql, m4, _mm512_and_si512(top_lo, m30));
            u[2 * h + 1] = _mm512_ternarylogic_epi64::<0xEA>(
                _mm512_srli_epi16::<4>(ql),
                m4,
                _mm512_and_si512(top_hi, m30),
            );
        }
    } else {
        let qs = if F == Q5K { 48 } else { 16 };
        // SAFETY: qs[0..128] lies in the block; loadu is unaligned.
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_si512(p.add(qs).cast()),
                _mm512_loadu_si512(p.add(qs + 64).cast()),
            )
        };
        u = [
            _mm512_and_si512(v0, m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v0), m4),
            _mm512_and_si512(v1, m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v1), m4),
        ];
        if F == Q5K {
            // SAFETY: qh = bytes 16..48 of the 176-byte block.
            let qh = unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16).cast())) };
            let sixteen = _mm512_set1_epi8(16);
            for (u, bit) in u.iter_mut().zip(Q5_BITS) {
                let (lo, hi) = (bytes8(1 << bit), bytes8(4 << bit));
                let k = _mm512_test_epi8_mask(qh, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo));
                *u = _mm512_mask_add_epi8(*u, k, *u, sixteen);
            }
        }
    }
    u
}

/// A super-block's quants `u` ([`quant_bytes`]) against the token's: one
/// `vpdpbusd` per 64 (weight vector c), whose i32 lanes (|·| ≤ 4·63·128 <
/// 2¹⁵) the callers pack to i16 in pairs of vectors, so one `vpdpwssd` per
/// pair can apply the scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn quant_dots(u: &[__m512i; 4], x: &GemvAct) -> [__m512i; 4] {
    let z = _mm512_setzero_si512();
    std::array::from_fn(|c| _mm512_dpbusd_epi32(z, u[c], x.q[c]))
}

/// Loads a 64-byte `vpshufb` table.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn table(t: &[i8; 64]) -> __m512i {
    // SAFETY: t is 64 bytes; loadu is unaligned.
    unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
}

/// Whether `F` is a format of 16-element sub-blocks (Q6_K, Q3_K, Q2_K), whose GEMV runs
/// [`block16`] on one row at a time.
const fn sixteens(f: u8) -> bool {
    f == Q6K || f == Q3K || f == Q2K
}

/// One weight row's super-block of a 16-element format, unpacked once for
/// every token of a GEMV pass ([`block16`]).
struct Row16 {
    u: [__m512i; 4],
    /// The 16 scales spread over the words of `packs(P0, P1)`, `packs(P2, P3)`.
    s01: __m512i,
    s23: __m512i,
    /// The bsums' factors: offset·scale (Q6_K, Q3_K) or the minimums (Q2_K), i16.
    factors: __m512i,
    /// [d, dmin] (Q2_K) or d.
    d: __m128,
}

/// Unpacks the super-block `b` of a 16-element format: quants, scales, bsum
/// factors and f16 scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn row16<const F: u8>(b: &[u8]) -> Row16 {
    let u = quant_bytes::<F>(b);
    let p = b.as_ptr();
    let f16 = |o: usize| {
        // SAFETY: the f16 at byte o lies in the block (checked by `quant_bytes`).
        _mm_cvtsi32_si128(unsafe { p.add(o).cast::<u16>().read_unaligned() } as i32)
    };
    // The 16 scales as i16, the bsums' factors (offset·scale or the minimums) and the
    // f16 scales [d, dmin].
    let (sc, factors, d) = match F {
        Q6K => {
            // SAFETY: the 16 scale bytes lie at 192..208 of the 210-byte block.
            let sc = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p.add(192).cast()) });
            // |32·scale| ≤ 4096 fits an i16.
            (sc, _mm256_slli_epi16::<5>(sc), f16(208))
        }
        Q3K => {
            let sc = _mm256_cvtepu8_epi16(q3k_scales(b));
            let sc = _mm256_sub_epi16(sc, _mm256_set1_epi16(32));
            (sc, _mm256_slli_epi16::<2>(sc), f16(108))
        }
        _ => {
            // SAFETY: the 16 scale bytes lie at 0..16 of the 84-byte block.
            let sm = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(p.cast()) });
            let sc = _mm256_and_si256(sm, _mm256_set1_epi16(0x0f));
            (
                sc,
                _mm256_srli_epi16::<4>(sm),
                _mm_unpacklo_epi16(f16(80), f16(82)),
            )
        }
    };
    let scz = _mm512_zextsi256_si512(sc);
    let idx = table(&Q6_SPREAD);
    Row16 {
        u,
        s01: _mm512_shuffle_epi8(_mm512_shuffle_i32x4::<0x00>(scz, scz), idx),
        s23: _mm512_shuffle_epi8(_mm512_shuffle_i32x4::<0x55>(scz, scz), idx),
        factors: _mm512_zextsi256_si512(factors),
        d: _mm_cvtph_ps(d),
    }
}

/// `acc` plus one unpacked super-block `row` of a 16-element format against `x`
/// (×d·d_a, 16 lanes): Q6_K and Q3_K with their offset (32, 4) folded into the
/// integer sum through the bsums, Q2_K with its minimums (×dmin·d_a) as a second
/// integer sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn block16<const F: u8>(row: &Row16, x: &GemvAct, acc: __m512) -> __m512 {
    let s = quant_dots(&row.u, x);
    let (q01, q23) = (
        _mm512_packs_epi32(s[0], s[1]),
        _mm512_packs_epi32(s[2], s[3]),
    );
    let i = _mm512_dpwssd_epi32(_mm512_madd_epi16(q01, row.s01), q23, row.s23);
    // The factors against the negated bsums: −offset·scale·bsum (into the integer sum)
    // or −min·bsum (a sum of its own).
    let sums = _mm512_zextsi256_si512(x.sums);
    let dd = _mm_mul_ps(row.d, x.d);
    if F == Q2K {
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_broadcastss_ps(dd), acc);
        let m = _mm512_madd_epi16(row.factors, sums);
        let dmin = _mm512_broadcastss_ps(_mm_movehdup_ps(dd));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(m), dmin, acc)
    } else {
        let i = _mm512_dpwssd_epi32(i, row.factors, sums);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_broadcastss_ps(dd), acc)
    }
}

/// Two weight rows' Q4_K/Q5_K super-blocks, unpacked once for every token of a
/// GEMV pass ([`k4_pair`]).
struct PairK4 {
    /// Each row's quants.
    u: [[__m512i; 4]; 2],
    /// Both rows' scales spread over the words of the packed quant sums.
    sw: [__m512i; 4],
    /// Both rows' 8 mins (i16), one row per 128-bit half.
    mins: __m256i,
    /// [d0, dmin0, d1, dmin1].
    d: __m128,
}

/// Unpacks the Q4_K/Q5_K super-blocks `b[0]`, `b[1]` of two rows; their scale
/// bytes, mins and f16 scales together.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn pair_k4<const F: u8>(b: [&[u8]; 2]) -> PairK4 {
    let u = [quant_bytes::<F>(b[0]), quant_bytes::<F>(b[1])];
    let (p0, p1) = (b[0].as_ptr(), b[1].as_ptr());
    // SAFETY: d, dmin (bytes 0..4) and the 12 scale bytes (4..16, read as
    // 4..20) lie in each block (checked by `quant_bytes`); reads are unaligned.
    let (d, sq) = unsafe {
        (
            _mm_setr_epi32(
                p0.cast::<i32>().read_unaligned(),
                p1.cast::<i32>().read_unaligned(),
                0,
                0,
            ),
            _mm256_set_m128i(
                _mm_loadu_si128(p1.add(4).cast()),
                _mm_loadu_si128(p0.add(4).cast()),
            ),
        )
    };
    let sm = k4_scale_bytes(sq);
    // Both rows' 8 scale bytes (qwords 0 and 2 of `sm`) in every 128-bit
    // block, spread over the words of the packed pairs.
    let sc = _mm512_permutexvar_epi64(
        _mm512_set_epi64(2, 0, 2, 0, 2, 0, 2, 0),
        _mm512_castsi256_si512(sm),
    );
    PairK4 {
        u,
        sw: std::array::from_fn(|c| _mm512_shuffle_epi8(sc, table(&K4_SPREAD[c]))),
        mins: _mm256_unpackhi_epi8(sm, _mm256_setzero_si256()),
        d: _mm_cvtph_ps(d),
    }
}

/// `acc` plus the unpacked super-blocks `pair` of two rows against `x`
/// (×d·d_a; the first row in i32 lanes 0, 1 of each 128-bit block, the
/// second in lanes 2, 3), `macc` minus their min sums (×dmin·d_a, row i in
/// 128-bit half i). The two rows' quant sums are packed into the same i16
/// vectors, so each scale multiply, the convert and the FMA serve both.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn k4_pair(pair: &PairK4, x: &GemvAct, acc: &mut __m512, macc: &mut __m256) {
    let (s0, s1) = (quant_dots(&pair.u[0], x), quant_dots(&pair.u[1], x));
    let w: [__m512i; 4] = std::array::from_fn(|c| _mm512_packs_epi32(s0[c], s1[c]));
    let sw = &pair.sw;
    let i = _mm512_madd_epi16(w[0], sw[0]);
    let i = _mm512_dpwssd_epi32(i, w[1], sw[1]);
    let i = _mm512_dpwssd_epi32(i, w[2], sw[2]);
    let i = _mm512_dpwssd_epi32(i, w[3], sw[3]);
    // [d0·d_a, dmin0·d_a, d1·d_a, dmin1·d_a]
    let dd = _mm_mul_ps(pair.d, x.d);
    let dr = _mm512_permutexvar_ps(
        _mm512_set_epi32(2, 2, 0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 2, 2, 0, 0),
        _mm512_castps128_ps512(dd),
    );
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), dr, *acc);
    // The 8 mins (i16) of each row against the 8 32-group sums.
    let m = _mm256_madd_epi16(pair.mins, x.sums);
    let dmin = _mm256_permutexvar_ps(
        _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3),
        _mm256_castps128_ps256(dd),
    );
    *macc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), dmin, *macc);
}

/// Lays out super-blocks `g0..g0 + xs.len()` of the token `a` into `xs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv_acts<const F: u8>(a: &[u8], g0: usize, xs: &mut [MaybeUninit<GemvAct>]) {
    for (j, x) in xs.iter_mut().enumerate() {
        x.write(gemv_act::<F>(&a[(g0 + j) * Q8K_BYTES..][..Q8K_BYTES]));
    }
}

/// Each token's laid-out super-blocks of one pass. Only those a pass lays
/// out are read, so the rest stay uninitialised (zeroing them was a `memset`
/// of up to 20 KiB per call).
type GemvActs<const NT: usize> = [[MaybeUninit<GemvAct>; GEMV_SB]; NT];

/// `out[t * ldo + r] = dot(w row r, a row t)` for `r < nr ≤ 16`, `t < NT`:
/// two rows' super-blocks at a time in order, unpacked once and used by each
/// token into its own accumulators, then the next two (the tile's rows are
/// adjacent in memory: one stream), prefetching the same bytes
/// [`PREFETCH_BYTES`] (whole rows) further into L2, as the Q4_0/Q8_0 GEMV
/// does; then [`reduce16`] per token. Each output sums exactly what the
/// one-token GEMV sums, in the same order. `xs[t]` holds token t's laid-out
/// blocks when the row fits one pass (`relay` false); otherwise each pass of
/// [`GEMV_SB`] super-blocks lays out its own.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn gemv_tile<const F: u8, const NT: usize>(
    sh: &Shape,
    w: &[u8],
    nr: usize,
    a: &[u8],
    out: &mut [f32],
    ldo: usize,
    xs: &mut GemvActs<NT>,
    relay: bool,
) {
    debug_assert!(nr <= 16);
    let bb = block_bytes(F);
    // Each row's lanes, per token: written by the first pass, added to by the
    // later ones (rows of k > 4096); zeroing them was a `memset` per tile.
    let mut accs = [[MaybeUninit::<__m512>::uninit(); 16]; NT];
    for g0 in (0..sh.nb).step_by(GEMV_SB) {
        let gn = GEMV_SB.min(sh.nb - g0);
        if relay {
            for (t, x) in xs.iter_mut().enumerate() {
                gemv_acts::<F>(&a[t * sh.arb..], g0, &mut x[..gn]);
            }
        }
        // Token t's block j. SAFETY: each token's first gn blocks were laid out, by
        // this pass or (one pass) by `gemv`.
        let x = |t: usize, j: usize| unsafe { xs[t][..gn][j].assume_init_ref() };
        let len = gn * bb;
        let ahead = PREFETCH_BYTES.div_ceil(len) * sh.wrb;
        // Two rows side by side: the activation vectors are loaded once for
        // both (one row at a time read 17 % less per second with the data
        // in L2). A lone last row is read twice (the second sum unused).
        for r in (0..nr).step_by(2) {
            let r1 = (r + 1).min(nr - 1);
            let p0 = &w[r * sh.wrb + g0 * bb..][..len];
            let p1 = &w[r1 * sh.wrb + g0 * bb..][..len];
            // Per token, Q6_K: one accumulator per row; Q4_K/Q5_K: both rows in acc[0].
            let mut acc = [[_mm512_setzero_ps(); 2]; NT];
            let mut macc = [_mm256_setzero_ps(); NT];
            for j in 0..gn {
                // The same bytes `ahead` further, one prefetch per 64 bytes
                // (consecutive blocks so leave no line out).
                for o in (0..bb).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T1>(
                        p0.as_ptr().wrapping_add(ahead + j * bb + o).cast(),
                    );
                    _mm_prefetch::<_MM_HINT_T1>(
                        p1.as_ptr().wrapping_add(ahead + j * bb + o).cast(),
                    );
                }
                let b = [&p0[j * bb..][..bb], &p1[j * bb..][..bb]];
                if sixteens(F) {
                    let rows = [row16::<F>(b[0]), row16::<F>(b[1])];
                    for (t, acc) in acc.iter_mut().enumerate() {
                        *acc = [
                            block16::<F>(&rows[0], x(t, j), acc[0]),
                            block16::<F>(&rows[1], x(t, j), acc[1]),
                        ];
                    }
                } else {
                    let pair = pair_k4::<F>(b);
                    for t in 0..NT {
                        k4_pair(&pair, x(t, j), &mut acc[t][0], &mut macc[t]);
                    }
                }
            }
            // And the rows' last bytes. Prefetches never fault; the
            // addresses are only computed, never dereferenced.
            _mm_prefetch::<_MM_HINT_T1>(p0.as_ptr().wrapping_add(ahead + len - 1).cast());
            _mm_prefetch::<_MM_HINT_T1>(p1.as_ptr().wrapping_add(ahead + len - 1).cast());
            for t in 0..NT {
                let m = [
                    _mm256_castps256_ps128(macc[t]),
                    _mm256_extractf128_ps::<1>(macc[t]),
                ];
                let acc = if sixteens(F) {
                    acc[t]
                } else {
                    // The pair's lanes: the first row in i32 lanes 0, 1 of each
                    // 128-bit block, the second in lanes 2, 3.
                    [
                        _mm512_maskz_mov_ps(0x3333, acc[t][0]),
                        _mm512_maskz_mov_ps(0xcccc, acc[t][0]),
                    ]
                };
                for (i, rr) in [r, r1].into_iter().enumerate().take(r1 + 1 - r) {
                    let s = _mm512_add_ps(acc[i], _mm512_zextps128_ps512(m[i]));
                    let sum = &mut accs[t][rr];
                    // SAFETY: passes after the first add to what the first wrote.
                    let s = if g0 == 0 {
                        s
                    } else {
                        _mm512_add_ps(unsafe { sum.assume_init() }, s)
                    };
                    sum.write(s);
                }
            }
        }
    }
    for (t, accs) in accs.iter_mut().enumerate() {
        // Padding rows add nothing.
        for a in &mut accs[nr..] {
            a.write(_mm512_setzero_ps());
        }
        // SAFETY: rows 0..nr were written by the passes, the rest just now;
        // [MaybeUninit<__m512>; 16] has the layout of [__m512; 16].
        let accs = unsafe { &*std::ptr::from_ref(accs).cast::<[__m512; 16]>() };
        store_rows(reduce16(accs), nr, &mut out[t * ldo..]);
    }
}

/// `out[t * ldo + r] = dot(w row r, a row t)` for every row and `t < NT`:
/// 16-row [`gemv_tile`]s, each weight byte read once for the `NT` tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv<const F: u8, const NT: usize>(
    sh: &Shape,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    out: &mut [f32],
    ldo: usize,
) {
    let mut xs: GemvActs<NT> = [const { [const { MaybeUninit::uninit() }; GEMV_SB] }; NT];
    let relay = sh.nb > GEMV_SB;
    if !relay {
        for (t, x) in xs.iter_mut().enumerate() {
            gemv_acts::<F>(&a[t * sh.arb..], 0, &mut x[..sh.nb]);
        }
    }
    for r0 in (0..n_rows).step_by(16) {
        let nr = 16.min(n_rows - r0);
        let o = &mut out[r0..];
        gemv_tile::<F, NT>(sh, &w[r0 * sh.wrb..], nr, a, o, ldo, &mut xs, relay);
    }
}

/// Tokens one multi-token [`gemv`] serves at most: each more keeps another
/// 5 KiB of laid-out blocks in L1 and two more accumulators in registers
/// (not measured beyond 4); the row-lane kernels take over from 6 tokens
/// (Q6_K 12, Q3_K 9, Q2_K 11), so longer batches here are split evenly.
const GEMV_TOKENS: usize = 4;

/// The GEMM of a few tokens (the row-lane kernels of `kquant_avx512_rows` take
/// larger batches): multi-token [`gemv`]s of at most [`GEMV_TOKENS`], the
/// tokens split evenly over them (6 as 3 + 3, not 4 + 2).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn gemm_tiles<const F: u8>(
    sh: &Shape,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for (t, nt) in even_runs(n_tok, GEMV_TOKENS) {
        let (a, o) = (&a[t * sh.arb..], &mut out[t * ldo..]);
        match nt {
            1 => gemv::<F, 1>(sh, w, n_rows, a, o, ldo),
            2 => gemv::<F, 2>(sh, w, n_rows, a, o, ldo),
            3 => gemv::<F, 3>(sh, w, n_rows, a, o, ldo),
            _ => gemv::<F, GEMV_TOKENS>(sh, w, n_rows, a, o, ldo),
        }
    }
}

/// Safe entry of the dots: one 1 × 1 tile.
fn dot_k<const F: u8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut o = [0f32];
    let sh = check(F, n, w, 1, a, 1, &o, 1);
    // SAFETY: only installed in the kernel table after `avx512::detected()`.
    unsafe { gemv::<F, 1>(&sh, w, 1, a, &mut o, 1) };
    o[0]
}

kquant_entry_points! {
    Q4K => gemm_q4_k_q8_k, dot_q4_k_q8_k;
    Q5K => gemm_q5_k_q8_k, dot_q5_k_q8_k;
    Q6K => gemm_q6_k_q8_k, dot_q6_k_q8_k;
    Q3K => gemm_q3_k_q8_k, dot_q3_k_q8_k;
    Q2K => gemm_q2_k_q8_k, dot_q2_k_q8_k;
}

#[cfg(test)]
mod tests {
    use super::super::kquant_avx2::testkit::{check_dot, check_gemm};
    use super::*;

    #[test]
    fn avx512_k_dots_match_scalar_twins() {
        if !super::super::avx512::detected() {
            println!("skipped: CPU lacks AVX-512 F/BW/VL + VNNI");
            return;
        }
        check_dot::<Q4K>("avx512 q4_k", dot_q4_k_q8_k);
        check_dot::<Q5K>("avx512 q5_k", dot_q5_k_q8_k);
        check_dot::<Q6K>("avx512 q6_k", dot_q6_k_q8_k);
        check_dot::<Q3K>("avx512 q3_k", dot_q3_k_q8_k);
        check_dot::<Q2K>("avx512 q2_k", dot_q2_k_q8_k);
    }

    #[test]
    fn avx512_k_gemms_match_gemm_by_dots() {
        if !super::super::avx512::detected() {
            println!("skipped: CPU lacks AVX-512 F/BW/VL + VNNI");
            return;
        }
        check_gemm::<Q4K>("avx512 q4_k", gemm_q4_k_q8_k);
        check_gemm::<Q5K>("avx512 q5_k", gemm_q5_k_q8_k);
        check_gemm::<Q6K>("avx512 q6_k", gemm_q6_k_q8_k);
        check_gemm::<Q3K>("avx512 q3_k", gemm_q3_k_q8_k);
        check_gemm::<Q2K>("avx512 q2_k", gemm_q2_k_q8_k);
    }
}
