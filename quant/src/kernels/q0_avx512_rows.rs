//! AVX-512 VNNI GEMM for batches of tokens (prefill, the MoE experts' batches) on the
//! 32-element formats (Q4_0, Q5_0, Q8_0 against Q8_0 activations; Q4_1, Q5_1 against
//! Q8_1), with the weight rows in the vector lanes: CPUs with VNNI but without AMX (AMD
//! Zen 4, Intel Ice Lake).
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
//! block for all 16 rows: 8 integer instructions per scale step instead of 1–2. Q4_1 and
//! Q5_1 (offset 0) add their 16 rows' minimums times the token's `s = d·Σa` with one more
//! FMA.
//!
//! Tokens run 8 at a time against a group's blocks held in registers, so each decoded
//! block is read from the scratch once per 8 tokens (the driver, `row_lanes`, walks the
//! groups and token tiles). Each output sums its blocks' f32
//! terms in block order (a different order from the units kernel's lane sums, as the AMX
//! tiles'; both are within the tier tests' rounding bound of the scalar twin). Fewer than
//! [`MIN_TOKENS`] tokens ([`MIN_TOKENS_Q4`] for Q4_0 and Q4_1; decode, small expert batches)
//! run `q0_avx512_units`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::kquant_avx2::Shape;
use super::q0_rows16::{dw_per_block, pack_weights, B_BYTES};
use super::q0_x86::{
    act_sums, q0_shape, ActBlock, ActSums, Q0Format, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
};
use super::row_lanes::{row_lane_gemms, store16, Call, RowLanes, Tile};
use crate::block::as_blocks;

/// Fewest tokens this kernel serves for Q5_0, Q5_1 and Q8_0, and for Q4_0 and Q4_1, whose
/// units decode cheaply enough that the units kernel's multi-token GEMV (each weight unit
/// decoded once for up to 4 tokens, the tokens of a larger batch split into such passes)
/// stays ahead longer (measured with `examples/gemm_bench.rs`, one thread, 6,848 rows of
/// 1,280, GEMV against this kernel: Q8_0 at 4 tokens 113.2-118.6 against 108.0-108.2
/// GOP/s, at 5 103.7-103.8 against 126.9-128.0; Q5_0 at 5 110.1-111.9 against 113.3-114.2;
/// Q5_1 at 5 89.4 against 90.0-94.0; Q4_0 at 8 183.6-186.0 against 167.5-168.4, at 9
/// 168.2-172.8 against 173.6-174.9; Q4_1 at 8 152.2-155.5 against 139.3-140.2, at 9
/// 140.9-141.2 against 145.3-145.8).
pub(super) const MIN_TOKENS: usize = 5;
pub(super) const MIN_TOKENS_Q4: usize = 9;

/// A format served here, and the fewest tokens it runs here from.
trait RowsFormat: Q0Format {
    const MIN: usize = MIN_TOKENS;
}

impl RowsFormat for Q4_0 {
    const MIN: usize = MIN_TOKENS_Q4;
}
impl RowsFormat for Q4_1 {
    const MIN: usize = MIN_TOKENS_Q4;
}
impl RowsFormat for Q5_0 {}
impl RowsFormat for Q5_1 {}
impl RowsFormat for Q8_0 {}

/// This kernel on format `F`.
pub(super) struct Rows<F>(PhantomData<F>);

impl<F: RowsFormat> RowLanes<16> for Rows<F> {
    type W = F::W;
    type Act = ActSums;
    /// 8 accumulators beside the block's 8 quant vectors.
    const TT: usize = 8;
    const MIN_TOKENS: usize = F::MIN;
    const BLOCK_BYTES: usize = B_BYTES;
    const BLOCK_F32: usize = dw_per_block::<F>();

    fn shape(c: &Call) -> Option<Shape> {
        q0_shape::<F::W, F::A>(c.k, c.w, c.n_rows, c.a, c.n_tok, c.out, c.ldo)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSums>) {
        let blocks = as_blocks::<F::A>(a).unwrap_or(&[]);
        act_sums(&blocks[..n], i32::from(F::OFFSET), out);
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pack(rows: &[&[F::W]; 16], nr: usize, nb: usize, bp: &mut [u8], dw: &mut [f32]) {
        pack_weights::<F, false>(rows, nr, nb, bp, dw);
    }

    /// Per block, 8 `vpdpbusd` per token from `−OFFSET·Σa` leave lane r holding row r's
    /// integer block sum; one convert, one scale multiply and one FMA finish the block
    /// (and for a format with minimums one more FMA, of them by the token's `s`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSums>) {
        let (abytes, per) = (std::mem::size_of::<F::A>(), dw_per_block::<F>());
        let mut acc = [_mm512_setzero_ps(); NT];
        for b in 0..t.nb {
            // SAFETY: block b < nb of the scratch (caller), 64-byte aligned, and its 16
            // scales (and minimums).
            let (w, d, m): ([__m512i; 8], __m512, __m512) = unsafe {
                let p = t.bp.add(B_BYTES * b);
                let m = if F::HAS_MIN {
                    _mm512_loadu_ps(t.dw.add(per * b + 16))
                } else {
                    _mm512_setzero_ps()
                };
                (
                    std::array::from_fn(|j| _mm512_load_si512(p.add(64 * j).cast())),
                    _mm512_loadu_ps(t.dw.add(per * b)),
                    m,
                )
            };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: token i < NT's block b: its quants are its last 32 bytes, its
                // ActSums entry i·nb + b (caller).
                unsafe {
                    let q = t.a.add(i * t.arb + abytes * b + F::A::QS_BYTE);
                    let x = *t.act.add(i * t.nb + b);
                    let mut s = _mm512_set1_epi32(x.base);
                    for (j, w) in w.iter().enumerate() {
                        let aq = _mm512_set1_epi32(q.add(4 * j).cast::<i32>().read_unaligned());
                        s = _mm512_dpbusd_epi32(s, *w, aq);
                    }
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
                    if F::HAS_MIN {
                        *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), *acc);
                    }
                }
            }
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store16(&t, &acc) };
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<Self, 16>(c) }
    }
}

row_lane_gemms! {
    gemm_q4_0_q8_0 => Rows<Q4_0>, 16, super::q0_avx512_units::gemm_q4_0_q8_0;
    gemm_q4_1_q8_1 => Rows<Q4_1>, 16, super::q0_avx512_units::gemm_q4_1_q8_1;
    gemm_q5_0_q8_0 => Rows<Q5_0>, 16, super::q0_avx512_units::gemm_q5_0_q8_0;
    gemm_q5_1_q8_1 => Rows<Q5_1>, 16, super::q0_avx512_units::gemm_q5_1_q8_1;
    gemm_q8_0_q8_0 => Rows<Q8_0>, 16, super::q0_avx512_units::gemm_q8_0_q8_0;
}
