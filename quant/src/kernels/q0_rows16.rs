//! 16 weight rows of a Q8_0-paired 32-element format (Q4_0, Q5_0, Q8_0) decoded into
//! *dword-interleaved blocks*: per block of 32, 8 vectors of 64 bytes whose 32-bit lane r
//! holds row r's 4 quants of that vector's 4 elements. It is AMX's B-tile ("VNNI") layout,
//! and with the rows in the lanes `vpdpbusd` against one token's 4 broadcast activation
//! bytes sums 16 rows at once, each lane a whole row's block after 8 of them. The AMX-INT8
//! GEMM (`q0_amx`, signed quants for `tdpbssd`) and the AVX-512 VNNI batch GEMM
//! (`q0_avx512_rows`, unsigned quants for `vpdpbusd`) decode through here into a small
//! per-thread scratch, never a second copy of the weights.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::q0_x86::{prefetch_ahead, Q0Format, M_BYTE};

/// Bytes of one block's decoded 16 rows (8 vectors of 64 bytes).
pub(super) const B_BYTES: usize = 512;

/// `vpermt2d` indices of the 16 x 8 → 8 x 16 dword transpose (see [`transpose`]).
/// Level 1, half h: element e = (row 4m + e/4, column 4h + e%4) from rows 4m.. of
/// X_{2m} (rows 4m, 4m+1) and X_{2m+1} (rows 4m+2, 4m+3).
const fn level1(h: usize) -> [i32; 16] {
    let mut s = [0i32; 16];
    let mut e = 0;
    while e < 16 {
        let rl = e / 4;
        s[e] = ((rl / 2) * 16 + (rl % 2) * 8 + 4 * h + e % 4) as i32;
        e += 1;
    }
    s
}
/// Level 2, quarter s: element e = (row 8n + e/2, column 4h + 2s + e%2).
const fn level2(s2: usize) -> [i32; 16] {
    let mut s = [0i32; 16];
    let mut e = 0;
    while e < 16 {
        let rl = e / 2;
        s[e] = ((rl / 4) * 16 + (rl % 4) * 4 + 2 * s2 + e % 2) as i32;
        e += 1;
    }
    s
}
/// Level 3, column parity c: element e = (row e, column 4h + 2s + c).
const fn level3(c: usize) -> [i32; 16] {
    let mut s = [0i32; 16];
    let mut e = 0;
    while e < 16 {
        s[e] = ((e / 8) * 16 + (e % 8) * 2 + c) as i32;
        e += 1;
    }
    s
}
static TRANSPOSE: [[i32; 16]; 6] = [
    level1(0),
    level1(1),
    level2(0),
    level2(1),
    level3(0),
    level3(1),
];

/// 16 rows x 8 dwords (`x[i]` = rows 2i, 2i+1) → 8 x 16 dwords (`y[c]` = column c of
/// every row): three levels of two-source permutes, 24 in all.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn transpose(x: &[__m512i; 8]) -> [__m512i; 8] {
    // SAFETY: each table is 16 i32; loadu has no alignment requirement.
    let t = |i: usize| unsafe { _mm512_loadu_si512(TRANSPOSE[i].as_ptr().cast()) };
    let mut p = [_mm512_setzero_si512(); 8]; // p[2m + h]
    for m in 0..4 {
        for h in 0..2 {
            p[2 * m + h] = _mm512_permutex2var_epi32(x[2 * m], t(h), x[2 * m + 1]);
        }
    }
    let mut q = [_mm512_setzero_si512(); 8]; // q[4n + 2h + s]
    for n in 0..2 {
        for h in 0..2 {
            for s in 0..2 {
                q[4 * n + 2 * h + s] =
                    _mm512_permutex2var_epi32(p[4 * n + h], t(2 + s), p[4 * n + 2 + h]);
            }
        }
    }
    let mut y = [_mm512_setzero_si512(); 8];
    for h in 0..2 {
        for s in 0..2 {
            for c in 0..2 {
                y[4 * h + 2 * s + c] =
                    _mm512_permutex2var_epi32(q[2 * h + s], t(4 + c), q[4 + 2 * h + s]);
            }
        }
    }
    y
}

/// Decodes the `nr ≤ 16` rows (`rows[r]`, each `nb` blocks) into `nb` interleaved blocks
/// at `bp` (64-byte aligned, `nb · B_BYTES`), as signed quants (`SIGNED`) or as unsigned
/// ones (signed + `F::OFFSET`), and their scales into `dw` (`[block][16 rows]`, for a
/// format with a minimum `[block][d or m][16 rows]`); rows past `nr` are zero bytes with
/// scale 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn pack_weights<F: Q0Format, const SIGNED: bool>(
    rows: &[&[F::W]; 16],
    nr: usize,
    nb: usize,
    bp: &mut [u8],
    dw: &mut [f32],
) {
    let wrb = nb * std::mem::size_of::<F::W>();
    let idx = strides(wrb);
    let mask: __mmask16 = if nr == 16 { 0xffff } else { (1u16 << nr) - 1 };
    let per = dw_per_block::<F>();
    assert!(bp.len() >= nb * B_BYTES && dw.len() >= nb * per && nr <= 16);
    for b in 0..nb {
        prefetch_ahead(rows, nr, b);
        let quants = |r: usize| {
            if r < nr {
                // SAFETY: AVX2 is this function's; block b exists (rows hold nb blocks).
                unsafe {
                    if SIGNED {
                        F::signed(&rows[r][b])
                    } else {
                        F::unsigned(&rows[r][b])
                    }
                }
            } else {
                _mm256_setzero_si256()
            }
        };
        let mut x = [_mm512_setzero_si512(); 8];
        for (i, x) in x.iter_mut().enumerate() {
            *x = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(quants(2 * i)), quants(2 * i + 1));
        }
        let y = transpose(&x);
        for (c, y) in y.iter().enumerate() {
            // SAFETY: bytes b·512 + 64c .. +64 lie in bp (asserted above).
            unsafe { _mm512_storeu_si512(bp.as_mut_ptr().add(b * B_BYTES + 64 * c).cast(), *y) };
        }
        // SAFETY: the nr rows are consecutive in memory (`wrb` apart, the first at
        // rows[0]), block b of each starts with its f16 scale (and minimum) and has ≥ 6
        // bytes; the mask reads only those rows; dw holds nb · per f32.
        unsafe {
            let block = rows[0]
                .as_ptr()
                .cast::<u8>()
                .add(b * std::mem::size_of::<F::W>());
            let d = gather_scales(block, idx, mask);
            _mm512_storeu_ps(dw.as_mut_ptr().add(per * b), d);
            if F::HAS_MIN {
                let m = gather_scales(block.add(M_BYTE), idx, mask);
                _mm512_storeu_ps(dw.as_mut_ptr().add(per * b + 16), m);
            }
        }
    }
}

/// f32 values [`pack_weights`] writes per block: the 16 rows' scales, and their minimums
/// for a format with them.
pub(super) const fn dw_per_block<F: Q0Format>() -> usize {
    if F::HAS_MIN {
        32
    } else {
        16
    }
}

/// `i · stride` in lane i.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn strides(stride: usize) -> __m512i {
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm512_mullo_epi32(lanes, _mm512_set1_epi32(stride as i32))
}

/// The f16 at byte `idx[i]` of `base` in lane i (0.0 in lanes outside `mask`) as f32:
/// the scales of 16 blocks, one gather instead of 16 scalar conversions.
///
/// # Safety
/// AVX-512 F/BW; 4 bytes readable at `base + idx[i]` for every lane i in `mask`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn gather_scales(base: *const u8, idx: __m512i, mask: __mmask16) -> __m512 {
    // SAFETY: the caller's contract; lanes outside the mask are not read.
    let v =
        unsafe { _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, base.cast()) };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transpose moves column c of row r to row c, column r.
    #[test]
    fn transpose_moves_every_dword() {
        if !super::super::avx512::detected() {
            println!("skipped: CPU lacks AVX-512");
            return;
        }
        let src: Vec<i32> = (0..128).collect(); // row r = 8 dwords r·8..
                                                // SAFETY: AVX-512 is present (checked above); src holds 8 x 64 bytes.
        let y = unsafe {
            let x: [__m512i; 8] =
                std::array::from_fn(|i| _mm512_loadu_si512(src[16 * i..].as_ptr().cast()));
            transpose(&x)
        };
        for (c, y) in y.iter().enumerate() {
            let mut v = [0i32; 16];
            // SAFETY: v is 16 i32.
            unsafe { _mm512_storeu_si512(v.as_mut_ptr().cast(), *y) };
            for (r, &v) in v.iter().enumerate() {
                assert_eq!(v, (8 * r + c) as i32, "column {c} row {r}");
            }
        }
    }
}
