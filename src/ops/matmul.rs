//! `out = x · Wᵀ` for a ggml-typed weight W of n rows × k columns (ggml ne
//! `[k, n]`) and float32 activations x `[n_tokens, k]`.
//!
//! Weight rows are the outer, parallel loop so that each row is read from
//! memory once per batch of tokens (prefill is then bound by compute, decode
//! by the weight bytes, as in ggml's CPU matmul). Activations are converted
//! once per call to the type the weight's dot kernel expects.

use quant::block::{dequantize_row, quantize_row};
use quant::kernels::{gemm, vec_dot_type};
use quant::GgmlType;
use rayon::prelude::*;

use super::spin_region::for_each_chunk;
use super::{silu_mul, SERIAL_ELEMS};
use crate::loader::Weight;
use crate::tensor::MatView;

/// `out[t, r] = Σ_i x[t, i] · w[r, i]`; `x` is `[n_tokens, k]`, `out` is
/// `[n_tokens, n]`, with `w` of ggml shape `[k, n]`.
pub fn matmul(w: &Weight, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    matmul_view(&w.view(), x, n_tokens, out)
}

/// Buffers one calling thread reuses between matmuls, so that the per-token
/// path allocates nothing once warm: the quantized activations and the
/// per-task `[n_tokens, rows]` output blocks of a batch.
#[derive(Default)]
struct Scratch {
    act: Vec<u8>,
    blocks: Vec<f32>,
}

thread_local! {
    /// Taken out while in use (`Cell::take`), so a nested matmul on the same
    /// thread (a rayon worker that steals another matmul's task while
    /// waiting) simply gets fresh buffers instead of aliasing these.
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut s = SCRATCH.with(|c| c.take());
    let r = f(&mut s);
    SCRATCH.with(|c| c.set(s));
    r
}

/// Converts `x` (`n_tokens` rows of `k`) to `act_ty` rows in `dst` (resized,
/// capacity kept); returns the bytes per row.
pub fn quantize_activations(
    act_ty: GgmlType,
    x: &[f32],
    n_tokens: usize,
    k: usize,
    dst: &mut Vec<u8>,
) -> usize {
    let arb = act_ty.row_bytes(k as u64).unwrap_or(0) as usize;
    dst.resize(n_tokens * arb, 0);
    if arb == 0 {
        return 0;
    }
    // Cannot fail: k is a whole number of the weight's blocks, and every
    // activation format's block divides the weight's block.
    let one = |(d, s): (&mut [u8], &[f32])| {
        let _ = quantize_row(act_ty, s, d);
    };
    if n_tokens * k < SERIAL_ELEMS {
        dst.chunks_mut(arb).zip(x.chunks(k)).for_each(one);
    } else {
        dst.par_chunks_mut(arb).zip(x.par_chunks(k)).for_each(one);
    }
    arb
}

/// Weight rows per parallel task: about 8 tasks per worker (load balance on
/// a machine shared with other work), at least 32 KiB of weights per task
/// (below that rayon's per-task cost shows), a multiple of 16 rows (row-tiled
/// kernels; decode output chunks on their own cache lines) and at most 256.
pub fn rows_per_task(n: usize, row_bytes: usize) -> usize {
    let by_threads = n / (rayon::current_num_threads() * 8).max(1);
    let by_bytes = (32 << 10) / row_bytes.max(1);
    let rows = by_threads.max(by_bytes).clamp(16, 256);
    (rows.div_ceil(16) * 16).min(n.max(1))
}

/// Weight bytes per parallel task of a one-token product (decode), about: small enough
/// that the threads of a region finish together, as the tasks are claimed in runs of
/// back-to-back ones ([`for_each_chunk`]) whose streams the GEMV's prefetch carries from
/// one task into the next. With two tasks per thread, 2 threads of the Zen 4 VM spent
/// 5-11 % of Small's decode waiting on the other's last task (`bench model --regions`).
pub const GEMV_TASK_BYTES: usize = 128 << 10;

/// Tasks for a one-token product over `bytes` of weights: [`GEMV_TASK_BYTES`] each, and at
/// least two per worker.
pub fn gemv_tasks(bytes: usize) -> usize {
    let per_worker = rayon::current_num_threads().max(1) * 2;
    bytes.div_ceil(GEMV_TASK_BYTES).max(per_worker)
}

/// Weight rows per parallel task of a one-token product of `n` rows of `row_bytes` (all
/// the matrices a task reads for one output row): [`gemv_tasks`] of them, whole 16-row
/// tiles.
pub fn rows_per_gemv_task(n: usize, row_bytes: usize) -> usize {
    let tasks = gemv_tasks(n * row_bytes);
    (n.div_ceil(tasks).div_ceil(16) * 16).max(16).min(n.max(1))
}

/// [`matmul`] over a borrowed matrix view. The weight type must have a dot
/// kernel (`quant::kernels::has_vec_dot`, checked when weights are loaded).
pub fn matmul_view(w: &MatView<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), n_tokens * k, "matmul: activation shape");
    assert_eq!(out.len(), n_tokens * n, "matmul: output shape");
    if n_tokens == 0 || n == 0 {
        return;
    }
    with_scratch(|s| {
        let act_ty = vec_dot_type(w.ty);
        // F32 activations (float weights: the vision tower) are read in place rather than
        // copied (up to 50 MB per product in the tower's MLP).
        #[cfg(target_endian = "little")]
        if act_ty == GgmlType::F32 {
            return matmul_quantized(w, quant::block::f32_bytes(x), n_tokens, out, &mut s.blocks);
        }
        // Activations once in the format the weight's kernel pairs with.
        quantize_activations(act_ty, x, n_tokens, k, &mut s.act);
        matmul_quantized(w, &s.act, n_tokens, out, &mut s.blocks);
    })
}

/// `out = w · x` for one token on the calling thread, without a parallel
/// region: for callers that already give each worker its own matrix (MLA's
/// per-head matrices in decode, one task per head).
pub fn matvec_serial(w: &MatView<'_>, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), w.k, "matvec: activation shape");
    assert_eq!(out.len(), w.n, "matvec: output shape");
    with_scratch(|s| {
        quantize_activations(vec_dot_type(w.ty), x, 1, w.k, &mut s.act);
        gemm(w.ty, w.k, w.data, w.n, &s.act, 1, out, w.n);
    })
}

/// [`matmul_view`] with activations already in `vec_dot_type(w.ty)`; `blocks`
/// is scratch for the per-task output blocks of a batch.
pub fn matmul_quantized(
    w: &MatView<'_>,
    act: &[u8],
    n_tokens: usize,
    out: &mut [f32],
    blocks: &mut Vec<f32>,
) {
    let (k, n) = (w.k, w.n);
    let rb = w.row_bytes();
    if n_tokens == 1 {
        // One token: a task's block is its own slice of `out`.
        let rpt = rows_per_gemv_task(n, rb);
        for_each_chunk(out, rpt, |ci, chunk| {
            let r0 = ci * rpt;
            let rows = chunk.len();
            gemm(
                w.ty,
                k,
                &w.data[r0 * rb..(r0 + rows) * rb],
                rows,
                act,
                1,
                chunk,
                rows,
            );
        });
        return;
    }
    let rpt = rows_per_task(n, rb);
    // Each task owns whole weight rows and all tokens: a `[n_tokens, rows]`
    // block (task ci's block starts at r0 * n_tokens), scattered afterwards.
    blocks.resize(n_tokens * n, 0.0);
    blocks
        .par_chunks_mut(rpt * n_tokens)
        .enumerate()
        .for_each(|(ci, blk)| {
            let r0 = ci * rpt;
            let rows = blk.len() / n_tokens;
            let wd = &w.data[r0 * rb..(r0 + rows) * rb];
            gemm(w.ty, k, wd, rows, act, n_tokens, blk, rows);
        });
    scatter_blocks(blocks, 1, n, rpt, n_tokens, out);
}

/// `out[t, r0 + j] = blocks[per_row * r0 * n_tokens + t * rows + j]` for the row chunks of
/// `rpt` rows of [`matmul_quantized`] (`per_row` 1) and [`matmul_gate_up_silu`] (2: each
/// chunk's gate block, then its up block); `out` is `[n_tokens, n]`.
pub(crate) fn scatter_blocks(
    blocks: &[f32],
    per_row: usize,
    n: usize,
    rpt: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    let one = |(t, o): (usize, &mut [f32])| block_row(blocks, per_row, rpt, n_tokens, t, o);
    if n_tokens * n < SERIAL_ELEMS {
        out.chunks_mut(n).enumerate().for_each(one);
    } else {
        out.par_chunks_mut(n).enumerate().for_each(one);
    }
}

/// Row `t` of [`scatter_blocks`]' output (`out.len()` values) from its blocks.
pub(crate) fn block_row(
    blocks: &[f32],
    per_row: usize,
    rpt: usize,
    n_tokens: usize,
    t: usize,
    out: &mut [f32],
) {
    let n = out.len();
    for r0 in (0..n).step_by(rpt) {
        let rows = rpt.min(n - r0);
        out[r0..r0 + rows].copy_from_slice(&blocks[per_row * r0 * n_tokens + t * rows..][..rows]);
    }
}

/// One batch's activations quantized once per format its weights pair with (routed and
/// shared experts may differ), kept between calls so that decode allocates nothing.
#[derive(Default)]
pub struct ActsByFormat {
    /// (activation format, rows, whether they hold the current batch).
    sets: Vec<(GgmlType, Vec<u8>, bool)>,
}

impl ActsByFormat {
    /// A new batch: every format is quantized again when next asked for.
    pub fn reset(&mut self) {
        self.sets.iter_mut().for_each(|s| s.2 = false);
    }

    /// Quantizes `x` (`n_tokens` rows of `k`) for weights of type `weight_ty`, unless
    /// that format was quantized since the last [`ActsByFormat::reset`].
    pub fn ensure(&mut self, weight_ty: GgmlType, x: &[f32], n_tokens: usize, k: usize) {
        let ty = vec_dot_type(weight_ty);
        let i = match self.sets.iter().position(|s| s.0 == ty) {
            Some(i) => i,
            None => {
                self.sets.push((ty, Vec::new(), false));
                self.sets.len() - 1
            }
        };
        let (ty, buf, current) = &mut self.sets[i];
        if !*current {
            quantize_activations(*ty, x, n_tokens, k, buf);
            *current = true;
        }
    }

    /// The rows for weights of type `weight_ty` ([`ActsByFormat::ensure`] first; empty if
    /// it was not called).
    pub fn get(&self, weight_ty: GgmlType) -> &[u8] {
        let ty = vec_dot_type(weight_ty);
        self.sets
            .iter()
            .find(|s| s.0 == ty && s.2)
            .map_or(&[][..], |s| &s.1)
    }
}

/// The gated-MLP first half in one parallel pass:
/// `out[t, r] = silu(x·gate[r]) * (x·up[r])`, `out` `[n_tokens, n]`. Each
/// task computes matching gate and up rows, so both weights stream once and
/// the product is written once (no separate up buffer or SiLU pass).
pub fn matmul_gate_up_silu(
    gate: &MatView<'_>,
    up: &MatView<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) {
    let (k, n) = (gate.k, gate.n);
    assert!(up.k == k && up.n == n, "gate/up: shapes differ");
    assert_eq!(x.len(), n_tokens * k, "gate/up: activation shape");
    assert_eq!(out.len(), n_tokens * n, "gate/up: output shape");
    if n_tokens == 0 || n == 0 {
        return;
    }
    with_scratch(|s| {
        let (gt, ut) = (vec_dot_type(gate.ty), vec_dot_type(up.ty));
        let arb = quantize_activations(gt, x, n_tokens, k, &mut s.act);
        // Rare mixed recipes: up's activations after gate's in the same buffer.
        let mut up_act = Vec::new();
        if ut != gt {
            quantize_activations(ut, x, n_tokens, k, &mut up_act);
        }
        let (ga, ua): (&[u8], &[u8]) = if ut == gt {
            (&s.act[..n_tokens * arb], &s.act[..n_tokens * arb])
        } else {
            (&s.act, &up_act)
        };
        let (grb, urb) = (gate.row_bytes(), up.row_bytes());
        let rpt = if n_tokens == 1 {
            rows_per_gemv_task(n, grb + urb)
        } else {
            rows_per_task(n, grb + urb)
        };
        // Per task: [2, n_tokens, rows] (gate block, then up block).
        s.blocks.resize(2 * n_tokens * n, 0.0);
        let task = |ci: usize, blk: &mut [f32]| {
            let r0 = ci * rpt;
            let rows = blk.len() / (2 * n_tokens);
            let (g, u) = blk.split_at_mut(rows * n_tokens);
            let gw = &gate.data[r0 * grb..(r0 + rows) * grb];
            let uw = &up.data[r0 * urb..(r0 + rows) * urb];
            gemm(gate.ty, k, gw, rows, ga, n_tokens, g, rows);
            gemm(up.ty, k, uw, rows, ua, n_tokens, u, rows);
            silu_mul(g, u);
        };
        if n_tokens == 1 {
            // Decode (the dense layers' MLP): a spin region, as every one-token product.
            for_each_chunk(&mut s.blocks, 2 * rpt, task);
        } else {
            s.blocks
                .par_chunks_mut(2 * rpt * n_tokens)
                .enumerate()
                .for_each(|(ci, blk)| task(ci, blk));
        }
        // The gate halves (now silu(g)*u) into `out`.
        scatter_blocks(&s.blocks, 2, n, rpt, n_tokens, out);
    })
}

/// Row `r` of `w` widened to f32 into `out` (`w.k` values), e.g. one token
/// embedding. Types without a dequantizer leave `out` as zeros (the loader
/// only accepts types with kernels, which all have one).
pub fn row_to_f32(w: &MatView<'_>, r: usize, out: &mut [f32]) {
    let rb = w.row_bytes();
    if dequantize_row(w.ty, &w.data[r * rb..(r + 1) * rb], out).is_err() {
        out.iter_mut().for_each(|v| *v = 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight format against its dequantized rows in f64, with the
    /// activation quantization error the format implies.
    #[test]
    fn matmul_matches_dequantized_reference() {
        let (k, n, t) = (256usize, 37usize, 3usize);
        let w: Vec<f32> = (0..k * n)
            .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let x: Vec<f32> = (0..k * t)
            .map(|i| (((i * 104729) % 991) as f32 / 991.0 - 0.5) * 2.0)
            .collect();
        for (ty, tol) in [
            (GgmlType::F32, 1e-5f32),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 1e-2),
            (GgmlType::Q8_0, 2e-2),
            (GgmlType::Q4_K, 2e-2),
            (GgmlType::Q6_K, 2e-2),
        ] {
            let rb = ty.row_bytes(k as u64).unwrap() as usize;
            let mut bytes = vec![0u8; rb * n];
            for (dst, src) in bytes.chunks_mut(rb).zip(w.chunks(k)) {
                quantize_row(ty, src, dst).unwrap();
            }
            let view = MatView::new(ty, k, n, &bytes).unwrap();
            let mut deq = vec![0.0f32; k];
            let mut want = vec![0.0f32; t * n];
            for r in 0..n {
                row_to_f32(&view, r, &mut deq);
                for tt in 0..t {
                    want[tt * n + r] = deq
                        .iter()
                        .zip(&x[tt * k..][..k])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32;
                }
            }
            for nt in [1usize, t] {
                let mut got = vec![0.0f32; nt * n];
                matmul_view(&view, &x[..nt * k], nt, &mut got);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err < tol, "{}: n_tokens {nt}: max err {err}", ty.name());
            }
        }
    }

    /// The fused gate/up pass equals two matmuls and `silu_mul`, bit for bit,
    /// for one token and for batches spanning several row chunks (the largest
    /// scattered in parallel).
    #[test]
    fn gate_up_silu_matches_separate_matmuls() {
        let (k, n) = (64usize, 300usize);
        let mk = |seed: usize| -> Vec<f32> {
            (0..k * n)
                .map(|i| ((((i + seed) * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.3)
                .collect()
        };
        let (wg, wu) = (mk(1), mk(2));
        for ty in [GgmlType::F32, GgmlType::Q8_0] {
            let rb = ty.row_bytes(k as u64).unwrap() as usize;
            let q = |w: &[f32]| -> Vec<u8> {
                let mut b = vec![0u8; rb * n];
                for (d, s) in b.chunks_mut(rb).zip(w.chunks(k)) {
                    quantize_row(ty, s, d).unwrap();
                }
                b
            };
            let (bg, bu) = (q(&wg), q(&wu));
            let g = MatView::new(ty, k, n, &bg).unwrap();
            let u = MatView::new(ty, k, n, &bu).unwrap();
            for t in [1usize, 5, 230] {
                let x: Vec<f32> = (0..t * k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
                let mut want = vec![0.0f32; t * n];
                let mut up = vec![0.0f32; t * n];
                matmul_view(&g, &x, t, &mut want);
                matmul_view(&u, &x, t, &mut up);
                silu_mul(&mut want, &up);
                let mut got = vec![0.0f32; t * n];
                matmul_gate_up_silu(&g, &u, &x, t, &mut got);
                assert_eq!(got, want, "{} n_tokens {t}", ty.name());
            }
        }
    }

    /// Whole 16-row tiles (or all of `n`), no more tasks than asked for, and none over
    /// its byte share (the larger of GEMV_TASK_BYTES and two tasks per worker) by more
    /// than a tile.
    #[test]
    fn rows_per_gemv_task_is_whole_tiles_of_bounded_bytes() {
        let per_worker = 2 * rayon::current_num_threads().max(1);
        for n in [1usize, 7, 16, 17, 896, 1280, 6848, 129280] {
            for rb in [18usize, 720, 1088, 4 * 1360] {
                let r = rows_per_gemv_task(n, rb);
                assert!((1..=n).contains(&r), "{n} x {rb}: {r}");
                assert!(r == n || r.is_multiple_of(16), "{n} x {rb}: {r}");
                let tasks = n.div_ceil(r);
                assert!(tasks <= gemv_tasks(n * rb), "{n} x {rb}: {tasks} tasks");
                let share = GEMV_TASK_BYTES.max((n * rb).div_ceil(per_worker));
                assert!(r * rb <= share + 16 * rb, "{n} x {rb}: {r} rows");
            }
        }
    }

    #[test]
    fn rows_per_task_is_whole_tiles_and_bounded() {
        for (n, rb) in [
            (1usize, 10usize),
            (7, 1000),
            (1280, 1360),
            (129280, 1360),
            (64, 5120),
        ] {
            let r = rows_per_task(n, rb);
            assert!((1..=256).contains(&r) && r <= n, "{n} {rb}: {r}");
            assert!(r == n || r.is_multiple_of(16), "{n} {rb}: {r}");
        }
    }
}
