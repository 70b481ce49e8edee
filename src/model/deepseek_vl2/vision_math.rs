//! The element-wise parts of the vision tower, written so the compiler vectorises them
//! (plain f32 arithmetic over fixed-width chunks, no libm calls in the loops) and run in
//! parallel over rows: the softmax of the attention scores (729 x 729 per tile and head)
//! and GELU(tanh) of the MLP (729 x 4304 per tile and layer) call `exp` ~300 M times per
//! tile, which as scalar libm calls cost more than the matrix products.
//!
//! The GELU loop is compiled twice from one body: for the baseline target (SSE2 on x86_64,
//! the scalar twin) and with AVX-512F enabled (16 lanes), picked once at run time
//! (`POCKETVL_FORCE_SCALAR=1` keeps the baseline); the softmax body is inlined into the
//! fused attention's builds (`vision_attention.rs`). The bodies use no reassociation the
//! compiler could do differently, so both give the same bits (tested); profiled on the bf16
//! tower the baseline build of the softmax took ~15% of the tower's time.
//!
//! `exp` is the shared branch-free [`exp_approx`] (within 2 ulp of std's); GELU(tanh) is
//! computed as the identical `z · sigmoid(2y)` = `0.5 z (1 + tanh y)`, which needs one `exp`
//! and no cancellation.

use quant::kernels::{
    bf16_dot_tiles, bf16_tiles, float_panels, Bf16Tiles, FloatPanels, PackedFloat,
};
use quant::GgmlType;
use rayon::prelude::*;

use crate::ops::{exp_approx, matmul_view, MatView};

/// Lanes of the softmax's max and sum accumulators: one AVX-512 vector of f32.
const LANES: usize = 16;

/// Rows (or elements) per parallel task, large enough to amortise a task.
const PAR_MIN: usize = 16 * 1024;

/// Row-wise `softmax(scale * row)` in place over rows of `n`: the loop itself, inlined
/// into each build of its caller (the fused attention, `vision_attention.rs`) so it is
/// vectorised for that target.
#[inline(always)]
pub(super) fn softmax_rows_body(x: &mut [f32], n: usize, scale: f32) {
    for row in x.chunks_exact_mut(n) {
        let max = max_of(row);
        let shift = max * scale;
        let mut acc = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (v, a) in c.iter_mut().zip(&mut acc) {
                *v = exp_approx(*v * scale - shift);
                *a += *v;
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_approx(*v * scale - shift);
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    chunks.remainder().iter().copied().fold(m, f32::max)
}

/// `0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))` in place.
fn gelu_tanh_chunk(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::use_avx512f() {
        // SAFETY: the CPU has AVX-512F (checked once in `use_avx512f`).
        return unsafe { gelu_tanh_avx512(x) };
    }
    gelu_tanh_body(x)
}

/// [`gelu_tanh_body`] compiled with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_tanh_avx512(x: &mut [f32]) {
    gelu_tanh_body(x)
}

#[inline(always)]
fn gelu_tanh_body(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let z = *v;
        let y = SQRT_2_OVER_PI * (z + 0.044715 * z * z * z);
        *v = z / (1.0 + exp_approx(-2.0 * y));
    }
}

/// `x[t] += b` for every row `t` of `b.len()` values, in parallel.
pub(super) fn add_bias(x: &mut [f32], b: &[f32]) {
    let rows = (PAR_MIN / b.len().max(1)).max(1);
    x.par_chunks_mut(rows * b.len().max(1)).for_each(|c| {
        for row in c.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
        }
    });
}

/// `crate::ops::layer_norm` over rows of `weight.len()`, in parallel chunks of rows.
pub(super) fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len().max(1);
    let rows = (PAR_MIN / d).max(1);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .for_each(|(o, x)| crate::ops::layer_norm(x, weight, bias, eps, o));
}

/// What the tower does with a product's output right after it: fused into the product where
/// the FMA panels run it (per task, on 256 output columns of ~96 tokens at a time, while
/// they are in L2), one pass over the output after the product elsewhere. Either way the
/// same f32 operations in the same order.
pub(super) enum Then<'a> {
    /// Nothing.
    Done,
    /// `out += bias` on every row.
    Bias(&'a [f32]),
    /// `out = gelu_tanh(out + bias)`.
    BiasGelu(&'a [f32]),
    /// `residual += out + bias` (`out` is then scratch).
    BiasInto(&'a [f32], &'a mut [f32]),
}

impl<'a> Then<'a> {
    /// The steps, in the order they apply: the bias, GELU, the add into a residual (which
    /// never comes with GELU).
    fn parts(self) -> (Option<&'a [f32]>, bool, Option<&'a mut [f32]>) {
        match self {
            Then::Done => (None, false, None),
            Then::Bias(b) => (Some(b), false, None),
            Then::BiasGelu(b) => (Some(b), true, None),
            Then::BiasInto(b, r) => (Some(b), false, Some(r)),
        }
    }
}

/// The arithmetic of the tower blocks' matrix products on a bf16 mmproj (`--vision-precision`).
///
/// `Exact` (the default) keeps f32 activations: FMA panels, or on AMX the activations split
/// into two bf16 (16 significant bits); the fixtures' parity holds. `Bf16` rounds the
/// activations to one bf16 (8 significant bits, as the official code's bf16 inference
/// holds them) for twice the multiply-adds per instruction: `vdpbf16ps` on CPUs with
/// AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake and later), AMX tiles unsplit where
/// present, the exact panels elsewhere; on `vdpbf16ps` the attention's products take
/// bf16 operands too (`vision_attention_bf16.rs`). Its cost on the fixtures is in
/// BENCHMARKS.md (twentieth and twenty-second sessions). The patch embedding and the
/// projector stay exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VisionPrecision {
    #[default]
    Exact,
    Bf16,
}

names!(VisionPrecision, "vision precision", Exact => "exact", Bf16 => "bf16");

/// `out = x · Wᵀ` for the tower and projector (`[n_tok, k]` -> `[n_tok, n]`), exact.
pub(super) fn tower_matmul(w: &MatView<'_>, x: &[f32], n_tok: usize, out: &mut [f32]) {
    tower_matmul_then(w, x, n_tok, out, Then::Done, VisionPrecision::Exact)
}

/// [`tower_matmul`] in `precision`, then `then`.
///
/// BF16 weights on an AMX CPU take the tile product with the activations split into two
/// bf16 (`hi + lo`, 16 significant bits), so the only rounding beyond f32 arithmetic is the
/// weights' own, which a bf16 checkpoint does not have. Measured on the fixtures
/// (`vision_tower_recipes`): activations rounded to one bf16 moved the logits by
/// 1.4e-2-2.0e-2 and flipped greedy ids (87/96 on tiny-mla); split, 1.7e-5-1.9e-5 and
/// 96/96, next to f16 weights' 6e-6-8e-6. [`VisionPrecision::Bf16`] asks for the rounded
/// form (AMX, else `vdpbf16ps`). Float weights elsewhere take the FMA panels
/// ([`panels_matmul`]) with exact f32 activations; without those (`POCKETVL_FORCE_SCALAR`)
/// [`matmul_view`].
pub(super) fn tower_matmul_then(
    w: &MatView<'_>,
    x: &[f32],
    n_tok: usize,
    out: &mut [f32],
    then: Then<'_>,
    precision: VisionPrecision,
) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), n_tok * k, "tower matmul: activation shape");
    assert_eq!(out.len(), n_tok * n, "tower matmul: output shape");
    if n_tok == 0 || n == 0 {
        return;
    }
    // (tiles, whether they split the activations)
    let tiles = match precision {
        _ if w.ty != GgmlType::BF16 || k == 0 => None,
        VisionPrecision::Exact => bf16_tiles().map(|t| (t, true)),
        VisionPrecision::Bf16 => bf16_tiles().or_else(bf16_dot_tiles).map(|t| (t, false)),
    };
    match (tiles, float_panels(w.ty)) {
        (Some((tiles, split)), _) => tiles_matmul(tiles, w, x, n_tok, out, split),
        #[cfg(target_endian = "little")]
        (None, Some(panels)) => return panels_matmul(panels, w, x, n_tok, out, then),
        _ => matmul_view(w, x, n_tok, out),
    }
    // The panels' fused `finish`, here as one pass over the output's rows in parallel chunks
    // (separate passes for the bias, GELU and the residual read and wrote the whole output up
    // to three times: ~63 MB each for the MLP's `up` of five tiles).
    let (bias, gelu, residual) = then.parts();
    if bias.is_none() && !gelu && residual.is_none() {
        return;
    }
    let rows = (PAR_MIN / n).max(1) * n;
    let finish_rows = |o: &mut [f32], r: Option<&mut [f32]>| match r {
        Some(r) => o
            .chunks_exact_mut(n)
            .zip(r.chunks_exact_mut(n))
            .for_each(|(o, r)| finish(o, bias, gelu, Some(r))),
        None => o
            .chunks_exact_mut(n)
            .for_each(|o| finish(o, bias, gelu, None)),
    };
    match residual {
        Some(r) => out
            .par_chunks_mut(rows)
            .zip(r.par_chunks_mut(rows))
            .for_each(|(o, r)| finish_rows(o, Some(r))),
        None => out.par_chunks_mut(rows).for_each(|o| finish_rows(o, None)),
    }
}

/// The bf16 product (AMX tiles, or `vdpbf16ps`), the activations split in two (`split`) or
/// rounded: the weights are packed once per call (blocks in parallel), then the tokens are
/// split over the pool: each task rounds and packs its own tokens once and sweeps the packed
/// weights (two tasks per thread balance a shared machine).
fn tiles_matmul(
    tiles: Bf16Tiles,
    w: &MatView<'_>,
    x: &[f32],
    n_tok: usize,
    out: &mut [f32],
    split: bool,
) {
    let (k, n) = (w.k, w.n);
    let mut packed = tiles.buffer(k, n);
    let bb = packed.block_bytes();
    packed
        .blocks_mut()
        .par_chunks_mut(bb)
        .enumerate()
        .for_each(|(b, dst)| tiles.pack_block(k, w.data, n, b, dst));
    let tasks = 2 * rayon::current_num_threads();
    let per = n_tok.div_ceil(tasks).div_ceil(32) * 32;
    out.par_chunks_mut(per * n)
        .zip(x.par_chunks(per * k))
        .for_each(|(o, a)| tiles.gemm(&packed, a, o.len() / n, o, n, split));
}

thread_local! {
    /// The packed weights of [`panels_matmul`], kept by the calling thread between products
    /// (the largest, a 4304 x 1152 MLP matrix, is 20 MB of f32): allocated and faulted in
    /// once, not per product.
    static PANELS: std::cell::Cell<PackedFloat> = std::cell::Cell::new(PackedFloat::default());
}

/// The FMA product with the weights widened and packed once per call (panels in parallel)
/// and the tokens split over the pool, two tasks per thread (balance on a shared machine):
/// each task writes its own rows of `out` at their final place (no blocks to scatter), all
/// weight panels whole (no half panels of a row split), and runs `then` on each 256 columns
/// of each group of its rows as soon as they are final (`FloatPanels::gemm_then`).
#[cfg(target_endian = "little")]
fn panels_matmul(
    panels: FloatPanels,
    w: &MatView<'_>,
    x: &[f32],
    n_tok: usize,
    out: &mut [f32],
    then: Then<'_>,
) {
    let (k, n) = (w.k, w.n);
    let mut packed = PANELS.with(|c| c.take());
    panels.shape(k, n, &mut packed);
    let len = packed.panel_len();
    packed
        .panels_mut()
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(c, dst)| panels.pack_panel(k, w.data, n, c, dst));
    let (bias, gelu, residual) = then.parts();
    let tasks = 2 * rayon::current_num_threads();
    let mt = panels.tile_tokens();
    let per = n_tok.div_ceil(tasks).div_ceil(mt) * mt;
    let task = |o: &mut [f32], a: &[f32], mut residual: Option<&mut [f32]>| {
        let a = quant::block::f32_bytes(a);
        panels.gemm_then(&packed, a, o.len() / n, o, n, &mut |o, tokens, cols| {
            let b = bias.map(|b| &b[cols.clone()]);
            for t in tokens {
                let r = residual
                    .as_deref_mut()
                    .map(|r| &mut r[t * n..][cols.clone()]);
                finish(&mut o[t * n..][cols.clone()], b, gelu, r);
            }
        });
    };
    let chunks = out.par_chunks_mut(per * n).zip(x.par_chunks(per * k));
    match residual {
        // Each task's residual rows beside its output rows.
        Some(r) => chunks
            .zip(r.par_chunks_mut(per * n))
            .for_each(|((o, a), r)| task(o, a, Some(r))),
        None => chunks.for_each(|(o, a)| task(o, a, None)),
    }
    PANELS.with(|c| c.set(packed));
}

/// [`Then`] on the columns of one output row: `+= bias`, then GELU; or, given the residual
/// row's same columns, `residual += row + bias` (`row` left as is).
fn finish(row: &mut [f32], bias: Option<&[f32]>, gelu: bool, residual: Option<&mut [f32]>) {
    match (residual, bias) {
        (Some(r), Some(b)) => r
            .iter_mut()
            .zip(row.iter())
            .zip(b)
            .for_each(|((r, v), b)| *r += v + b),
        (Some(r), None) => r.iter_mut().zip(row.iter()).for_each(|(r, v)| *r += v),
        (None, b) => {
            if let Some(b) = b {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if gelu {
                gelu_tanh_chunk(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_the_definition() {
        let mut x: Vec<f32> = (0..2 * 21).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let want: Vec<f32> = x
            .chunks(21)
            .flat_map(|r| {
                let m = r.iter().copied().fold(f32::MIN, f32::max) as f64;
                let e: Vec<f64> = r.iter().map(|&v| ((v as f64 - m) * 0.5).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| (v / s) as f32)
            })
            .collect();
        softmax_rows_body(&mut x, 21, 0.5);
        for (g, w) in x.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
        }
    }

    /// Random rows of mixed magnitudes plus edge values (zeros, ±huge, tiny, a row of one
    /// repeated value, lengths off the vector width).
    #[cfg(target_arch = "x86_64")]
    fn edge_rows(n: usize, rows: usize) -> Vec<f32> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        (0..n * rows)
            .map(|i| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                match (i / n) % 4 {
                    0 => u * 30.0,
                    1 => [0.0, -0.0, 1e30, -1e30, 1e-30, 88.5, -90.0][i % 7],
                    2 => 3.25,
                    _ => u * 1e-3,
                }
            })
            .collect()
    }

    /// The AVX-512F build of GELU against the baseline build (the scalar twin): the same bits
    /// (the softmax's builds are tested with the attention's, `vision_attention.rs`).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_builds_match_the_baseline_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("skipped: CPU lacks AVX-512F");
            return;
        }
        for n in [1usize, 7, 8, 15, 16, 17, 100, 729] {
            let x = edge_rows(n, 8);
            let (mut a, mut b) = (x.clone(), x);
            gelu_tanh_body(&mut a);
            // SAFETY: AVX-512F detected above.
            unsafe { gelu_tanh_avx512(&mut b) };
            for (g, w) in b.iter().zip(&a) {
                assert_eq!(g.to_bits(), w.to_bits(), "gelu n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let z: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) * 1e-3).collect();
        let mut got = z.clone();
        gelu_tanh_chunk(&mut got);
        let mut want = z.clone();
        crate::ops::gelu_tanh(&mut want);
        for ((g, w), z) in got.iter().zip(&want).zip(&z) {
            assert!(
                (g - w).abs() <= 2e-7 * z.abs().max(1.0),
                "gelu({z}) = {g}, formula {w}"
            );
        }
    }
}
