//! AVX-512F microkernel of the packed float matrix product (`float_gemm.rs`): 8 tokens x
//! 32 rows (16 zmm accumulators; per column two panel loads and eight broadcasts feed 16
//! FMAs). A panel's last rows, when 16 or fewer, run a one-vector variant so a 72-row
//! task does not pay for 96. Weight widening is the AVX2 tier's (F16C).
//!
//! Only reachable through the kernel table, which holds these after `avx512::detected()`
//! (which implies AVX-512F) and `avx2::detected()`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::float_gemm::{gemm_packed, Float, Isa, Tile};
use super::{avx2, float_gemm_avx2, DotFn};

pub(super) const ISA: Isa = Isa {
    nr: 32,
    mt: 8,
    widen: float_gemm_avx2::widen,
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

fn tile(t: &Tile<'_>, out: &mut [f32], ldo: usize) {
    macro_rules! by_tokens {
        ($nv:literal) => {
            match t.nt {
                1 => tile_fma::<1, $nv>(t, out, ldo),
                2 => tile_fma::<2, $nv>(t, out, ldo),
                3 => tile_fma::<3, $nv>(t, out, ldo),
                4 => tile_fma::<4, $nv>(t, out, ldo),
                5 => tile_fma::<5, $nv>(t, out, ldo),
                6 => tile_fma::<6, $nv>(t, out, ldo),
                7 => tile_fma::<7, $nv>(t, out, ldo),
                _ => tile_fma::<8, $nv>(t, out, ldo),
            }
        };
    }
    // SAFETY: only installed in the kernel table after `avx512::detected()`.
    unsafe {
        if t.rows <= 16 {
            by_tokens!(1)
        } else {
            by_tokens!(2)
        }
    }
}

/// `NT` tokens against the first `16 * NV` rows of a 32-row panel.
#[target_feature(enable = "avx512f")]
fn tile_fma<const NT: usize, const NV: usize>(t: &Tile<'_>, out: &mut [f32], ldo: usize) {
    debug_assert!(t.nt == NT && t.rows <= 16 * NV && t.b.len() >= t.kc * 32);
    debug_assert!(t.a.len() >= ((NT - 1) * t.lda + t.kc) * 4);
    debug_assert!(out.len() >= (NT - 1) * ldo + t.rows);
    let mut acc = [[_mm512_setzero_ps(); NV]; NT];
    let (a, b) = (t.a.as_ptr().cast::<f32>(), t.b.as_ptr());
    for i in 0..t.kc {
        let mut bv = [_mm512_setzero_ps(); NV];
        // SAFETY: column i < kc of the panel is 32 floats at 32 * i (b.len() ≥ 32 kc);
        // token tt < NT, column i is float tt * lda + i of `a` (its length is checked
        // above); all reads are unaligned.
        unsafe {
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(b.add(32 * i + 16 * v));
            }
            for (tt, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(a.add(tt * t.lda + i).read_unaligned());
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(x, bv[v], acc[v]);
                }
            }
        }
    }
    for (tt, acc) in acc.iter().enumerate() {
        for (v, &sum) in acc.iter().enumerate() {
            let live = t.rows.saturating_sub(16 * v).min(16);
            if live == 0 {
                break;
            }
            let m: __mmask16 = ((1u32 << live) - 1) as u16;
            // SAFETY: the mask keeps lanes below `rows`, so every touched float is at
            // tt * ldo + r with r < rows, inside `out` (asserted by the caller).
            unsafe {
                let p = out.as_mut_ptr().add(tt * ldo + 16 * v);
                let r = if t.accumulate {
                    _mm512_add_ps(sum, _mm512_maskz_loadu_ps(m, p))
                } else {
                    sum
                };
                _mm512_mask_storeu_ps(p, m, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::float_gemm::{Float, FloatPanels};
    use crate::GgmlType;

    #[test]
    fn avx512_float_gemms_match_scalar_twins() {
        if !(super::super::avx512::detected() && super::avx2::detected()) {
            println!("skipped: CPU lacks AVX-512");
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
