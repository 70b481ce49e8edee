//! The vision tower's bidirectional multi-head attention, fused:
//! `softmax(q kᵀ / sqrt(d)) v` per tile and head without an `[n, n]` score matrix.
//!
//! Two parallel phases per call:
//! 1. per (tile, head), k and v are packed once into [`HeadPanels`]: kᵀ in blocks of
//!    [`KB`] keys (`[hd][KB]`, so one vector load gives a column of 16 keys) and v in rows
//!    padded to whole 8-lane vectors (`[n][hdp]`: 72 columns stay 72);
//! 2. per (tile, range of queries), for every head and every block of [`QB`] queries: the
//!    block's scores against all keys (`QB x n`, 23 KiB at n = 729, in L1) by a register
//!    tile of `QB x KB` sums, the exact two-pass softmax of each row (the tower's
//!    [`softmax_rows_body`]: with whole rows in L1 the online form's rescaling buys
//!    nothing), then `P·v` by a register tile of `QB` queries x 16 value columns (8 for
//!    the last ones of a 72-wide head), broadcasting the probabilities from the score rows
//!    in place, written straight into the output rows the task owns.
//!
//! Every score and output is a chain of f32 fused multiply-adds in a fixed order (d, then
//! key, ascending), so the arithmetic is that of the plain definition up to f32 rounding;
//! the rounding-to-bf16 of k and v measured 2e-3-1e-2 on the fixtures' logits
//! (`vision_tower_recipes`), which is why this stays f32. A tower of bf16 matrices on an
//! AMX CPU takes `vision_attention_split.rs` instead (both operands split into two bf16).
//!
//! The two products are [`Products`]: explicit AVX-512F register tiles (the broadcast tiles
//! of `crate::ops::tiles`, shared with the language model's attention), and their scalar
//! twins ([`Scalar`], `f32::mul_add` in the same order, so the same bits: tested), and
//! AVX2+FMA tiles of half the width over pairs of half the queries. The block loop around
//! them is one body compiled three times (baseline with the twins, AVX2+FMA, AVX-512F, each
//! with its tiles), picked at run time. Left to the auto-vectoriser, the products came out
//! as gathers over the query index at a fraction of the FMA rate (`perf annotate`). The
//! previous version (two packed `gemm` calls per (tile, head), with per-job copies of q, k,
//! vᵀ and the full score matrix) spent ~9% of the tower's time copying and allocating
//! (`perf`, BENCHMARKS.md).

use quant::kernels::SplitTiles;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::vision_attention_bf16::bf16_attention;
use super::vision_attention_split::split_attention;
use super::vision_math::softmax_rows_body;

/// Keys per block of packed kᵀ: one 16-lane vector of scores.
const KB: usize = 16;
/// Queries per register tile: `QB` accumulators of [`KB`] scores, or of a vector of
/// outputs.
const QB: usize = 8;
/// Value rows are padded to whole vectors of this many columns: a 72-wide head takes four
/// 16-column accumulators and one of 8 (a ymm FMA, half a zmm one on AMD Zen 4), not five
/// of 16 (10% of the `P·v` FMAs on padding).
const VL: usize = 8;
/// Queries per parallel task (both register-tile paths), whole [`QB`] blocks: large enough
/// that a head's panels (~450 KiB at n = 729) are reused from L2 by several blocks, small
/// enough that one tile gives each of two workers several tasks.
const TASK_QUERIES: usize = 12 * QB;

/// The shape of one head's packed panels.
#[derive(Clone, Copy)]
struct HeadPanels {
    /// Tokens (keys) per tile.
    n: usize,
    /// Head width.
    hd: usize,
}

/// The shape of a register-tile path's packed head: what [`run_tasks`] needs of it.
pub(super) trait HeadShape: Copy + Send + Sync {
    /// Elements of one head's packed panels.
    fn len(self) -> usize;
}

impl HeadShape for HeadPanels {
    fn len(self) -> usize {
        self.kt_len() + self.n * self.hdp()
    }
}

impl HeadPanels {
    /// Key blocks (the last padded with zero keys).
    fn n_kb(self) -> usize {
        self.n.div_ceil(KB)
    }
    /// Value row stride: `hd` rounded up to whole [`VL`] vectors.
    fn hdp(self) -> usize {
        self.hd.div_ceil(VL) * VL
    }
    /// Floats of packed kᵀ.
    fn kt_len(self) -> usize {
        self.n_kb() * self.hd * KB
    }
    /// Score row stride: all key blocks, padding included.
    fn n_pad(self) -> usize {
        self.n_kb() * KB
    }
}

/// The attention's scratch, kept by the caller across layers: the FMA path's packed k and
/// v, the AMX path's per-head outputs, or the bf16 path's packed pairs.
#[derive(Default)]
pub(super) struct Panels {
    f32: Vec<f32>,
    heads: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    bf16: Vec<u32>,
}

/// The attention's arithmetic.
#[derive(Clone, Copy)]
pub(super) enum Arith {
    /// f32 FMA register tiles (here).
    Exact,
    /// Both products on AMX tiles with split bf16 operands ([`split_attention`]): a tower of
    /// bf16 matrices on an AMX CPU.
    Split(SplitTiles),
    /// Both products on `vdpbf16ps` with rounded operands (`vision_attention_bf16.rs`): the
    /// tower's `--vision-precision bf16` where [`bf16_attention_runs`] says it can (never
    /// off x86-64, where it would take the exact path).
    Bf16,
}

/// Whether [`Arith::Bf16`] runs here for heads of `hd` (AVX-512 BF16, even `hd`).
pub(super) fn bf16_attention_runs(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::vision_attention_bf16::available(hd);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
}

/// `out = attention(qkv)` inside each tile: `qkv` is `[n_tiles * n, 3W]` with columns
/// `[q | k | v]`, each head-major; `out` is `[n_tiles * n, W]`, heads concatenated.
/// `arith` picks the products' arithmetic ([`Arith`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn full_attention(
    qkv: &[f32],
    n_tiles: usize,
    n: usize,
    n_head: usize,
    hd: usize,
    arith: Arith,
    panels: &mut Panels,
    out: &mut [f32],
) {
    let w = n_head * hd;
    assert_eq!(qkv.len(), n_tiles * n * 3 * w, "attention: qkv shape");
    assert_eq!(out.len(), n_tiles * n * w, "attention: output shape");
    if n_tiles == 0 || n == 0 || w == 0 {
        return;
    }
    match arith {
        Arith::Exact => {}
        Arith::Split(tiles) => {
            return split_attention(tiles, qkv, n_tiles, n, n_head, hd, &mut panels.heads, out)
        }
        Arith::Bf16 => {
            #[cfg(target_arch = "x86_64")]
            return bf16_attention(qkv, n_tiles, (n, n_head, hd), &mut panels.bf16, out);
        }
    }
    let shape = HeadPanels { n, hd };
    run_tasks(
        qkv,
        n_tiles,
        (n, n_head, hd),
        shape,
        &mut panels.f32,
        |tile, h, dst| pack_head(tile, w, h, shape, dst),
        || Scratch::new(shape),
        attend,
        out,
    );
}

/// One query-phase task of a register-tile path: the queries of `out`'s rows (from the
/// first row of `qkv`) against every head of their tile, whose packed panels are `panels`
/// (`T`: f32 here, bf16 pairs in `vision_attention_bf16.rs`; `shape.len()` each).
pub(super) struct Task<'a, T, Sh> {
    /// The tile's rows from the task's first query on.
    pub(super) qkv: &'a [f32],
    pub(super) w: usize,
    pub(super) n_head: usize,
    pub(super) shape: Sh,
    pub(super) panels: &'a [T],
    pub(super) scale: f32,
}

/// The two parallel phases of the register-tile paths (f32 here, bf16 in
/// `vision_attention_bf16.rs`): per (tile, head), `pack(tile's rows, head, dst)` fills its
/// `shape.len()` elements of `panels`; then per tile and range of [`TASK_QUERIES`] queries,
/// `attend(task, scratch, output rows)`, with one scratch per worker from `scratch`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_tasks<T, Sh, S>(
    qkv: &[f32],
    n_tiles: usize,
    (n, n_head, hd): (usize, usize, usize),
    shape: Sh,
    panels: &mut Vec<T>,
    pack: impl Fn(&[f32], usize, &mut [T]) + Sync,
    scratch: impl Fn() -> S + Sync + Send,
    attend: impl Fn(&Task<'_, T, Sh>, &mut S, &mut [f32]) + Sync,
    out: &mut [f32],
) where
    T: Copy + Default + Send + Sync,
    Sh: HeadShape,
{
    let (w, head_len) = (n_head * hd, shape.len());
    panels.resize(n_tiles * n_head * head_len, T::default());
    panels
        .par_chunks_mut(head_len)
        .enumerate()
        .for_each(|(job, dst)| {
            let (t, h) = (job / n_head, job % n_head);
            pack(&qkv[t * n * 3 * w..][..n * 3 * w], h, dst);
        });
    let scale = 1.0 / (hd as f32).sqrt();
    let panels = &panels[..];
    out.par_chunks_mut(n * w)
        .zip(qkv.par_chunks(n * 3 * w))
        .zip(panels.par_chunks(n_head * head_len))
        .for_each(|((tile_out, tile_qkv), tile_panels)| {
            tile_out
                .par_chunks_mut(TASK_QUERIES * w)
                .enumerate()
                .for_each_init(&scratch, |s, (b, o)| {
                    let task = Task {
                        qkv: &tile_qkv[b * TASK_QUERIES * 3 * w..],
                        w,
                        n_head,
                        shape,
                        panels: tile_panels,
                        scale,
                    };
                    attend(&task, s, o);
                });
        });
}

/// Packs head `h` of one tile (`qkv` rows of `3 w`) into `dst` (`shape.len()` floats).
fn pack_head(qkv: &[f32], w: usize, h: usize, shape: HeadPanels, dst: &mut [f32]) {
    let (n, hd, hdp) = (shape.n, shape.hd, shape.hdp());
    let (kt, v) = dst.split_at_mut(shape.kt_len());
    // Padding keys score 0 and are never read past `n`; zero them so nothing is stale.
    kt.fill(0.0);
    for (j, (row, vr)) in qkv
        .chunks_exact(3 * w)
        .zip(v.chunks_exact_mut(hdp))
        .enumerate()
    {
        let blk = &mut kt[(j / KB) * hd * KB..][..hd * KB];
        for (d, &x) in row[w + h * hd..][..hd].iter().enumerate() {
            blk[d * KB + j % KB] = x;
        }
        vr[..hd].copy_from_slice(&row[2 * w + h * hd..][..hd]);
        vr[hd..].fill(0.0);
    }
    debug_assert_eq!(v.len(), n * hdp);
}

/// Per-worker buffers of the query phase, sized once per call.
struct Scratch {
    /// One query block transposed: `qt[d * QB + i]`, zero rows past the block's end.
    qt: Vec<f32>,
    /// The block's scores, then probabilities: `[QB][n_pad]` (rows past the block's end
    /// hold stale values, and so do their outputs, which are never read).
    s: Vec<f32>,
    /// The block's outputs, `[QB][hdp]`.
    o: Vec<f32>,
}

impl Scratch {
    fn new(shape: HeadPanels) -> Self {
        Scratch {
            qt: vec![0.0; shape.hd * QB],
            s: vec![0.0; QB * shape.n_pad()],
            o: vec![0.0; QB * shape.hdp()],
        }
    }
}

/// The f32 path's task.
type F32Task<'a> = Task<'a, f32, HeadPanels>;

/// [`attend_body`] in the widest build this CPU runs.
fn attend(task: &F32Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::ops::use_avx512f() {
            // SAFETY: the CPU has AVX-512F (checked once in `use_avx512f`).
            return unsafe { attend_avx512(task, s, out) };
        }
        if crate::ops::use_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked once in `use_avx2_fma`).
            return unsafe { attend_avx2(task, s, out) };
        }
    }
    attend_body::<Scalar>(task, s, out)
}

/// [`attend_body`] compiled with AVX-512F, with its register tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_avx512(task: &F32Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    attend_body::<avx512::Tiles>(task, s, out)
}

/// [`attend_body`] compiled with AVX2 and FMA, with its register tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(task: &F32Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    attend_body::<avx2::Tiles>(task, s, out)
}

/// The two matrix products of a query block, see [`Scalar`]'s methods for the contract.
trait Products {
    fn scores(qt: &[f32], kt: &[f32], hd: usize, n_pad: usize, s: &mut [f32]);
    fn p_times_v(p: &[f32], n_pad: usize, v: &[f32], hdp: usize, o: &mut [f32]);
}

/// The scalar twins of the products: the reference order of operations.
struct Scalar;

impl Products for Scalar {
    /// `s[i * n_pad + j] = Σ_d qt[d * QB + i] · kᵀ[d][j]` (fused, d ascending) for every
    /// (padded) key `j` of the packed `kt` (blocks of `[hd][KB]`).
    #[inline(always)]
    fn scores(qt: &[f32], kt: &[f32], hd: usize, n_pad: usize, s: &mut [f32]) {
        for (b, kblk) in kt.chunks_exact(hd * KB).enumerate() {
            for i in 0..QB {
                for l in 0..KB {
                    let mut acc = 0.0f32;
                    for d in 0..hd {
                        acc = qt[d * QB + i].mul_add(kblk[d * KB + l], acc);
                    }
                    s[i * n_pad + b * KB + l] = acc;
                }
            }
        }
    }

    /// `o[i * hdp + c] = Σ_j p[i * n_pad + j] · v[j * hdp + c]` (fused, j ascending) over
    /// the `v.len() / hdp` keys.
    #[inline(always)]
    fn p_times_v(p: &[f32], n_pad: usize, v: &[f32], hdp: usize, o: &mut [f32]) {
        for i in 0..QB {
            for c in 0..hdp {
                let mut acc = 0.0f32;
                for (p, vr) in p[i * n_pad..].iter().zip(v.chunks_exact(hdp)) {
                    acc = p.mul_add(vr[c], acc);
                }
                o[i * hdp + c] = acc;
            }
        }
    }
}

/// The query phase's loops; inlined into each build so they are vectorised for it.
#[inline(always)]
fn attend_body<P: Products>(task: &F32Task<'_>, s: &mut Scratch, out: &mut [f32]) {
    let (w, shape) = (task.w, task.shape);
    let (n, hd, hdp, n_pad) = (shape.n, shape.hd, shape.hdp(), shape.n_pad());
    let nq = out.len() / w;
    for h in 0..task.n_head {
        let head = &task.panels[h * shape.len()..][..shape.len()];
        let (kt, v) = head.split_at(shape.kt_len());
        for q0 in (0..nq).step_by(QB) {
            let rows = QB.min(nq - q0);
            // q block, transposed so each column d is QB consecutive floats.
            for i in 0..QB {
                let q = (i < rows).then(|| &task.qkv[(q0 + i) * 3 * w + h * hd..][..hd]);
                for d in 0..hd {
                    s.qt[d * QB + i] = q.map_or(0.0, |q| q[d]);
                }
            }
            P::scores(&s.qt, kt, hd, n_pad, &mut s.s);
            for row in s.s.chunks_exact_mut(n_pad).take(rows) {
                softmax_rows_body(&mut row[..n], n, task.scale);
            }
            P::p_times_v(&s.s, n_pad, v, hdp, &mut s.o);
            for (i, o) in s.o.chunks_exact(hdp).take(rows).enumerate() {
                out[(q0 + i) * w + h * hd..][..hd].copy_from_slice(&o[..hd]);
            }
        }
    }
}

/// The AVX-512F register tiles of [`Products`].
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Products, KB, QB, VL};
    use crate::ops::tiles::{avx2::bcast_col, avx512::bcast_tile};

    /// Value columns per accumulator of the `P·v` tile.
    const DL: usize = 16;

    pub(super) struct Tiles;

    impl Products for Tiles {
        #[inline(always)]
        fn scores(qt: &[f32], kt: &[f32], hd: usize, n_pad: usize, s: &mut [f32]) {
            // SAFETY: only reached from `attend_avx512`, after AVX-512F was detected.
            unsafe { scores(qt, kt, hd, n_pad, s) }
        }
        #[inline(always)]
        fn p_times_v(p: &[f32], n_pad: usize, v: &[f32], hdp: usize, o: &mut [f32]) {
            // SAFETY: as above.
            unsafe { p_times_v(p, n_pad, v, hdp, o) }
        }
    }

    /// [`super::Scalar::scores`]: QB queries x two key blocks (16 accumulators; per d, two
    /// kᵀ loads and QB broadcasts feed 16 FMAs), then one block for an odd last one.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn scores(qt: &[f32], kt: &[f32], hd: usize, n_pad: usize, s: &mut [f32]) {
        let n_kb = kt.len() / (hd * KB);
        assert!(qt.len() >= hd * QB && s.len() >= (QB - 1) * n_pad + n_kb * KB);
        let mut b = 0;
        while b + 2 <= n_kb {
            scores_tile::<2>(qt, kt, hd, n_pad, b, s);
            b += 2;
        }
        if b < n_kb {
            scores_tile::<1>(qt, kt, hd, n_pad, b, s);
        }
    }

    /// Key blocks `b..b + NB` of [`scores`]: kᵀ block `b + u`, column `d` is 16 floats at
    /// `((b + u) * hd + d) * KB`, so a step (d) is KB floats and a chunk (u) `hd * KB`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn scores_tile<const NB: usize>(
        qt: &[f32],
        kt: &[f32],
        hd: usize,
        n_pad: usize,
        b: usize,
        s: &mut [f32],
    ) {
        bcast_tile::<QB, NB>(
            (qt, QB, 1),
            &kt[b * hd * KB..],
            hd,
            KB,
            hd * KB,
            &mut s[b * KB..],
            n_pad,
            false,
        );
    }

    /// [`super::Scalar::p_times_v`]: QB queries x two 16-column chunks (16 accumulators;
    /// per key, two v loads and QB broadcasts from the probability rows feed 16 FMAs), then
    /// one chunk for an odd last, then 8 columns of ymm for a last half chunk.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn p_times_v(p: &[f32], n_pad: usize, v: &[f32], hdp: usize, o: &mut [f32]) {
        let n = v.len() / hdp;
        assert!(o.len() >= QB * hdp && hdp.is_multiple_of(VL));
        let a = (p, 1, n_pad);
        let n_c = hdp / DL;
        let mut c = 0;
        while c + 2 <= n_c {
            bcast_tile::<QB, 2>(a, &v[c * DL..], n, hdp, DL, &mut o[c * DL..], hdp, false);
            c += 2;
        }
        if c < n_c {
            bcast_tile::<QB, 1>(a, &v[c * DL..], n, hdp, DL, &mut o[c * DL..], hdp, false);
        }
        if !hdp.is_multiple_of(DL) {
            // AVX-512F implies AVX2 and FMA: the AVX2 build's 8-column tile.
            let c = n_c * DL;
            bcast_col::<QB>(a, &v[c..], n, hdp, &mut o[c..], hdp, false);
        }
    }
}

/// The AVX2+FMA register tiles of [`Products`]: the query block as two halves of
/// [`HALF`] queries, each against 16 keys or 16 value columns (8 accumulators), so a
/// step's loads feed more FMAs than with all [`QB`] queries against one vector (9 loads for
/// 8 FMAs: the loads bound it, 40 GFLOP/s per Zen 3 core in the tower, `perf`).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Products, KB, QB, VL as L};
    use crate::ops::tiles::avx2::bcast_tile;

    /// Queries per register tile.
    const HALF: usize = QB / 2;

    pub(super) struct Tiles;

    impl Products for Tiles {
        #[inline(always)]
        fn scores(qt: &[f32], kt: &[f32], hd: usize, n_pad: usize, s: &mut [f32]) {
            // SAFETY: only reached from `attend_avx2`, after AVX2 and FMA were detected.
            unsafe { scores(qt, kt, hd, n_pad, s) }
        }
        #[inline(always)]
        fn p_times_v(p: &[f32], n_pad: usize, v: &[f32], hdp: usize, o: &mut [f32]) {
            // SAFETY: as above.
            unsafe { p_times_v(p, n_pad, v, hdp, o) }
        }
    }

    /// [`super::Scalar::scores`], one key block (two 8-key chunks) per tile: kᵀ block `b`,
    /// column `d` is at `(b * hd + d) * KB`, so a step (d) is KB floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn scores(qt: &[f32], kt: &[f32], hd: usize, n_pad: usize, s: &mut [f32]) {
        let n_kb = kt.len() / (hd * KB);
        assert!(qt.len() >= hd * QB && s.len() >= (QB - 1) * n_pad + n_kb * KB);
        for b in 0..n_kb {
            for h in (0..QB).step_by(HALF) {
                bcast_tile::<HALF, 2>(
                    (&qt[h..], QB, 1),
                    &kt[b * hd * KB..],
                    hd,
                    KB,
                    L,
                    &mut s[h * n_pad + b * KB..],
                    n_pad,
                    false,
                );
            }
        }
    }

    /// [`super::Scalar::p_times_v`], 16 value columns at a time per half, then the last 8
    /// (a 72-wide head's) for all [`QB`] queries at once. Not 24 columns: 12 accumulators,
    /// three value vectors and the broadcast are all 16 registers, and the compiler kept an
    /// accumulator on the stack (a store and reload in its chain, `perf annotate`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn p_times_v(p: &[f32], n_pad: usize, v: &[f32], hdp: usize, o: &mut [f32]) {
        let n = v.len() / hdp;
        assert!(o.len() >= QB * hdp && hdp.is_multiple_of(L));
        let whole = hdp / (2 * L) * (2 * L);
        for h in (0..QB).step_by(HALF) {
            let (a, o) = ((&p[h * n_pad..], 1, n_pad), &mut o[h * hdp..]);
            for c in (0..whole).step_by(2 * L) {
                bcast_tile::<HALF, 2>(a, &v[c..], n, hdp, L, &mut o[c..], hdp, false);
            }
        }
        if whole < hdp {
            let a = (p, 1, n_pad);
            bcast_tile::<QB, 1>(a, &v[whole..], n, hdp, L, &mut o[whole..], hdp, false);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ops::lcg;

    /// [`full_attention`] of `qkv` (`n_tiles` tiles of `n` tokens, `n_head` heads of `hd`)
    /// in `arith`, into a fresh output.
    pub(in super::super) fn attention(
        qkv: &[f32],
        (n_tiles, n, n_head, hd): (usize, usize, usize, usize),
        arith: Arith,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; n_tiles * n * n_head * hd];
        let mut panels = Panels::default();
        full_attention(qkv, n_tiles, n, n_head, hd, arith, &mut panels, &mut out);
        out
    }

    /// The definition in f64, one (tile, head, query) at a time.
    fn reference(qkv: &[f32], n_tiles: usize, n: usize, n_head: usize, hd: usize) -> Vec<f64> {
        let w = n_head * hd;
        let mut out = vec![0.0f64; n_tiles * n * w];
        let x = |t: usize, r: usize, part: usize, h: usize, d: usize| {
            f64::from(qkv[(t * n + r) * 3 * w + part * w + h * hd + d])
        };
        for t in 0..n_tiles {
            for h in 0..n_head {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 =
                                (0..hd).map(|d| x(t, i, 0, h, d) * x(t, j, 1, h, d)).sum();
                            dot / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        let o: f64 = (0..n).map(|j| e[j] / z * x(t, j, 2, h, d)).sum();
                        out[(t * n + i) * w + h * hd + d] = o;
                    }
                }
            }
        }
        out
    }

    /// Odd shapes around the block edges (n off the key and query blocks and the task size,
    /// hd off the vector width, one head, several tiles) and the tower's own head width.
    const SHAPES: [(usize, usize, usize, usize); 6] = [
        (1, 1, 1, 1),
        (1, 5, 2, 3),
        (2, 17, 3, 16),
        (1, 100, 2, 17),
        (3, 9, 1, 72),
        (1, 129, 2, 72),
    ];

    /// The AMX path's bound against the definition, relative (see
    /// [`split_products_match_the_definition`]; 1.75e-5 measured on `SHAPES`).
    const SPLIT_TOL: f64 = 5e-5;

    #[test]
    fn matches_the_definition() {
        for (case, &(n_tiles, n, n_head, hd)) in SHAPES.iter().enumerate() {
            let w = n_head * hd;
            let qkv = lcg(case as u64, n_tiles * n * 3 * w, 2.0);
            let out = attention(&qkv, (n_tiles, n, n_head, hd), Arith::Exact);
            let want = reference(&qkv, n_tiles, n, n_head, hd);
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "shape {case}: out[{i}] = {g}, definition {r}"
                );
            }
        }
    }

    /// The AMX path (both products on split bf16 operands) against the definition. Each
    /// operand keeps 16 significant bits and `lo·lo` is left out, so a score is off by up
    /// to ~2^-15 of `Σ|q||k|` (here up to 288 before the 1/sqrt(d) scale) where the FMA path
    /// is off by f32 rounding: hence its own bound, not the f32 one above.
    #[test]
    fn split_products_match_the_definition() {
        let Some(tiles) = quant::kernels::split_tiles() else {
            println!("skipped: CPU lacks AMX-BF16");
            return;
        };
        let mut worst = 0.0f64;
        for (case, &(n_tiles, n, n_head, hd)) in SHAPES.iter().enumerate() {
            let w = n_head * hd;
            let qkv = lcg(case as u64, n_tiles * n * 3 * w, 2.0);
            let out = attention(&qkv, (n_tiles, n, n_head, hd), Arith::Split(tiles));
            let want = reference(&qkv, n_tiles, n, n_head, hd);
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                let err = (f64::from(*g) - r).abs() / r.abs().max(1.0);
                worst = worst.max(err);
                assert!(
                    err <= SPLIT_TOL,
                    "shape {case}: out[{i}] = {g}, definition {r}"
                );
            }
        }
        println!("split attention: worst relative error {worst:.2e}");
    }

    /// Large scores (a softmax of one dominant key) and equal scores (a uniform softmax).
    #[test]
    fn extreme_and_flat_scores() {
        let (n, n_head, hd) = (37, 1, 4);
        let w = n_head * hd;
        for big in [0.0f32, 30.0] {
            let qkv: Vec<f32> = (0..n * 3 * w)
                .map(|i| {
                    let (r, c) = (i / (3 * w), i % (3 * w));
                    match c / w {
                        0 => big,
                        1 => {
                            if r == 5 {
                                big
                            } else {
                                0.0
                            }
                        }
                        _ => r as f32,
                    }
                })
                .collect();
            let want = reference(&qkv, 1, n, n_head, hd);
            // The FMA path, and the AMX and bf16 paths where the CPU has them, each with its
            // bound (the bf16 one: these small integers are exact in bf16, the
            // probabilities are rounded to 8 significant bits).
            let mut paths = vec![(Arith::Exact, 1e-5, "exact")];
            paths.extend(
                quant::kernels::split_tiles().map(|t| (Arith::Split(t), SPLIT_TOL, "split")),
            );
            if bf16_attention_runs(hd) {
                paths.push((Arith::Bf16, 1e-2, "bf16"));
            }
            for (arith, tol, name) in paths {
                let out = attention(&qkv, (1, n, n_head, hd), arith);
                for (g, r) in out.iter().zip(&want) {
                    let ok = (f64::from(*g) - r).abs() <= tol * r.abs().max(1.0);
                    assert!(ok, "{name}: {g} vs {r}");
                }
            }
        }
    }

    /// The AVX2 and AVX-512F builds against the baseline build (the scalar twin): same bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_builds_match_the_baseline_bit_for_bit() {
        for &(_, n, n_head, hd) in &SHAPES {
            let w = n_head * hd;
            let shape = HeadPanels { n, hd };
            let qkv = lcg(n as u64, n * 3 * w, 3.0);
            let mut panels = vec![0.0; n_head * shape.len()];
            for (h, dst) in panels.chunks_exact_mut(shape.len()).enumerate() {
                pack_head(&qkv, w, h, shape, dst);
            }
            let task = Task {
                qkv: &qkv,
                w,
                n_head,
                shape,
                panels: &panels,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let mut want = vec![0.0f32; n * w];
            attend_body::<Scalar>(&task, &mut Scratch::new(shape), &mut want);
            let mut builds: Vec<(&str, Vec<f32>)> = Vec::new();
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut got = vec![0.0f32; n * w];
                // SAFETY: AVX2 and FMA detected above.
                unsafe { attend_avx2(&task, &mut Scratch::new(shape), &mut got) };
                builds.push(("avx2", got));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut got = vec![0.0f32; n * w];
                // SAFETY: AVX-512F detected above.
                unsafe { attend_avx512(&task, &mut Scratch::new(shape), &mut got) };
                builds.push(("avx512f", got));
            }
            for (isa, got) in builds {
                for (g, r) in got.iter().zip(&want) {
                    assert_eq!(g.to_bits(), r.to_bits(), "{isa} n={n} hd={hd}: {g} vs {r}");
                }
            }
        }
    }
}
