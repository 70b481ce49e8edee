//! Scalar dot products, written the way ggml's generic CPU code computes them
//! (`ggml-cpu/quants.c` `*_generic`, `vec.cpp` without SIMD): exact integer sums
//! per block, then the same f32 operations in the same order, so these are the
//! reference the SIMD kernels are tested against.
//!
//! Every function takes one weight row `w` and one activation row `a` in the
//! weight type's `vec_dot_type`; lengths are the caller's contract (checked in
//! debug builds only, and extra or missing blocks are never read out of bounds).

use crate::block::bf16::bf16_to_f32;
use crate::block::{
    as_blocks, f16_to_f32, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};

/// Splits the two rows into block slices (empty on a length mismatch, which the
/// debug assertion reports).
#[inline]
fn pair<'a, W: crate::block::ByteBlock, A: crate::block::ByteBlock>(
    w: &'a [u8],
    a: &'a [u8],
) -> (&'a [W], &'a [A]) {
    let wb = as_blocks::<W>(w).unwrap_or(&[]);
    let ab = as_blocks::<A>(a).unwrap_or(&[]);
    debug_assert_eq!(wb.len(), ab.len(), "vec_dot: block counts differ");
    (wb, ab)
}

/// F32·F32: f32 products accumulated in f64 (ggml's `ggml_float`).
pub fn dot_f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() == 4 * n && a.len() == 4 * n);
    let mut sum = 0f64;
    for (x, y) in w.chunks_exact(4).zip(a.chunks_exact(4)) {
        let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        let y = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        sum += (x * y) as f64;
    }
    sum as f32
}

/// F16·F32: widened f16 times f32, accumulated in f64.
pub fn dot_f16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() == 2 * n && a.len() == 4 * n);
    let mut sum = 0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(4)) {
        let x = f16_to_f32([x[0], x[1]]);
        let y = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        sum += (x * y) as f64;
    }
    sum as f32
}

/// BF16·F32: widened bf16 times f32, accumulated in f64.
pub fn dot_bf16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() == 2 * n && a.len() == 4 * n);
    let mut sum = 0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(4)) {
        let x = bf16_to_f32(u16::from_le_bytes([x[0], x[1]]));
        let y = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        sum += (x * y) as f64;
    }
    sum as f32
}

/// Q4_0·Q8_0: per block (Σ (q−8)·q8) · d_w · d_a.
pub fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ4_0, BlockQ8_0>(w, a);
    debug_assert_eq!(wb.len() * 32, n);
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let v0 = (x.qs[j] & 0x0f) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi += v0 * y.qs[j] as i32 + v1 * y.qs[j + 16] as i32;
        }
        sumf += sumi as f32 * f16_to_f32(x.d) * f16_to_f32(y.d);
    }
    sumf
}

/// Q4_1·Q8_1: per block d_w·d_a·Σ q·q8 + m_w·s_a.
pub fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ4_1, BlockQ8_1>(w, a);
    debug_assert_eq!(wb.len() * 32, n);
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (x.qs[j] & 0x0f) as i32 * y.qs[j] as i32
                + (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
        }
        sumf +=
            (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sumf
}

/// Q5_0·Q8_0: per block (d_w·d_a)·Σ (q−16)·q8.
pub fn dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ5_0, BlockQ8_0>(w, a);
    debug_assert_eq!(wb.len() * 32, n);
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let qh = u32::from_le_bytes(x.qh);
        let mut sumi = 0i32;
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((x.qs[j] & 0x0f) as u32 | h0) as i32 - 16;
            let x1 = ((x.qs[j] >> 4) as u32 | h1) as i32 - 16;
            sumi += x0 * y.qs[j] as i32 + x1 * y.qs[j + 16] as i32;
        }
        sumf += (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32;
    }
    sumf
}

/// Q5_1·Q8_1: per block (d_w·d_a)·Σ q·q8 + m_w·s_a.
pub fn dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ5_1, BlockQ8_1>(w, a);
    debug_assert_eq!(wb.len() * 32, n);
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let qh = u32::from_le_bytes(x.qh);
        let mut sumi = 0i32;
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((x.qs[j] & 0x0f) as u32 | h0) as i32;
            let x1 = ((x.qs[j] >> 4) as u32 | h1) as i32;
            sumi += x0 * y.qs[j] as i32 + x1 * y.qs[j + 16] as i32;
        }
        sumf +=
            (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sumf
}

/// Q8_0·Q8_0: per block Σ q·q8 · (d_w·d_a).
pub fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ8_0, BlockQ8_0>(w, a);
    debug_assert_eq!(wb.len() * 32, n);
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += x.qs[j] as i32 * y.qs[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sumf
}

/// Unpacks Q4_K/Q5_K's 12 scale bytes into (8 scales, 8 mins).
#[inline]
fn scales_mins_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        let (a, b) = crate::block::get_scale_min_k4(j, s);
        sc[j] = a;
        mn[j] = b;
    }
    (sc, mn)
}

/// The integer part shared by the K-quant dots: eight lane sums of
/// scale_s · q_w · q_a, lane = element index mod 8 (ggml's `aux32`).
#[inline]
fn lane_sums(
    q: &[i8; 256],
    y: &BlockQ8K,
    scale_of: impl Fn(usize) -> i32,
    group: usize,
) -> [i32; 8] {
    let mut aux32 = [0i32; 8];
    for (e, (&qw, &qa)) in q.iter().zip(&y.qs).enumerate() {
        aux32[e % 8] += scale_of(e / group) * (qw as i32 * qa as i32);
    }
    aux32
}

/// Q4_K·Q8_K as ggml's generic kernel: f32 lane sums d·aux32 kept across blocks,
/// min term subtracted per block.
pub fn dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ4K, BlockQ8K>(w, a);
    debug_assert_eq!(wb.len() * 256, n);
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let mut q = [0i8; 256];
        for c in 0..4 {
            for l in 0..32 {
                q[64 * c + l] = (x.qs[32 * c + l] & 0x0f) as i8;
                q[64 * c + 32 + l] = (x.qs[32 * c + l] >> 4) as i8;
            }
        }
        let (sc, mn) = scales_mins_k4(&x.scales);
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += y.bsum(j) as i32 * mn[j / 2] as i32;
        }
        let aux32 = lane_sums(&q, y, |s| sc[s] as i32, 32);
        let d = f16_to_f32(x.d) * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = f16_to_f32(x.dmin) * y.d();
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q5_K·Q8_K, same structure as Q4_K with the 5th bit added.
pub fn dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ5K, BlockQ8K>(w, a);
    debug_assert_eq!(wb.len() * 256, n);
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let mut q = [0i8; 256];
        for c in 0..4 {
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for l in 0..32 {
                let h1 = if x.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if x.qh[l] & u2 != 0 { 16 } else { 0 };
                q[64 * c + l] = ((x.qs[32 * c + l] & 0x0f) + h1) as i8;
                q[64 * c + 32 + l] = ((x.qs[32 * c + l] >> 4) + h2) as i8;
            }
        }
        let (sc, mn) = scales_mins_k4(&x.scales);
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += y.bsum(j) as i32 * mn[j / 2] as i32;
        }
        let aux32 = lane_sums(&q, y, |s| sc[s] as i32, 32);
        let d = f16_to_f32(x.d) * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = f16_to_f32(x.dmin) * y.d();
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q2_K·Q8_K (ggml's generic kernel): per block the exact integer sums
/// Σ scale·Σq·y and Σ min·bsum, then d·y.d·isum − dmin·y.d·summs in f32.
pub fn dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ2K, BlockQ8K>(w, a);
    debug_assert_eq!(wb.len() * 256, n);
    let mut sumf = 0f32;
    for (x, y) in wb.iter().zip(ab) {
        let summs: i32 = (0..16)
            .map(|j| y.bsum(j) as i32 * (x.scales[j] >> 4) as i32)
            .sum();
        let q = crate::block::unpack_q2k(x);
        let mut isum = 0i32;
        for j in 0..16 {
            let s: i32 = (16 * j..16 * j + 16)
                .map(|e| y.qs[e] as i32 * q[e] as i32)
                .sum();
            isum += (x.scales[j] & 0x0f) as i32 * s;
        }
        let dall = y.d() * f16_to_f32(x.d);
        let dmin = y.d() * f16_to_f32(x.dmin);
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q3_K·Q8_K (ggml's generic kernel): like Q6_K, f32 lane sums d·aux32 with
/// 16-element sub-block scales, here the unpacked 6-bit scale − 32.
pub fn dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ3K, BlockQ8K>(w, a);
    debug_assert_eq!(wb.len() * 256, n);
    let mut sums = [0f32; 8];
    for (x, y) in wb.iter().zip(ab) {
        let q = crate::block::unpack_q3k(x);
        let aux32 = lane_sums(&q, y, |s| crate::block::q3k_scale(s, &x.scales) as i32, 16);
        let d = f16_to_f32(x.d) * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q6_K·Q8_K: f32 lane sums d·aux32 with 16-element sub-block scales.
pub fn dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = pair::<BlockQ6K, BlockQ8K>(w, a);
    debug_assert_eq!(wb.len() * 256, n);
    let mut sums = [0f32; 8];
    for (x, y) in wb.iter().zip(ab) {
        let q = crate::block::unpack_q6k(x);
        let aux32 = lane_sums(&q, y, |s| x.scales[s] as i32, 16);
        let d = f16_to_f32(x.d) * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// BF16 weights times f32 activations split into two bf16, the twin of the AMX split
/// kernel (`float_gemm_amx.rs`): `out[t * ldo + r] = Σ_i w[r, i] · (hi + lo)` with
/// `hi = bf16(a[t, i])`, `lo = bf16(a[t, i] - hi)` (nearest-even both), summed in f64.
pub fn gemm_bf16_split(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let split: Vec<f32> = a[..n_tok * k]
        .iter()
        .flat_map(|&v| <[f32; 2]>::from(split_bf16(v)))
        .collect();
    for t in 0..n_tok {
        for r in 0..n_rows {
            let row = &w[r * 2 * k..(r + 1) * 2 * k];
            let sum: f64 = row
                .chunks_exact(2)
                .zip(split[2 * t * k..2 * (t + 1) * k].chunks_exact(2))
                .map(|(b, y)| {
                    let wv =
                        f64::from(half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32());
                    wv * f64::from(y[0]) + wv * f64::from(y[1])
                })
                .sum();
            out[t * ldo + r] = sum as f32;
        }
    }
}

/// `x` as two bf16 (as f32): `hi = bf16(x)`, `lo = bf16(x - hi)` (nearest even).
fn split_bf16(x: f32) -> (f32, f32) {
    let hi = half::bf16::from_f32(x).to_f32();
    (hi, half::bf16::from_f32(x - hi).to_f32())
}

/// Two f32 matrices, both split into two bf16 ([`split_bf16`]), the twin of the AMX split
/// product (`split_amx.rs`): `out[i * n_b + j] = Σ_d hi·hi + hi·lo + lo·hi` of `a` row
/// `i` and `b` row `j` (rows of `k`; `lo·lo` left out as there), summed in f64.
pub fn split_product(k: usize, a: &[f32], n_a: usize, b: &[f32], n_b: usize, out: &mut [f32]) {
    for i in 0..n_a {
        for j in 0..n_b {
            let sum: f64 = a[i * k..(i + 1) * k]
                .iter()
                .zip(&b[j * k..(j + 1) * k])
                .map(|(&x, &y)| {
                    let ((xh, xl), (yh, yl)) = (split_bf16(x), split_bf16(y));
                    let p = |u: f32, v: f32| f64::from(u) * f64::from(v);
                    p(xh, yh) + p(xh, yl) + p(xl, yh)
                })
                .sum();
            out[i * n_b + j] = sum as f32;
        }
    }
}

/// BF16 weights times f32 activations rounded to bf16, the twin of the AMX kernel
/// (`float_gemm_amx.rs`): `out[t * ldo + r] = Σ_i w[r, i] · bf16(a[t, i])` (activations rounded
/// to nearest-even bf16 as `vcvtne2ps2bf16` does), summed in f64.
pub fn gemm_bf16_rounded(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for t in 0..n_tok {
        let x: Vec<f32> = a[t * k..(t + 1) * k]
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        for r in 0..n_rows {
            let row = &w[r * 2 * k..(r + 1) * 2 * k];
            let sum: f64 = row
                .chunks_exact(2)
                .zip(&x)
                .map(|(b, &y)| {
                    f64::from(half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                        * f64::from(y)
                })
                .sum();
            out[t * ldo + r] = sum as f32;
        }
    }
}
