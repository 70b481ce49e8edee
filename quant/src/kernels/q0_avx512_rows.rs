//! AVX-512 VNNI GEMM for batches of tokens (prefill, the MoE experts' batches) on the
//! Q8_0-paired 32-element formats (Q4_0, Q5_0, Q8_0), with the weight rows in the vector
//! lanes: CPUs with VNNI but without AMX (AMD Zen 4, Intel Ice Lake).
//!
//! Why: `q0_avx512_units` puts 2–4 blocks of one row in a vector, so every `vpdpbusd`
//! (64 multiply-adds) needs its own convert, scale multiply and FMA, the blocks' scales
//! being per lane group; profiled on a Zen 4, those took as long as the integer work and
//! prefill ran at llama.cpp's speed (0.93–1.11x), whose kernels do the same per block.
//! Here each 16-row group is decoded once into dword-interleaved blocks (`q0_rows16`,
//! a per-thread scratch of 512 bytes per block): lane r of the 8 vectors of a block holds
//! row r's 32 quants, unsigned (signed + `OFFSET`). Per token and block 8 `vpdpbusd`
//! against the token's quants, 4 bytes at a time broadcast from the activation row, start
//! from `−OFFSET·Σa` and leave lane r holding row r's exact integer block sum; one
//! convert, one multiply of the 16 rows' scales by the token's and one FMA then finish the
//! block for all 16 rows: 8 integer instructions per scale step instead of 1–2.
//!
//! Tokens run [`TT`] at a time against a group's blocks held in registers, so each decoded
//! block is read from the scratch once per [`TT`] tokens. Each output sums its blocks' f32
//! terms in block order (a different order from the units kernel's lane sums, as the AMX
//! tiles'; both are within the tier tests' rounding bound of the scalar twin). Fewer than
//! [`MIN_TOKENS`] tokens (decode, small expert batches) run `q0_avx512_units`, whose cost
//! has no per-group decoding to spread.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::Cell;

use super::q0_rows16::{pack_weights, prefetch_part, B_BYTES};
use super::q0_x86::{act_sums, aligned, group_rows, q0_shape, ActSums, Q0Format, Q4_0, Q5_0, Q8_0};
use crate::block::BlockQ8_0;

/// Fewest tokens this kernel serves (measured with `examples/gemm_bench.rs`).
pub(super) const MIN_TOKENS: usize = 5;
/// Tokens per register tile: 8 accumulators beside the block's 8 quant vectors.
const TT: usize = 8;

/// Per-thread scratch, reused between calls: one 16-row group's decoded blocks (64-byte
/// aligned within), their scales, and every token's [`ActSums`]s.
#[derive(Default)]
struct Scratch {
    b: Vec<u8>,
    dw: Vec<f32>,
    act: Vec<ActSums>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// `out[t·ldo + r] = Σ_b` over the 16 decoded rows at `bp` (scales `dw`) and the `NT`
/// tokens whose rows start at `a` (stride `arb`, [`ActSums`]s at `act`, stride `nb`);
/// lanes past `mask` are not stored.
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI; `bp` holds `nb` decoded blocks (64-byte aligned), `dw` `16·nb`
/// f32; the `NT` token rows hold `nb` Q8_0 blocks each and `act` their `NT·nb` entries;
/// `out + t·ldo` has the masked lanes writable for every t < NT.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const NT: usize>(
    nb: usize,
    bp: *const u8,
    dw: *const f32,
    a: *const u8,
    arb: usize,
    act: *const ActSums,
    out: *mut f32,
    ldo: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        // SAFETY: block b < nb of the scratch (caller), 64-byte aligned.
        let (w, d): ([__m512i; 8], __m512) = unsafe {
            let p = bp.add(B_BYTES * b);
            (
                std::array::from_fn(|j| _mm512_load_si512(p.add(64 * j).cast())),
                _mm512_loadu_ps(dw.add(16 * b)),
            )
        };
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: token t < NT's block b: its quants are the 32 bytes after the f16
            // scale at byte 34b, its ActSums entry t·nb + b (caller).
            unsafe {
                let q = a.add(t * arb + 34 * b + 2);
                let x = *act.add(t * nb + b);
                let mut s = _mm512_set1_epi32(x.base);
                for (j, w) in w.iter().enumerate() {
                    let aq = _mm512_set1_epi32(q.add(4 * j).cast::<i32>().read_unaligned());
                    s = _mm512_dpbusd_epi32(s, *w, aq);
                }
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
            }
        }
    }
    for (t, v) in acc.iter().enumerate() {
        // SAFETY: the masked lanes of token t's outputs are writable (caller).
        unsafe { _mm512_mask_storeu_ps(out.add(t * ldo), mask, *v) };
    }
}

/// The batch product for `n_tok ≥ MIN_TOKENS` (see the module comment).
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI (and AVX2/FMA/F16C).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_rows<F: Q0Format<A = BlockQ8_0>>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let Some((nb, wrb, arb, ab)) = q0_shape::<F>(k, w, n_rows, a, n_tok, out, ldo) else {
        return;
    };
    let mut s = SCRATCH.with(Cell::take);
    let Scratch { b, dw, act } = &mut s;
    act_sums(&ab[..n_tok * nb], i32::from(F::OFFSET), act);
    dw.resize(nb * 16, 0.0);
    let bp = aligned(b, nb * B_BYTES);
    for r0 in (0..n_rows).step_by(16) {
        let nr = 16.min(n_rows - r0);
        let rows = group_rows::<F::W, 16>(w, r0, nr, wrb);
        pack_weights::<F, false>(&rows, nr, nb, bp, dw);
        // The next group's weights, spread over this group's token tiles.
        let next = &w[(r0 + nr) * wrb..(r0 + nr + 16).min(n_rows) * wrb];
        let tiles = n_tok.div_ceil(TT);
        let mask: __mmask16 = if nr == 16 { 0xffff } else { (1u16 << nr) - 1 };
        for t0 in (0..n_tok).step_by(TT) {
            prefetch_part(next, t0 / TT, tiles);
            let nt = TT.min(n_tok - t0);
            let (bp, dw) = (bp.as_ptr(), dw.as_ptr());
            let ap = a[t0 * arb..].as_ptr();
            let xp = act[t0 * nb..].as_ptr();
            // Rows r0.. of token t0: the tile writes rows r0..r0 + nr of its tokens.
            let op = out[t0 * ldo + r0..].as_mut_ptr();
            macro_rules! run {
                ($($n:literal)*) => {
                    match nt {
                        // SAFETY: the scratch holds nb decoded blocks and their scales;
                        // tokens t0..t0 + nt < n_tok have nb blocks in `a` and entries in
                        // `act`; rows r0..r0 + nr ≤ n_rows of those tokens lie in `out`
                        // (asserted above).
                        $($n => unsafe { tile::<$n>(nb, bp, dw, ap, arb, xp, op, ldo, mask) },)*
                        _ => unreachable!("a tile has 1..=TT tokens"),
                    }
                };
            }
            run!(1 2 3 4 5 6 7 8);
        }
    }
    SCRATCH.with(|c| c.set(s));
}

/// Safe [`super::GemmFn`] entry points: this kernel from [`MIN_TOKENS`] tokens, the units
/// kernel below.
macro_rules! entry_points {
    ($($fmt:ident => $gemm:ident, $units:path;)*) => {$(
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            if n_tok < MIN_TOKENS {
                return $units(k, w, n_rows, a, n_tok, out, ldo);
            }
            // SAFETY: only installed in the kernel table after `avx512::detected()` (and
            // `avx2::detected()`).
            unsafe { gemm_rows::<$fmt>(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

entry_points! {
    Q4_0 => gemm_q4_0_q8_0, super::q0_avx512_units::gemm_q4_0_q8_0;
    Q5_0 => gemm_q5_0_q8_0, super::q0_avx512_units::gemm_q5_0_q8_0;
    Q8_0 => gemm_q8_0_q8_0, super::q0_avx512_units::gemm_q8_0_q8_0;
}
