//! AVX2 + FMA (+ F16C) versions of the hottest dot products (F32, F16, BF16,
//! Q4_K, Q6_K; the 32-element block formats are `q0_avx2_groups.rs`'s, Q2_K, Q3_K and Q5_K
//! `kquant_avx2.rs`'s).
//! Each computes the same integer block sums as its scalar twin in `scalar.rs` and differs only in
//! the order of the f32 additions; `tier_tests` checks them against the scalar
//! kernels on random and edge data.
//!
//! The safe wrappers are only reachable through the kernel table, which holds
//! them only after `is_x86_feature_detected!` confirmed the features.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::q0_x86::{h2f, hsum_ps};
use crate::block::{as_blocks, BlockQ4K, BlockQ6K, BlockQ8K};

/// Whether this CPU runs every kernel of this file.
pub fn detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(crate) fn dot_f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: only installed in the kernel table after `detected()`.
    unsafe { f32_f32(n, w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / 4).min(a.len() / 4);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = 4 * (i + 8 * k);
            // SAFETY: o + 32 ≤ 4n ≤ len of both slices; loadu is unaligned.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(w.as_ptr().add(o).cast()),
                    _mm256_loadu_ps(a.as_ptr().add(o).cast()),
                )
            };
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(s);
    for j in i..n {
        let x = f32::from_le_bytes([w[4 * j], w[4 * j + 1], w[4 * j + 2], w[4 * j + 3]]);
        let y = f32::from_le_bytes([a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]]);
        sum += x * y;
    }
    sum
}

pub(crate) fn dot_f16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: only installed in the kernel table after `detected()`.
    unsafe { f16_f32(n, w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(a.len() / 4);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let e = i + 8 * k;
            // SAFETY: elements e..e+8 are in bounds of both rows (e + 8 ≤ n);
            // unaligned loads.
            let (x, y) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * e).cast())),
                    _mm256_loadu_ps(a.as_ptr().add(4 * e).cast()),
                )
            };
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(s);
    for j in i..n {
        let x = h2f([w[2 * j], w[2 * j + 1]]);
        let y = f32::from_le_bytes([a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]]);
        sum += x * y;
    }
    sum
}

pub(crate) fn dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: only installed in the kernel table after `detected()`.
    unsafe { q4_k_q8_k(n, w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let wb = as_blocks::<BlockQ4K>(w).unwrap_or(&[]);
    let ab = as_blocks::<BlockQ8K>(a).unwrap_or(&[]);
    debug_assert!(wb.len() == ab.len() && wb.len() * 256 == n);
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let mut sc = [0u8; 8];
        let mut mn = [0u8; 8];
        for j in 0..8 {
            (sc[j], mn[j]) = crate::block::get_scale_min_k4(j, &x.scales);
        }
        let mut summin = 0i32;
        for j in 0..16 {
            summin += y.bsum(j) as i32 * mn[j / 2] as i32;
        }
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            // SAFETY: qs[32c..32c+32] and y.qs[64c..64c+64] are in bounds;
            // unaligned loads.
            let (q4, y0, y1) = unsafe {
                (
                    _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast()),
                    _mm256_loadu_si256(y.qs.as_ptr().add(64 * c).cast()),
                    _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32).cast()),
                )
            };
            let lo = _mm256_and_si256(q4, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low);
            // q4 ≤ 15 unsigned, q8 ≥ −127: maddubs cannot saturate (2·15·128 < 2¹⁵).
            let p0 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, y0),
                _mm256_set1_epi16(sc[2 * c] as i16),
            );
            let p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, y1),
                _mm256_set1_epi16(sc[2 * c + 1] as i16),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        let d = _mm256_set1_ps(h2f(x.d) * y.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        acc_min -= h2f(x.dmin) * y.d() * summin as f32;
    }
    hsum_ps(acc) + acc_min
}

pub(crate) fn dot_bf16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: only installed in the kernel table after `detected()`.
    unsafe { bf16_f32(n, w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(a.len() / 4);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let e = i + 8 * k;
            // SAFETY: elements e..e+8 are in bounds of both rows (e + 8 ≤ n);
            // unaligned loads.
            let (h, y) = unsafe {
                (
                    _mm_loadu_si128(w.as_ptr().add(2 * e).cast()),
                    _mm256_loadu_ps(a.as_ptr().add(4 * e).cast()),
                )
            };
            // bf16 → f32 is a 16-bit left shift.
            let x = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(s);
    for j in i..n {
        let x = f32::from_bits((u16::from_le_bytes([w[2 * j], w[2 * j + 1]]) as u32) << 16);
        let y = f32::from_le_bytes([a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]]);
        sum += x * y;
    }
    sum
}

pub(crate) fn dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: only installed in the kernel table after `detected()`.
    unsafe { q6_k_q8_k(n, w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let wb = as_blocks::<BlockQ6K>(w).unwrap_or(&[]);
    let ab = as_blocks::<BlockQ8K>(a).unwrap_or(&[]);
    debug_assert!(wb.len() == ab.len() && wb.len() * 256 == n);
    let low = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in wb.iter().zip(ab) {
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            // SAFETY: ql[64h..64h+64], qh[32h..32h+32] and y.qs[128h..128h+128]
            // are in bounds; unaligned loads.
            let (ql0, ql1, qh) = unsafe {
                (
                    _mm256_loadu_si256(x.ql.as_ptr().add(64 * h).cast()),
                    _mm256_loadu_si256(x.ql.as_ptr().add(64 * h + 32).cast()),
                    _mm256_loadu_si256(x.qh.as_ptr().add(32 * h).cast()),
                )
            };
            let hi = |shift: i32| -> __m256i {
                let v = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16::<2>(qh),
                    4 => _mm256_srli_epi16::<4>(qh),
                    _ => _mm256_srli_epi16::<6>(qh),
                };
                _mm256_slli_epi16::<4>(_mm256_and_si256(v, three))
            };
            // Element groups of 32 in order: low nibbles of ql0, of ql1, high of ql0, of ql1.
            let groups = [
                _mm256_or_si256(_mm256_and_si256(ql0, low), hi(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, low), hi(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low), hi(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low), hi(6)),
            ];
            for (g, q) in groups.into_iter().enumerate() {
                let e = 128 * h + 32 * g;
                // SAFETY: y.qs[e..e+32] is in bounds (e + 32 ≤ 256).
                let yv = unsafe { _mm256_loadu_si256(y.qs.as_ptr().add(e).cast()) };
                // q ∈ 0..=63 unsigned: (q − 32)·y = q·y − 32·y; neither maddubs saturates
                // (2·63·127 and 2·32·127 < 2¹⁵) nor does their difference.
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(q, yv), _mm256_maddubs_epi16(m32, yv));
                let s = e / 16;
                let sc = _mm256_set_m128i(
                    _mm_set1_epi16(x.scales[s + 1] as i16),
                    _mm_set1_epi16(x.scales[s] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        let d = _mm256_set1_ps(h2f(x.d) * y.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
