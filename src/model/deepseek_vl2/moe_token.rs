//! The MoE layer for one token (decode): every chosen expert and the shared ones in two
//! parallel regions, the weight rows cut by bytes rather than by expert.
//!
//! Why not the batch path ([`super::moe_batch`]) with one token: decode allocates
//! nothing (fixed arrays here; the batch path builds its task lists per call), has no
//! token rows to gather or quantize per expert (two regions, not four), and streams bytes:
//! the gate/up rows of all jobs are laid back to back and cut into ranges of equal bytes
//! ([`gate_up_cuts`]; the routed and shared experts' types may differ), the down pass
//! splits the output rows. Both paths take the same [`Job`]s and add the experts in the
//! same order (ascending id, then shared), so a token gives the same bits either way
//! (tested in `moe.rs`).

use quant::block::quantize_row;
use quant::kernels::{gemm, vec_dot_type};
use quant::GgmlType;

use super::moe_batch::Job;
use crate::ops::spin_region::for_each_chunk;
use crate::ops::{gemv_tasks, rows_per_gemv_task, silu_mul, ActsByFormat};

/// Jobs (routed and shared experts) one token's fixed arrays hold: a model routing each
/// token to more than `MAX_JOBS - 1` experts takes the batch path (same sums, more
/// parallel regions).
pub(super) const MAX_JOBS: usize = 16;

/// Decode's buffers, kept between tokens so that a step allocates nothing.
#[derive(Default)]
pub(super) struct TokenScratch {
    /// The token quantized once per activation format.
    x_acts: ActsByFormat,
    /// Every job's `silu(gate) * up` row, back to back.
    hidden: Vec<f32>,
    /// Every job's hidden row quantized for its down matrix.
    h_act: Vec<u8>,
}

/// Hidden rows of the stack buffer for `up` in the gate/up pass: a task's rows of
/// one job go through the kernels in pieces of at most this many.
const SUB_ROWS: usize = 512;

/// Every expert of one token in two parallel regions instead of three per
/// expert: (1) the gate/up rows of all experts, split into ranges of equal
/// weight bytes ([`gate_up_cuts`]), writing `silu(g) * u`; (2) the output
/// rows, each task summing all experts' down rows for its slice of `out`
/// (routed in job order, then shared, as the batch path adds them).
pub(super) fn run(jobs: &[Job<'_>], x: &[f32], out: &mut [f32], sc: &mut TokenScratch) {
    let k = x.len();
    // The token once per activation format (routed and shared types may differ).
    sc.x_acts.reset();
    for j in jobs {
        sc.x_acts.ensure(j.gate.ty, x, 1, k);
        sc.x_acts.ensure(j.up.ty, x, 1, k);
    }
    let act = |ty: GgmlType| sc.x_acts.get(ty);
    // (1) The gate/up rows of all jobs, back to back in `hidden`, cut into tasks of about
    // equal weight bytes.
    let total: usize = jobs.iter().map(|j| j.gate.n).sum();
    sc.hidden.resize(total, 0.0);
    let mut cuts = [0usize; MAX_GATE_UP_TASKS + 1];
    let bytes = gate_up_bytes(jobs);
    let n_tasks = gate_up_cuts(jobs, bytes, gemv_tasks(bytes), &mut cuts);
    let mut tasks: [Option<(usize, &mut [f32])>; MAX_GATE_UP_TASKS] = std::array::from_fn(|_| None);
    let mut rest = &mut sc.hidden[..];
    for (t, c) in tasks.iter_mut().zip(cuts.windows(2)).take(n_tasks) {
        let (h, tail) = std::mem::take(&mut rest).split_at_mut(c[1] - c[0]);
        *t = Some((c[0], h));
        rest = tail;
    }
    for_each_chunk(&mut tasks[..n_tasks], 1, |_, t| {
        let Some((first, h)) = t[0].take().filter(|(_, h)| !h.is_empty()) else {
            return;
        };
        // The task's rows, job by job, in pieces of at most SUB_ROWS.
        let (mut jb, mut r) = (0, first);
        while r >= jobs[jb].gate.n {
            r -= jobs[jb].gate.n;
            jb += 1;
        }
        let mut u = [0.0f32; SUB_ROWS];
        let mut done = 0;
        while done < h.len() {
            let j = &jobs[jb];
            let rows = (j.gate.n - r).min(SUB_ROWS).min(h.len() - done);
            let (grb, urb) = (j.gate.row_bytes(), j.up.row_bytes());
            let gw = &j.gate.data[r * grb..(r + rows) * grb];
            let uw = &j.up.data[r * urb..(r + rows) * urb];
            let hs = &mut h[done..done + rows];
            gemm(j.gate.ty, k, gw, rows, act(j.gate.ty), 1, hs, rows);
            gemm(j.up.ty, k, uw, rows, act(j.up.ty), 1, &mut u[..rows], rows);
            silu_mul(hs, &u[..rows]);
            done += rows;
            r += rows;
            if r == j.gate.n {
                (jb, r) = (jb + 1, 0);
            }
        }
    });
    // Hidden rows quantized for their down matrices, back to back.
    let bytes: usize = jobs.iter().map(Job::down_act_bytes).sum();
    sc.h_act.resize(bytes, 0);
    let (mut h0, mut b0) = (0, 0);
    for j in jobs {
        let (nb, f) = (j.down_act_bytes(), j.gate.n);
        // Cannot fail: the hidden width is the down matrix's row length.
        let dst = &mut sc.h_act[b0..b0 + nb];
        let _ = quantize_row(vec_dot_type(j.down.ty), &sc.hidden[h0..h0 + f], dst);
        h0 += f;
        b0 += nb;
    }
    // (2) Output rows; each task sums every expert's rows for its slice.
    let h_act = &sc.h_act;
    let down_row_bytes: usize = jobs.iter().map(|j| j.down.row_bytes()).sum();
    let rpt = rows_per_gemv_task(out.len(), down_row_bytes).min(MAX_DOWN_ROWS);
    for_each_chunk(out, rpt, |ci, o| {
        let r0 = ci * rpt;
        let rows = o.len();
        let mut y = [0.0f32; MAX_DOWN_ROWS];
        let y = &mut y[..rows];
        o.iter_mut().for_each(|v| *v = 0.0);
        let mut b0 = 0;
        for j in jobs {
            let nb = j.down_act_bytes();
            let rb = j.down.row_bytes();
            let dw = &j.down.data[r0 * rb..(r0 + rows) * rb];
            gemm(
                j.down.ty,
                j.down.k,
                dw,
                rows,
                &h_act[b0..b0 + nb],
                1,
                y,
                rows,
            );
            b0 += nb;
            // A routed job's one (token, weight) pair; the shared experts add with weight 1.
            match j.tokens.and_then(<[_]>::first) {
                Some(&(_, wt)) => o.iter_mut().zip(y.iter()).for_each(|(o, v)| *o += wt * v),
                None => o.iter_mut().zip(y.iter()).for_each(|(o, v)| *o += v),
            }
        }
    });
}

/// Output rows per task of the decode down pass (a stack buffer).
const MAX_DOWN_ROWS: usize = 1024;

/// Tasks of the decode gate/up pass at most (a stack array): Small's ~26 MB of gate/up
/// weights per token and layer in [`GEMV_TASK_BYTES`] is ~200.
///
/// [`GEMV_TASK_BYTES`]: crate::ops::GEMV_TASK_BYTES
const MAX_GATE_UP_TASKS: usize = 256;

/// A job's gate and up bytes per hidden row.
fn gate_up_row_bytes(j: &Job<'_>) -> usize {
    j.gate.row_bytes() + j.up.row_bytes()
}

/// The gate and up weight bytes of all jobs.
fn gate_up_bytes(jobs: &[Job<'_>]) -> usize {
    jobs.iter().map(|j| j.gate.n * gate_up_row_bytes(j)).sum()
}

/// Cuts the jobs' hidden rows, back to back, into at most `tasks` (and
/// [`MAX_GATE_UP_TASKS`]) ranges of about equal gate + up weight bytes (`bytes`
/// in all, [`gate_up_bytes`]), cut
/// only between 16-row tiles of a job or at a job's end; `cuts[..=n]`
/// receives the first row of every range and then the total row count, and
/// `n` is returned.
///
/// Bytes, not rows, because decode streams bytes and a recipe's shared
/// experts may be of a wider type than its routed ones: in Tiny Q4_0 the
/// routed experts' 896-row chunks are 1.3 MB of Q4_0 and the shared experts'
/// 2.4 MB of Q8_0, so equal-row tasks left one of two threads waiting on
/// ~40 % of every layer's weight bytes.
fn gate_up_cuts(
    jobs: &[Job<'_>],
    bytes: usize,
    tasks: usize,
    cuts: &mut [usize; MAX_GATE_UP_TASKS + 1],
) -> usize {
    let tasks = tasks.clamp(1, MAX_GATE_UP_TASKS);
    cuts[0] = 0;
    let mut n = 1;
    let (mut row0, mut before) = (0, 0);
    for j in jobs {
        let mut r = 0;
        while r < j.gate.n {
            // A cut where the bytes before this tile reach the next range's start.
            if n < tasks && before >= (bytes * n).div_ceil(tasks) {
                cuts[n] = row0 + r;
                n += 1;
            }
            let rows = 16.min(j.gate.n - r);
            before += rows * gate_up_row_bytes(j);
            r += rows;
        }
        row0 += j.gate.n;
    }
    cuts[n] = row0;
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::MatView;

    /// The gate/up ranges cover every row once, cut only at 16-row tiles or a
    /// job's end, and each holds at most its share of the bytes plus one tile.
    #[test]
    fn gate_up_cuts_balance_bytes_at_tile_boundaries() {
        let mat = |ty: GgmlType, n: usize, bytes: &'static [u8]| MatView {
            ty,
            k: 256,
            n,
            data: bytes,
        };
        static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
        let job = |ty, n| Job {
            gate: mat(ty, n, &ZEROS),
            up: mat(ty, n, &ZEROS),
            down: mat(ty, 0, &ZEROS),
            tokens: None,
        };
        // Tiny's decode: 6 routed Q4_0 experts of 896 rows, the shared pair
        // of 1792 Q8_0 rows; and an odd width.
        let mut jobs = vec![job(GgmlType::Q4_0, 896); 6];
        jobs.push(job(GgmlType::Q8_0, 1792));
        jobs.push(job(GgmlType::Q4_0, 40));
        let rb = gate_up_row_bytes;
        let total_bytes: usize = jobs.iter().map(|j| j.gate.n * rb(j)).sum();
        let mut ends = vec![0usize];
        for j in &jobs {
            ends.push(ends.last().unwrap() + j.gate.n);
        }
        for tasks in [1usize, 2, 4, 7, 16, 64, 200] {
            let mut cuts = [0usize; MAX_GATE_UP_TASKS + 1];
            let n = gate_up_cuts(&jobs, gate_up_bytes(&jobs), tasks, &mut cuts);
            assert!(n >= 1 && n <= tasks.min(MAX_GATE_UP_TASKS), "{tasks}: {n}");
            assert_eq!((cuts[0], cuts[n]), (0, *ends.last().unwrap()));
            let share = total_bytes.div_ceil(tasks.min(MAX_GATE_UP_TASKS));
            for w in cuts[..=n].windows(2) {
                assert!(w[0] < w[1], "{tasks}: empty range at {}", w[0]);
                let job_start = ends[ends.iter().rposition(|&s| s <= w[0]).unwrap()];
                assert!(
                    (w[0] - job_start).is_multiple_of(16) || ends.contains(&w[0]),
                    "{tasks}: cut {} inside a tile",
                    w[0]
                );
                // The range's bytes: row by row through the jobs.
                let bytes: usize = (w[0]..w[1])
                    .map(|r| {
                        let jb = ends.iter().rposition(|&s| s <= r).unwrap();
                        rb(&jobs[jb])
                    })
                    .sum();
                let tile = 16 * jobs.iter().map(rb).max().unwrap();
                assert!(bytes <= share + tile, "{tasks}: {bytes} > {share} + {tile}");
            }
        }
    }
}
