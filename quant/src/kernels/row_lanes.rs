//! The driver the row-lane batch kernels share (`q0_avx2_rows`, `q0_avx512_rows`,
//! `kquant_avx2_rows`, `kquant_avx512_rows`): GEMMs for batches of tokens (prefill, the
//! MoE experts' batches) that decode `R` weight rows at a time into a per-thread scratch,
//! one row per vector lane, and run the tokens against each decoded group `TT` at a time
//! in registers.
//!
//! A kernel says how it decodes a group and how it computes one token tile
//! ([`RowLanes`]); the driver owns the rest, the same for every vector width and format:
//! the contract check, the activations' per-block entries, the walk over groups and token
//! tiles, the next group's prefetch and the scratch. Each kernel's [`RowLanes::run`]
//! compiles the driver with its tier's target features, so the tiles inline into it.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::Cell;

use super::kquant_avx2::{check, ActSums16, ActSuper, Shape};
use super::q0_x86::{aligned, group_rows, ActSums};
use crate::block::ByteBlock;

/// One GEMM call's operands ([`super::GemmFn`]'s arguments).
pub(super) struct Call<'a> {
    pub k: usize,
    pub w: &'a [u8],
    pub n_rows: usize,
    pub a: &'a [u8],
    pub n_tok: usize,
    pub out: &'a mut [f32],
    pub ldo: usize,
}

/// One token tile's operands: raw pointers into the scratch and into slices the driver
/// checked against the call's shape.
#[derive(Clone, Copy)]
pub(super) struct Tile<A> {
    /// Blocks (super-blocks) per row.
    pub nb: usize,
    /// The group's decoded blocks (64-byte aligned, [`RowLanes::BLOCK_BYTES`] each) and
    /// their f32 values ([`RowLanes::BLOCK_F32`] each).
    pub bp: *const u8,
    pub dw: *const f32,
    /// The tile's first token: its activation row (the next `arb` bytes on) and its
    /// per-block entries (the next token's `nb` on).
    pub a: *const u8,
    pub arb: usize,
    pub act: *const A,
    /// The output of the group's first row for the first token (the next token's `ldo`
    /// on).
    pub out: *mut f32,
    pub ldo: usize,
    /// Rows in the group: lanes past it are not stored.
    pub nr: usize,
}

/// A per-block activation entry type, and its buffer in the [`Scratch`].
pub(super) trait ActEntry: Copy {
    fn buf(s: &mut Scratch) -> &mut Vec<Self>;
}

impl ActEntry for ActSums {
    fn buf(s: &mut Scratch) -> &mut Vec<Self> {
        &mut s.sums
    }
}

impl ActEntry for ActSuper {
    fn buf(s: &mut Scratch) -> &mut Vec<Self> {
        &mut s.supers
    }
}

impl ActEntry for ActSums16 {
    fn buf(s: &mut Scratch) -> &mut Vec<Self> {
        &mut s.sums16
    }
}

/// Per-thread scratch, reused between calls of every row-lane kernel: one group's
/// decoded blocks and f32 values, and every token's per-block activation entries.
#[derive(Default)]
pub(super) struct Scratch {
    b: Vec<u8>,
    dw: Vec<f32>,
    sums: Vec<ActSums>,
    supers: Vec<ActSuper>,
    sums16: Vec<ActSums16>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// A row-lane kernel: `R` weight rows (the vector's lanes) of block type `W`.
pub(super) trait RowLanes<const R: usize> {
    type W: ByteBlock;
    /// What a tile needs of each token's activation block besides its quants.
    type Act: ActEntry;
    /// Tokens per register tile: 4 or 8.
    const TT: usize;
    /// Fewest tokens this kernel serves (measured with `examples/gemm_bench.rs`); fewer
    /// go to the entry point's fallback, whose cost has no per-group decoding to spread.
    const MIN_TOKENS: usize;
    /// Bytes and f32 values of one block's `R` decoded rows in the scratch.
    const BLOCK_BYTES: usize;
    const BLOCK_F32: usize;
    /// The call's shape (panics where it breaks the [`super::GemmFn`] contract); `None` when
    /// there is nothing to compute.
    fn shape(c: &Call) -> Option<Shape>;
    /// The per-block entries of the first `n` activation blocks of `a`, into `out`.
    ///
    /// # Safety
    /// The kernel's tier's CPU features.
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<Self::Act>);
    /// Decodes the `nr ≤ R` rows (`rows[r]`, `nb` blocks each) into `bp` (`nb ·
    /// BLOCK_BYTES`, 64-byte aligned) and `dw` (`nb · BLOCK_F32`); rows past `nr` decode
    /// as zeros.
    ///
    /// # Safety
    /// The kernel's tier's CPU features.
    unsafe fn pack(rows: &[&[Self::W]; R], nr: usize, nb: usize, bp: &mut [u8], dw: &mut [f32]);
    /// `out[t·ldo + r] = Σ_b` over the group's decoded rows `r < nr` and the tile's `NT ≤
    /// TT` tokens.
    ///
    /// # Safety
    /// The kernel's tier's CPU features; `t` as [`Tile`] says: the scratch holds the
    /// group's `nb` decoded blocks, the `NT` tokens have `nb` blocks in `a` and entries in
    /// `act`, and rows `..nr` of their outputs are writable.
    unsafe fn tile<const NT: usize>(t: Tile<Self::Act>);
    /// [`drive`] for this kernel, compiled with its tier's target features.
    ///
    /// # Safety
    /// The kernel's tier's CPU features.
    unsafe fn run(c: Call);
}

/// The shape of a K-quant call of format `f` ([`check`], which panics where it breaks the
/// contract); `None` when there is nothing to compute.
pub(super) fn kquant_shape(f: u8, c: &Call) -> Option<Shape> {
    let shape = check(f, c.k, c.w, c.n_rows, c.a, c.n_tok, c.out, c.ldo);
    (c.n_rows > 0 && c.n_tok > 0 && shape.nb > 0).then_some(shape)
}

/// Safe [`super::GemmFn`] entry points, `name => kernel, R, fallback;`: the row-lane kernel from
/// its `MIN_TOKENS` tokens, the fallback below.
macro_rules! row_lane_gemms {
    ($($gemm:ident => $k:ty, $r:literal, $fallback:path;)*) => {$(
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            use $crate::kernels::row_lanes::{Call, RowLanes};
            if n_tok < <$k as RowLanes<$r>>::MIN_TOKENS {
                return $fallback(k, w, n_rows, a, n_tok, out, ldo);
            }
            let c = Call { k, w, n_rows, a, n_tok, out, ldo };
            // SAFETY: a row-lane kernel is only installed in the kernel table after its
            // tier's CPU features were detected.
            unsafe { <$k as RowLanes<$r>>::run(c) }
        }
    )*};
}
pub(super) use row_lane_gemms;

/// The batch product of kernel `K` (see the module comment); inlined into each kernel's
/// [`RowLanes::run`], which carries the target features.
///
/// # Safety
/// `K`'s tier's CPU features.
#[inline(always)]
pub(super) unsafe fn drive<K: RowLanes<R>, const R: usize>(c: Call) {
    const {
        assert!(
            K::TT == 4 || K::TT == 8,
            "a row-lane tile has 4 or 8 tokens"
        )
    };
    let Some(Shape { nb, wrb, arb }) = K::shape(&c) else {
        return;
    };
    let Call {
        w,
        n_rows,
        a,
        n_tok,
        out,
        ldo,
        ..
    } = c;
    let mut s = SCRATCH.with(Cell::take);
    let mut act = std::mem::take(K::Act::buf(&mut s));
    // SAFETY: the tier's features are the caller's.
    unsafe { K::act(a, n_tok * nb, &mut act) };
    let Scratch { b, dw, .. } = &mut s;
    let bp = aligned(b, nb * K::BLOCK_BYTES);
    dw.resize(nb * K::BLOCK_F32, 0.0);
    let tiles = n_tok.div_ceil(K::TT);
    for r0 in (0..n_rows).step_by(R) {
        let nr = R.min(n_rows - r0);
        let rows = group_rows::<K::W, R>(w, r0, nr, wrb);
        // SAFETY: the tier's features are the caller's.
        unsafe { K::pack(&rows, nr, nb, bp, dw) };
        // The next group's weights, spread over this group's token tiles.
        let next = &w[(r0 + nr) * wrb..(r0 + nr + R).min(n_rows) * wrb];
        for t0 in (0..n_tok).step_by(K::TT) {
            prefetch_part(next, t0 / K::TT, tiles);
            let t = Tile {
                nb,
                bp: bp.as_ptr(),
                dw: dw.as_ptr(),
                a: a[t0 * arb..].as_ptr(),
                arb,
                act: act[t0 * nb..].as_ptr(),
                // Rows r0.. of token t0: the tile writes rows r0..r0 + nr of its tokens.
                out: out[t0 * ldo + r0..].as_mut_ptr(),
                ldo,
                nr,
            };
            macro_rules! tiles {
                ($($n:literal)*) => {
                    match (K::TT).min(n_tok - t0) {
                        // SAFETY: the scratch holds the group's nb decoded blocks; tokens
                        // t0..t0 + n < n_tok have nb blocks in `a` and entries in `act`;
                        // rows r0..r0 + nr ≤ n_rows of those tokens lie in `out` (the
                        // shape check); the tier's features are the caller's.
                        $($n => unsafe { K::tile::<$n>(t) },)*
                        _ => unreachable!("a tile has 1..=TT tokens"),
                    }
                };
            }
            // The const condition leaves only the kernel's own tile sizes compiled.
            if const { K::TT == 8 } {
                tiles!(1 2 3 4 5 6 7 8)
            } else {
                tiles!(1 2 3 4)
            }
        }
    }
    *K::Act::buf(&mut s) = act;
    SCRATCH.with(|c| c.set(s));
}

/// Stores a 16-row tile's accumulators: `acc[i]` to token i's outputs, rows `..t.nr`.
///
/// # Safety
/// AVX-512 F; rows `..t.nr` of the outputs of `acc.len()` tokens are writable at `t.out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn store16<A>(t: &Tile<A>, acc: &[__m512]) {
    let mask: __mmask16 = if t.nr == 16 {
        0xffff
    } else {
        (1u16 << t.nr) - 1
    };
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: rows ..nr of token i's outputs are writable (caller).
        unsafe { _mm512_mask_storeu_ps(t.out.add(i * t.ldo), mask, *v) };
    }
}

/// Stores an 8-row tile's accumulators: `acc[i]` to token i's outputs, rows `..t.nr`.
///
/// # Safety
/// AVX2; rows `..t.nr` of the outputs of `acc.len()` tokens are writable at `t.out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn store8<A>(t: &Tile<A>, acc: &[__m256]) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.nr as i32), lanes);
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: rows ..nr of token i's outputs are writable (caller).
        unsafe { _mm256_maskstore_ps(t.out.add(i * t.ldo), mask, *v) };
    }
}

/// Prefetches into L2 part `part` of `parts` equal slices of `next` (the weight bytes of
/// the next group), one prefetch per 64-byte line.
///
/// Why: the kernels read a group block by block across its rows (interleaved streams one
/// row apart), which the hardware prefetchers did not follow: profiled on a Zen 4, the
/// decoding's weight loads took most of its time, waiting on memory. The driver spreads
/// the next group's lines over the current group's token tiles, so they arrive while it
/// computes.
#[inline]
fn prefetch_part(next: &[u8], part: usize, parts: usize) {
    let lines = next.len().div_ceil(64);
    let (l0, l1) = (lines * part / parts, lines * (part + 1) / parts);
    for l in l0..l1 {
        // SAFETY: SSE is x86-64's baseline; prefetches never fault (the address is only
        // computed).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(next.as_ptr().wrapping_add(64 * l).cast()) };
    }
}
