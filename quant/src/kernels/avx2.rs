//! AVX2 + FMA (+ F16C) dot products of the float formats (F32, F16, BF16; the 32-element
//! block formats' are `q0_avx2_groups.rs`'s, the K-quants' `kquant_avx2.rs`'s). Each differs
//! from its scalar twin in `scalar.rs` only in the order of the f32 additions; `tier_tests`
//! checks them against the scalar kernels on random and edge data.
//!
//! The safe wrappers are only reachable through the kernel table, which holds
//! them only after `is_x86_feature_detected!` confirmed the features.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::q0_x86::{h2f, hsum_ps};

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
