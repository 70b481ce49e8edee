//! Packed matrix products for float weights (F32, F16, BF16) times f32 activations
//! ([`GemmFn`](super::GemmFn) slots), BLIS-style:
//!
//! - the weight rows of a call are cut into k-blocks of at most [`KC_MAX`] columns;
//! - per k-block, the rows are widened to f32 **once** and packed transposed into panels of
//!   `NR` rows (`[kc][NR]`, the panel's rows side by side), zero-padded to `NR` rows;
//! - a microkernel then runs every tile of up to `MT` tokens against every panel: per column
//!   it loads the panel's `NR` weights as vectors and broadcasts each token's activation, so
//!   the accumulators are `MT x NR` outputs held in registers for the whole k-block.
//!
//! The packed block (≤ 256 rows x 256 columns = 256 KiB) stays in L2; one panel (32 x 256
//! floats, 32 KiB) and one token tile (≤ 8 x 256 floats) fit L1 together while the tile
//! sweeps the panels (k-blocks of 512 measured ~7% slower on the tower: a 48 KiB panel
//! spills L1). The products are the f32
//! products of the widened values, summed in f32 (FMA) per k-block, so results equal the
//! scalar twins' f64 sums up to f32 rounding; `tests` check that on random and edge data.
//!
//! A caller that splits one product over threads by tokens (the vision tower) packs the
//! whole matrix once and shares it ([`FloatPanels`]): each task then writes its own token
//! rows of the output in place, 256 weight rows at a time through every k-block, in groups
//! of [`GROUP_TILES`] token tiles. The same tiles in the same order per output, so the same
//! bits as the one-call form (tested).
//!
//! Below [`MIN_TOKENS`] tokens packing costs more than it saves and the calls go to the
//! tier's dot kernels instead. The ISA-specific parts (widening, microkernels) live in
//! `float_gemm_avx2.rs`, `float_gemm_avx512.rs` and `neon_float_gemm.rs`.

use std::ops::Range;

use super::{gemm_by_dots, DotFn};

/// Fewer tokens than this run one dot per (row, token): a packed panel would be used by
/// fewer than this many tokens.
pub(super) const MIN_TOKENS: usize = 4;

/// Widest k-block (see the module doc: a 32-row panel of it is 32 KiB, L1 with room).
const KC_MAX: usize = 256;

/// Most weight rows per panel of any tier (AVX-512F: 32).
const MAX_NR: usize = 32;

/// The float weight types this module packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Float {
    F32,
    F16,
    BF16,
}

impl Float {
    /// Bytes per element.
    pub(super) fn size(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F16 | Float::BF16 => 2,
        }
    }
}

/// One instruction set's pieces of the packed product.
pub(super) struct Isa {
    /// Weight rows per panel.
    pub nr: usize,
    /// Tokens per tile.
    pub mt: usize,
    /// `dst[..n] = src` widened to f32 (`src` holds `n` elements of the type).
    pub widen: fn(Float, &[u8], &mut [f32]),
    /// The microkernel, see [`Tile`].
    pub tile: fn(&Tile<'_>, &mut [f32], usize),
}

/// One microkernel call: tokens `a` (`nt ≤ mt` rows at stride `lda`, `kc` columns each)
/// against one packed panel `b` (`[kc][nr]`). It writes, for `t < nt`, `r < rows`,
/// `out[t * ldo + r]` (`= sum` when `!accumulate`, `+= sum` otherwise).
pub(super) struct Tile<'a> {
    pub nt: usize,
    pub kc: usize,
    /// `a[t * lda + i]` is token `t`, column `i` of this k-block.
    pub a: &'a [u8],
    pub lda: usize,
    pub b: &'a [f32],
    pub rows: usize,
    pub accumulate: bool,
}

/// The k-blocks of a product over `k` columns: (count, columns per block), balanced so the
/// last block is not a sliver.
fn k_blocks(k: usize) -> (usize, usize) {
    let n_kb = k.div_ceil(KC_MAX);
    (n_kb, k.div_ceil(n_kb))
}

/// Columns a panel is widened by at a time: `nr` rows of them (at most 32 x 64 floats,
/// 8 KiB) stay in L1 while they are written out transposed, so the panel's stores are
/// sequential. Widening whole rows and storing each value `nr` floats from the last missed
/// L1 on every store (~9 cycles per value, ~5% of the tower's products). 64 columns
/// rather than 16: a quarter of the widening calls (one per row and 16 values was most of
/// the widening's time); the tower's matrices packed in ~25% less time (`gemm_bench bf16
/// tower`, BENCHMARKS.md "sixth pass").
const PACK_COLS: usize = 64;

/// Widens rows `nr p ..` of `w` (`n_rows` rows of `k` elements of `ty`), columns
/// `k0 .. k0 + kc`, into the transposed panel `dst` (`dst[i * nr + j]`, `kc * nr` floats);
/// rows past `n_rows` are zeros.
#[allow(clippy::too_many_arguments)]
fn pack_panel(
    isa: &Isa,
    ty: Float,
    k: usize,
    w: &[u8],
    n_rows: usize,
    p: usize,
    (k0, kc): (usize, usize),
    dst: &mut [f32],
) {
    let (nr, es) = (isa.nr, ty.size());
    assert!(nr <= MAX_NR, "gemm: panel wider than MAX_NR");
    let live = nr.min(n_rows - p * nr);
    let mut cols = [0.0f32; MAX_NR * PACK_COLS];
    for c0 in (0..kc).step_by(PACK_COLS) {
        let cn = PACK_COLS.min(kc - c0);
        for (j, c) in cols.chunks_exact_mut(PACK_COLS).take(live).enumerate() {
            let r = p * nr + j;
            (isa.widen)(ty, &w[(r * k + k0 + c0) * es..][..cn * es], &mut c[..cn]);
        }
        for (i, d) in dst[c0 * nr..][..cn * nr].chunks_exact_mut(nr).enumerate() {
            for (j, d) in d[..live].iter_mut().enumerate() {
                *d = cols[j * PACK_COLS + i];
            }
            d[live..].fill(0.0);
        }
    }
}

/// One k-block's panels, packed: panel `p` is `b[p * stride..][..kc * nr]`.
struct KBlock<'a> {
    k0: usize,
    kc: usize,
    b: &'a [f32],
    stride: usize,
}

/// Every tile of up to `mt` of the `n_tok` tokens in `a` (rows of `k` f32, as bytes) against
/// panels `panels` of the k-block `kb`, the tokens outer so a tile stays in L1 while it
/// sweeps the panels: `out[t * ldo + r]` (`=` for the first k-block, `+=` after) for the
/// panels' rows below `n_rows`.
#[allow(clippy::too_many_arguments)]
fn sweep(
    isa: &Isa,
    kb: &KBlock<'_>,
    panels: Range<usize>,
    k: usize,
    a: &[u8],
    n_tok: usize,
    n_rows: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let (nr, arb, kc) = (isa.nr, k * 4, kb.kc);
    let mut t0 = 0;
    while t0 < n_tok {
        let nt = isa.mt.min(n_tok - t0);
        for p in panels.clone() {
            let tile = Tile {
                nt,
                kc,
                a: &a[t0 * arb + kb.k0 * 4..(t0 + nt - 1) * arb + (kb.k0 + kc) * 4],
                lda: k,
                b: &kb.b[p * kb.stride..][..kc * nr],
                rows: nr.min(n_rows - p * nr),
                accumulate: kb.k0 > 0,
            };
            let o0 = t0 * ldo + p * nr;
            let o1 = (t0 + nt - 1) * ldo + p * nr + tile.rows;
            (isa.tile)(&tile, &mut out[o0..o1], ldo);
        }
        t0 += nt;
    }
}

/// `out[t * ldo + r] = Σ_i w[r, i] · a[t, i]` for `n_rows` weight rows of type `ty` and
/// `n_tok` f32 activation rows (the [`GemmFn`](super::GemmFn) contract), packed as the
/// module doc describes; `dot` serves calls of fewer than [`MIN_TOKENS`] tokens.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_packed(
    isa: &Isa,
    ty: Float,
    dot: DotFn,
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let (wrb, arb) = (k * ty.size(), k * 4);
    if n_tok < MIN_TOKENS || k == 0 || n_rows == 0 {
        return gemm_by_dots(dot, wrb, arb, k, w, n_rows, a, n_tok, out, ldo);
    }
    // The microkernels index with these bounds; a short slice is a caller bug.
    assert!(
        w.len() >= n_rows * wrb && a.len() >= n_tok * arb,
        "gemm: input sizes"
    );
    assert!(out.len() >= (n_tok - 1) * ldo + n_rows, "gemm: output size");
    let nr = isa.nr;
    let n_pan = n_rows.div_ceil(nr);
    let (n_kb, kcb) = k_blocks(k);
    let mut packed = vec![0.0f32; n_pan * nr * kcb];
    for kb in 0..n_kb {
        let k0 = kb * kcb;
        let kc = kcb.min(k - k0);
        for (p, panel) in packed.chunks_exact_mut(nr * kcb).enumerate() {
            pack_panel(isa, ty, k, w, n_rows, p, (k0, kc), panel);
        }
        let kb = KBlock {
            k0,
            kc,
            b: &packed,
            stride: nr * kcb,
        };
        sweep(isa, &kb, 0..n_pan, k, a, n_tok, n_rows, out, ldo);
    }
}

/// Weight rows a token range runs through all k-blocks before the next rows: their packed
/// k-block (256 KiB) stays in L2 while the token tiles stream past, as in [`gemm_packed`]
/// (whose callers hand it at most 256 rows).
const SWEEP_ROWS: usize = 256;

/// Token tiles that go through all k-blocks of a sweep's rows before the next tiles: their
/// outputs (96 tokens x 256 columns = 96 KiB on AVX-512) stay in L2 between k-blocks and
/// for the caller's epilogue, instead of coming back from L3 once per k-block (a task's
/// 729 tokens are 729 KiB). Measured with two products at once (the tower's two threads
/// sharing L3): ~2% faster at one task's shapes (`gemm_bench bf16 tower`, BENCHMARKS.md).
const GROUP_TILES: usize = 12;

/// The packed float product in two steps, for callers that split one product over threads
/// by tokens: pack the weights once ([`FloatPanels::pack_panel`], one panel of one k-block at
/// a time, so panels can be packed in parallel), then run any number of token ranges against
/// them ([`FloatPanels::gemm`]), each writing its own rows of the output. Same arithmetic,
/// and the same bits, as the tier's [`GemmFn`](super::GemmFn) for the type.
#[derive(Clone, Copy)]
pub struct FloatPanels {
    isa: &'static Isa,
    ty: Float,
}

/// What [`FloatPanels::gemm_then`] calls on final outputs: `(out, tokens, columns)`.
pub type Epilogue<'a> = dyn FnMut(&mut [f32], Range<usize>, Range<usize>) + 'a;

/// Weights packed for [`FloatPanels::gemm`]: k-block by k-block, each the rows' panels in
/// order (`panel_len` floats each). Reusable: [`FloatPanels::shape`] keeps the capacity.
#[derive(Default)]
pub struct PackedFloat {
    buf: Vec<f32>,
    k: usize,
    n_rows: usize,
    panel_len: usize,
}

impl PackedFloat {
    /// The packed panels (`panel_len` floats each), for [`FloatPanels::pack_panel`] to fill.
    pub fn panels_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }

    /// Floats per packed panel (one k-block of `nr` rows).
    pub fn panel_len(&self) -> usize {
        self.panel_len
    }
}

impl FloatPanels {
    pub(super) fn new(isa: &'static Isa, ty: Float) -> Self {
        FloatPanels { isa, ty }
    }

    /// Shapes `dst` for `n_rows` weight rows of `k` (its capacity is kept, so a buffer
    /// reused across products allocates once).
    pub fn shape(self, k: usize, n_rows: usize, dst: &mut PackedFloat) {
        let (n_kb, kcb) = k_blocks(k);
        dst.panel_len = self.isa.nr * kcb;
        dst.buf
            .resize(n_kb * n_rows.div_ceil(self.isa.nr) * dst.panel_len, 0.0);
        (dst.k, dst.n_rows) = (k, n_rows);
    }

    /// Packs panel `c` of [`PackedFloat::panels_mut`] (k-block `c / n_panels`, panel
    /// `c % n_panels`) of the `n_rows` weight rows of `k` elements in `w` into `dst`, for a
    /// buffer given the same shape by [`FloatPanels::shape`].
    pub fn pack_panel(self, k: usize, w: &[u8], n_rows: usize, c: usize, dst: &mut [f32]) {
        let (_, kcb) = k_blocks(k);
        let n_pan = n_rows.div_ceil(self.isa.nr);
        let (kb, p) = (c / n_pan, c % n_pan);
        let k0 = kb * kcb;
        let kc = kcb.min(k - k0);
        assert!(w.len() >= n_rows * k * self.ty.size(), "gemm: input sizes");
        pack_panel(self.isa, self.ty, k, w, n_rows, p, (k0, kc), dst);
    }

    /// Tokens per microkernel tile: token ranges of a multiple of it leave no partial tiles.
    pub fn tile_tokens(self) -> usize {
        self.isa.mt
    }

    /// `out[t * ldo + r] = Σ_i w[r, i] · a[t, i]` for the `n_tok` f32 activation rows in `a`
    /// (as bytes) against every row of the packed weights `w`.
    pub fn gemm(self, w: &PackedFloat, a: &[u8], n_tok: usize, out: &mut [f32], ldo: usize) {
        self.gemm_then(w, a, n_tok, out, ldo, &mut |_, _, _| {})
    }

    /// [`FloatPanels::gemm`], calling `then(out, tokens, columns)` as soon as those output
    /// columns are final for those tokens (at most 256 columns of [`GROUP_TILES`] tiles of
    /// tokens at a time, while they are still in L2): an epilogue such as a bias or an
    /// activation, fused without another pass over `out`.
    pub fn gemm_then(
        self,
        w: &PackedFloat,
        a: &[u8],
        n_tok: usize,
        out: &mut [f32],
        ldo: usize,
        then: &mut Epilogue<'_>,
    ) {
        let (k, n_rows, nr) = (w.k, w.n_rows, self.isa.nr);
        if n_tok == 0 || k == 0 || n_rows == 0 {
            return;
        }
        assert!(a.len() >= n_tok * k * 4, "gemm: input sizes");
        assert!(out.len() >= (n_tok - 1) * ldo + n_rows, "gemm: output size");
        let n_pan = n_rows.div_ceil(nr);
        let (n_kb, kcb) = k_blocks(k);
        let per_sweep = (SWEEP_ROWS / nr).max(1);
        let group = GROUP_TILES * self.isa.mt;
        for p0 in (0..n_pan).step_by(per_sweep) {
            let panels = p0..(p0 + per_sweep).min(n_pan);
            for g0 in (0..n_tok).step_by(group) {
                let gn = group.min(n_tok - g0);
                for kb in 0..n_kb {
                    let blk = KBlock {
                        k0: kb * kcb,
                        kc: kcb.min(k - kb * kcb),
                        b: &w.buf[kb * n_pan * w.panel_len..][..n_pan * w.panel_len],
                        stride: w.panel_len,
                    };
                    let (a, o) = (&a[g0 * k * 4..], &mut out[g0 * ldo..]);
                    sweep(self.isa, &blk, panels.clone(), k, a, gn, n_rows, o, ldo);
                }
                then(out, g0..g0 + gn, p0 * nr..(panels.end * nr).min(n_rows));
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::lcg;
    use super::super::{gemm_by_dots, scalar, DotFn, GemmFn};
    use super::{FloatPanels, PackedFloat};
    use crate::block::quantize_row;
    use crate::GgmlType;
    use std::ops::Range;

    fn encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap_or(0) as usize];
        quantize_row(ty, x, &mut q).unwrap();
        q
    }

    /// Checks the two-step product (`panels`: pack once, then token ranges) against the
    /// one-step `gemm` of the same tier (itself checked against the scalar twin by
    /// [`check_against_scalar`]): the same bits for every token range, also past one sweep
    /// of rows, across k-blocks and across token groups, with the output's padding columns
    /// untouched; and the epilogue of `gemm_then` called once on every output, when final.
    pub fn check_panels_match_gemm(panels: FloatPanels, gemm: GemmFn, ty: GgmlType) {
        for &(k, n_rows, n_tok) in &[
            (1usize, 1usize, 4usize),
            (17, 33, 9),
            (72, 72, 23),
            (300, 290, 13),
            (1030, 17, 21),
            (513, 530, 6),
            (40, 300, 203),
            (513, 70, 110),
        ] {
            let w = encode(ty, &lcg(k as u64, n_rows * k, 1.0));
            let a: Vec<u8> = lcg(5, n_tok * k, 2.0)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let ldo = n_rows + 3;
            let mut want = vec![f32::NAN; n_tok * ldo];
            gemm(k, &w, n_rows, &a, n_tok, &mut want, ldo);
            let mut packed = PackedFloat::default();
            panels.shape(k, n_rows, &mut packed);
            let len = packed.panel_len();
            for (c, dst) in packed.panels_mut().chunks_exact_mut(len).enumerate() {
                dst.fill(f32::NAN);
                panels.pack_panel(k, &w, n_rows, c, dst);
            }
            for split in [0, 1, n_tok / 2, n_tok - 1] {
                let mut got = vec![f32::NAN; n_tok * ldo];
                let (lo, hi) = got.split_at_mut(split * ldo);
                panels.gemm(&packed, &a[..split * k * 4], split, lo, ldo);
                let mut seen = vec![0u8; (n_tok - split) * n_rows];
                let hi_want = &want[split * ldo..];
                let mut check = |o: &mut [f32], toks: Range<usize>, cols: Range<usize>| {
                    for t in toks {
                        for c in cols.clone() {
                            let (g, x) = (o[t * ldo + c], hi_want[t * ldo + c]);
                            assert_eq!(g.to_bits(), x.to_bits(), "{ty} epilogue ({t}, {c})");
                            seen[t * n_rows + c] += 1;
                        }
                    }
                };
                let a_hi = &a[split * k * 4..];
                panels.gemm_then(&packed, a_hi, n_tok - split, hi, ldo, &mut check);
                assert!(seen.iter().all(|&s| s == 1), "{ty}: epilogue coverage");
                for (i, (g, x)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        x.to_bits(),
                        "{ty} k={k} rows={n_rows} tok={n_tok} split {split}: element {i}"
                    );
                }
            }
        }
    }

    /// Checks `gemm` against `gemm_by_dots` over the scalar twin on random, zero and ±max
    /// data, sizes around the tile and panel edges and across k-blocks; the output's
    /// padding columns (`ldo > n_rows`) must stay untouched.
    pub fn check_against_scalar(gemm: GemmFn, ty: GgmlType) {
        let dot: DotFn = match ty {
            GgmlType::F32 => scalar::dot_f32_f32,
            GgmlType::F16 => scalar::dot_f16_f32,
            _ => scalar::dot_bf16_f32,
        };
        let big = if ty == GgmlType::F16 { 60000.0 } else { 1e6 };
        for &(k, n_rows, n_tok) in &[
            (1usize, 1usize, 1usize),
            (3, 5, 4),
            (16, 16, 8),
            (17, 33, 9),
            (64, 32, 16),
            (100, 7, 13),
            (72, 72, 23),
            (513, 40, 6),
            (1030, 17, 5),
            (1152, 72, 17),
        ] {
            for case in 0..4 {
                let (w, a) = match case {
                    0 => (lcg(k as u64, n_rows * k, 1.0), lcg(7, n_tok * k, 3.0)),
                    1 => (vec![0.0; n_rows * k], lcg(9, n_tok * k, 1.0)),
                    2 => (lcg(3, n_rows * k, 1.0), vec![0.0; n_tok * k]),
                    _ => (
                        (0..n_rows * k)
                            .map(|i| if i % 3 == 0 { -big } else { big })
                            .collect(),
                        (0..n_tok * k)
                            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                            .collect(),
                    ),
                };
                let wq = encode(ty, &w);
                let ab: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
                let ldo = n_rows + 3;
                let mut got = vec![f32::NAN; n_tok * ldo];
                let mut want = vec![f32::NAN; n_tok * ldo];
                gemm(k, &wq, n_rows, &ab, n_tok, &mut got, ldo);
                let wrb = ty.row_bytes(k as u64).unwrap() as usize;
                gemm_by_dots(dot, wrb, k * 4, k, &wq, n_rows, &ab, n_tok, &mut want, ldo);
                let wd: Vec<f32> = (0..n_rows * k)
                    .map(|i| match ty {
                        GgmlType::F32 => w[i],
                        GgmlType::F16 => half::f16::from_f32(w[i]).to_f32(),
                        _ => half::bf16::from_f32(w[i]).to_f32(),
                    })
                    .collect();
                for t in 0..n_tok {
                    for r in 0..ldo {
                        let (g, x) = (got[t * ldo + r], want[t * ldo + r]);
                        if r >= n_rows {
                            assert!(g.is_nan(), "{ty} wrote padding column {r}");
                            continue;
                        }
                        let mag: f64 = (0..k)
                            .map(|i| (wd[r * k + i] as f64 * a[t * k + i] as f64).abs())
                            .sum();
                        assert!(
                            ((g - x) as f64).abs() <= 1e-5 * mag + 1e-30,
                            "{ty} k={k} rows={n_rows} tok={n_tok} case {case} (t {t}, r {r}): \
                             {g} vs {x}"
                        );
                    }
                }
            }
        }
    }
}
