//! AVX-VNNI GEMM for batches of tokens on the 32-element formats (Q4_0, Q5_0, Q8_0 against
//! Q8_0 activations; Q4_1, Q5_1 against Q8_1): `q0_avx2_rows`' layout (8 weight rows in
//! the 8 lanes, decoded once per call) with `q0_avx512_rows`' tile at 256 bits, for CPUs
//! with AVX-VNNI but without AVX-512 (see `avx_vnni`).
//!
//! Per token and block, 8 `vpdpbusd` of the unsigned quants against the token's quants
//! (4 bytes at a time broadcast from the activation row) start from `−OFFSET·Σa` and leave
//! lane r holding row r's exact integer block sum; one convert, one multiply of the 8 rows'
//! scales by the token's and one FMA finish the block (Q4_1 and Q5_1 add their minimums
//! times the token's `s` with one more). AVX2's tile needs a `maddubs` and a share of an
//! i16 add and a `madd` for each of those instructions, and for Q8_0, whose unsigned quants
//! would saturate `maddubs`, the sign trick: four instructions per vector and twice the
//! scratch. Each output sums its blocks' f32 terms in block order, as `q0_avx2_rows`.
//! Fewer than [`MIN_TOKENS`] tokens run `q0_avx2_groups`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::avx_vnni::{AvxVnni, Dpbusd};
use super::kquant_avx2::Shape;
use super::q0_avx2_rows::{dw_per_block, pack, unsigned_block};
use super::q0_x86::{
    act_sums, q0_shape, ActBlock, ActSums, Q0Format, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
};
use super::row_lanes::{row_lane_gemms, store8, Call, RowLanes, Tile};
use crate::block::as_blocks;

/// Fewest tokens this kernel serves, every format (measured with `examples/gemm_bench.rs`
/// on a Sapphire Rapids core against `q0_avx2_groups`: the 4- and 5-bit formats behind at
/// 2-4 tokens, level at 5-6; Q8_0 level at 2-4, ahead from 5).
pub(super) const MIN_TOKENS: usize = 5;
/// Bytes of one block's decoded 8 rows: 8 vectors of 32 unsigned quants.
const B_BYTES: usize = 256;

/// This kernel on format `F`, its `vpdpbusd` from `V`.
pub(super) struct Rows<F, V>(PhantomData<(F, V)>);

impl<F: Q0Format, V: Dpbusd> RowLanes<8> for Rows<F, V> {
    type W = F::W;
    type Act = ActSums;
    /// 8 quant vectors and 4 accumulators of the 16 vector registers.
    const TT: usize = 4;
    const MIN_TOKENS: usize = MIN_TOKENS;
    const BLOCK_BYTES: usize = B_BYTES;
    const BLOCK_F32: usize = dw_per_block::<F>();

    fn shape(c: &Call) -> Option<Shape> {
        q0_shape::<F::W, F::A>(c.k, c.w, c.n_rows, c.a, c.n_tok, c.out, c.ldo)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSums>) {
        act_sums(
            &as_blocks::<F::A>(a).unwrap_or(&[])[..n],
            i32::from(F::OFFSET),
            out,
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(rows: &[&[F::W]; 8], nr: usize, nb: usize, bp: &mut [u8], dw: &mut [f32]) {
        pack::<F>(rows, nr, nb, bp, dw, false);
    }

    /// Per block 8 `vpdpbusd` per token from `−OFFSET·Σa`; one convert, one scale multiply
    /// and one FMA (and for a format with minimums one more FMA, of them by the token's
    /// `s`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSums>) {
        let abytes = std::mem::size_of::<F::A>();
        let mut acc = [_mm256_setzero_ps(); NT];
        for b in 0..t.nb {
            // SAFETY: block b < nb (caller).
            let (w, d, m) = unsafe { unsigned_block::<F>(&t, b) };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: token i < NT's block b: its quants are its last 32 bytes, its
                // ActSums entry i·nb + b (caller); `V`'s features are the driver's.
                unsafe {
                    let q = t.a.add(i * t.arb + abytes * b + F::A::QS_BYTE);
                    let x = *t.act.add(i * t.nb + b);
                    let mut s = _mm256_set1_epi32(x.base);
                    for (j, w) in w.iter().enumerate() {
                        let aq = _mm256_set1_epi32(q.add(4 * j).cast::<i32>().read_unaligned());
                        s = V::dpbusd(s, *w, aq);
                    }
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, *acc);
                    if F::HAS_MIN {
                        *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), *acc);
                    }
                }
            }
        }
        // SAFETY: rows ..nr of the NT tokens' outputs are writable (caller).
        unsafe { store8(&t, &acc) };
    }

    unsafe fn run(c: Call) {
        // SAFETY: `V`'s features are the caller's contract.
        unsafe { V::drive::<Self>(c) }
    }
}

row_lane_gemms! {
    gemm_q4_0_q8_0 => Rows<Q4_0, AvxVnni>, 8, super::q0_avx2_groups::gemm_q4_0_q8_0;
    gemm_q4_1_q8_1 => Rows<Q4_1, AvxVnni>, 8, super::q0_avx2_groups::gemm_q4_1_q8_1;
    gemm_q5_0_q8_0 => Rows<Q5_0, AvxVnni>, 8, super::q0_avx2_groups::gemm_q5_0_q8_0;
    gemm_q5_1_q8_1 => Rows<Q5_1, AvxVnni>, 8, super::q0_avx2_groups::gemm_q5_1_q8_1;
    gemm_q8_0_q8_0 => Rows<Q8_0, AvxVnni>, 8, super::q0_avx2_groups::gemm_q8_0_q8_0;
}

/// The same GEMMs with the emulated `vpdpbusd`, for the tier tests on CPUs without AVX-VNNI.
#[cfg(test)]
pub(super) mod emulated {
    use super::super::avx_vnni::Emulated;
    use super::super::q0_x86::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    use super::super::row_lanes::row_lane_gemms;
    use super::Rows;

    row_lane_gemms! {
        gemm_q4_0_q8_0 => Rows<Q4_0, Emulated>, 8, super::super::q0_avx2_groups::gemm_q4_0_q8_0;
        gemm_q4_1_q8_1 => Rows<Q4_1, Emulated>, 8, super::super::q0_avx2_groups::gemm_q4_1_q8_1;
        gemm_q5_0_q8_0 => Rows<Q5_0, Emulated>, 8, super::super::q0_avx2_groups::gemm_q5_0_q8_0;
        gemm_q5_1_q8_1 => Rows<Q5_1, Emulated>, 8, super::super::q0_avx2_groups::gemm_q5_1_q8_1;
        gemm_q8_0_q8_0 => Rows<Q8_0, Emulated>, 8, super::super::q0_avx2_groups::gemm_q8_0_q8_0;
    }
}
