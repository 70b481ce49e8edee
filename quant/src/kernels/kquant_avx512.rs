//! AVX-512 (F, BW, VL + VNNI) dot products and GEMMs for the K-quants (Q4_K,
//! Q5_K, Q6_K weights against Q8_K activations), straight from the GGUF block
//! layout (no repacked copy).
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
//! [`gemv_tile`] (one token: n_tok = 1, a last lone token, and the dots)
//! decodes each row into registers and uses it at once, 16 rows per tile so
//! their loads overlap. Padding rows/tokens of tail tiles are zeros.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kquant_avx2::{
    block_bytes, check, k4_scales_mins, Shape, Q4K, Q5K, Q6K, Q8K_BSUMS, Q8K_BYTES, Q8K_QS,
    ZERO_Q8K,
};
use super::q0_avx512_units::PREFETCH_BYTES;

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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
fn act_chunk(x: &Act, c: usize) -> __m512i {
    debug_assert!(c < 4);
    // SAFETY: x.p is a whole Q8_K block (a real one or ZERO_Q8K);
    // qs[64c..64c+64] lies in it.
    unsafe { _mm512_loadu_si512(x.p.add(Q8K_QS + 64 * c).cast()) }
}

/// Scatters the tile's 16 lanes (p = r·T + t) to `out[t * ldo + r]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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

/// Row `r`'s super-block `ib` against one token's block `x` (chunks `av`):
/// the integer sum in units of d·d_a, the min sum (Q4_K, Q5_K; zero for
/// Q6_K) in units of dmin·d_a, both lane-spread, and d·d_a, dmin·d_a.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
fn row_block<const F: u8>(
    b: &[u8],
    x: &Act,
    av: &[__m512i; 4],
    row: &mut RowDec,
) -> (__m512i, __m512i, f32, f32) {
    decode::<F>(b, row);
    let mut acc = _mm512_setzero_si512();
    for ((&u, &sc), &ac) in row.u.iter().zip(&row.s).zip(av) {
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(u, ac), sc);
    }
    let mins = if F == Q6K {
        acc = _mm512_dpwssd_epi32(acc, row.off, x.bsums);
        _mm512_setzero_si512()
    } else {
        _mm512_madd_epi16(row.off, x.bsums)
    };
    (acc, mins, row.d * x.d, row.dmin * x.d)
}

/// `out[0] = dot(w row 0, a row 0)`: the dot kernel (nothing to reuse).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
fn gemv_row<const F: u8>(sh: &Shape, w: &[u8], a: &[u8], out: &mut [f32]) {
    let bb = block_bytes(F);
    let mut sum = 0f32;
    // SAFETY: all-zero bits are valid vectors and f32.
    let mut row: RowDec = unsafe { std::mem::zeroed() };
    for ib in 0..sh.nb {
        let x = act(sh, a, 0, 1, ib);
        let av: [__m512i; 4] = std::array::from_fn(|c| act_chunk(&x, c));
        let (main, mins, dw, dm) = row_block::<F>(&w[ib * bb..][..bb], &x, &av, &mut row);
        sum += dw * _mm512_reduce_add_epi32(main) as f32;
        if F != Q6K {
            sum -= dm * _mm512_reduce_add_epi32(mins) as f32;
        }
    }
    out[0] = sum;
}

/// Super-blocks per row a GEMV tile reads before reducing their sums.
const GEMV_GROUP: usize = 8;

/// What a GEMV tile keeps of each (super-block of the group, row): the sums
/// of [`row_block`]. 17 KiB, made once per call and reused by its tiles.
struct GemvSums {
    main: [[__m512i; 16]; GEMV_GROUP],
    mins: [[__m512i; 16]; GEMV_GROUP],
    dw: [[f32; 16]; GEMV_GROUP],
    dm: [[f32; 16]; GEMV_GROUP],
}

/// `out[r] = dot(w row r, a row 0)` for `r < nr ≤ 16` (one token: nothing
/// is reused, so each row is decoded into registers and consumed at once).
/// Per group of super-blocks the rows are read one after the other (the
/// tile's rows are adjacent in memory: one sequential stream), each
/// super-block prefetching the same one whole rows further (what the group
/// reads [`PREFETCH_BYTES`] later) into L2, as the Q4_0/Q8_0 GEMV does;
/// then each super-block's 16 row sums are reduced together and scaled in
/// f32, in super-block order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
fn gemv_tile<const F: u8>(
    sh: &Shape,
    w: &[u8],
    nr: usize,
    a: &[u8],
    out: &mut [f32],
    sums: &mut GemvSums,
) {
    let bb = block_bytes(F);
    let mut facc = _mm512_setzero_ps();
    // SAFETY: all-zero bits are valid vectors and f32.
    let mut row: RowDec = unsafe { std::mem::zeroed() };
    for g0 in (0..sh.nb).step_by(GEMV_GROUP) {
        let gn = GEMV_GROUP.min(sh.nb - g0);
        let ahead = PREFETCH_BYTES.div_ceil(gn * bb) * sh.wrb;
        let xs: [Act; GEMV_GROUP] = std::array::from_fn(|j| act(sh, a, 0, 1, g0 + j.min(gn - 1)));
        let avs: [[__m512i; 4]; GEMV_GROUP] =
            std::array::from_fn(|j| std::array::from_fn(|c| act_chunk(&xs[j], c)));
        for r in 0..16 {
            for j in 0..gn {
                if r >= nr {
                    // Padding rows add nothing.
                    sums.main[j][r] = _mm512_setzero_si512();
                    sums.mins[j][r] = _mm512_setzero_si512();
                    (sums.dw[j][r], sums.dm[j][r]) = (0.0, 0.0);
                    continue;
                }
                let off = r * sh.wrb + (g0 + j) * bb;
                let p = w.as_ptr().wrapping_add(off + ahead);
                // Points at most 64 apart, first and last byte included:
                // every line of the super-block. Prefetches never fault;
                // the addresses are only computed, never dereferenced.
                for o in (0..bb).step_by(64).chain([bb - 1]) {
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(o).cast());
                }
                let b = &w[off..][..bb];
                (
                    sums.main[j][r],
                    sums.mins[j][r],
                    sums.dw[j][r],
                    sums.dm[j][r],
                ) = row_block::<F>(b, &xs[j], &avs[j], &mut row);
            }
        }
        for j in 0..gn {
            let (dw, dm) = (&sums.dw[j], &sums.dm[j]);
            // SAFETY: dw and dm are 16 f32.
            let (dwv, dmv) =
                unsafe { (_mm512_loadu_ps(dw.as_ptr()), _mm512_loadu_ps(dm.as_ptr())) };
            facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(reduce16(&sums.main[j])), dwv, facc);
            if F != Q6K {
                let m = reduce16(&sums.mins[j]);
                facc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), dmv, facc);
            }
        }
    }
    store_tile::<1>(facc, nr, 1, out, 1);
}

/// `out[t * ldo + r] = dot(w row r, a row t)` for `r < nr ≤ 4`, `t < nt ≤ 4`:
/// each super-block of the 4 rows is decoded once and used by the 4 tokens.
/// `w` starts at row 0 of the tile, `a` at token 0, `out` at (token 0, row 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
            let zero = _mm512_setzero_si512();
            let mut sums = GemvSums {
                main: [[zero; 16]; GEMV_GROUP],
                mins: [[zero; 16]; GEMV_GROUP],
                dw: [[0.0; 16]; GEMV_GROUP],
                dm: [[0.0; 16]; GEMV_GROUP],
            };
            for r0 in (0..n_rows).step_by(16) {
                let nr = 16.min(n_rows - r0);
                let o = &mut out[t * ldo + r0..];
                gemv_tile::<F>(sh, &w[r0 * sh.wrb..], nr, &a[t * sh.arb..], o, &mut sums);
            }
        }
        t0 += tb;
    }
}

/// Safe entry of the GEMMs: checks the contract, then runs the tiles.
fn gemm_k<const F: u8>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let sh = check::<F>(k, w, n_rows, a, n_tok, out, ldo);
    if n_rows == 0 || n_tok == 0 {
        return;
    }
    // SAFETY: only installed in the kernel table after `avx512::detected()`.
    unsafe { gemm_tiles::<F>(&sh, w, n_rows, a, n_tok, out, ldo) }
}

/// Safe entry of the dots: one 1 × 1 tile.
fn dot_k<const F: u8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut o = [0f32];
    let sh = check::<F>(n, w, 1, a, 1, &o, 1);
    // SAFETY: only installed in the kernel table after `avx512::detected()`.
    unsafe { gemv_row::<F>(&sh, w, a, &mut o) };
    o[0]
}

pub(crate) fn gemm_q4_k_q8_k(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    nt: usize,
    o: &mut [f32],
    ldo: usize,
) {
    gemm_k::<Q4K>(k, w, nr, a, nt, o, ldo)
}
pub(crate) fn gemm_q5_k_q8_k(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    nt: usize,
    o: &mut [f32],
    ldo: usize,
) {
    gemm_k::<Q5K>(k, w, nr, a, nt, o, ldo)
}
pub(crate) fn gemm_q6_k_q8_k(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    nt: usize,
    o: &mut [f32],
    ldo: usize,
) {
    gemm_k::<Q6K>(k, w, nr, a, nt, o, ldo)
}
pub(crate) fn dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_k::<Q4K>(n, w, a)
}
pub(crate) fn dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_k::<Q5K>(n, w, a)
}
pub(crate) fn dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_k::<Q6K>(n, w, a)
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
    }
}
