//! The vision tower's attention in bf16 arithmetic, for `--vision-precision bf16` on CPUs
//! with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake and later): both products of
//! `softmax(q kᵀ / sqrt(d)) v` on `vdpbf16ps`, with q, k, v and the probabilities rounded to
//! bf16 (to nearest even; subnormals to zero, as `vcvtneps2bf16` takes them) and every score
//! and output summed in f32; the softmax stays the exact f32 one of the FMA path
//! ([`softmax_rows_body`]).
//!
//! Why: with the tower's matrices on `vdpbf16ps` the f32 attention took a fifth of the
//! tower's time (`perf`: 13.6 % of a `bench model --vision-precision bf16` run's samples
//! against the matrices' 48 %, BENCHMARKS.md twenty-second session), and `vdpbf16ps` does
//! two multiply-adds per lane where the FMA does one. The official code runs this attention
//! in bf16 too; the fixtures' cost is measured with the mode's (`vision_tower_recipes`).
//!
//! Layout (u32 = two bf16, the lower one first, as `vdpbf16ps` pairs them):
//! - per (tile, head), kᵀ in blocks of [`KB`] keys as `[hd / 2][KB]` pairs of adjacent
//!   dimensions (one 64-byte load is one pair of 16 keys) and v as `[n / 2][hdp]` pairs of
//!   adjacent keys per column (one load is one key pair of 16 columns), `hdp` = `hd`
//!   rounded up to whole vectors, padding zero;
//! - per block of [`QB`] queries, q as `[QB][..]` dimension pairs and the probabilities as
//!   `[QB][..]` key pairs (one broadcast per query and pair), both rounded from f32 rows by
//!   `vcvtne2ps2bf16` ([`round_pairs`]; with q's pairs rounded one at a time through
//!   `half` a tile took ~2 % longer, alternating `bench model` runs).
//!
//! The register tiles are those of the FMA path at half the steps: `QB` queries x two
//! 16-key blocks (scores) or two 16-column chunks (`P·v`). The scalar twins in `tests` sum
//! the same rounded pairs in f64.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::vision_attention::{run_tasks, HeadShape, Task};
use super::vision_math::softmax_rows_body;

/// Keys per block of packed kᵀ: one 16-lane vector of scores.
const KB: usize = 16;
/// Queries per register tile.
const QB: usize = 8;
/// Value columns per vector (and the padding of a value row).
const DL: usize = 16;

/// Whether [`bf16_attention`] runs here for heads of `hd`: AVX-512 BF16 within the tier
/// cap (`POCKETVL_MAX_TIER`, `POCKETVL_FORCE_SCALAR`) and an even head width.
pub(super) fn available(hd: usize) -> bool {
    hd.is_multiple_of(2) && quant::kernels::bf16_dot_tiles().is_some()
}

/// The shape of one head's packed panels, in u32 pairs.
#[derive(Clone, Copy)]
struct Shape {
    /// Tokens (keys) per tile.
    n: usize,
    /// Head width (even).
    hd: usize,
}

impl Shape {
    /// Dimension pairs of a head.
    fn hp(self) -> usize {
        self.hd / 2
    }
    /// Key blocks (the last padded with zero keys).
    fn n_kb(self) -> usize {
        self.n.div_ceil(KB)
    }
    /// Score row stride: all key blocks, padding included.
    fn n_pad(self) -> usize {
        self.n_kb() * KB
    }
    /// Key pairs (the last one's second key zero when `n` is odd).
    fn n2(self) -> usize {
        self.n.div_ceil(2)
    }
    /// Probability row stride in pairs: whole 32-key conversions.
    fn n2s(self) -> usize {
        pair_stride(self.n)
    }
    /// Query row stride in pairs: whole 32-dimension conversions.
    fn qs(self) -> usize {
        pair_stride(self.hd)
    }
    /// Value row stride: `hd` rounded up to whole [`DL`] vectors.
    fn hdp(self) -> usize {
        self.hd.div_ceil(DL) * DL
    }
    /// Pairs of packed kᵀ.
    fn kt_len(self) -> usize {
        self.n_kb() * self.hp() * KB
    }
}

impl HeadShape for Shape {
    /// Pairs of one head's panels: kᵀ, then v.
    fn len(self) -> usize {
        self.kt_len() + self.n2() * self.hdp()
    }
}

/// Pairs per row of `len` floats rounded by [`round_pairs`] (whole 32-float steps).
fn pair_stride(len: usize) -> usize {
    len.div_ceil(32) * 16
}

/// `out = attention(qkv)` inside each tile, the contract of
/// [`full_attention`](super::vision_attention::full_attention), in bf16 arithmetic; the
/// caller checked [`available`]. `panels` is scratch kept by the caller across layers.
pub(super) fn bf16_attention(
    qkv: &[f32],
    n_tiles: usize,
    (n, n_head, hd): (usize, usize, usize),
    panels: &mut Vec<u32>,
    out: &mut [f32],
) {
    assert!(
        available(hd),
        "bf16 attention without AVX-512 BF16 or with an odd head"
    );
    let w = n_head * hd;
    let shape = Shape { n, hd };
    run_tasks(
        qkv,
        n_tiles,
        (n, n_head, hd),
        shape,
        panels,
        // SAFETY (both): `available` (asserted above) found AVX-512 F, BW and BF16.
        |tile, h, dst| unsafe { pack_head(tile, w, h, shape, dst) },
        || Scratch::new(shape),
        |task, s, o| unsafe { attend(task, s, o) },
        out,
    );
}

/// Packs head `h` of one tile (`qkv` rows of `3 w`) into `dst` (`shape.len()` pairs),
/// rounding 16 or 32 floats per instruction, as [`round_pairs`] does.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_head(qkv: &[f32], w: usize, h: usize, shape: Shape, dst: &mut [u32]) {
    let (n, hd, hp, hdp) = (shape.n, shape.hd, shape.hp(), shape.hdp());
    let (kt, v) = dst.split_at_mut(shape.kt_len());
    // Padding keys and columns are read by the products: zero them so nothing is stale.
    kt.fill(0);
    v.fill(0);
    let row = |j: usize| &qkv[j * 3 * w..][..3 * w];
    let mut k_pairs = vec![0u32; pair_stride(hd)];
    for j in 0..n {
        // SAFETY: AVX-512 F, BW and BF16 (this function's contract).
        unsafe { round_pairs(&row(j)[w + h * hd..][..hd], &mut k_pairs) };
        let blk = &mut kt[(j / KB) * hp * KB..][..hp * KB];
        for (p, &x) in k_pairs[..hp].iter().enumerate() {
            blk[p * KB + j % KB] = x;
        }
    }
    for (m, vr) in v.chunks_exact_mut(hdp).enumerate() {
        let v0 = &row(2 * m)[2 * w + h * hd..][..hd];
        let v1 = (2 * m + 1 < n).then(|| &row(2 * m + 1)[2 * w + h * hd..][..hd]);
        for c in (0..hd).step_by(16) {
            let mask: __mmask16 = ((1u32 << (hd - c).min(16)) - 1) as u16;
            // SAFETY: the mask keeps columns c + lane < hd of the two value rows; 16 pairs
            // at c lie inside `vr` (`hdp` = hd rounded up to 16).
            unsafe {
                let lo = _mm512_maskz_loadu_ps(mask, v0.as_ptr().add(c));
                let hi = match v1 {
                    Some(v1) => _mm512_maskz_loadu_ps(mask, v1.as_ptr().add(c)),
                    None => _mm512_setzero_ps(),
                };
                let bits = |x: __m512| -> __m512i {
                    _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                        _mm512_cvtneps_pbh(x),
                    ))
                };
                let pairs = _mm512_or_si512(bits(lo), _mm512_slli_epi32::<16>(bits(hi)));
                _mm512_storeu_si512(vr.as_mut_ptr().add(c).cast(), pairs);
            }
        }
    }
}

/// Per-worker buffers of the query phase, sized once per call.
struct Scratch {
    /// One query block's pairs, `[QB][qs]`, zero past the block's end.
    qt: Vec<u32>,
    /// The block's scores, then probabilities: `[QB][n_pad]` f32.
    s: Vec<f32>,
    /// The block's probabilities rounded, `[QB][n2s]` key pairs.
    pp: Vec<u32>,
    /// The block's outputs, `[QB][hdp]`.
    o: Vec<f32>,
}

impl Scratch {
    fn new(shape: Shape) -> Self {
        Scratch {
            qt: vec![0; QB * shape.qs()],
            s: vec![0.0; QB * shape.n_pad()],
            pp: vec![0; QB * shape.n2s()],
            o: vec![0.0; QB * shape.hdp()],
        }
    }
}

/// This path's task: panels of bf16 pairs.
type PairTask<'a> = Task<'a, u32, Shape>;

/// The query phase: per head and block of [`QB`] queries, scores, softmax, rounding, `P·v`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn attend(task: &PairTask<'_>, s: &mut Scratch, out: &mut [f32]) {
    let (w, shape) = (task.w, task.shape);
    let (n, hd, hp, n_pad, qs) = (shape.n, shape.hd, shape.hp(), shape.n_pad(), shape.qs());
    let nq = out.len() / w;
    for h in 0..task.n_head {
        let head = &task.panels[h * shape.len()..][..shape.len()];
        let (kt, v) = head.split_at(shape.kt_len());
        for q0 in (0..nq).step_by(QB) {
            let rows = QB.min(nq - q0);
            for (i, qt) in s.qt.chunks_exact_mut(qs).enumerate() {
                if i < rows {
                    let q = &task.qkv[(q0 + i) * 3 * w + h * hd..][..hd];
                    // SAFETY: AVX-512 F, BW and BF16 (this function's contract).
                    unsafe { round_pairs(q, qt) };
                } else {
                    qt.fill(0);
                }
            }
            // SAFETY (three calls): AVX-512 F, BW and BF16 (this function's contract).
            unsafe { scores(&s.qt, qs, kt, hp, n_pad, &mut s.s) };
            for (row, pp) in
                s.s.chunks_exact_mut(n_pad)
                    .zip(s.pp.chunks_exact_mut(shape.n2s()))
                    .take(rows)
            {
                softmax_rows_body(&mut row[..n], n, task.scale);
                unsafe { round_pairs(&row[..n], pp) };
            }
            unsafe { p_times_v(&s.pp, shape.n2s(), v, shape.hdp(), &mut s.o) };
            for (i, o) in s.o.chunks_exact(shape.hdp()).take(rows).enumerate() {
                out[(q0 + i) * w + h * hd..][..hd].copy_from_slice(&o[..hd]);
            }
        }
    }
}

/// The bits of a bf16 vector, as they are (no conversion).
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both types are 64 bytes of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// `s[i * n_pad + j] = Σ_p q pair (i, p) · kᵀ pair (p, j)` (pairs ascending, one
/// `vdpbf16ps` each) for every (padded) key `j`, q's rows `qs` pairs apart: QB queries x
/// two key blocks per tile, then one block for an odd last one.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn scores(qt: &[u32], qs: usize, kt: &[u32], hp: usize, n_pad: usize, s: &mut [f32]) {
    let n_kb = kt.len() / (hp * KB);
    assert!(hp <= qs && qt.len() >= QB * qs && s.len() >= (QB - 1) * n_pad + n_kb * KB);
    let mut b = 0;
    while b + 2 <= n_kb {
        // SAFETY: AVX-512 F, BW and BF16; blocks b, b + 1 < n_kb and their score columns
        // inside `s` (asserted).
        unsafe { scores_tile::<2>((qt, qs), kt, hp, n_pad, b, s) };
        b += 2;
    }
    if b < n_kb {
        // SAFETY: as above, block b.
        unsafe { scores_tile::<1>((qt, qs), kt, hp, n_pad, b, s) };
    }
}

/// Key blocks `b..b + NB` of [`scores`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn scores_tile<const NB: usize>(
    (qt, qs): (&[u32], usize),
    kt: &[u32],
    hp: usize,
    n_pad: usize,
    b: usize,
    s: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); NB]; QB];
    let (q, k) = (qt.as_ptr(), kt.as_ptr());
    for p in 0..hp {
        // SAFETY: pair p of blocks b..b + NB, inside `kt` (the caller's bound).
        let kv: [__m512bh; NB] = std::array::from_fn(|u| {
            bh(unsafe { _mm512_loadu_si512(k.add(((b + u) * hp + p) * KB).cast()) })
        });
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: pair p of query i, inside `qt` (`QB` rows of `qs`, the caller's bound).
            let x = bh(_mm512_set1_epi32(unsafe { q.add(i * qs + p).read() } as i32));
            for (a, kv) in a.iter_mut().zip(kv) {
                *a = _mm512_dpbf16_ps(*a, x, kv);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        for (u, a) in a.iter().enumerate() {
            // SAFETY: row i, keys (b + u) * KB.., inside `s` (the caller's bound).
            unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(i * n_pad + (b + u) * KB), *a) };
        }
    }
}

/// One row `p` of `n` floats (a query, or a row of probabilities) as pairs in `pp` (pair m
/// = elements 2m, 2m + 1; zero past `n`, up to [`pair_stride`]), rounded by
/// `vcvtne2ps2bf16`, 32 floats per step.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_pairs(p: &[f32], pp: &mut [u32]) {
    let n = p.len();
    assert!(pp.len() >= pair_stride(n));
    for c in (0..n).step_by(32) {
        let mask = |off: usize| -> __mmask16 {
            let live = n.saturating_sub(c + off).min(16);
            ((1u32 << live) - 1) as u16
        };
        // SAFETY: the masks keep keys c + lane < n of `p`; 16 pairs at c / 2 lie inside
        // `pp` (asserted).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(mask(0), p.as_ptr().add(c));
            let hi = _mm512_maskz_loadu_ps(mask(16), p.as_ptr().add(c).wrapping_add(16));
            let r: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(pp.as_mut_ptr().add(c / 2).cast(), r);
        }
    }
}

/// `o[i * hdp + c] = Σ_m P pair (i, m) · v pair (m, c)` (pairs ascending) over the
/// `v.len() / hdp` key pairs: QB queries x two 16-column chunks per tile, then one chunk.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn p_times_v(pp: &[u32], n2s: usize, v: &[u32], hdp: usize, o: &mut [f32]) {
    let n2 = v.len() / hdp;
    assert!(hdp.is_multiple_of(DL) && n2 <= n2s && pp.len() >= QB * n2s);
    assert!(o.len() >= QB * hdp);
    let n_c = hdp / DL;
    let mut c = 0;
    while c + 2 <= n_c {
        // SAFETY: AVX-512 F, BW and BF16; chunks c, c + 1 inside every row (asserted).
        unsafe { pv_tile::<2>(pp, n2s, v, hdp, c * DL, o) };
        c += 2;
    }
    if c < n_c {
        // SAFETY: as above, chunk c.
        unsafe { pv_tile::<1>(pp, n2s, v, hdp, c * DL, o) };
    }
}

/// Value columns `c..c + NC * DL` of [`p_times_v`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn pv_tile<const NC: usize>(
    pp: &[u32],
    n2s: usize,
    v: &[u32],
    hdp: usize,
    c: usize,
    o: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); NC]; QB];
    let (p, vp) = (pp.as_ptr(), v.as_ptr());
    for m in 0..v.len() / hdp {
        // SAFETY: key pair m, columns c.. of `v` (the caller's bound).
        let vv: [__m512bh; NC] = std::array::from_fn(|u| {
            bh(unsafe { _mm512_loadu_si512(vp.add(m * hdp + c + u * DL).cast()) })
        });
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: pair m of query i's row, inside `pp` (the caller's bound).
            let x = bh(_mm512_set1_epi32(
                unsafe { p.add(i * n2s + m).read() } as i32
            ));
            for (a, vv) in a.iter_mut().zip(vv) {
                *a = _mm512_dpbf16_ps(*a, x, vv);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        for (u, a) in a.iter().enumerate() {
            // SAFETY: row i, columns c + u * DL.., inside `o` (the caller's bound).
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(i * hdp + c + u * DL), *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::lcg;

    /// Two floats rounded to bf16 (to nearest even, as `vcvtne2ps2bf16` rounds normal
    /// numbers) in one u32, `lo` in the lower half: the twins' rounding.
    fn pair(lo: f32, hi: f32) -> u32 {
        let b = |x: f32| u32::from(half::bf16::from_f32(x).to_bits());
        b(lo) | (b(hi) << 16)
    }

    /// The two bf16 of a pair, as f64.
    fn unpair(x: u32) -> [f64; 2] {
        let f = |b: u32| f64::from(half::bf16::from_bits(b as u16).to_f32());
        [f(x & 0xffff), f(x >> 16)]
    }

    /// Σ a·b over the pairs in f64, and Σ |a·b| (the bound's scale).
    fn dot(pairs: impl Iterator<Item = (u32, u32)>) -> (f64, f64) {
        pairs.fold((0.0, 0.0), |(s, m), (a, b)| {
            let (a, b) = (unpair(a), unpair(b));
            (
                s + a[0] * b[0] + a[1] * b[1],
                m + (a[0] * b[0]).abs() + (a[1] * b[1]).abs(),
            )
        })
    }

    /// A row of `len` values of case `case`: random, zero, large against small, tiny.
    fn values(case: usize, seed: u64, len: usize, large: bool) -> Vec<f32> {
        match case {
            0 => lcg(seed, len, 2.0),
            1 => vec![0.0; len],
            2 => lcg(seed, len, 1.0)
                .iter()
                .map(|x| x * if large { 1e18 } else { 1e-18 })
                .collect(),
            _ => lcg(seed, len, 1e-10),
        }
    }

    /// Head width and tokens around the blocks' edges (odd `n`, a partial key block, a
    /// pair past `n`, a partial value chunk) and the tower's own shape.
    const SHAPES: [(usize, usize); 6] = [(1, 2), (5, 4), (17, 16), (33, 72), (100, 18), (729, 72)];

    /// The scores and `P·v` kernels against f64 sums of the same rounded pairs, on packed
    /// panels of random, zero, extreme and tiny data.
    #[test]
    fn products_match_scalar_twins() {
        if !available(2) {
            println!("skipped: CPU lacks AVX-512 BF16");
            return;
        }
        for &(n, hd) in &SHAPES {
            for case in 0..4 {
                let shape = Shape { n, hd };
                let (hp, n_pad, hdp, n2s) = (shape.hp(), shape.n_pad(), shape.hdp(), shape.n2s());
                let (q, k, v) = (
                    values(case, 1, QB * hd, true),
                    values(case, 2, n * hd, false),
                    values(case, 3, n * hd, true),
                );
                // One head (w = hd): rows [q | k | v], packed as the attention packs them.
                let mut qkv = vec![0.0f32; n * 3 * hd];
                for j in 0..n {
                    qkv[j * 3 * hd + hd..][..hd].copy_from_slice(&k[j * hd..][..hd]);
                    qkv[j * 3 * hd + 2 * hd..][..hd].copy_from_slice(&v[j * hd..][..hd]);
                }
                let mut panels = vec![u32::MAX; shape.len()];
                // SAFETY: AVX-512 BF16 (`available`).
                unsafe { pack_head(&qkv, hd, 0, shape, &mut panels) };
                let (kt, vp) = panels.split_at(shape.kt_len());
                let qs = shape.qs();
                let mut qt = vec![u32::MAX; QB * qs];
                for i in 0..QB {
                    for p in 0..hp {
                        qt[i * qs + p] = pair(q[i * hd + 2 * p], q[i * hd + 2 * p + 1]);
                    }
                }
                let mut s = vec![f32::NAN; QB * n_pad];
                // SAFETY: AVX-512 BF16 (`available`).
                unsafe { scores(&qt, qs, kt, hp, n_pad, &mut s) };
                for i in 0..QB {
                    for j in 0..n_pad {
                        let kp = |p: usize| {
                            if j < n {
                                pair(k[j * hd + 2 * p], k[j * hd + 2 * p + 1])
                            } else {
                                0
                            }
                        };
                        let (want, mag) = dot((0..hp).map(|p| (qt[i * qs + p], kp(p))));
                        let got = f64::from(s[i * n_pad + j]);
                        assert!(
                            (got - want).abs() <= 1e-5 * mag,
                            "n {n} hd {hd} case {case}: score ({i}, {j}) = {got}, twin {want}"
                        );
                    }
                }
                // Probabilities: rounded by the kernel as `pair` rounds them.
                let p = values(case, 4, QB * n, false);
                let mut pp = vec![u32::MAX; QB * n2s];
                for (row, dst) in p.chunks_exact(n).zip(pp.chunks_exact_mut(n2s)) {
                    // SAFETY: as above.
                    unsafe { round_pairs(row, dst) };
                    for m in 0..n.div_ceil(2) {
                        let hi = if 2 * m + 1 < n { row[2 * m + 1] } else { 0.0 };
                        assert_eq!(dst[m], pair(row[2 * m], hi), "n {n} case {case}: pair {m}");
                    }
                }
                let mut o = vec![f32::NAN; QB * hdp];
                // SAFETY: as above.
                unsafe { p_times_v(&pp, n2s, vp, hdp, &mut o) };
                for i in 0..QB {
                    for c in 0..hdp {
                        // Value pair (m, c) from the unpacked rows, as the packing rounds it.
                        let x = |j: usize| if j < n && c < hd { v[j * hd + c] } else { 0.0 };
                        let vcol = |m: usize| pair(x(2 * m), x(2 * m + 1));
                        let (want, mag) =
                            dot((0..n.div_ceil(2)).map(|m| (pp[i * n2s + m], vcol(m))));
                        let got = f64::from(o[i * hdp + c]);
                        assert!(
                            (got - want).abs() <= 1e-5 * mag,
                            "n {n} hd {hd} case {case}: output ({i}, {c}) = {got}, twin {want}"
                        );
                        if c >= hd {
                            assert_eq!(got, 0.0, "padding column {c}");
                        }
                    }
                }
            }
        }
    }

    /// The whole attention against the exact f32 one: off by bf16 rounding only (a layout
    /// or padding slip would be off by the outputs' own size). Several tiles and heads,
    /// odd `n`, a task boundary (n > 96 queries).
    #[test]
    fn attention_stays_near_the_exact_one() {
        use super::super::vision_attention::{tests::attention, Arith};
        if !available(2) {
            println!("skipped: CPU lacks AVX-512 BF16");
            return;
        }
        let mut worst = 0.0f64;
        for (case, &(n_tiles, n, n_head, hd)) in [
            (1, 1, 1, 2),
            (2, 17, 3, 16),
            (1, 100, 2, 18),
            (2, 129, 2, 72),
        ]
        .iter()
        .enumerate()
        {
            let w = n_head * hd;
            let qkv = lcg(case as u64, n_tiles * n * 3 * w, 1.0);
            let shape = (n_tiles, n, n_head, hd);
            let exact = attention(&qkv, shape, Arith::Exact);
            let fast = attention(&qkv, shape, Arith::Bf16);
            for (i, (f, e)) in fast.iter().zip(&exact).enumerate() {
                let err = (f64::from(*f) - f64::from(*e)).abs();
                worst = worst.max(err);
                assert!(err <= 2e-2, "case {case}: out[{i}] = {f}, exact {e}");
            }
        }
        println!("bf16 attention: worst absolute difference from the exact one {worst:.2e}");
    }
}
