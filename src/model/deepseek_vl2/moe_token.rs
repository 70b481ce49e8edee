//! The MoE layer for one token (decode): every chosen expert and the shared ones in two
//! parallel regions, the weight rows cut by bytes rather than by expert.
//!
//! Why not the batch path ([`super::moe_batch`]) with one token: decode allocates
//! nothing (fixed arrays here; the batch path builds its task lists per call), has no
//! token rows to gather or quantize per expert (two regions, not four), and streams bytes:
//! in both passes the rows of all jobs are laid back to back and cut into ranges of equal
//! weight bytes ([`byte_cuts`]; the routed and shared experts' types may differ), so a
//! task reads long runs of one matrix. Both paths take the same [`Job`]s and add the
//! experts in the same order (ascending id, then shared), so a token gives the same bits
//! either way (tested in `moe.rs`).

use quant::block::quantize_row;
use quant::kernels::{gemm, vec_dot_type};
use quant::GgmlType;

use super::moe_batch::Job;
use crate::ops::spin_region::for_each_chunk;
use crate::ops::{gemv_tasks, silu_mul, ActsByFormat};

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
    /// Every job's down output row, back to back (summed into the layer's output after
    /// the down pass).
    y: Vec<f32>,
}

/// Hidden rows of the stack buffer for `up` in the gate/up pass: a task's rows of
/// one job go through the kernels in pieces of at most this many.
const SUB_ROWS: usize = 512;

/// Every expert of one token in two parallel regions instead of three per
/// expert: (1) the gate/up rows of all experts, split into ranges of equal
/// weight bytes ([`byte_cuts`]), writing `silu(g) * u`; (2) the down rows of all
/// experts, split the same way, writing each expert's output row; then `out`
/// sums those rows (routed in job order, then shared, as the batch path adds them).
pub(super) fn run(jobs: &[Job<'_>], x: &[f32], out: &mut [f32], sc: &mut TokenScratch) {
    let k = x.len();
    assert!(
        jobs.iter().all(|j| j.down.n == out.len()),
        "moe token: every down matrix gives one output row"
    );
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
    let mut cuts = [0usize; MAX_TASKS + 1];
    let gate_up = |j: &Job<'_>| (j.gate.n, gate_up_row_bytes(j));
    let bytes = job_bytes(jobs, gate_up);
    let n_tasks = byte_cuts(jobs, gate_up, bytes, gemv_tasks(bytes), &mut cuts);
    let mut tasks = task_slices(&cuts[..=n_tasks], &mut sc.hidden);
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
    // Hidden rows quantized for their down matrices, back to back: job i's at
    // `act_at[i]..act_at[i + 1]`.
    let mut act_at = [0usize; MAX_JOBS + 1];
    for (i, j) in jobs.iter().enumerate() {
        act_at[i + 1] = act_at[i] + j.down_act_bytes();
    }
    sc.h_act.resize(act_at[jobs.len()], 0);
    let mut h0 = 0;
    for (i, j) in jobs.iter().enumerate() {
        let f = j.gate.n;
        // Cannot fail: the hidden width is the down matrix's row length.
        let dst = &mut sc.h_act[act_at[i]..act_at[i + 1]];
        let _ = quantize_row(vec_dot_type(j.down.ty), &sc.hidden[h0..h0 + f], dst);
        h0 += f;
    }
    // (2) The down rows of all jobs, back to back in `y` (job after job, each an output
    // row), cut into tasks of about equal weight bytes, so a task reads long runs of one
    // matrix. (Cut by output rows instead, each task read a short piece of every expert's
    // matrix, in Tiny six routed pieces of 16 KB, each a new stream: the pass took 9-13 %
    // longer on a Zen 4, BENCHMARKS.md, nineteenth session.)
    let n_out = out.len();
    sc.y.resize(jobs.len() * n_out, 0.0);
    let down = |j: &Job<'_>| (j.down.n, j.down.row_bytes());
    let bytes = job_bytes(jobs, down);
    let n_tasks = byte_cuts(jobs, down, bytes, gemv_tasks(bytes), &mut cuts);
    let mut tasks = task_slices(&cuts[..=n_tasks], &mut sc.y);
    let h_act = &sc.h_act;
    for_each_chunk(&mut tasks[..n_tasks], 1, |_, t| {
        let Some((first, y)) = t[0].take().filter(|(_, y)| !y.is_empty()) else {
            return;
        };
        // The task's rows, job by job (every job's down matrix has `n_out` rows).
        let (mut jb, mut r) = (first / n_out, first % n_out);
        let mut done = 0;
        while done < y.len() {
            let j = &jobs[jb];
            let rows = (n_out - r).min(y.len() - done);
            let rb = j.down.row_bytes();
            let dw = &j.down.data[r * rb..(r + rows) * rb];
            let x = &h_act[act_at[jb]..act_at[jb + 1]];
            gemm(
                j.down.ty,
                j.down.k,
                dw,
                rows,
                x,
                1,
                &mut y[done..done + rows],
                rows,
            );
            done += rows;
            (jb, r) = (jb + 1, 0);
        }
    });
    // Each output the sum of the jobs' rows in job order; a routed job's one (token,
    // weight) pair, the shared experts with weight 1.
    out.fill(0.0);
    for (j, y) in jobs.iter().zip(sc.y.chunks_exact(n_out)) {
        match j.tokens.and_then(<[_]>::first) {
            Some(&(_, wt)) => out.iter_mut().zip(y).for_each(|(o, v)| *o += wt * v),
            None => out.iter_mut().zip(y).for_each(|(o, v)| *o += v),
        }
    }
}

/// Tasks of a decode pass at most (a stack array): Small's ~26 MB of gate/up weights per
/// token and layer in [`GEMV_TASK_BYTES`] is ~200.
///
/// [`GEMV_TASK_BYTES`]: crate::ops::GEMV_TASK_BYTES
const MAX_TASKS: usize = 256;

/// A job's gate and up bytes per hidden row.
fn gate_up_row_bytes(j: &Job<'_>) -> usize {
    j.gate.row_bytes() + j.up.row_bytes()
}

/// The weight bytes of all jobs in one pass, whose rows and bytes per row of a job
/// `rows_of` gives.
fn job_bytes(jobs: &[Job<'_>], rows_of: impl Fn(&Job<'_>) -> (usize, usize)) -> usize {
    jobs.iter()
        .map(|j| {
            let (n, rb) = rows_of(j);
            n * rb
        })
        .sum()
}

/// Cuts the jobs' rows of one pass (`rows_of`: a job's rows and weight bytes per row),
/// back to back, into at most `tasks` (and [`MAX_TASKS`]) ranges of about equal
/// weight bytes (`bytes` in all, [`job_bytes`]), cut only between 16-row tiles of a
/// job or at a job's end; `cuts[..=n]` receives the first row of every range and then
/// the total row count, and `n` is returned.
///
/// Bytes, not rows, because decode streams bytes and a recipe's shared
/// experts may be of a wider type than its routed ones: in Tiny Q4_0 the
/// routed experts' 896-row chunks are 1.3 MB of Q4_0 and the shared experts'
/// 2.4 MB of Q8_0, so equal-row tasks left one of two threads waiting on
/// ~40 % of every layer's weight bytes.
fn byte_cuts(
    jobs: &[Job<'_>],
    rows_of: impl Fn(&Job<'_>) -> (usize, usize),
    bytes: usize,
    tasks: usize,
    cuts: &mut [usize; MAX_TASKS + 1],
) -> usize {
    let tasks = tasks.clamp(1, MAX_TASKS);
    cuts[0] = 0;
    let mut n = 1;
    let (mut row0, mut before) = (0, 0);
    for j in jobs {
        let (n_rows, rb) = rows_of(j);
        let mut r = 0;
        while r < n_rows {
            // A cut where the bytes before this tile reach the next range's start.
            if n < tasks && before >= (bytes * n).div_ceil(tasks) {
                cuts[n] = row0 + r;
                n += 1;
            }
            let rows = 16.min(n_rows - r);
            before += rows * rb;
            r += rows;
        }
        row0 += n_rows;
    }
    cuts[n] = row0;
    n
}

/// The tasks of the ranges `cuts` (first rows, then the end): each its first row and
/// its slice of `out`, whose rows are the jobs' rows back to back.
fn task_slices<'a>(
    cuts: &[usize],
    out: &'a mut [f32],
) -> [Option<(usize, &'a mut [f32])>; MAX_TASKS] {
    let mut tasks: [Option<(usize, &mut [f32])>; MAX_TASKS] = std::array::from_fn(|_| None);
    let mut rest = &mut out[..];
    for (t, c) in tasks.iter_mut().zip(cuts.windows(2)) {
        let (o, tail) = std::mem::take(&mut rest).split_at_mut(c[1] - c[0]);
        *t = Some((c[0], o));
        rest = tail;
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::MatView;

    /// The gate/up ranges cover every row once, cut only at 16-row tiles or a
    /// job's end, and each holds at most its share of the bytes plus one tile.
    #[test]
    fn byte_cuts_balance_bytes_at_tile_boundaries() {
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
            let mut cuts = [0usize; MAX_TASKS + 1];
            let gate_up = |j: &Job<'_>| (j.gate.n, gate_up_row_bytes(j));
            let n = byte_cuts(&jobs, gate_up, job_bytes(&jobs, gate_up), tasks, &mut cuts);
            assert!(n >= 1 && n <= tasks.min(MAX_TASKS), "{tasks}: {n}");
            assert_eq!((cuts[0], cuts[n]), (0, *ends.last().unwrap()));
            let share = total_bytes.div_ceil(tasks.min(MAX_TASKS));
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
