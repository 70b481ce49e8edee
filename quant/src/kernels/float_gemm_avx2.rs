//! AVX2 + FMA (+ F16C) pieces of the packed float matrix product (`float_gemm.rs`): the
//! f32 widening of weight rows (shared with the AVX-512 tier) and a 6-token x 16-row
//! microkernel (12 accumulators, two panel loads and six broadcasts per column).
//!
//! Only reachable through the kernel table, which holds these after
//! `avx2::detected()` (AVX2, FMA, F16C) confirmed the features.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::float_gemm::{gemm_packed, Float, Isa, Tile};
use super::{avx2, DotFn};

pub(super) const ISA: Isa = Isa {
    nr: 16,
    mt: 6,
    widen,
    tile,
};

pub(crate) fn gemm_f32(k: usize, w: &[u8], n: usize, a: &[u8], nt: usize, o: &mut [f32], l: usize) {
    let dot: DotFn = avx2::dot_f32_f32;
    gemm_packed(&ISA, Float::F32, dot, k, w, n, a, nt, o, l)
}

pub(crate) fn gemm_f16(k: usize, w: &[u8], n: usize, a: &[u8], nt: usize, o: &mut [f32], l: usize) {
    let dot: DotFn = avx2::dot_f16_f32;
    gemm_packed(&ISA, Float::F16, dot, k, w, n, a, nt, o, l)
}

pub(crate) fn gemm_bf16(
    k: usize,
    w: &[u8],
    n: usize,
    a: &[u8],
    nt: usize,
    o: &mut [f32],
    l: usize,
) {
    let dot: DotFn = avx2::dot_bf16_f32;
    gemm_packed(&ISA, Float::BF16, dot, k, w, n, a, nt, o, l)
}

/// `dst[..n]` = the `n` elements of `src` widened to f32 (exact for every type).
pub(super) fn widen(ty: Float, src: &[u8], dst: &mut [f32]) {
    // SAFETY: only installed in the kernel table after `avx2::detected()`.
    unsafe { widen_f16c(ty, src, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn widen_f16c(ty: Float, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    debug_assert!(src.len() >= n * ty.size());
    let mut i = 0;
    match ty {
        Float::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
            i = n;
        }
        Float::F16 => {
            while i + 8 <= n {
                let s = &src[2 * i..2 * i + 16];
                let d = &mut dst[i..i + 8];
                // SAFETY: `s` holds 16 readable bytes and `d` 8 writable floats; both
                // operations are unaligned.
                unsafe {
                    let h = _mm_loadu_si128(s.as_ptr().cast());
                    _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
                }
                i += 8;
            }
        }
        Float::BF16 => {
            while i + 8 <= n {
                let s = &src[2 * i..2 * i + 16];
                let d = &mut dst[i..i + 8];
                // SAFETY: as above; bf16 is the top half of an f32, so a 16-bit shift widens.
                unsafe {
                    let h = _mm_loadu_si128(s.as_ptr().cast());
                    let x = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                    _mm256_storeu_ps(d.as_mut_ptr(), _mm256_castsi256_ps(x));
                }
                i += 8;
            }
        }
    }
    for j in i..n {
        let b = [src[2 * j], src[2 * j + 1]];
        dst[j] = match ty {
            Float::F16 => crate::block::f16_to_f32(b),
            _ => crate::block::bf16::bf16_to_f32(u16::from_le_bytes(b)),
        };
    }
}

fn tile(t: &Tile<'_>, out: &mut [f32], ldo: usize) {
    // SAFETY: only installed in the kernel table after `avx2::detected()`.
    unsafe {
        match t.nt {
            1 => tile_fma::<1>(t, out, ldo),
            2 => tile_fma::<2>(t, out, ldo),
            3 => tile_fma::<3>(t, out, ldo),
            4 => tile_fma::<4>(t, out, ldo),
            5 => tile_fma::<5>(t, out, ldo),
            _ => tile_fma::<6>(t, out, ldo),
        }
    }
}

/// Lane mask of the first `n` (≤ 8) lanes, for masked loads and stores.
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_fma<const NT: usize>(t: &Tile<'_>, out: &mut [f32], ldo: usize) {
    debug_assert!(t.nt == NT && t.rows <= 16 && t.b.len() >= t.kc * 16);
    debug_assert!(t.a.len() >= ((NT - 1) * t.lda + t.kc) * 4);
    debug_assert!(out.len() >= (NT - 1) * ldo + t.rows);
    let mut acc = [[_mm256_setzero_ps(); 2]; NT];
    let (a, b) = (t.a.as_ptr().cast::<f32>(), t.b.as_ptr());
    for i in 0..t.kc {
        // SAFETY: column i < kc of the panel is 16 floats at 16 * i (b.len() ≥ 16 kc);
        // token tt < NT, column i is at tt * lda + i < a.len() / 4 (checked above by the
        // caller's slicing); reads are unaligned.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(16 * i));
            let b1 = _mm256_loadu_ps(b.add(16 * i + 8));
            for (tt, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(a.add(tt * t.lda + i).read_unaligned());
                acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
            }
        }
    }
    let masks = [lanes(t.rows), lanes(t.rows.saturating_sub(8))];
    for (tt, acc) in acc.iter().enumerate() {
        for v in 0..2 {
            if 8 * v >= t.rows {
                break;
            }
            let o = tt * ldo + 8 * v;
            // SAFETY: the mask keeps lanes below `rows`, so every touched float is at
            // tt * ldo + r with r < rows, inside `out` (asserted by the caller).
            unsafe {
                let p = out.as_mut_ptr().add(o);
                let mut r = acc[v];
                if t.accumulate {
                    r = _mm256_add_ps(r, _mm256_maskload_ps(p, masks[v]));
                }
                _mm256_maskstore_ps(p, masks[v], r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::float_gemm::{Float, FloatPanels};
    use crate::GgmlType;

    #[test]
    fn avx2_float_gemms_match_scalar_twins() {
        if !super::avx2::detected() {
            println!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        let check = super::super::float_gemm::tests::check_against_scalar;
        check(super::gemm_f32, GgmlType::F32);
        check(super::gemm_f16, GgmlType::F16);
        check(super::gemm_bf16, GgmlType::BF16);
        let panels = super::super::float_gemm::tests::check_panels_match_gemm;
        let isa = |ty| FloatPanels::new(&super::ISA, ty);
        panels(isa(Float::F32), super::gemm_f32, GgmlType::F32);
        panels(isa(Float::F16), super::gemm_f16, GgmlType::F16);
        panels(isa(Float::BF16), super::gemm_bf16, GgmlType::BF16);
    }
}
