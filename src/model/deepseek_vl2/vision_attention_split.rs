//! The vision tower's attention on AMX-BF16 tiles, for towers whose matrices already run
//! there (bf16 weights): `softmax(q kᵀ / sqrt(d)) v` per tile and head, both products on
//! [`SplitTiles`] (each operand split into two bf16, `hi·hi + hi·lo + lo·hi` summed in f32:
//! 16 significant bits per operand, where rounding q, k, v or P to one bf16 moved the
//! fixtures' logits by 2e-3-1e-2), the softmax in f32 as in the FMA path
//! ([`softmax_rows_body`]). At the tower's shape (729 tokens, 16 heads of 72) one thread
//! took ~24 ms per tile and layer against the FMA path's ~35: the two products ~7 ms
//! (~28 in FMA), the rest the softmax (~7 ms) and the packing of q, k, v and P (~9 ms,
//! the reads of q, k, v from `qkv` dominating the first three).
//!
//! One parallel task per (tile, head): k (`n` rows of `hd`) and vᵀ (`hd` rows of `n`) are
//! packed as split B operands, then for every block of 32 queries: q packed as a split A
//! block, the scores (`32 x n`, padded to 32 keys) in one tile product, the exact softmax
//! of each row, the probabilities packed as a split A block, and `P v` (`32 x hd`, padded
//! to 32 columns) in a second.

use std::cell::Cell;

use quant::kernels::{AlignedBytes, SplitTiles};
use rayon::prelude::*;

use super::vision_math::softmax_rows_body;

/// Queries per block: the tile products' 32 rows, whose packed q (16 KiB) stays in L1
/// while the key blocks stream past (with 96 the scores ran at ~0.4x the rate).
const BLOCK: usize = 32;

thread_local! {
    /// Each worker's buffers, kept between calls (allocated and faulted in once).
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// `out = attention(qkv)` inside each tile, the contract of
/// [`full_attention`](super::vision_attention::full_attention). One task per (tile, head)
/// packs the head's k and vᵀ and runs every query block against them while they are in
/// L2 (~800 KiB at n = 729; with tasks over query ranges and all heads, every block
/// re-read them from L3 and the products ran at ~0.5x), writing the head's outputs to
/// `heads` (`[tile][head][n][hd]`, scratch kept by the caller), copied into `out`'s rows
/// after.
#[allow(clippy::too_many_arguments)]
pub(super) fn split_attention(
    tiles: SplitTiles,
    qkv: &[f32],
    n_tiles: usize,
    n: usize,
    n_head: usize,
    hd: usize,
    heads: &mut Vec<f32>,
    out: &mut [f32],
) {
    let w = n_head * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let shape = Shape { n, n_head, hd };
    heads.resize(n_tiles * n_head * n * hd, 0.0);
    heads
        .par_chunks_mut(n * hd)
        .enumerate()
        .for_each(|(job, dst)| {
            let (t, h) = (job / n_head, job % n_head);
            let tile = &qkv[t * n * 3 * w..][..n * 3 * w];
            let mut s = SCRATCH.take();
            attend_head(tiles, shape, (tile, h), scale, &mut s, dst);
            SCRATCH.set(s);
        });
    out.par_chunks_mut(n * w)
        .zip(heads.par_chunks(n_head * n * hd))
        .for_each(|(o, hs)| {
            for (h, hs) in hs.chunks_exact(n * hd).enumerate() {
                for (o, x) in o.chunks_exact_mut(w).zip(hs.chunks_exact(hd)) {
                    o[h * hd..][..hd].copy_from_slice(x);
                }
            }
        });
}

/// Tokens per tile, heads, head width.
#[derive(Clone, Copy)]
struct Shape {
    n: usize,
    n_head: usize,
    hd: usize,
}

/// Per-worker buffers.
#[derive(Default)]
struct Scratch {
    /// The head's packed k, then its packed vᵀ.
    k: AlignedBytes,
    v: AlignedBytes,
    /// The head's vᵀ, `[hd][n]`, while it is packed.
    vt: Vec<f32>,
    /// A block's packed q, then its probabilities.
    a: AlignedBytes,
    /// Scores, then probabilities: `[BLOCK][ls]`, `ls` = keys rounded up to 32.
    s: Vec<f32>,
    /// Outputs `[BLOCK][lo]`, `lo` = `hd` rounded up to 32.
    o: Vec<f32>,
}

/// Head `h` of one tile (`qkv`: its `n` rows of `3 w`) into `out` (`[n][hd]`).
fn attend_head(
    tiles: SplitTiles,
    sh: Shape,
    (qkv, h): (&[f32], usize),
    scale: f32,
    s: &mut Scratch,
    out: &mut [f32],
) {
    let (n, hd, w) = (sh.n, sh.hd, sh.n_head * sh.hd);
    let k = s.k.resize(tiles.packed_bytes(hd, n));
    tiles.pack_b(&qkv[w + h * hd..], 3 * w, n, hd, k);
    // vᵀ, so that P v is a product of rows as q kᵀ is; 16 keys at a time, so each block
    // writes one line of every vᵀ row (key by key, every store went to another line).
    s.vt.resize(hd * n, 0.0);
    for (b, rows) in qkv.chunks(16 * 3 * w).enumerate() {
        for d in 0..hd {
            let dst = &mut s.vt[d * n + 16 * b..];
            for (x, row) in dst.iter_mut().zip(rows.chunks_exact(3 * w)) {
                *x = row[2 * w + h * hd + d];
            }
        }
    }
    let v = s.v.resize(tiles.packed_bytes(n, hd));
    tiles.pack_b(&s.vt, n, hd, n, v);
    let (k, v) = (s.k.as_slice(), s.v.as_slice());
    let (ls, lo) = (n.div_ceil(32) * 32, hd.div_ceil(32) * 32);
    s.s.resize(BLOCK * ls, 0.0);
    s.o.resize(BLOCK * lo, 0.0);
    for q0 in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - q0);
        let a = s.a.resize(tiles.packed_bytes(hd, rows));
        tiles.pack_a(&qkv[q0 * 3 * w + h * hd..], 3 * w, rows, hd, a);
        tiles.product(hd, a, rows, k, n, &mut s.s, ls);
        softmax_rows(&mut s.s[..rows * ls], ls, n, scale);
        let a = s.a.resize(tiles.packed_bytes(n, rows));
        tiles.pack_a(&s.s, ls, rows, n, a);
        tiles.product(n, a, rows, v, hd, &mut s.o, lo);
        for (i, o) in s.o.chunks_exact(lo).take(rows).enumerate() {
            out[(q0 + i) * hd..][..hd].copy_from_slice(&o[..hd]);
        }
    }
}

/// `softmax(scale * row[..n])` of each row of `ls` (the padding keys' zero scores left
/// out), in the AVX-512F build: [`SplitTiles`] exists only on CPUs with AVX-512 BF16.
fn softmax_rows(x: &mut [f32], ls: usize, n: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn avx512(x: &mut [f32], ls: usize, n: usize, scale: f32) {
        for row in x.chunks_exact_mut(ls) {
            softmax_rows_body(&mut row[..n], n, scale);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::ops::use_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked once in `use_avx512f`).
        return unsafe { avx512(x, ls, n, scale) };
    }
    for row in x.chunks_exact_mut(ls) {
        softmax_rows_body(&mut row[..n], n, scale);
    }
}
