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
//! Below [`MIN_TOKENS`] tokens packing costs more than it saves and the calls go to the
//! tier's dot kernels instead. The ISA-specific parts (widening, microkernels) live in
//! `float_gemm_avx2.rs`, `float_gemm_avx512.rs` and `neon_float_gemm.rs`.

#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

use super::{gemm_by_dots, DotFn};

/// Fewer tokens than this run one dot per (row, token): a packed panel would be used by
/// fewer than this many tokens.
pub(super) const MIN_TOKENS: usize = 4;

/// Widest k-block (see the module doc: a 32-row panel of it is 32 KiB, L1 with room).
const KC_MAX: usize = 256;

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
    let es = ty.size();
    let (wrb, arb) = (k * es, k * 4);
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
    let n_kb = k.div_ceil(KC_MAX);
    let kcb = k.div_ceil(n_kb); // balanced k-blocks
    let mut packed = vec![0.0f32; n_pan * nr * kcb];
    let mut row = vec![0.0f32; kcb];
    for kb in 0..n_kb {
        let k0 = kb * kcb;
        let kc = kcb.min(k - k0);
        for (p, panel) in packed.chunks_exact_mut(nr * kcb).enumerate() {
            for j in 0..nr {
                let r = p * nr + j;
                if r < n_rows {
                    (isa.widen)(ty, &w[r * wrb + k0 * es..][..kc * es], &mut row[..kc]);
                    for (i, &v) in row[..kc].iter().enumerate() {
                        panel[i * nr + j] = v;
                    }
                } else {
                    for i in 0..kc {
                        panel[i * nr + j] = 0.0;
                    }
                }
            }
        }
        let mut t0 = 0;
        while t0 < n_tok {
            let nt = isa.mt.min(n_tok - t0);
            for (p, panel) in packed.chunks_exact(nr * kcb).enumerate() {
                let tile = Tile {
                    nt,
                    kc,
                    a: &a[t0 * arb + k0 * 4..(t0 + nt - 1) * arb + (k0 + kc) * 4],
                    lda: k,
                    b: &panel[..kc * nr],
                    rows: nr.min(n_rows - p * nr),
                    accumulate: kb > 0,
                };
                let o0 = t0 * ldo + p * nr;
                let o1 = (t0 + nt - 1) * ldo + p * nr + tile.rows;
                (isa.tile)(&tile, &mut out[o0..o1], ldo);
            }
            t0 += nt;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{gemm_by_dots, scalar, DotFn, GemmFn};
    use crate::block::quantize_row;
    use crate::GgmlType;

    fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap_or(0) as usize];
        quantize_row(ty, x, &mut q).unwrap();
        q
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
