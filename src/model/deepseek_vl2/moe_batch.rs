//! The MoE layer over a batch of tokens (prefill): the routed experts and the shared
//! ones run together in four parallel regions per group of experts, instead of each
//! expert running its own matmuls.
//!
//! Why: a 512-token prompt gives each of Tiny's 64 experts ~48 tokens, about 1.5 ms of
//! GEMM per expert at 2 threads. As separate matmuls every expert had serial steps (its
//! tokens gathered and quantized, its outputs summed into the layer's) and two region
//! ends, where the thread that finished first waited; in `perf` over a 2-thread prefill
//! (`benches/perf_threads.py`) the second thread ran 89% of the calling thread's samples
//! (95.6% after this). Here the tokens are quantized once for all
//! experts, the tasks of every expert share one region (a thread done with one expert's
//! rows takes another's), and the weighted sum is the down pass's own epilogue.
//!
//! The gate/up tasks are larger than one expert's matmul would cut (up to 256 rows: the
//! region's parallelism comes from the experts, and each kernel call's fixed costs, such as
//! the activation sums, are shared by more rows): 8-18% faster at 8 and 16 threads on the
//! lent Xeon's AVX-512 and AVX2 tiers, level with AMX and on 2 cores (BENCHMARKS.md,
//! fourteenth session). A row's result does not depend on the call that computes it, and
//! each output element adds the experts in ascending id order, then the shared experts: the
//! per-expert loop's bits (tested against it in `moe.rs`).

use std::cell::Cell;
use std::ops::Range;

use quant::block::quantize_row;
use quant::kernels::{gemm, vec_dot_type};
use quant::GgmlType;

use crate::ops::spin_region::for_each_chunk;
use crate::ops::{block_row, scatter_blocks, silu_mul, ActsByFormat, MatView};

/// One expert MLP and the tokens routed to it: the unit of the batch path and of decode
/// ([`super::moe_token`], where a routed job holds its one token).
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub gate: MatView<'a>,
    pub up: MatView<'a>,
    pub down: MatView<'a>,
    /// A routed expert's (token, weight) pairs, tokens ascending; `None` for the shared
    /// experts (every token, weight 1).
    pub tokens: Option<&'a [(usize, f32)]>,
}

impl Job<'_> {
    fn m(&self, n: usize) -> usize {
        self.tokens.map_or(n, <[_]>::len)
    }

    /// Bytes of one hidden row quantized for the down matrix.
    pub(super) fn down_act_bytes(&self) -> usize {
        vec_dot_type(self.down.ty)
            .row_bytes(self.gate.n as u64)
            .unwrap_or(0) as usize
    }
}

/// Buffers of the batch path, kept between layers and forward passes.
#[derive(Default)]
pub(super) struct BatchScratch {
    /// The batch quantized once per activation format of the gate and up matrices (groups
    /// after a layer's first reuse it).
    x_acts: ActsByFormat,
    /// Each routed job's rows of those, gathered: gate's format, then up's if it differs.
    xs: Vec<u8>,
    /// `silu(gate) * up` per job: per task of rows `r0..r0 + rows`, `[tokens, rows]`.
    hidden: Vec<f32>,
    /// Each job's hidden rows quantized for its down matrix, `[tokens]` rows.
    h_act: Vec<u8>,
    /// The layer's output, `[tokens, rows]` per chunk of `down_rows` output rows.
    out_blocks: Vec<f32>,
    /// Output rows per chunk of `out_blocks` ([`down_chunk_rows`]).
    down_rows: usize,
}

/// Tokens per task when the hidden rows are quantized for the down matrices.
const QUANT_TOKENS: usize = 32;

thread_local! {
    /// A task's own floats (up block, hidden row, down outputs): taken while in use, so
    /// nothing is allocated per task once a worker has run one of each size.
    static TASK_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

fn with_task_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = TASK_BUF.with(Cell::take);
    buf.resize(len, 0.0);
    let r = f(&mut buf);
    TASK_BUF.with(|c| c.set(buf));
    r
}

/// Runs `jobs` over `x` (`n` tokens of `d`), adding `Σ w_j job_j(x)` in job order into
/// the scratch's output blocks: started at zero when `first`, else added to the earlier
/// groups' sums. [`finish`] then writes them out.
pub(super) fn run_group(
    jobs: &[Job<'_>],
    x: &[f32],
    n: usize,
    d: usize,
    first: bool,
    sc: &mut BatchScratch,
) {
    if first {
        sc.x_acts.reset();
        sc.down_rows = down_chunk_rows(d);
        sc.out_blocks.clear();
        sc.out_blocks.resize(n * d, 0.0);
    }
    if jobs.is_empty() {
        return;
    }
    for j in jobs {
        sc.x_acts.ensure(j.gate.ty, x, n, d);
        sc.x_acts.ensure(j.up.ty, x, n, d);
    }
    let act_row = |ty: GgmlType| vec_dot_type(ty).row_bytes(d as u64).unwrap_or(0) as usize;
    // Where each routed job's token rows go in `xs`: gate's format, then up's if it differs.
    let mut ranges = Vec::with_capacity(jobs.len());
    let mut at = 0;
    let mut next = |len: usize| {
        at += len;
        at - len..at
    };
    for j in jobs {
        ranges.push(j.tokens.map(|toks| {
            let g = next(toks.len() * act_row(j.gate.ty));
            let u = match same_act(j) {
                true => g.clone(),
                false => next(toks.len() * act_row(j.up.ty)),
            };
            (g, u)
        }));
    }
    // The rows gathered, a task per range.
    sc.xs.resize(at, 0);
    let mut tasks = Vec::new();
    let mut rest = &mut sc.xs[..];
    for (j, r) in jobs.iter().zip(&ranges) {
        let (Some(toks), Some((g, u))) = (j.tokens, r) else {
            continue;
        };
        let gate = (j.gate.ty, g.len());
        let up = (j.up.ty, if same_act(j) { 0 } else { u.len() });
        for (ty, len) in [gate, up].into_iter().filter(|&(_, len)| len > 0) {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(len);
            tasks.push(Some((toks, sc.x_acts.get(ty), act_row(ty), dst)));
            rest = tail;
        }
    }
    for_each_chunk(&mut tasks, 1, |_, t| {
        let Some((toks, src, arb, dst)) = t[0].take() else {
            return;
        };
        for (&(t, _), dst) in toks.iter().zip(dst.chunks_mut(arb.max(1))) {
            dst.copy_from_slice(&src[t * arb..][..arb]);
        }
    });
    let acts: Vec<(&[u8], &[u8])> = jobs
        .iter()
        .zip(&ranges)
        .map(|(j, r)| match r {
            Some((g, u)) => (&sc.xs[g.clone()], &sc.xs[u.clone()]),
            None => (sc.x_acts.get(j.gate.ty), sc.x_acts.get(j.up.ty)),
        })
        .collect();
    let unit = task_unit(jobs, n);
    gate_up(jobs, &acts, n, d, unit, &mut sc.hidden);
    let h_ranges = quantize_hidden(jobs, n, unit, &sc.hidden, &mut sc.h_act);
    down_and_sum(
        jobs,
        n,
        &sc.h_act,
        &h_ranges,
        sc.down_rows,
        &mut sc.out_blocks,
    );
}

/// Output rows per chunk of the down pass: 4 chunks per worker (equal work each: every
/// chunk runs every job), whole 16-row tiles, at most 256. Each expert's own matmul split
/// (the first version's) gave 16 chunks at any thread count up to 16, one per worker at 16;
/// this measured level on 2 cores and ahead in 8 of 12 pairs at 8-16 threads on the lent
/// Xeon (median +6%; BENCHMARKS.md, fourteenth session).
fn down_chunk_rows(d: usize) -> usize {
    let rows = d / (rayon::current_num_threads() * 4).max(1);
    (rows.clamp(16, 256).div_ceil(16) * 16).min(d.max(1))
}

/// Whether a job's up matrix pairs with gate's activation format (its rows serve both).
fn same_act(j: &Job<'_>) -> bool {
    vec_dot_type(j.gate.ty) == vec_dot_type(j.up.ty)
}

/// Hidden rows per gate/up task of a job of `m` tokens: about `unit` row-tokens (the
/// region's share of one task), whole 16-row tiles, 16 to [`MAX_TASK_ROWS`].
fn gate_up_rows(j: &Job<'_>, m: usize, unit: usize) -> usize {
    let rows = (unit / m.max(1)).clamp(16, MAX_TASK_ROWS);
    (rows.div_ceil(16) * 16).min(j.gate.n.max(1))
}

/// Row-tokens per gate/up task: about 8 tasks per worker over the whole region.
fn task_unit(jobs: &[Job<'_>], n: usize) -> usize {
    let total: usize = jobs.iter().map(|j| j.m(n) * j.gate.n).sum();
    total / (rayon::current_num_threads() * 8).max(1)
}

/// Hidden rows per gate/up task at most.
const MAX_TASK_ROWS: usize = 256;

/// Region 1: every job's `silu(x·gate) * (x·up)` into `hidden`, tasks of a job's row
/// range, the largest first (so the last ones to finish are short).
fn gate_up(
    jobs: &[Job<'_>],
    acts: &[(&[u8], &[u8])],
    n: usize,
    d: usize,
    unit: usize,
    hidden: &mut Vec<f32>,
) {
    let total: usize = jobs.iter().map(|j| j.m(n) * j.gate.n).sum();
    hidden.resize(total, 0.0);
    let mut tasks = Vec::new();
    let mut rest = &mut hidden[..];
    for (ji, j) in jobs.iter().enumerate() {
        let (m, f) = (j.m(n), j.gate.n);
        let rpt = gate_up_rows(j, m, unit);
        for r0 in (0..f).step_by(rpt) {
            let rows = rpt.min(f - r0);
            let (blk, tail) = std::mem::take(&mut rest).split_at_mut(m * rows);
            tasks.push(Some((ji, r0, blk)));
            rest = tail;
        }
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.as_ref().map_or(0, |(_, _, b)| b.len())));
    for_each_chunk(&mut tasks, 1, |_, t| {
        let Some((ji, r0, g)) = t[0].take() else {
            return;
        };
        let (j, (ga, ua)) = (&jobs[ji], acts[ji]);
        let m = j.m(n);
        let rows = g.len() / m;
        let (grb, urb) = (j.gate.row_bytes(), j.up.row_bytes());
        let gw = &j.gate.data[r0 * grb..(r0 + rows) * grb];
        let uw = &j.up.data[r0 * urb..(r0 + rows) * urb];
        with_task_buf(m * rows, |u| {
            gemm(j.gate.ty, d, gw, rows, ga, m, g, rows);
            gemm(j.up.ty, d, uw, rows, ua, m, u, rows);
            silu_mul(g, u);
        });
    });
}

/// Region 2: each job's hidden rows (scattered over its gate/up tasks' blocks) quantized
/// for its down matrix, in tasks of [`QUANT_TOKENS`] tokens; returns each job's rows'
/// range in `h_act`.
fn quantize_hidden(
    jobs: &[Job<'_>],
    n: usize,
    unit: usize,
    hidden: &[f32],
    h_act: &mut Vec<u8>,
) -> Vec<Range<usize>> {
    let total: usize = jobs.iter().map(|j| j.m(n) * j.down_act_bytes()).sum();
    h_act.resize(total, 0);
    let mut ranges = Vec::with_capacity(jobs.len());
    let mut tasks = Vec::new();
    let (mut rest, mut h0, mut at) = (&mut h_act[..], 0, 0);
    for (ji, j) in jobs.iter().enumerate() {
        let (m, rb) = (j.m(n), j.down_act_bytes());
        for t0 in (0..m).step_by(QUANT_TOKENS) {
            let count = QUANT_TOKENS.min(m - t0);
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(count * rb);
            tasks.push(Some((ji, h0, t0, dst)));
            rest = tail;
        }
        h0 += m * j.gate.n;
        ranges.push(at..at + m * rb);
        at += m * rb;
    }
    for_each_chunk(&mut tasks, 1, |_, t| {
        let Some((ji, h0, t0, dst)) = t[0].take() else {
            return;
        };
        let j = &jobs[ji];
        let (m, f) = (j.m(n), j.gate.n);
        let rpt = gate_up_rows(j, m, unit);
        let h = &hidden[h0..h0 + m * f];
        with_task_buf(f, |row| {
            for (i, dst) in dst.chunks_mut(j.down_act_bytes()).enumerate() {
                block_row(h, 1, rpt, m, t0 + i, row);
                // Cannot fail: the hidden width is the down matrix's row length.
                let _ = quantize_row(vec_dot_type(j.down.ty), row, dst);
            }
        });
    });
    ranges
}

/// Region 3: per chunk of `rpt` output rows, every job's down rows over its tokens, each
/// token's outputs added into the chunk's `[tokens, rows]` block with the job's weight,
/// in job order.
fn down_and_sum(
    jobs: &[Job<'_>],
    n: usize,
    h_act: &[u8],
    offsets: &[Range<usize>],
    rpt: usize,
    blocks: &mut [f32],
) {
    for_each_chunk(blocks, rpt * n, |ci, blk| {
        let r0 = ci * rpt;
        let rows = blk.len() / n;
        for (j, act) in jobs.iter().zip(offsets) {
            let (m, rb) = (j.m(n), j.down.row_bytes());
            let dw = &j.down.data[r0 * rb..(r0 + rows) * rb];
            with_task_buf(m * rows, |y| {
                gemm(
                    j.down.ty,
                    j.down.k,
                    dw,
                    rows,
                    &h_act[act.clone()],
                    m,
                    y,
                    rows,
                );
                match j.tokens {
                    Some(toks) => {
                        for (&(t, wt), y) in toks.iter().zip(y.chunks(rows)) {
                            let o = &mut blk[t * rows..][..rows];
                            o.iter_mut().zip(y).for_each(|(o, v)| *o += wt * v);
                        }
                    }
                    None => blk.iter_mut().zip(y.iter()).for_each(|(o, v)| *o += v),
                }
            });
        }
    });
}

/// `out` (`[n, d]`) from the output blocks of the layer's groups.
pub(super) fn finish(sc: &BatchScratch, n: usize, d: usize, out: &mut [f32]) {
    scatter_blocks(&sc.out_blocks, 1, d, sc.down_rows, n, out);
}
