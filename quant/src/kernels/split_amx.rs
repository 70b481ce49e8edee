//! Products of two f32 matrices on AMX-BF16 tiles at near-f32 accuracy, for the vision
//! tower's attention (`q kᵀ` and `P v`, where both operands are activations, so neither
//! is exactly bf16). Each operand is split as the split weight product splits its
//! activations ([`split16`]: `x = hi + lo`, 16 significant bits), and the three products
//! above the split's own residual, `hi·hi + hi·lo + lo·hi`, are summed in the f32
//! accumulators of `tdpbf16ps`. `lo·lo` (at most 2^-16 of `|a||b|`) is left out: with it
//! (a fourth part, a third more tile products) the fixtures' bf16 tower rows of
//! `vision_tower_recipes` stayed where they were (tower out 3.4e-5 / 4.4e-5 against
//! 3.6e-5 / 4.5e-5 without). Rounding either operand to one bf16 instead moved the
//! fixtures' logits by 2e-3-1e-2 and flipped greedy ids.
//!
//! The three products are one product over a k three times as long: A rows are laid out as
//! `[hi | hi | lo]` and B rows as `[hi | lo | hi]` ([`A_PARTS`], [`B_PARTS`]; each part `k`
//! rounded up to 16 columns, zeros after), so the product is `float_gemm_amx`'s blocked
//! loop ([`gemm_blocks`]: 2 x 2 tiles, k-blocks of B in L1) over the tripled k-steps, A is
//! in its token-block layout (`[block][step][32 rows][32 bf16]`) and B in [`pack_weights`]'
//! (each step of split rows transposed into pairs). Concatenating in k rather than three
//! tile products per step keeps the padding to one per part: `q kᵀ` (k = 72) is 8
//! k-steps, not 3 x 3.
//!
//! The scalar twin is [`scalar::split_product`](super::scalar::split_product) (the same
//! splits, exact products, summed in f64); `tests` compare them.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;

use super::float_gemm_amx::{detected, gemm_blocks, pack_weights, split16, TileConfig};

/// Which half of the split each part of a row holds (`true` = lo).
type Parts = [bool; 3];
/// The parts of an A row.
const A_PARTS: Parts = [false, false, true];
/// The parts of a B row: `A_PARTS[p]` meets `B_PARTS[p]`, so the sum is
/// `hi·hi + hi·lo + lo·hi`.
const B_PARTS: Parts = [false, true, false];

/// bf16 columns of one part: `k` rounded up to 16 (so a part's chunks of 16 never
/// straddle a tile row's two halves).
fn part_len(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// k-steps (32 bf16 columns) of the split k.
fn steps(k: usize) -> usize {
    (A_PARTS.len() * part_len(k)).div_ceil(32)
}

/// Bytes of packed A, or of packed B, for `n_rows` rows of `k` (whole blocks of 32 rows).
pub(crate) fn packed_bytes(k: usize, n_rows: usize) -> usize {
    n_rows.div_ceil(32) * steps(k) * 2048
}

thread_local! {
    /// One block of [`pack_b`]'s rows in the A layout, kept by the thread between calls.
    static B_ROWS: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Packs the `n_rows` rows of `k` of `x` (row `r` at `x[r * ld..][..k]`) into `dst`
/// (`packed_bytes(k, n_rows)`, 64-byte aligned) as A: `gemm_blocks`' token blocks
/// `[block][step][32 rows][32 bf16]`, rows past `n_rows` zero.
pub(crate) fn pack_a(x: &[f32], ld: usize, n_rows: usize, k: usize, dst: &mut [u8]) {
    pack_rows(x, ld, n_rows, k, A_PARTS, dst)
}

/// [`pack_a`] for `parts`.
fn pack_rows(x: &[f32], ld: usize, n_rows: usize, k: usize, parts: Parts, dst: &mut [u8]) {
    let bb = packed_bytes(k, 32);
    assert!(dst.len() >= packed_bytes(k, n_rows), "split pack: sizes");
    assert!(
        n_rows == 0 || x.len() >= (n_rows - 1) * ld + k,
        "split pack: input"
    );
    assert!(detected(), "AMX packing called without AMX");
    for (b, blk) in dst[..packed_bytes(k, n_rows)]
        .chunks_exact_mut(bb)
        .enumerate()
    {
        for r in 0..32 {
            let row = (32 * b + r < n_rows).then(|| &x[(32 * b + r) * ld..][..k]);
            // SAFETY: AVX-512 F/BW/BF16 (`detected`); row r's 64 bytes of each of the
            // `steps(k)` steps (2 KiB apart) lie inside `blk`.
            unsafe { split_row(row, k, parts, blk.as_mut_ptr().add(64 * r), 2048) };
        }
    }
}

/// Packs the `n_rows` rows of `k` of `x` (row `r` at `x[r * ld..][..k]`) into `dst`
/// (`packed_bytes(k, n_rows)`, 64-byte aligned) as B: per block of 32 rows, the split rows
/// in A's layout (one step = 32 rows of 32 bf16), each step transposed into pairs by
/// [`pack_weights`].
pub(crate) fn pack_b(x: &[f32], ld: usize, n_rows: usize, k: usize, dst: &mut [u8]) {
    let (s, bb) = (steps(k), packed_bytes(k, 32));
    assert!(dst.len() >= packed_bytes(k, n_rows), "split pack B: sizes");
    let mut rows = B_ROWS.take();
    rows.resize(bb, 0);
    for (b, blk) in dst[..packed_bytes(k, n_rows)]
        .chunks_exact_mut(bb)
        .enumerate()
    {
        let nr = 32.min(n_rows - 32 * b);
        pack_rows(&x[32 * b * ld..], ld, nr, k, B_PARTS, &mut rows);
        for (step, out) in rows.chunks_exact(2048).zip(blk.chunks_exact_mut(2048)) {
            // SAFETY: AVX-512 F/BW/BF16 (`detected`, checked by `pack_rows`); `step` holds
            // nr ≤ 32 rows of 32 bf16, `out` one step of the block.
            unsafe { pack_weights(&step[..nr * 64], nr, 32, out) };
        }
    }
    debug_assert_eq!(rows.len(), s * 2048);
    B_ROWS.set(rows);
}

/// `c[i * ldc + j] = a row i · b row j` for the `n_a` rows of packed A and the `n_b` rows
/// of packed B, both rounded up to 32 (padding rows are zero, so are their products), both
/// packed for `k`.
pub(crate) fn product(
    k: usize,
    a: &[u8],
    n_a: usize,
    b: &[u8],
    n_b: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let (rows, cols) = (n_a.div_ceil(32) * 32, n_b.div_ceil(32) * 32);
    let ok = a.len() >= packed_bytes(k, n_a) && b.len() >= packed_bytes(k, n_b);
    assert!(ok, "split product: inputs");
    let ok = ldc >= cols && (rows == 0 || c.len() >= (rows - 1) * ldc + cols);
    assert!(ok, "split product: output");
    assert!(detected(), "AMX kernel called without AMX");
    let cfg = TileConfig::all_16x64();
    // SAFETY: AMX is usable (`detected`), configured here (a valid palette-1 config) and
    // released at the end; `gemm_blocks` gets whole blocks of 32 tokens and rows, all
    // inside `a`, `b` and `c` (asserted), so its edge buffer is never used.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        gemm_blocks(steps(k), a, None, rows, b, cols, c, ldc, &mut []);
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// One split row (`None`: zeros): part `p` holds `hi` or `lo` of `x` as `parts[p]` says,
/// in `part_len(k)` columns (zero past `k`), then zeros to the last whole step. Column `i`
/// goes to `dst + (i / 32) * step_stride + (i % 32) * 2`.
///
/// # Safety
/// AVX-512 F/BW/BF16; 64 bytes writable at `dst + s * step_stride` for every step `s`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn split_row(x: Option<&[f32]>, k: usize, parts: Parts, dst: *mut u8, step_stride: usize) {
    let pl = part_len(k);
    let at = |i: usize| {
        dst.wrapping_add(i / 32 * step_stride + i % 32 * 2)
            .cast::<__m256i>()
    };
    for c in (0..pl).step_by(16) {
        let (hi, lo) = match x {
            Some(x) => {
                let m: __mmask16 = ((1u32 << (k - c).min(16)) - 1) as u16;
                // SAFETY: the mask keeps columns c + lane < k of `x`.
                split16(unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().add(c)) })
            }
            None => (_mm256_setzero_si256(), _mm256_setzero_si256()),
        };
        for (p, &is_lo) in parts.iter().enumerate() {
            // SAFETY: column p * pl + c lies in a step of this row (the caller's contract).
            unsafe { _mm256_storeu_si256(at(p * pl + c), if is_lo { lo } else { hi }) };
        }
    }
    for i in (parts.len() * pl..steps(k) * 32).step_by(16) {
        // SAFETY: as above, the last step's tail.
        unsafe { _mm256_storeu_si256(at(i), _mm256_setzero_si256()) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::float_gemm_amx::aligned;
    use super::super::lcg;
    use super::super::scalar;
    use super::*;

    /// The AMX product against its scalar twin on random, zero, ±large and tiny data, for
    /// A of 1-96 rows, B of 1-80 rows, k around the 16/32 edges and the tower's
    /// attention shapes (k = 72 for `q kᵀ`, 729 for `P v`). The bound is the f32 kernels':
    /// the sums differ only in f32 rounding order (the split and the products are the
    /// twin's, exactly).
    #[test]
    fn amx_matches_scalar_twin() {
        if !detected() {
            println!("skipped: CPU lacks AMX-BF16 (or the OS did not grant tile data)");
            return;
        }
        for &(k, n_a, n_b) in &[
            (1usize, 1usize, 1usize),
            (5, 3, 2),
            (16, 32, 32),
            (17, 31, 33),
            (72, 32, 80),
            (72, 9, 45),
            (72, 96, 64),
            (100, 20, 64),
            (729, 65, 72),
        ] {
            for case in 0..5 {
                let (a, b) = match case {
                    0 => (lcg(k as u64, n_a * k, 3.0), lcg(7, n_b * k, 1.0)),
                    1 => (vec![0.0; n_a * k], lcg(9, n_b * k, 1.0)),
                    2 => (lcg(3, n_a * k, 1.0), vec![0.0; n_b * k]),
                    3 => (
                        (0..n_a * k)
                            .map(|i| if i % 3 == 0 { -1e30 } else { 1e30 })
                            .collect(),
                        (0..n_b * k)
                            .map(|i| if i % 2 == 0 { 1e-3 } else { -1e-3 })
                            .collect(),
                    ),
                    _ => (lcg(5, n_a * k, 1e-3), lcg(11, n_b * k, 1e5)),
                };
                let (la, lb) = (packed_bytes(k, n_a), packed_bytes(k, n_b));
                let (mut ab, mut bb) = (vec![0u8; la + 64], vec![0u8; lb + 64]);
                let (ap, bp) = (aligned(&mut ab, la), aligned(&mut bb, lb));
                pack_a(&a, k, n_a, k, ap);
                pack_b(&b, k, n_b, k, bp);
                let ldc = n_b.div_ceil(32) * 32 + 3;
                let rows = n_a.div_ceil(32) * 32;
                let mut got = vec![f32::NAN; rows * ldc];
                product(k, ap, n_a, bp, n_b, &mut got, ldc);
                let mut want = vec![f32::NAN; n_a * n_b];
                scalar::split_product(k, &a, n_a, &b, n_b, &mut want);
                for i in 0..rows {
                    for j in 0..ldc {
                        let g = got[i * ldc + j];
                        if j >= n_b.div_ceil(32) * 32 {
                            assert!(g.is_nan(), "wrote past the blocks: ({i}, {j})");
                            continue;
                        }
                        if i >= n_a || j >= n_b {
                            assert_eq!(g, 0.0, "padding ({i}, {j})");
                            continue;
                        }
                        let x = want[i * n_b + j];
                        let mag: f64 = (0..k)
                            .map(|d| (f64::from(a[i * k + d]) * f64::from(b[j * k + d])).abs())
                            .sum();
                        assert!(
                            ((g - x) as f64).abs() <= 1e-5 * mag * 1.01 + 1e-30,
                            "k={k} a={n_a} b={n_b} case {case} ({i}, {j}): {g} vs {x}"
                        );
                    }
                }
            }
        }
    }
}
