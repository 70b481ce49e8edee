//! AVX-512 (F, BW, VL + VNNI) dot products and GEMMs for the K-quants (Q2_K to
//! Q6_K weights against Q8_K activations), straight from the GGUF block layout
//! (no repacked copy). Q2_K and Q3_K (the cold experts' low-bit copies) have
//! only the GEMV here; their small batches run `kquant_avx2`'s tiles.
//!
//! [`tile4x4`] computes 4 rows × 4 tokens in registers: per super-block each
//! row's quants are unpacked once to unsigned bytes (four 64-byte chunks) and
//! its scales spread to one i16 per lane, then every token of the tile reuses
//! them: `vpmaddubsw` (unsigned quant × signed activation;
//! |pair| ≤ 63·128·2 < 2¹⁵, never saturating) and VNNI `vpdpwssd` with the
//! scales accumulate exact i32 lane sums. The offsets come from the Q8_K
//! `bsums`: Q6_K's −32 is folded into the integer sum, the Q4_K/Q5_K mins are
//! a second integer sum scaled by `dmin`. After each super-block the tile's
//! accumulators are reduced together (one transpose-add tree) to one lane per
//! (row, token) and scaled in f32. The integer block sums equal the scalar
//! twins' (`scalar.rs`); only the order of the f32 additions differs.
//!
//! [`gemv`] (one token: n_tok = 1, a last lone token, and the dots) has
//! nothing to reuse but the token, so it spends as few instructions per
//! weight byte as it can: the token's blocks laid out once per call in the
//! weight's nibble order, one `vpdpbusd` per 64 quants, the lanes packed to
//! i16 so one `vpdpwssd` per two vectors applies the scales, two rows side
//! by side sharing the activation loads; Q4_K/Q5_K pack the two rows' lanes
//! into the same vectors (one scale multiply per weight vector, one convert
//! and one FMA per super-block for both rows) and unpack their scale bytes
//! together; the 16-element formats (Q6_K, Q3_K, Q2_K: [`block16`]) have one
//! FMA per super-block and row (Q2_K a second for its minimums); each 16-row tile is
//! read as one stream with an L2 prefetch ahead. Padding rows/tokens of
//! tail tiles are zeros.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kquant_avx2::{
    block_bytes, check, k4_scale_bytes, k4_scales_mins, kquant_entry_points, q3k_scales, Shape,
    Q2K, Q3K, Q4K, Q5K, Q6K, Q8K_BSUMS, Q8K_BYTES, Q8K_QS, ZERO_Q8K,
};
use super::q0_avx512_units::{reduce16 as reduce16_ps, PREFETCH_BYTES};

/// `vpermw` indices spreading a super-block's scales over the i16 lanes of
/// `maddubs` on 64-element chunk c: lane i covers elements 64c + 2i and
/// 64c + 2i + 1, which lie in 16-group 4c + i/8 (Q6_K, `SPREAD16`) and in
/// 32-group 2c + i/16 (Q4_K/Q5_K, `SPREAD32`).
static SPREAD16: [[i16; 32]; 4] = spread(8, 4);
static SPREAD32: [[i16; 32]; 4] = spread(16, 2);

const fn spread(lanes_per_group: usize, groups_per_chunk: usize) -> [[i16; 32]; 4] {
    let mut s = [[0i16; 32]; 4];
    let mut c = 0;
    while c < 4 {
        let mut i = 0;
        while i < 32 {
            s[c][i] = (groups_per_chunk * c + i / lanes_per_group) as i16;
            i += 1;
        }
        c += 1;
    }
    s
}

/// `vpermd` indices of the 4 × 4 tile's min term (lane p = 4r + t): `PICK_ROW[j]`
/// takes i32 j of row r's 4 (pairs of mins), `PICK_TOK[j]` i32 j of token t's
/// 4 (pairs of bsum pair sums).
static PICK_ROW: [[i32; 16]; 4] = pick(true);
static PICK_TOK: [[i32; 16]; 4] = pick(false);

const fn pick(row: bool) -> [[i32; 16]; 4] {
    let mut s = [[0i32; 16]; 4];
    let mut j = 0;
    while j < 4 {
        let mut p = 0;
        while p < 16 {
            let owner = if row { p / 4 } else { p % 4 };
            s[j][p] = (4 * owner + j) as i32;
            p += 1;
        }
        j += 1;
    }
    s
}

/// One weight row's super-block, decoded for reuse by the tile's tokens.
struct RowDec {
    /// Unsigned quants in element order, 64 per vector.
    u: [__m512i; 4],
    /// The group scale of each i16 lane of `maddubs(u[c], ·)`.
    s: [__m512i; 4],
    /// Q6_K: the 16 factors −32·scale of the 16-groups' bsums (low half);
    /// Q4_K/Q5_K: each 32-group's min twice, the factors of the bsums.
    off: __m512i,
    /// Q4_K/Q5_K: the 8 mins (i16).
    mins: __m128i,
    d: f32,
    dmin: f32,
}

/// Splats a byte into the 8 bytes of a u64.
const fn bytes8(b: u8) -> i64 {
    (b as u64 * 0x0101_0101_0101_0101) as i64
}

/// Decodes the super-block `b` (exactly one block of format `F`) into `row`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn decode<const F: u8>(b: &[u8], row: &mut RowDec) {
    debug_assert_eq!(b.len(), block_bytes(F));
    let p = b.as_ptr();
    let h2f = |o: usize| {
        let h = u16::from_le_bytes([b[o], b[o + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    };
    if F == Q6K {
        row.d = h2f(208);
        // SAFETY: the 16 scale bytes (192..208) and the `SPREAD16` rows lie in
        // bounds; loadu has no alignment requirement.
        unsafe {
            let g = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192).cast()));
            for (s, idx) in row.s.iter_mut().zip(&SPREAD16) {
                let idx = _mm512_loadu_si512(idx.as_ptr().cast());
                *s = _mm512_permutexvar_epi16(idx, _mm512_zextsi256_si512(g));
            }
            let minus32 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(g));
            row.off = _mm512_zextsi256_si512(minus32);
        }
    } else {
        (row.d, row.dmin) = (h2f(0), h2f(2));
        let (sc, mn) = k4_scales_mins(&b[4..16]);
        let g = _mm512_zextsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        for (s, idx) in row.s.iter_mut().zip(&SPREAD32) {
            // SAFETY: a `SPREAD32` row is 64 bytes; loadu is unaligned.
            let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
            *s = _mm512_permutexvar_epi16(idx, g);
        }
        let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        row.mins = m;
        let twice = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
        row.off = _mm512_zextsi256_si512(twice);
    }
    let m4 = _mm512_set1_epi8(0x0f);
    let p = b.as_ptr();
    if F == Q6K {
        // Chunk c = 2h + odd: 64 low (even c) or high (odd c) nibbles of
        // ql[64h..64h+64]; the top 2 bits are qh[32h + l] bits 0-1 / 2-3
        // (even c, first / second 32 elements) or 4-5 / 6-7 (odd c).
        let m2 = _mm512_set1_epi8(0x03);
        for c in 0..4 {
            let h = c / 2;
            // SAFETY: ql[64h..64h+64] and qh[32h..32h+32] (offset 128) lie in
            // the 210-byte block; loadu has no alignment requirement.
            let (l, qh) = unsafe {
                (
                    _mm512_loadu_si512(p.add(64 * h).cast()),
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h).cast())),
                )
            };
            let (nib, shifts) = if c % 2 == 0 {
                (
                    _mm512_and_si512(l, m4),
                    _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0),
                )
            } else {
                (
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4),
                    _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4),
                )
            };
            let hi = _mm512_and_si512(_mm512_srlv_epi64(qh, shifts), m2);
            row.u[c] = _mm512_or_si512(nib, _mm512_slli_epi16::<4>(hi));
        }
        return;
    }
    // Q4_K/Q5_K chunk c: the low nibbles of qs[32c..32c+32], then their high
    // nibbles (elements 64c..64c+32, 64c+32..64c+64).
    let qs = if F == Q5K { 48 } else { 16 };
    let nibble_shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    for c in 0..4 {
        // SAFETY: qs[32c..32c+32] lies in the block; loadu is unaligned.
        let v = unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(qs + 32 * c).cast())) };
        row.u[c] = _mm512_and_si512(_mm512_srlv_epi64(v, nibble_shift), m4);
    }
    if F == Q5K {
        // The fifth bit of element 64c + l is bit 2c of qh[l], of element
        // 64c + 32 + l bit 2c + 1.
        // SAFETY: qh = bytes 16..48 of the 176-byte block.
        let qh = unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16).cast())) };
        let sixteen = _mm512_set1_epi8(16);
        for c in 0..4 {
            let (lo, hi) = (bytes8(1 << (2 * c)), bytes8(2 << (2 * c)));
            let sel = _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo);
            let k = _mm512_test_epi8_mask(qh, sel);
            row.u[c] = _mm512_mask_add_epi8(row.u[c], k, row.u[c], sixteen);
        }
    }
}

/// Sums of 16 vectors of i32: lane i of the result is the sum of `v[i]`'s lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn reduce16(v: &[__m512i; 16]) -> __m512i {
    // Per 128-bit block: interleave pairs, then quadruples, so block k of
    // x[i] holds partial sums of v[4i..4i+4] in its 4 lanes.
    let mut s = [_mm512_setzero_si512(); 8];
    for i in 0..8 {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        s[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    }
    let mut x = [_mm512_setzero_si512(); 4];
    for i in 0..4 {
        let (a, b) = (s[2 * i], s[2 * i + 1]);
        x[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    }
    // Then add the four blocks of each x[i] into block i.
    let pair = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
        )
    };
    pair(pair(x[0], x[1]), pair(x[2], x[3]))
}

/// One token's Q8_K block, as the kernels read it.
struct Act {
    /// The block (or `ZERO_Q8K` for a padding token).
    p: *const u8,
    /// The 16 bsums (low half).
    bsums: __m512i,
    /// The 8 sums of bsum pairs (the 32-groups' sums), as i16.
    pair_sums: __m128i,
    d: f32,
}

/// Super-block `ib` of activation row `t` (padding when `t ≥ nt`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn act(sh: &Shape, a: &[u8], t: usize, nt: usize, ib: usize) -> Act {
    if t >= nt {
        return Act {
            p: ZERO_Q8K.as_ptr(),
            bsums: _mm512_setzero_si512(),
            pair_sums: _mm_setzero_si128(),
            d: 0.0,
        };
    }
    let blk = &a[t * sh.arb + ib * Q8K_BYTES..][..Q8K_BYTES];
    // SAFETY: the 32 bsum bytes lie in the block.
    let bsums = unsafe { _mm256_loadu_si256(blk.as_ptr().add(Q8K_BSUMS).cast()) };
    // |bsum| ≤ 16·128, so the sum of two fits an i16.
    let pairs = _mm256_madd_epi16(bsums, _mm256_set1_epi16(1));
    Act {
        p: blk.as_ptr(),
        bsums: _mm512_zextsi256_si512(bsums),
        pair_sums: _mm256_cvtepi32_epi16(pairs),
        d: f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
    }
}

/// Chunk c (64 quants) of an activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn act_chunk(x: &Act, c: usize) -> __m512i {
    debug_assert!(c < 4);
    // SAFETY: x.p is a whole Q8_K block (a real one or ZERO_Q8K);
    // qs[64c..64c+64] lies in it.
    unsafe { _mm512_loadu_si512(x.p.add(Q8K_QS + 64 * c).cast()) }
}

/// Scatters the tile's 16 lanes (p = r·T + t) to `out[t * ldo + r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn store_tile<const T: usize>(facc: __m512, nr: usize, nt: usize, out: &mut [f32], ldo: usize) {
    let mut o = [0f32; 16];
    // SAFETY: o is 16 f32.
    unsafe { _mm512_storeu_ps(o.as_mut_ptr(), facc) };
    for r in 0..nr {
        for t in 0..nt {
            out[t * ldo + r] = o[r * T + t];
        }
    }
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

/// The quants of a weight super-block (see [`GemvAct::q`]) against the
/// token's: one `vpdpbusd` per 64 unsigned quants (weight vector c), whose
/// i32 lanes (|·| ≤ 4·63·128 < 2¹⁵) the callers pack to i16 in pairs of
/// vectors, so one `vpdpwssd` per pair can apply the scales. Q6_K's quants
/// are 0..64 (its −32 is applied through the bsums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn quant_dots<const F: u8>(b: &[u8], x: &GemvAct) -> [__m512i; 4] {
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

/// `acc` plus one super-block `b` of a 16-element format against `x` (×d·d_a, 16
/// lanes): Q6_K and Q3_K with their offset (32, 4) folded into the integer sum through
/// the bsums, Q2_K with its minimums (×dmin·d_a) as a second integer sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn block16<const F: u8>(b: &[u8], x: &GemvAct, acc: __m512) -> __m512 {
    let s = quant_dots::<F>(b, x);
    let (q01, q23) = (
        _mm512_packs_epi32(s[0], s[1]),
        _mm512_packs_epi32(s[2], s[3]),
    );
    let p = b.as_ptr();
    let f16 = |o: usize| {
        // SAFETY: the f16 at byte o lies in the block (checked by `quant_dots`).
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
    let s01 = _mm512_shuffle_epi8(_mm512_shuffle_i32x4::<0x00>(scz, scz), idx);
    let s23 = _mm512_shuffle_epi8(_mm512_shuffle_i32x4::<0x55>(scz, scz), idx);
    let i = _mm512_dpwssd_epi32(_mm512_madd_epi16(q01, s01), q23, s23);
    // The factors against the negated bsums: −offset·scale·bsum (into the integer sum)
    // or −min·bsum (a sum of its own).
    let (factors, sums) = (
        _mm512_zextsi256_si512(factors),
        _mm512_zextsi256_si512(x.sums),
    );
    let dd = _mm_mul_ps(_mm_cvtph_ps(d), x.d);
    if F == Q2K {
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_broadcastss_ps(dd), acc);
        let m = _mm512_madd_epi16(factors, sums);
        let dmin = _mm512_broadcastss_ps(_mm_movehdup_ps(dd));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(m), dmin, acc)
    } else {
        let i = _mm512_dpwssd_epi32(i, factors, sums);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_broadcastss_ps(dd), acc)
    }
}

/// `acc` plus the Q4_K/Q5_K super-blocks `b[0]`, `b[1]` of two rows against
/// `x` (×d·d_a; the first row in i32 lanes 0, 1 of each 128-bit block, the
/// second in lanes 2, 3), `macc` minus their min sums (×dmin·d_a, row i in
/// 128-bit half i). The two rows' quant sums are packed into the same i16
/// vectors, so each scale multiply, the convert and the FMA serve both; the
/// scale bytes, mins and f16 scales are unpacked together too.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn k4_pair<const F: u8>(b: [&[u8]; 2], x: &GemvAct, acc: &mut __m512, macc: &mut __m256) {
    let (s0, s1) = (quant_dots::<F>(b[0], x), quant_dots::<F>(b[1], x));
    let (p0, p1) = (b[0].as_ptr(), b[1].as_ptr());
    // SAFETY: d, dmin (bytes 0..4) and the 12 scale bytes (4..16, read as
    // 4..20) lie in each block (checked by `quant_dots`); reads are unaligned.
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
    let w: [__m512i; 4] = std::array::from_fn(|c| _mm512_packs_epi32(s0[c], s1[c]));
    let sw: [__m512i; 4] = std::array::from_fn(|c| _mm512_shuffle_epi8(sc, table(&K4_SPREAD[c])));
    let mut i = _mm512_madd_epi16(w[0], sw[0]);
    for c in 1..4 {
        i = _mm512_dpwssd_epi32(i, w[c], sw[c]);
    }
    // [d0·d_a, dmin0·d_a, d1·d_a, dmin1·d_a]
    let dd = _mm_mul_ps(_mm_cvtph_ps(d), x.d);
    let dr = _mm512_permutexvar_ps(
        _mm512_set_epi32(2, 2, 0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 2, 2, 0, 0),
        _mm512_castps128_ps512(dd),
    );
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), dr, *acc);
    // The 8 mins (i16) of each row against the 8 32-group sums.
    let mins = _mm256_unpackhi_epi8(sm, _mm256_setzero_si256());
    let m = _mm256_madd_epi16(mins, x.sums);
    let dmin = _mm256_permutexvar_ps(
        _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3),
        _mm256_castps128_ps256(dd),
    );
    *macc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), dmin, *macc);
}

/// Lays out super-blocks `g0..g0 + n` of the token `a` into `xs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv_acts<const F: u8>(a: &[u8], g0: usize, xs: &mut [GemvAct]) {
    for (j, x) in xs.iter_mut().enumerate() {
        *x = gemv_act::<F>(&a[(g0 + j) * Q8K_BYTES..][..Q8K_BYTES]);
    }
}

/// `out[r] = dot(w row r, a)` for `r < nr ≤ 16`: two rows' super-blocks at
/// a time in order into their own accumulators, then the next two (the
/// tile's rows are adjacent in memory: one stream), prefetching the same
/// bytes [`PREFETCH_BYTES`] (whole rows) further into L2, as the Q4_0/Q8_0
/// GEMV does; then [`reduce16_ps`]. `xs` holds the token's laid-out
/// blocks when the row fits one pass (`relay` false); otherwise each pass of
/// [`GEMV_SB`] super-blocks lays out its own.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv_tile<const F: u8>(
    sh: &Shape,
    w: &[u8],
    nr: usize,
    a: &[u8],
    out: &mut [f32],
    xs: &mut [GemvAct; GEMV_SB],
    relay: bool,
) {
    debug_assert!(nr <= 16);
    let bb = block_bytes(F);
    let mut accs = [_mm512_setzero_ps(); 16];
    for g0 in (0..sh.nb).step_by(GEMV_SB) {
        let gn = GEMV_SB.min(sh.nb - g0);
        if relay {
            gemv_acts::<F>(a, g0, &mut xs[..gn]);
        }
        let len = gn * bb;
        let ahead = PREFETCH_BYTES.div_ceil(len) * sh.wrb;
        // Two rows side by side: the activation vectors are loaded once for
        // both (one row at a time read 17 % less per second with the data
        // in L2). A lone last row is read twice (the second sum unused).
        for r in (0..nr).step_by(2) {
            let r1 = (r + 1).min(nr - 1);
            let p0 = &w[r * sh.wrb + g0 * bb..][..len];
            let p1 = &w[r1 * sh.wrb + g0 * bb..][..len];
            // Q6_K: one accumulator per row; Q4_K/Q5_K: both rows in acc[0].
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut macc = _mm256_setzero_ps();
            for (j, x) in xs[..gn].iter().enumerate() {
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
                    acc = [block16::<F>(b[0], x, acc[0]), block16::<F>(b[1], x, acc[1])];
                } else {
                    k4_pair::<F>(b, x, &mut acc[0], &mut macc);
                }
            }
            // And the rows' last bytes. Prefetches never fault; the
            // addresses are only computed, never dereferenced.
            _mm_prefetch::<_MM_HINT_T1>(p0.as_ptr().wrapping_add(ahead + len - 1).cast());
            _mm_prefetch::<_MM_HINT_T1>(p1.as_ptr().wrapping_add(ahead + len - 1).cast());
            let m = [
                _mm256_castps256_ps128(macc),
                _mm256_extractf128_ps::<1>(macc),
            ];
            if !sixteens(F) {
                // The pair's lanes: the first row in i32 lanes 0, 1 of each
                // 128-bit block, the second in lanes 2, 3.
                acc = [
                    _mm512_maskz_mov_ps(0x3333, acc[0]),
                    _mm512_maskz_mov_ps(0xcccc, acc[0]),
                ];
            }
            for (i, rr) in [r, r1].into_iter().enumerate().take(r1 + 1 - r) {
                let s = _mm512_add_ps(acc[i], _mm512_zextps128_ps512(m[i]));
                accs[rr] = _mm512_add_ps(accs[rr], s);
            }
        }
    }
    store_tile::<1>(reduce16_ps(&accs), nr, 1, out, 1);
}

/// `out[r] = dot(w row r, a)` for every row: 16-row [`gemv_tile`]s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv<const F: u8>(sh: &Shape, w: &[u8], n_rows: usize, a: &[u8], out: &mut [f32]) {
    // SAFETY: all-zero bits are valid vectors.
    let mut xs: [GemvAct; GEMV_SB] = unsafe { std::mem::zeroed() };
    let relay = sh.nb > GEMV_SB;
    if !relay {
        gemv_acts::<F>(a, 0, &mut xs[..sh.nb]);
    }
    for r0 in (0..n_rows).step_by(16) {
        let nr = 16.min(n_rows - r0);
        gemv_tile::<F>(sh, &w[r0 * sh.wrb..], nr, a, &mut out[r0..], &mut xs, relay);
    }
}

/// `out[t * ldo + r] = dot(w row r, a row t)` for `r < nr ≤ 4`, `t < nt ≤ 4`:
/// each super-block of the 4 rows is decoded once and used by the 4 tokens.
/// `w` starts at row 0 of the tile, `a` at token 0, `out` at (token 0, row 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn tile4x4<const F: u8>(
    sh: &Shape,
    w: &[u8],
    nr: usize,
    a: &[u8],
    nt: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let bb = block_bytes(F);
    let mut facc = _mm512_setzero_ps();
    // Lane p = 4r + t: d·d_a and dmin·d_a of the super-block.
    let (mut dw, mut dm) = ([0f32; 16], [0f32; 16]);
    // SAFETY: all-zero bits are valid vectors and f32; padding rows (r ≥ nr)
    // stay zero, so they add nothing.
    let mut rows: [RowDec; 4] = unsafe { std::mem::zeroed() };
    for ib in 0..sh.nb {
        for (r, row) in rows.iter_mut().enumerate().take(nr) {
            decode::<F>(&w[r * sh.wrb + ib * bb..][..bb], row);
        }
        let x: [Act; 4] = std::array::from_fn(|t| act(sh, a, t, nt, ib));
        let mut acc = [[_mm512_setzero_si512(); 4]; 4];
        for c in 0..4 {
            for t in 0..4 {
                let av = act_chunk(&x[t], c);
                for r in 0..4 {
                    let p = _mm512_maddubs_epi16(rows[r].u[c], av);
                    acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], p, rows[r].s[c]);
                }
            }
        }
        let mut main = [_mm512_setzero_si512(); 16];
        for r in 0..4 {
            for t in 0..4 {
                main[4 * r + t] = if F == Q6K {
                    _mm512_dpwssd_epi32(acc[r][t], rows[r].off, x[t].bsums)
                } else {
                    acc[r][t]
                };
                dw[4 * r + t] = rows[r].d * x[t].d;
                dm[4 * r + t] = rows[r].dmin * x[t].d;
            }
        }
        // SAFETY: dw and dm are 16 f32.
        let (dwv, dmv) = unsafe { (_mm512_loadu_ps(dw.as_ptr()), _mm512_loadu_ps(dm.as_ptr())) };
        facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(reduce16(&main)), dwv, facc);
        if F == Q6K {
            continue;
        }
        // Σ_j min[r][j]·(bsum pair sum)[t][j] for all 16 (r, t) at once:
        // rows' mins and tokens' pair sums in one vector each, two
        // (min, sum) pairs per vpdpwssd lane.
        let mut m = _mm512_zextsi128_si512(rows[0].mins);
        let mut b = _mm512_zextsi128_si512(x[0].pair_sums);
        m = _mm512_inserti32x4::<1>(m, rows[1].mins);
        b = _mm512_inserti32x4::<1>(b, x[1].pair_sums);
        m = _mm512_inserti32x4::<2>(m, rows[2].mins);
        b = _mm512_inserti32x4::<2>(b, x[2].pair_sums);
        m = _mm512_inserti32x4::<3>(m, rows[3].mins);
        b = _mm512_inserti32x4::<3>(b, x[3].pair_sums);
        let mut mins = _mm512_setzero_si512();
        for j in 0..4 {
            // SAFETY: `PICK_*` rows are 64 bytes; loadu is unaligned.
            let (ir, it) = unsafe {
                (
                    _mm512_loadu_si512(PICK_ROW[j].as_ptr().cast()),
                    _mm512_loadu_si512(PICK_TOK[j].as_ptr().cast()),
                )
            };
            let (mv, bv) = (
                _mm512_permutexvar_epi32(ir, m),
                _mm512_permutexvar_epi32(it, b),
            );
            mins = _mm512_dpwssd_epi32(mins, mv, bv);
        }
        facc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), dmv, facc);
    }
    store_tile::<4>(facc, nr, nt, out, ldo);
}

/// Tokens per pass over the weight rows: their activations (≤ 64 × 5 blocks at
/// k = 1280) stay in L2 while each row tile runs over them.
const TOKEN_BLOCK: usize = 64;

/// The tiled GEMM: 4 × 4 tiles over each token block, a last single token
/// (and n_tok = 1) as 16-row GEMV tiles.
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
    let mut t0 = 0;
    while t0 < n_tok {
        let tb = TOKEN_BLOCK.min(n_tok - t0);
        // Tiles of ≥ 2 tokens; a last lone token goes to the GEMV tiles.
        let multi = if tb % 4 == 1 { tb - 1 } else { tb };
        for r0 in (0..n_rows).step_by(4) {
            let nr = 4.min(n_rows - r0);
            for t in (t0..t0 + multi).step_by(4) {
                let nt = 4.min(t0 + multi - t);
                let o = &mut out[t * ldo + r0..];
                tile4x4::<F>(sh, &w[r0 * sh.wrb..], nr, &a[t * sh.arb..], nt, o, ldo);
            }
        }
        if multi < tb {
            let t = t0 + multi;
            gemv::<F>(sh, w, n_rows, &a[t * sh.arb..], &mut out[t * ldo..]);
        }
        t0 += tb;
    }
}

/// Safe entry of the dots: one 1 × 1 tile.
fn dot_k<const F: u8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut o = [0f32];
    let sh = check(F, n, w, 1, a, 1, &o, 1);
    // SAFETY: only installed in the kernel table after `avx512::detected()`.
    unsafe { gemv::<F>(&sh, w, 1, a, &mut o) };
    o[0]
}

/// Q2_K and Q3_K (the cold experts' low-bit copies; the row-lane kernel serves their larger
/// batches) have no 4 × 4 tile decoding here: one token runs this tier's [`gemv`], more
/// `kquant_avx2`'s tiles.
fn gemm_low<const F: u8>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    if n_tok != 1 {
        let tiles = if F == Q3K {
            super::kquant_avx2::gemm_q3_k_q8_k
        } else {
            super::kquant_avx2::gemm_q2_k_q8_k
        };
        return tiles(k, w, n_rows, a, n_tok, out, ldo);
    }
    let sh = check(F, k, w, n_rows, a, n_tok, out, ldo);
    if n_rows > 0 {
        // SAFETY: only installed in the kernel table after `avx512::detected()`.
        unsafe { gemv::<F>(&sh, w, n_rows, a, out) }
    }
}

kquant_entry_points! {
    Q4K => gemm_q4_k_q8_k, dot_q4_k_q8_k;
    Q5K => gemm_q5_k_q8_k, dot_q5_k_q8_k;
    Q6K => gemm_q6_k_q8_k, dot_q6_k_q8_k;
    Q3K => gemm_q3_k_q8_k, dot_q3_k_q8_k (via gemm_low);
    Q2K => gemm_q2_k_q8_k, dot_q2_k_q8_k (via gemm_low);
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
