//! Causal scaled-dot-product attention over a cache of keys and values.
//!
//! One routine serves plain multi-head attention (n_kv_head == n_head) and
//! the absorbed MLA form, which is multi-query attention with a single shared
//! key `[c; k_rope]` and the latent `c` as the value (DEEPSEEK-VL2.md §7.10):
//! there the value is a prefix of the key row, which [`KvView`]'s strides
//! express without copying.
//!
//! Two paths:
//! - prefill ([`TILED_MIN`] queries or more): per task a block of [`QB`] queries of one
//!   head, flash-style (online softmax over steps of [`KS`] keys, no score matrix over the
//!   sequence). The block's queries are transposed once (`qt[d][i]`), so the score tile is
//!   a register tile of [`R`] keys x 32 queries that broadcasts `k[j][d]` straight from the
//!   cache rows and loads a vector of 16 queries' `q[i][d]` (no packing of the cache); the
//!   softmax then works on whole vectors of queries (max, `exp`, sums lane-wise, no
//!   horizontal reductions), and `P·V` is a register tile of [`R`] queries x vectors of
//!   `d_v`, broadcasting the probabilities. Before, each (query, key) took a dot product
//!   with a horizontal sum, a libm `exp` and an axpy: ~9% of a 1,034-token TTFT's samples
//!   for arithmetic worth ~1% at the FMA rate.
//! - fewer than [`TILED_MIN`] queries over fewer than [`SPLIT_MIN`] positions: one task per
//!   head, its queries one at a time: a dot product per key, the exact two-pass softmax and
//!   axpys over the value rows; at one query the tiles' lanes would be mostly empty.
//! - the same over a longer cache (decode, or a short chat turn, after an image prompt):
//!   tasks of [`SPLIT_CHUNK`] positions with every query and head at once, in two parallel
//!   regions (scores and their maxima; then probabilities and value sums), combined in
//!   chunk order. A task per head read one head's slice of every cache row, a 512-byte
//!   piece every 5 KB for Tiny's MHA, which the prefetchers do not follow, once per query:
//!   at 1,024 positions decode read the cache at about half the memory's speed. Here each
//!   task reads whole rows in order, once for all the queries and heads that share them
//!   (MLA's 16 heads read the one latent row once, not 16 times). The scores, maxima and
//!   probabilities are the per-head path's; only the sums of the probabilities and of the
//!   weighted values are added per chunk first.
//!
//! All three are one body compiled three times (baseline with the tiles' scalar twins,
//! AVX2+FMA+F16C, AVX-512F), picked at run time; every build does the same f32 operations in
//! the same order (fused multiply-adds in the products, `t` ascending, and the shared
//! [`exp_approx`]), so they give the same bits (tested).
//!
//! An f16 cache (`--cache-type f16`) is read through the same loops: a query block widens
//! each step's keys and values of its head (exactly) into its scratch, one query its head's
//! rows, and the position-split path each row it reads again, or in registers as it reads
//! a row once; then the same f32 arithmetic runs, so attention over an f16 cache gives the
//! bits it gives over an f32 cache holding the same rounded values (tested).

use half::f16;
use rayon::prelude::*;

use super::exp_approx;
use super::spin_region::for_each_chunk;
use super::tiles::{scalar_tile, Bcast};
use crate::kv_cache::Rows;

/// Keys and values for positions `0..len`, row-major with arbitrary strides.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    /// Key rows: key of kv head `g` at position `s` is
    /// `k[s * k_stride + g * d_k ..][..d_k]`.
    pub k: Rows<'a>,
    pub k_stride: usize,
    /// Value rows: `v[s * v_stride + g * d_v ..][..d_v]`.
    pub v: Rows<'a>,
    pub v_stride: usize,
    pub n_kv_head: usize,
    pub d_k: usize,
    pub d_v: usize,
}

/// Queries per prefill task: the lanes of two 16-float vectors of scores per key.
const QB: usize = 32;
/// Keys per online-softmax step: a `KS x QB` score tile (8 KiB, in L1 with the block's
/// accumulators).
const KS: usize = 64;
/// Rows of the register tiles: keys of the score tile, queries of the `P·V` tile (with two
/// 16-float chunks, 16 accumulators of the 32 zmm registers).
const R: usize = 8;
/// Calls with fewer queries take the per-query path: a block of `QB` lanes would be mostly
/// padding (per key, the tiles cost about as much as 16 single-query dot products).
const TILED_MIN: usize = 16;
/// Fewer than [`TILED_MIN`] queries over this many positions or more take the
/// position-split path (below it, a task per head is as fast: the rows are few and cached,
/// and the split adds a region).
const SPLIT_MIN: usize = 256;
/// Positions per task of the position-split path: fixed, so results do not depend on the
/// thread count.
const SPLIT_CHUNK: usize = 64;

/// Per-worker buffers, kept per thread between calls; taken out while in use so a nested
/// call on the same thread cannot alias them.
#[derive(Default)]
struct Scratch {
    /// The block's queries transposed, `qt[d * QB + i]` (per-query path: unused).
    qt: Vec<f32>,
    /// Scores, then probabilities: `[KS][QB]` per step (per-query path: one per key).
    s: Vec<f32>,
    /// Unnormalised outputs, `[QB][d_v]`.
    acc: Vec<f32>,
    /// An f16 cache's rows that a task reads more than once, widened (keys; values).
    kf: Vec<f32>,
    vf: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// What every task of one call reads.
struct Job<'a> {
    q: &'a [f32],
    n_tokens: usize,
    n_head: usize,
    /// Query heads per kv head.
    group: usize,
    kv: &'a KvView<'a>,
    pos0: usize,
    scale: f32,
}

/// A build of [`attend_body`]: runs one task into its output.
type Build = fn(&Job<'_>, Task<'_>, &mut Scratch, &mut [f32]);

/// One task and its output `dst`.
#[derive(Clone, Copy)]
enum Task<'a> {
    /// Queries `t0..t0 + rows` of head `h`, one at a time (per-query path); `dst` is
    /// `[rows, d_v]`.
    Queries { t0: usize, h: usize },
    /// Queries `t0..t0 + rows` (`QB`, fewer at the end) of head `h` as one block.
    Block { t0: usize, h: usize },
    /// The queries' scores against positions `c * SPLIT_CHUNK..` (at most
    /// [`SPLIT_CHUNK`]) that they see, every head: `dst` is `[positions][n_tokens * n_head]`,
    /// then the chunk's maximum per query and head.
    Scores { c: usize },
    /// The same positions' probabilities against each query and head's maximum `max`
    /// (`scores`: this chunk's part of [`Task::Scores`]' output): `dst` is their sum per
    /// query and head, then `[n_tokens * n_head][d_v]` sums of the value rows they weight.
    Values {
        c: usize,
        scores: &'a [f32],
        max: &'a [f32],
    },
}

/// `out[t, h] = softmax_s(scale * q[t, h] · k[s, g(h)]) · v[s, g(h)]` over
/// `s <= pos0 + t`, where `g(h) = h / (n_head / n_kv_head)`.
///
/// `q` is `[n_tokens, n_head, d_k]`, `out` is `[n_tokens, n_head, d_v]`; the
/// cache must hold at least `pos0 + n_tokens` rows (caller's invariant).
/// Parallel over (query block, head), or over heads (each task's queries one at a time),
/// so decode (one token) still uses a task per head.
pub fn causal_attention(
    q: &[f32],
    n_tokens: usize,
    n_head: usize,
    kv: &KvView<'_>,
    pos0: usize,
    scale: f32,
    out: &mut [f32],
) {
    run_tasks(q, n_tokens, n_head, kv, pos0, scale, out, attend)
}

/// [`causal_attention`] with each task run by `attend` (a build of [`attend_body`]).
#[allow(clippy::too_many_arguments)]
fn run_tasks(
    q: &[f32],
    n_tokens: usize,
    n_head: usize,
    kv: &KvView<'_>,
    pos0: usize,
    scale: f32,
    out: &mut [f32],
    attend: Build,
) {
    let d_v = kv.d_v;
    debug_assert_eq!(q.len(), n_tokens * n_head * kv.d_k);
    debug_assert_eq!(out.len(), n_tokens * n_head * d_v);
    debug_assert!(kv.n_kv_head > 0 && n_head.is_multiple_of(kv.n_kv_head));
    if n_tokens == 0 || n_head == 0 || d_v == 0 {
        return;
    }
    let job = Job {
        q,
        n_tokens,
        n_head,
        group: n_head / kv.n_kv_head,
        kv,
        pos0,
        scale,
    };
    let run = |task: Task, dst: &mut [f32]| {
        let mut s = SCRATCH.with(|c| c.take());
        attend(&job, task, &mut s, dst);
        SCRATCH.with(|c| c.set(s));
    };
    if n_tokens < TILED_MIN && pos0 + n_tokens >= SPLIT_MIN {
        return split_positions(&job, out, &run);
    }
    if n_tokens == 1 {
        for_each_chunk(out, d_v, |h, dst| run(Task::Queries { t0: 0, h }, dst));
        return;
    }
    // A task's rows are strided in `out`, so each task fills its own block of a head-major
    // copy `[n_head, n_tokens, d_v]`, copied out per token afterwards. Head-major also keeps
    // a worker on one head's cache rows (in L2) for consecutive queries and tasks.
    let tiled = n_tokens >= TILED_MIN;
    let per_task = if tiled { QB } else { n_tokens };
    let mut blocks = vec![0.0f32; n_tokens * n_head * d_v];
    blocks
        .par_chunks_mut(n_tokens * d_v)
        .enumerate()
        .for_each(|(h, head)| {
            head.par_chunks_mut(per_task * d_v)
                .enumerate()
                .for_each(|(b, dst)| {
                    let t0 = b * per_task;
                    let task = if tiled {
                        Task::Block { t0, h }
                    } else {
                        Task::Queries { t0, h }
                    };
                    run(task, dst)
                })
        });
    out.par_chunks_mut(n_head * d_v)
        .enumerate()
        .for_each(|(t, ot)| {
            for (h, o) in ot.chunks_exact_mut(d_v).enumerate() {
                o.copy_from_slice(&blocks[(h * n_tokens + t) * d_v..][..d_v]);
            }
        });
}

/// Buffers of [`split_positions`], kept per calling thread between calls (decode allocates
/// nothing once they have grown to the context).
#[derive(Default)]
struct SplitScratch {
    /// Per chunk: `[SPLIT_CHUNK][n_tokens * n_head]` scores, then as many maxima.
    scores: Vec<f32>,
    /// Per chunk: `n_tokens * n_head` sums, then `[n_tokens * n_head][d_v]` value sums.
    values: Vec<f32>,
    /// Per query and head: the maximum score, then the sum of the probabilities.
    max: Vec<f32>,
    sums: Vec<f32>,
}

thread_local! {
    static SPLIT: std::cell::Cell<SplitScratch> = std::cell::Cell::new(SplitScratch::default());
}

/// The queries over their `pos0 + n_tokens` positions, split by positions: see the module
/// doc. `out` is `[n_tokens, n_head, d_v]`.
fn split_positions(job: &Job<'_>, out: &mut [f32], run: &(dyn Fn(Task<'_>, &mut [f32]) + Sync)) {
    // Output rows: one per query and head.
    let (rows, d_v) = (job.n_tokens * job.n_head, job.kv.d_v);
    let chunks = (job.pos0 + job.n_tokens).div_ceil(SPLIT_CHUNK);
    let mut sp = SPLIT.with(|c| c.take());
    let sc_len = (SPLIT_CHUNK + 1) * rows;
    sp.scores.resize(chunks * sc_len, 0.0);
    for_each_chunk(&mut sp.scores, sc_len, |c, dst| {
        run(Task::Scores { c }, dst)
    });
    // Each query and head's maximum over the chunks' maxima (exact in any order).
    sp.max.clear();
    sp.max.resize(rows, f32::NEG_INFINITY);
    for part in sp.scores.chunks_exact(sc_len) {
        for (m, &x) in sp.max.iter_mut().zip(&part[SPLIT_CHUNK * rows..]) {
            *m = m.max(x);
        }
    }
    let v_len = rows * (1 + d_v);
    sp.values.resize(chunks * v_len, 0.0);
    let (scores, max) = (&sp.scores, &sp.max);
    for_each_chunk(&mut sp.values, v_len, |c, dst| {
        let scores = &scores[c * sc_len..][..SPLIT_CHUNK * rows];
        run(Task::Values { c, scores, max }, dst)
    });
    // The chunks' sums in chunk order, then normalised as the per-head path does.
    out.fill(0.0);
    sp.sums.clear();
    sp.sums.resize(rows, 0.0);
    for part in sp.values.chunks_exact(v_len) {
        let (l, acc) = part.split_at(rows);
        sp.sums.iter_mut().zip(l).for_each(|(s, l)| *s += l);
        out.iter_mut().zip(acc).for_each(|(o, a)| *o += a);
    }
    for (o, &l) in out.chunks_exact_mut(d_v).zip(&sp.sums) {
        let inv = 1.0 / l;
        o.iter_mut().for_each(|o| *o *= inv);
    }
    SPLIT.with(|c| c.set(sp));
}

/// [`attend_body`] in the widest build this CPU runs.
fn attend(job: &Job<'_>, task: Task<'_>, s: &mut Scratch, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::use_avx512f() {
            // SAFETY: the CPU has AVX-512F (checked once in `use_avx512f`).
            return unsafe { attend_avx512(job, task, s, dst) };
        }
        if super::use_avx2_fma() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked once in `use_avx2_fma`).
            return unsafe { attend_avx2(job, task, s, dst) };
        }
    }
    attend_body::<Scalar>(job, task, s, dst)
}

/// [`attend_body`] compiled with AVX-512F, with its tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_avx512(job: &Job<'_>, task: Task<'_>, s: &mut Scratch, dst: &mut [f32]) {
    attend_body::<avx512::Tiles>(job, task, s, dst)
}

/// [`attend_body`] compiled with AVX2, FMA and F16C, with its tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_avx2(job: &Job<'_>, task: Task<'_>, s: &mut Scratch, dst: &mut [f32]) {
    attend_body::<avx2::Tiles>(job, task, s, dst)
}

/// The products of a query block, and the widening of f16 cache rows: [`Scalar`]'s are
/// the contract.
trait Tile {
    /// `dst[i]` = `src[i]` as f32 (exact).
    fn widen(src: &[f16], dst: &mut [f32]);
    #[allow(clippy::too_many_arguments)]
    fn tile<const ROWS: usize>(
        a: Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        cols: usize,
        out: &mut [f32],
        out_row: usize,
        accumulate: bool,
    );
}

/// The scalar twins: the reference order of operations.
struct Scalar;

impl Tile for Scalar {
    #[inline(always)]
    fn widen(src: &[f16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = widen_f16(s.to_bits());
        }
    }

    /// [`scalar_tile`] for `ROWS` rows and columns `0..cols` (contiguous in `b` and `out`).
    #[inline(always)]
    fn tile<const ROWS: usize>(
        a: Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        cols: usize,
        out: &mut [f32],
        out_row: usize,
        accumulate: bool,
    ) {
        scalar_tile(ROWS, a, b, steps, b_step, cols, out, out_row, accumulate)
    }
}

/// One task's loops; inlined into each build so they are vectorised for it.
#[inline(always)]
fn attend_body<P: Tile>(job: &Job<'_>, task: Task<'_>, s: &mut Scratch, dst: &mut [f32]) {
    match task {
        Task::Queries { t0, h } => {
            for (i, dst) in dst.chunks_exact_mut(job.kv.d_v).enumerate() {
                attend_query::<P>(job, t0 + i, h, s, dst)
            }
        }
        Task::Block { t0, h } => attend_block::<P>(job, t0, h, s, dst),
        Task::Scores { c } => match job.kv.k {
            Rows::F32(k) => split_scores::<P, f32>(job, c, k, &mut s.kf, dst),
            Rows::F16(k) => split_scores::<P, f16>(job, c, k, &mut s.kf, dst),
        },
        Task::Values { c, scores, max } => match job.kv.v {
            Rows::F32(v) => split_values::<P, f32>(job, c, v, scores, max, &mut s.vf, dst),
            Rows::F16(v) => split_values::<P, f16>(job, c, v, scores, max, &mut s.vf, dst),
        },
    }
}

/// Rows `first..first + n` of `rows` (`stride` apart), elements `col..col + width` of each,
/// as f32, and the stride between them: the cache's own rows from element `col` of row
/// `first` when it holds f32, else those elements widened into `buf`, `width` apart.
#[inline(always)]
fn span<'b, P: Tile>(
    rows: Rows<'b>,
    stride: usize,
    first: usize,
    n: usize,
    col: usize,
    width: usize,
    buf: &'b mut Vec<f32>,
) -> (&'b [f32], usize) {
    match rows {
        Rows::F32(r) => (&r[first * stride + col..], stride),
        Rows::F16(r) => {
            buf.resize(n * width, 0.0);
            for (j, dst) in buf.chunks_exact_mut(width).enumerate() {
                P::widen(&r[(first + j) * stride + col..][..width], dst);
            }
            (buf, width)
        }
    }
}

/// [`Task::Scores`]: per position of the chunk, every query's and head's score (as
/// [`attend_query`] computes it; `-inf` for a query that does not see the position), and
/// their maxima over the chunk.
#[inline(always)]
fn split_scores<P: Tile, E: Elem>(
    job: &Job<'_>,
    c: usize,
    keys: &[E],
    kf: &mut Vec<f32>,
    dst: &mut [f32],
) {
    let (kv, n_head, d_k) = (job.kv, job.n_head, job.kv.d_k);
    let rows = job.n_tokens * n_head;
    let s0 = c * SPLIT_CHUNK;
    let n = SPLIT_CHUNK.min(job.pos0 + job.n_tokens - s0);
    let (sc, max) = dst.split_at_mut(SPLIT_CHUNK * rows);
    max.fill(f32::NEG_INFINITY);
    let width = kv.n_kv_head * d_k;
    for (i, row) in sc.chunks_exact_mut(rows).take(n).enumerate() {
        let k = &keys[(s0 + i) * kv.k_stride..][..width];
        // Query t sees positions up to pos0 + t.
        let first = (s0 + i).saturating_sub(job.pos0).min(job.n_tokens);
        row[..first * n_head].fill(f32::NEG_INFINITY);
        if reads_row_again(job, first) {
            scores_at::<P, f32>(job, E::as_f32::<P>(k, kf), first, row, max);
        } else {
            scores_at::<P, E>(job, k, first, row, max);
        }
    }
}

/// Whether the queries `first..` and their heads read a position's key or value row more
/// than once (several queries, or heads sharing a kv head, as MLA's 16 share the latent):
/// then an f16 row is widened once into L1 rather than at each read.
#[inline(always)]
fn reads_row_again(job: &Job<'_>, first: usize) -> bool {
    (job.n_tokens - first) * job.group > 1
}

/// One position's scores `row` (key row `k`) for the queries `first..`, and their maxima.
#[inline(always)]
fn scores_at<P: Tile, E: Elem>(
    job: &Job<'_>,
    k: &[E],
    first: usize,
    row: &mut [f32],
    max: &mut [f32],
) {
    let (n_head, d_k) = (job.n_head, job.kv.d_k);
    for t in first..job.n_tokens {
        let q = &job.q[t * n_head * d_k..][..n_head * d_k];
        let x = &mut row[t * n_head..][..n_head];
        let m = &mut max[t * n_head..][..n_head];
        for g in 0..job.kv.n_kv_head {
            let kg = &k[g * d_k..][..d_k];
            for h in g * job.group..(g + 1) * job.group {
                x[h] = E::dot::<P>(&q[h * d_k..][..d_k], kg) * job.scale;
                m[h] = m[h].max(x[h]);
            }
        }
    }
}

/// [`Task::Values`]: per position of the chunk, query that sees it and head, the
/// probability against the maximum (as [`attend_query`]), summed, and the value row it
/// weights, summed.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn split_values<P: Tile, E: Elem>(
    job: &Job<'_>,
    c: usize,
    values: &[E],
    scores: &[f32],
    max: &[f32],
    vf: &mut Vec<f32>,
    dst: &mut [f32],
) {
    let (kv, n_head, d_v) = (job.kv, job.n_head, job.kv.d_v);
    let rows = job.n_tokens * n_head;
    let s0 = c * SPLIT_CHUNK;
    let n = SPLIT_CHUNK.min(job.pos0 + job.n_tokens - s0);
    let (sums, acc) = dst.split_at_mut(rows);
    sums.fill(0.0);
    acc.fill(0.0);
    let width = kv.n_kv_head * d_v;
    for (i, row) in scores.chunks_exact(rows).take(n).enumerate() {
        let v = &values[(s0 + i) * kv.v_stride..][..width];
        let first = (s0 + i).saturating_sub(job.pos0).min(job.n_tokens);
        if reads_row_again(job, first) {
            values_at::<P, f32>(job, E::as_f32::<P>(v, vf), first, row, max, sums, acc);
        } else {
            values_at::<P, E>(job, v, first, row, max, sums, acc);
        }
    }
}

/// One position's probabilities (from its scores `row`) for the queries `first..`, added
/// to `sums`, and its value row `v` weighted by them, added to `acc`.
#[inline(always)]
fn values_at<P: Tile, E: Elem>(
    job: &Job<'_>,
    v: &[E],
    first: usize,
    row: &[f32],
    max: &[f32],
    sums: &mut [f32],
    acc: &mut [f32],
) {
    let (n_head, d_v) = (job.n_head, job.kv.d_v);
    for t in first..job.n_tokens {
        let r0 = t * n_head;
        for g in 0..job.kv.n_kv_head {
            let vg = &v[g * d_v..][..d_v];
            for r in r0 + g * job.group..r0 + (g + 1) * job.group {
                let p = exp_approx(row[r] - max[r]);
                sums[r] += p;
                E::axpy::<P>(p, vg, &mut acc[r * d_v..][..d_v]);
            }
        }
    }
}

/// Query `t` of head `h` into `dst` (`d_v`): scores, the exact softmax, then the value
/// rows weighted by it. Plain `for` loops only: a closure handed to `Vec::extend` or
/// `for_each` was compiled outside the AVX-512 build (the scores ran as 4-lane SSE, ~4 % of
/// a 256-token decode's samples).
#[inline(always)]
fn attend_query<P: Tile>(job: &Job<'_>, t: usize, h: usize, s: &mut Scratch, dst: &mut [f32]) {
    let kv = job.kv;
    let (d_k, d_v, g) = (kv.d_k, kv.d_v, h / job.group);
    let q = &job.q[(t * job.n_head + h) * d_k..][..d_k];
    let n_kv = job.pos0 + t + 1;
    let Scratch { s: p, kf, vf, .. } = s;
    let (ks, k_stride) = span::<P>(kv.k, kv.k_stride, 0, n_kv, g * d_k, d_k, kf);
    p.clear();
    p.resize(n_kv, 0.0);
    let mut max = f32::NEG_INFINITY;
    for (s, ps) in p.iter_mut().enumerate() {
        *ps = dot(q, &ks[s * k_stride..][..d_k]) * job.scale;
        max = max.max(*ps);
    }
    let mut sum = 0.0f32;
    for ps in p.iter_mut() {
        *ps = exp_approx(*ps - max);
        sum += *ps;
    }
    dst.fill(0.0);
    let (vs, v_stride) = span::<P>(kv.v, kv.v_stride, 0, n_kv, g * d_v, d_v, vf);
    for (s, &ps) in p.iter().enumerate() {
        let v = &vs[s * v_stride..][..d_v];
        for (o, v) in dst.iter_mut().zip(v) {
            *o += ps * v;
        }
    }
    let inv = 1.0 / sum;
    for o in dst.iter_mut() {
        *o *= inv;
    }
}

/// The f16 with bits `h` as f32, exactly, without branches (so the scalar build's loop
/// vectorises): exponent and mantissa moved into f32's places and scaled by 2^112, which
/// rebiases normal numbers and makes subnormals normal; infinities and NaNs keep an
/// all-ones exponent.
#[inline(always)]
fn widen_f16(h: u16) -> f32 {
    let h = u32::from(h);
    let body = (h & 0x7fff) << 13;
    let scaled = f32::from_bits(body) * f32::from_bits(0x7780_0000);
    let bits = if body >= 0x0f80_0000 {
        body | 0x7f80_0000
    } else {
        scaled.to_bits()
    };
    f32::from_bits(bits | (h & 0x8000) << 16)
}

/// A cache element type that the position-split path reads straight from the cache rows
/// where a row is read once (decode's one query over MHA heads): an f16 chunk widened into
/// a buffer first left the memory idle while the buffer was read (decode at 2,048 positions
/// 1.3x slower than over f32 rows, with half the bytes). Rows read again are widened once
/// ([`reads_row_again`]).
trait Elem: Copy {
    /// The row as f32: itself, or widened into `buf`.
    fn as_f32<'a, P: Tile>(row: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
    /// `Σ a[i]·b[i]`, as [`dot`] sums it.
    fn dot<P: Tile>(a: &[f32], b: &[Self]) -> f32;
    /// `o[i] += p·v[i]`.
    fn axpy<P: Tile>(p: f32, v: &[Self], o: &mut [f32]);
}

impl Elem for f32 {
    #[inline(always)]
    fn as_f32<'a, P: Tile>(row: &'a [f32], _: &'a mut Vec<f32>) -> &'a [f32] {
        row
    }

    #[inline(always)]
    fn dot<P: Tile>(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }

    #[inline(always)]
    fn axpy<P: Tile>(p: f32, v: &[f32], o: &mut [f32]) {
        for (o, v) in o.iter_mut().zip(v) {
            *o += p * v;
        }
    }
}

/// Widened in registers, 16 at a time, then the f32 arithmetic on the widened values: `dot`
/// and `axpy` in their own order, written out again because one generic loop for both types
/// (an f32 row "widened" by a copy) compiled into narrow vectors: the f32 cache's decode at
/// depth 3,072 was 8-27 % slower in two such builds (BENCHMARKS.md, twenty-fifth session).
impl Elem for f16 {
    #[inline(always)]
    fn as_f32<'a, P: Tile>(row: &'a [f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.resize(row.len(), 0.0);
        P::widen(row, buf);
        buf
    }

    #[inline(always)]
    fn dot<P: Tile>(a: &[f32], b: &[f16]) -> f32 {
        const L: usize = 16;
        let mut acc = [0.0f32; L];
        let mut w = [0.0f32; L];
        let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            P::widen(y, &mut w);
            for i in 0..L {
                acc[i] += x[i] * w[i];
            }
        }
        let mut s: f32 = ar
            .iter()
            .zip(br)
            .map(|(x, y)| x * widen_f16(y.to_bits()))
            .sum();
        for v in acc {
            s += v;
        }
        s
    }

    #[inline(always)]
    fn axpy<P: Tile>(p: f32, v: &[f16], o: &mut [f32]) {
        const L: usize = 16;
        let n = o.len().min(v.len());
        let mut w = [0.0f32; L];
        let mut i = 0;
        while i + L <= n {
            P::widen(&v[i..i + L], &mut w);
            for (o, w) in o[i..i + L].iter_mut().zip(&w) {
                *o += p * w;
            }
            i += L;
        }
        for (o, v) in o[i..n].iter_mut().zip(&v[i..n]) {
            *o += p * widen_f16(v.to_bits());
        }
    }
}

/// Inner product with 16 independent partial sums, so the compiler can keep
/// them in vector registers (a single running sum is one long dependency
/// chain that cannot be vectorized without reassociating).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    for v in acc {
        s += v;
    }
    s
}

/// Queries `t0..t0 + rows` of head `h` into `dst` (`[rows, d_v]`), online softmax over
/// steps of [`KS`] keys; lanes past `rows` compute on zero queries and are never stored.
#[inline(always)]
fn attend_block<P: Tile>(job: &Job<'_>, t0: usize, h: usize, s: &mut Scratch, dst: &mut [f32]) {
    let kv = job.kv;
    let (d_k, d_v, g) = (kv.d_k, kv.d_v, h / job.group);
    let rows = QB.min(job.n_tokens - t0);
    s.qt.clear();
    s.qt.resize(d_k * QB, 0.0);
    for i in 0..rows {
        let q = &job.q[((t0 + i) * job.n_head + h) * d_k..][..d_k];
        for (d, &x) in q.iter().enumerate() {
            s.qt[d * QB + i] = x;
        }
    }
    s.s.resize(KS * QB, 0.0);
    s.acc.clear();
    s.acc.resize(QB * d_v, 0.0);
    let mut max = [f32::NEG_INFINITY; QB];
    let mut sum = [0.0f32; QB];
    // Causal: lane i (query t0 + i) sees keys 0..=last0 + i.
    let last0 = job.pos0 + t0;
    let n_kv = last0 + rows;
    for s0 in (0..n_kv).step_by(KS) {
        let nk = KS.min(n_kv - s0);
        // Lanes 0..first(j) do not see key s0 + j.
        let first = |j: usize| (s0 + j).saturating_sub(last0).min(QB);
        let sc = &mut s.s[..nk * QB];
        // sc[j * QB + i] = q_i · k_j: rows are keys (R at a time from the cache rows),
        // columns the block's queries.
        let (k, k_stride) = span::<P>(kv.k, kv.k_stride, s0, nk, g * d_k, d_k, &mut s.kf);
        let mut j = 0;
        while j + R <= nk {
            let a = (&k[j * k_stride..], 1, k_stride);
            P::tile::<R>(a, &s.qt, d_k, QB, QB, &mut sc[j * QB..], QB, false);
            j += R;
        }
        for j in j..nk {
            let a = (&k[j * k_stride..], 1, k_stride);
            P::tile::<1>(a, &s.qt, d_k, QB, QB, &mut sc[j * QB..], QB, false);
        }
        // Scale, mask (probability 0, left out of the max) and the running max.
        let mut m_new = max;
        for (j, row) in sc.chunks_exact_mut(QB).enumerate() {
            let (masked, seen) = row.split_at_mut(first(j));
            masked.fill(0.0);
            for (x, m) in seen.iter_mut().zip(&mut m_new[first(j)..]) {
                *x *= job.scale;
                *m = m.max(*x);
            }
        }
        // exp(-inf - m) on the first step: a tiny factor times zero sums and outputs.
        let mut corr = [0.0f32; QB];
        for ((c, &m_old), &m) in corr.iter_mut().zip(&max).zip(&m_new) {
            *c = exp_approx(m_old - m);
        }
        let mut step_sum = [0.0f32; QB];
        for (j, row) in sc.chunks_exact_mut(QB).enumerate() {
            let f = first(j);
            for ((x, &m), b) in row[f..].iter_mut().zip(&m_new[f..]).zip(&mut step_sum[f..]) {
                *x = exp_approx(*x - m);
                *b += *x;
            }
        }
        for ((l, &c), &b) in sum.iter_mut().zip(&corr).zip(&step_sum) {
            *l = *l * c + b;
        }
        for (acc, &c) in s.acc.chunks_exact_mut(d_v).zip(&corr) {
            acc.iter_mut().for_each(|a| *a *= c);
        }
        max = m_new;
        // acc[i] += Σ_j p[j][i] v_j: rows are queries (R at a time), columns d_v.
        let (v, v_stride) = span::<P>(kv.v, kv.v_stride, s0, nk, g * d_v, d_v, &mut s.vf);
        for r0 in (0..rows).step_by(R) {
            let a = (&sc[r0..], QB, 1);
            P::tile::<R>(a, v, nk, v_stride, d_v, &mut s.acc[r0 * d_v..], d_v, true);
        }
    }
    for ((o, acc), &l) in dst
        .chunks_exact_mut(d_v)
        .zip(s.acc.chunks_exact(d_v))
        .zip(&sum)
    {
        let inv = 1.0 / l;
        o.iter_mut().zip(acc).for_each(|(o, a)| *o = a * inv);
    }
}

/// The AVX-512F tiles: pairs of 16-float column chunks, then one, then 8 columns of ymm,
/// then the scalar twin for a last few (only odd test widths have them).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{f16, scalar_tile, Bcast, Scalar, Tile};
    use crate::ops::tiles::{avx2::bcast_col, avx512::bcast_tile};

    pub(super) struct Tiles;

    impl Tile for Tiles {
        #[inline(always)]
        fn widen(src: &[f16], dst: &mut [f32]) {
            // SAFETY: only reached from `attend_avx512`, after AVX-512F was detected.
            unsafe { widen(src, dst) }
        }

        #[inline(always)]
        fn tile<const ROWS: usize>(
            a: Bcast<'_>,
            b: &[f32],
            steps: usize,
            b_step: usize,
            cols: usize,
            out: &mut [f32],
            out_row: usize,
            accumulate: bool,
        ) {
            // SAFETY: only reached from `attend_avx512`, after AVX-512F was detected.
            unsafe { tile::<ROWS>(a, b, steps, b_step, cols, out, out_row, accumulate) }
        }
    }

    /// `vcvtph2ps` on 16 values at a time, the scalar twin for the last few.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn widen(src: &[f16], dst: &mut [f32]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: elements i..i + 16 of both slices exist; unaligned load and store.
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            }
            i += 16;
        }
        Scalar::widen(&src[i..n], &mut dst[i..n]);
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn tile<const ROWS: usize>(
        a: Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        cols: usize,
        out: &mut [f32],
        out_row: usize,
        acc: bool,
    ) {
        let mut c = 0;
        while c + 32 <= cols {
            bcast_tile::<ROWS, 2>(a, &b[c..], steps, b_step, 16, &mut out[c..], out_row, acc);
            c += 32;
        }
        if c + 16 <= cols {
            bcast_tile::<ROWS, 1>(a, &b[c..], steps, b_step, 16, &mut out[c..], out_row, acc);
            c += 16;
        }
        if c + 8 <= cols {
            // AVX-512F implies AVX2 and FMA.
            bcast_col::<ROWS>(a, &b[c..], steps, b_step, &mut out[c..], out_row, acc);
            c += 8;
        }
        if c < cols {
            let (b, out) = (&b[c..], &mut out[c..]);
            scalar_tile(ROWS, a, b, steps, b_step, cols - c, out, out_row, acc);
        }
    }
}

/// The AVX2+FMA tiles: 8-float column chunks, then the scalar twin for a last few.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{f16, scalar_tile, Bcast, Scalar, Tile};
    use crate::ops::tiles::avx2::bcast_col;

    pub(super) struct Tiles;

    impl Tile for Tiles {
        #[inline(always)]
        fn widen(src: &[f16], dst: &mut [f32]) {
            // SAFETY: only reached from `attend_avx2`, after AVX2, FMA and F16C were detected.
            unsafe { widen(src, dst) }
        }

        #[inline(always)]
        fn tile<const ROWS: usize>(
            a: Bcast<'_>,
            b: &[f32],
            steps: usize,
            b_step: usize,
            cols: usize,
            out: &mut [f32],
            out_row: usize,
            accumulate: bool,
        ) {
            // SAFETY: only reached from `attend_avx2`, after AVX2, FMA and F16C were detected.
            unsafe { tile::<ROWS>(a, b, steps, b_step, cols, out, out_row, accumulate) }
        }
    }

    /// `vcvtph2ps` on 8 values at a time, the scalar twin for the last few.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn widen(src: &[f16], dst: &mut [f32]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: elements i..i + 8 of both slices exist; unaligned load and store.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        Scalar::widen(&src[i..n], &mut dst[i..n]);
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn tile<const ROWS: usize>(
        a: Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        cols: usize,
        out: &mut [f32],
        out_row: usize,
        acc: bool,
    ) {
        let mut c = 0;
        while c + 8 <= cols {
            bcast_col::<ROWS>(a, &b[c..], steps, b_step, &mut out[c..], out_row, acc);
            c += 8;
        }
        if c < cols {
            let (b, out) = (&b[c..], &mut out[c..]);
            scalar_tile(ROWS, a, b, steps, b_step, cols - c, out, out_row, acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::lcg;

    /// Direct evaluation of the definition in f64, one query at a time.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        h: usize,
        d: usize,
        pos0: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; n * h * d];
        for t in 0..n {
            for hh in 0..h {
                let qh = &q[(t * h + hh) * d..][..d];
                let sc: Vec<f64> = (0..=pos0 + t)
                    .map(|s| {
                        let ks = &k[(s * h + hh) * d..][..d];
                        qh.iter()
                            .zip(ks)
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let acc: f64 = e
                        .iter()
                        .enumerate()
                        .map(|(s, p)| p / z * v[(s * h + hh) * d + i] as f64)
                        .sum();
                    out[(t * h + hh) * d + i] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_definition_with_cache_offset() {
        let (h, d, pos0, n) = (3, 8, 5, 4);
        let total = pos0 + n;
        let gen = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 31 + seed * 17) % 97) as f32 / 97.0 - 0.5) * 2.0)
                .collect()
        };
        let q = gen(1, n * h * d);
        let k = gen(2, total * h * d);
        let v = gen(3, total * h * d);
        let kv = KvView {
            k: Rows::F32(&k),
            k_stride: h * d,
            v: Rows::F32(&v),
            v_stride: h * d,
            n_kv_head: h,
            d_k: d,
            d_v: d,
        };
        let mut out = vec![0.0f32; n * h * d];
        causal_attention(&q, n, h, &kv, pos0, 0.35, &mut out);
        let want = reference(&q, &k, &v, n, h, d, pos0, 0.35);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// Several query and key blocks, grouped heads (2 query heads per kv
    /// head) and values read from the key rows with their own stride (as
    /// MLA's latent prefix is): the online softmax must equal the definition.
    #[test]
    fn blocked_gqa_with_prefix_values_matches_definition() {
        let (h, hkv, dk, dv, pos0, n) = (4usize, 2usize, 20usize, 12usize, 70usize, 37usize);
        let total = pos0 + n;
        let gen = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 37 + seed * 11) % 89) as f32 / 89.0 - 0.5) * 3.0)
                .collect()
        };
        let q = gen(1, n * h * dk);
        let k = gen(2, total * hkv * dk);
        let kv = KvView {
            k: Rows::F32(&k),
            k_stride: hkv * dk,
            v: Rows::F32(&k),
            v_stride: hkv * dk,
            n_kv_head: hkv,
            d_k: dk,
            d_v: dv,
        };
        let scale = 0.3;
        for (p0, m) in [(pos0, n), (pos0 + n - 1, 1)] {
            let qs = &q[(p0 - pos0) * h * dk..][..m * h * dk];
            let mut out = vec![0.0f32; m * h * dv];
            causal_attention(qs, m, h, &kv, p0, scale, &mut out);
            for t in 0..m {
                for hh in 0..h {
                    let g = hh / (h / hkv);
                    let qh = &qs[(t * h + hh) * dk..][..dk];
                    let sc: Vec<f64> = (0..=p0 + t)
                        .map(|s| {
                            let ks = &k[s * hkv * dk + g * dk..][..dk];
                            qh.iter()
                                .zip(ks)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..dv {
                        let want: f64 = e
                            .iter()
                            .enumerate()
                            .map(|(s, p)| p / z * k[s * hkv * dk + g * dv + i] as f64)
                            .sum();
                        let got = out[(t * h + hh) * dv + i];
                        assert!((got as f64 - want).abs() < 1e-5, "t {t} h {hh} i {i}");
                    }
                }
            }
        }
    }

    /// Layout of one twin-test case: `n` queries at `pos0` over `pos0 + n` cache rows of
    /// `hkv` kv heads (`k_stride`, values a prefix of the key rows when `prefix`).
    #[derive(Clone, Copy, Debug)]
    struct Case {
        n: usize,
        pos0: usize,
        h: usize,
        hkv: usize,
        dk: usize,
        dv: usize,
        prefix: bool,
    }

    /// Odd sizes around the blocks (queries off `QB` and `TILED_MIN`, keys off `KS` and
    /// `R`, widths off the vector widths), cache offsets, grouped heads, prefix values, the
    /// model's head width; fewer than `TILED_MIN` queries over `SPLIT_MIN` positions or more
    /// (the position-split path: exactly `SPLIT_MIN`, a last chunk short of `SPLIT_CHUNK`,
    /// Tiny's MHA heads at an image prompt's depth, MLA's heads sharing one latent row,
    /// several queries, some of them not seeing the first chunks' ends).
    #[rustfmt::skip]
    const CASES: [Case; 15] = [
        Case { n: 1, pos0: 0, h: 1, hkv: 1, dk: 1, dv: 1, prefix: false },
        Case { n: 1, pos0: 130, h: 4, hkv: 2, dk: 20, dv: 12, prefix: true },
        Case { n: 5, pos0: 3, h: 3, hkv: 3, dk: 37, dv: 13, prefix: false },
        Case { n: 16, pos0: 0, h: 2, hkv: 1, dk: 8, dv: 8, prefix: false },
        Case { n: 17, pos0: 70, h: 4, hkv: 2, dk: 20, dv: 12, prefix: true },
        Case { n: 33, pos0: 0, h: 2, hkv: 2, dk: 24, dv: 40, prefix: false },
        Case { n: 70, pos0: 9, h: 2, hkv: 1, dk: 53, dv: 51, prefix: true },
        Case { n: 100, pos0: 0, h: 1, hkv: 1, dk: 128, dv: 128, prefix: false },
        Case { n: 40, pos0: 200, h: 2, hkv: 2, dk: 16, dv: 24, prefix: false },
        Case { n: 1, pos0: SPLIT_MIN - 1, h: 3, hkv: 3, dk: 37, dv: 13, prefix: false },
        Case { n: 1, pos0: 300, h: 4, hkv: 2, dk: 20, dv: 12, prefix: true },
        Case { n: 1, pos0: 1100, h: 10, hkv: 10, dk: 128, dv: 128, prefix: false },
        Case { n: 1, pos0: 700, h: 16, hkv: 1, dk: 72, dv: 64, prefix: true },
        Case { n: 5, pos0: 300, h: 4, hkv: 2, dk: 20, dv: 12, prefix: true },
        Case { n: 15, pos0: 250, h: 3, hkv: 3, dk: 37, dv: 13, prefix: false },
    ];

    /// A case's queries and cache (values: their own rows, or the key rows' prefix).
    fn data(c: Case, q: Vec<f32>, k: Vec<f32>, v: Vec<f32>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        assert_eq!(q.len(), c.n * c.h * c.dk);
        assert_eq!(k.len(), (c.pos0 + c.n) * c.hkv * c.dk);
        let v = if c.prefix { Vec::new() } else { v };
        (q, k, v)
    }

    fn view<'a>(c: Case, k: Rows<'a>, v: Rows<'a>) -> KvView<'a> {
        let (v, v_stride) = if c.prefix {
            (k, c.hkv * c.dk)
        } else {
            (v, c.hkv * c.dv)
        };
        KvView {
            k,
            k_stride: c.hkv * c.dk,
            v,
            v_stride,
            n_kv_head: c.hkv,
            d_k: c.dk,
            d_v: c.dv,
        }
    }

    /// The definition in f64 for an f32 [`KvView`].
    fn definition(q: &[f32], c: Case, kv: &KvView<'_>, scale: f32) -> Vec<f64> {
        let (Rows::F32(k), Rows::F32(v)) = (kv.k, kv.v) else {
            panic!("the definition reads f32 rows")
        };
        let mut out = vec![0.0f64; c.n * c.h * c.dv];
        for t in 0..c.n {
            for hh in 0..c.h {
                let g = hh / (c.h / c.hkv);
                let qh = &q[(t * c.h + hh) * c.dk..][..c.dk];
                let sc: Vec<f64> = (0..=c.pos0 + t)
                    .map(|s| {
                        let ks = &k[s * kv.k_stride + g * c.dk..][..c.dk];
                        let d: f64 = qh.iter().zip(ks).map(|(a, b)| *a as f64 * *b as f64).sum();
                        d * scale as f64
                    })
                    .collect();
                let m = sc.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..c.dv {
                    out[(t * c.h + hh) * c.dv + i] = e
                        .iter()
                        .enumerate()
                        .map(|(s, p)| p / z * v[s * kv.v_stride + g * c.dv + i] as f64)
                        .sum();
                }
            }
        }
        out
    }

    /// The builds this CPU runs, with their names.
    fn builds() -> Vec<(&'static str, Build)> {
        // Only x86 adds builds to the scalar one.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut b: Vec<(&str, Build)> = vec![("scalar", attend_body::<Scalar>)];
        #[cfg(target_arch = "x86_64")]
        {
            fn avx2(j: &Job<'_>, t: Task<'_>, s: &mut Scratch, d: &mut [f32]) {
                // SAFETY: listed only after AVX2, FMA and F16C were detected.
                unsafe { attend_avx2(j, t, s, d) }
            }
            fn avx512(j: &Job<'_>, t: Task<'_>, s: &mut Scratch, d: &mut [f32]) {
                // SAFETY: listed only after AVX-512F was detected.
                unsafe { attend_avx512(j, t, s, d) }
            }
            if use_avx2_detected() {
                b.push(("avx2", avx2));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                b.push(("avx512f", avx512));
            }
        }
        b
    }

    /// Every build on `c`: the same bits as the scalar twins, and the definition within
    /// 1e-5 (relative above 1); over an f16 cache of the rounded rows, the bits each build
    /// gives over an f32 cache holding those rounded values.
    fn check(c: Case, q: &[f32], k: &[f32], v: &[f32], scale: f32) {
        let run = |kv: &KvView<'_>, build: Build| {
            let mut out = vec![f32::NAN; c.n * c.h * c.dv];
            run_tasks(q, c.n, c.h, kv, c.pos0, scale, &mut out, build);
            out
        };
        let kv = view(c, Rows::F32(k), Rows::F32(v));
        let want = definition(q, c, &kv, scale);
        let (k16, v16) = (to_f16(k), to_f16(v));
        let (kr, vr) = (from_f16(&k16), from_f16(&v16));
        let rounded = view(c, Rows::F32(&kr), Rows::F32(&vr));
        let halves = view(c, Rows::F16(&k16), Rows::F16(&v16));
        let mut first: Option<Vec<f32>> = None;
        for (isa, build) in builds() {
            let out = run(&kv, build);
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "{isa} {c:?}: out[{i}] = {g}, definition {r}"
                );
            }
            match &first {
                None => first = Some(out),
                Some(base) => same_bits(&out, base, &format!("{isa} {c:?}")),
            }
            let (want16, out16) = (run(&rounded, build), run(&halves, build));
            same_bits(&out16, &want16, &format!("{isa} {c:?}, f16 cache"));
        }
    }

    fn same_bits(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, r)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), r.to_bits(), "{what}: out[{i}] {g} vs {r}");
        }
    }

    fn to_f16(x: &[f32]) -> Vec<f16> {
        x.iter().map(|&x| f16::from_f32(x)).collect()
    }

    fn from_f16(x: &[f16]) -> Vec<f32> {
        x.iter().map(|x| x.to_f32()).collect()
    }

    /// Each build's widening of f16 rows, on every f16 value at every offset of a vector
    /// (slices starting anywhere, lengths off the vector widths): `half`'s conversion, bit
    /// for bit (NaNs: a NaN).
    #[test]
    fn widen_matches_half_for_every_f16() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        type Widen = fn(&[f16], &mut [f32]);
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut widens: Vec<(&str, Widen)> = vec![("scalar", Scalar::widen)];
        #[cfg(target_arch = "x86_64")]
        {
            if use_avx2_detected() {
                widens.push(("avx2", avx2::Tiles::widen));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                widens.push(("avx512f", avx512::Tiles::widen));
            }
        }
        for (isa, widen) in widens {
            for (start, len) in [(0, all.len()), (3, 37), (65_500, 36), (1, 15), (5, 0)] {
                let src = &all[start..start + len];
                let mut dst = vec![0.0f32; len];
                widen(src, &mut dst);
                for (h, d) in src.iter().zip(&dst) {
                    let want = h.to_f32();
                    if want.is_nan() {
                        assert!(d.is_nan(), "{isa}: {:#06x} -> {d}", h.to_bits());
                    } else {
                        assert_eq!(d.to_bits(), want.to_bits(), "{isa}: {:#06x}", h.to_bits());
                    }
                }
            }
        }
    }

    /// Whether the AVX2 build may run here (as `builds` lists it).
    #[cfg(target_arch = "x86_64")]
    fn use_avx2_detected() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }

    #[test]
    fn builds_match_the_scalar_twins_and_the_definition() {
        for (i, &c) in CASES.iter().enumerate() {
            let seed = 10 * i as u64;
            let rows = c.pos0 + c.n;
            let (q, k, v) = data(
                c,
                lcg(seed, c.n * c.h * c.dk, 1.5),
                lcg(seed + 1, rows * c.hkv * c.dk, 1.5),
                lcg(seed + 2, rows * c.hkv * c.dv, 2.0),
            );
            check(c, &q, &k, &v, 1.0 / (c.dk as f32).sqrt());
        }
    }

    /// One query over a long cache gives the same bits under any number of workers (its
    /// chunks are a fixed number of positions, not a share of the threads).
    #[test]
    fn position_split_is_the_same_at_any_thread_count() {
        let c = CASES[11];
        assert!(c.n == 1 && c.pos0 + 1 >= SPLIT_MIN, "{c:?}");
        let rows = c.pos0 + c.n;
        let (q, k, v) = data(
            c,
            lcg(7, c.n * c.h * c.dk, 1.5),
            lcg(8, rows * c.hkv * c.dk, 1.5),
            lcg(9, rows * c.hkv * c.dv, 2.0),
        );
        let kv = view(c, Rows::F32(&k), Rows::F32(&v));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0.0f32; c.h * c.dv];
            pool.install(|| causal_attention(&q, 1, c.h, &kv, c.pos0, 0.09, &mut out));
            out
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            let out = run(threads);
            for (i, (a, b)) in out.iter().zip(&one).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{threads} threads: out[{i}] {a} vs {b}"
                );
            }
        }
    }

    /// Edge data: one dominant key per query (large scores, a softmax of ~one key), equal
    /// scores (a uniform softmax), all-zero queries.
    #[test]
    fn extreme_and_flat_scores() {
        for (i, &c) in CASES.iter().enumerate() {
            let rows = c.pos0 + c.n;
            let v = lcg(i as u64, rows * c.hkv * c.dv, 3.0);
            for (big, flat) in [(30.0f32, false), (0.0, true), (1.0, true)] {
                // Keys: row s is `big` in dim s % dk (dominant for queries that point
                // there), or all `big` (equal scores for any query when `flat`).
                let k: Vec<f32> = (0..rows * c.hkv * c.dk)
                    .map(|x| {
                        let (s, d) = (x / (c.hkv * c.dk), x % c.dk);
                        if flat || d == s % c.dk {
                            big
                        } else {
                            -0.25
                        }
                    })
                    .collect();
                let q: Vec<f32> = (0..c.n * c.h * c.dk)
                    .map(|x| if flat || x % 7 == 0 { big / 8.0 } else { 0.0 })
                    .collect();
                let (q, k, v) = data(c, q, k, v.clone());
                check(c, &q, &k, &v, 1.0 / (c.dk as f32).sqrt());
            }
        }
    }
}
