//! AVX2 (+ FMA, F16C) GEMM for batches of tokens on Q4_0, Q5_0 and Q8_0 weights against
//! Q8_0 activations and Q4_1, Q5_1 against Q8_1, with 8 weight rows in the 8 lanes: the
//! AVX2 counterpart of `q0_avx512_rows` (see there for why) for CPUs without AVX-512 (most
//! laptops).
//!
//! Each 8-row group is decoded once per call into a per-thread scratch: per block of 32,
//! 8 vectors of 32 bytes whose 32-bit lane r holds row r's 4 unsigned quants (signed +
//! `OFFSET`) of that vector's 4 elements (an 8 x 8 dword transpose of the rows' decoded
//! blocks), and the 8 rows' scales. Per token and block, `maddubs` of each vector against
//! the token's 4 quants broadcast from the activation row gives i16 pair sums; [`RUN`] of
//! them add up in i16 without overflow (the unsigned quants are small: 2·15·128 per pair
//! for Q4_0 and Q4_1, 2·31·128 for Q5_0 and Q5_1), one `madd` by ones widens them, and
//! the lane holds the row's exact integer block sum from `−OFFSET·Σa`; one convert, one
//! multiply of the 8 rows' scales by the token's and one FMA finish the block for all 8
//! rows (Q4_1 and Q5_1 add their minimums times the token's `s` with one more). Q8_0, whose
//! quants as unsigned bytes (up to 255) would saturate `maddubs`, takes the sign trick
//! instead: signed quants and their magnitudes decoded side by side, `maddubs(|w|,
//! sign(w)·a)` one vector at a time, in its own tile (`sign_trick_tile`: vectors outer,
//! tokens inner, so the block's 16 vectors need not stay in registers).
//!
//! Each output sums its blocks' f32 terms in block order (the tier tests hold it within
//! the rounding bound of the scalar twin). Fewer than [`MIN_TOKENS_Q4_0`] tokens (and
//! its neighbours for the other formats) run `q0_avx2_groups`.
//!
//! [`RUN`]: RowsFormat::RUN

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::kquant_avx2::Shape;
use super::q0_x86::{
    act_sums, h2f, prefetch_ahead, q0_shape, ActBlock, ActSums, Q0Format, Q4_0, Q4_1, Q5_0, Q5_1,
    Q8_0,
};
use super::row_lanes::{row_lane_gemms, store8, Call, RowLanes, Tile};
use crate::block::as_blocks;

/// Fewest tokens this kernel serves, per format; fewer run `q0_avx2_groups`, whose GEMV
/// decodes each weight group once for up to 4 tokens and splits larger batches into such
/// passes (measured with `examples/gemm_bench.rs`, one thread, 6,848 rows of 1,280, that
/// GEMV against this kernel, two rounds on the Zen 4 VM: Q4_0 at 9 tokens 128.2-129.2
/// against 122.5-123.1 GOP/s, at 11 130.1-133.2 against 119.9-133.9, at 13 127.5-127.6
/// against 139.5-140.5; Q4_1 at 12 122.5-123.2 against 115.7-119.1, at 13 113.2-114.7
/// against 121.5-122.9; Q5_0 at 5 83.0-83.6 against 78.9-81.3, at 6 85.2-91.4 against
/// 86.9-90.7, at 8 92.3-102.0 against 96.9-106.1; Q5_1 at 7 89.2-89.6 against 86.0-86.4,
/// at 8 93.7-94.6 against 90.9-94.2, at 9 85.1-85.6 against 97.6-99.1; Q8_0 at 6 84.8-85.1
/// against 76.1-76.5, at 7 75.1-84.4 against 76.7-78.3, at 9 74.8-86.2 against 84.6-87.3).
pub(super) const MIN_TOKENS_Q4_0: usize = 11;
pub(super) const MIN_TOKENS_Q4_1: usize = 13;
pub(super) const MIN_TOKENS_Q5_0: usize = 6;
pub(super) const MIN_TOKENS_Q5_1: usize = 8;
pub(super) const MIN_TOKENS_Q8_0: usize = 7;
/// Bytes of one block's decoded 8 rows: 8 vectors of 32 bytes, and for the sign trick 8
/// more of their magnitudes.
const fn b_bytes(sign_trick: bool) -> usize {
    if sign_trick {
        512
    } else {
        256
    }
}
/// f32 values per block in the scratch: the 8 rows' scales, and their minimums for a
/// format with them.
pub(super) const fn dw_per_block<F: Q0Format>() -> usize {
    if F::HAS_MIN {
        16
    } else {
        8
    }
}
/// A format served here.
trait RowsFormat: Q0Format + Sized {
    /// How many `maddubs` results one i16 lane sums without overflow.
    const RUN: usize;
    /// Fewest tokens the format runs here.
    const MIN: usize;
    /// Whether the quants are decoded signed, with their magnitudes beside them, for the
    /// sign trick (`maddubs(|w|, sign(w)·a)`): for quants too large as unsigned bytes.
    const SIGN_TRICK: bool = false;
}

impl RowsFormat for Q4_0 {
    /// 8 · 2 · 15 · 128 = 30,720 < 2¹⁵.
    const RUN: usize = 8;
    const MIN: usize = MIN_TOKENS_Q4_0;
}

impl RowsFormat for Q4_1 {
    /// As Q4_0's.
    const RUN: usize = 8;
    const MIN: usize = MIN_TOKENS_Q4_1;
}

impl RowsFormat for Q5_0 {
    /// 4 · 2 · 31 · 128 = 31,744 < 2¹⁵.
    const RUN: usize = 4;
    const MIN: usize = MIN_TOKENS_Q5_0;
}

impl RowsFormat for Q5_1 {
    /// As Q5_0's.
    const RUN: usize = 4;
    const MIN: usize = MIN_TOKENS_Q5_1;
}

impl RowsFormat for Q8_0 {
    /// 2 · 128 · 127 = 32,512: one product pair per lane already nearly fills an i16.
    const RUN: usize = 1;
    const MIN: usize = MIN_TOKENS_Q8_0;
    const SIGN_TRICK: bool = true;
}

/// 8 rows of 8 dwords (`x[r]`) → 8 columns (`y[c]` = dword c of every row).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn transpose8(x: &[__m256i; 8]) -> [__m256i; 8] {
    // Per 128-bit half: dwords 0/1 (lo) and 2/3 (hi) of row pairs, then of row quads.
    let t: [__m256i; 8] = std::array::from_fn(|i| {
        let (a, b) = (x[2 * (i / 2)], x[2 * (i / 2) + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[4h + c]: dword c (and c + 4 in the high half) of rows 4h..4h + 4.
    let u: [__m256i; 8] = std::array::from_fn(|i| {
        let (h, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
        if c % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    std::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2x128_si256::<0x20>(u[c], u[4 + c])
        } else {
            _mm256_permute2x128_si256::<0x31>(u[c - 4], u[c])
        }
    })
}

/// Decodes the `nr ≤ 8` rows (`rows[r]`, `nb` blocks each) into `bp` (`nb ·
/// b_bytes(sign_trick)`, 32-byte aligned) as unsigned quants (with the sign trick: signed
/// ones, then their magnitudes), and their scales into `dw` (`[block][8 rows]`, for a format
/// with minimums `[block][d or m][8 rows]`); rows past `nr` are zero bytes with scale 0.
/// `q0_avxvnni_rows` runs its tiles on this layout too.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn pack<F: Q0Format>(
    rows: &[&[F::W]; 8],
    nr: usize,
    nb: usize,
    bp: &mut [u8],
    dw: &mut [f32],
    sign_trick: bool,
) {
    let (bsz, per) = (b_bytes(sign_trick), dw_per_block::<F>());
    assert!(bp.len() >= nb * bsz && dw.len() >= nb * per && nr <= 8);
    for b in 0..nb {
        prefetch_ahead(rows, nr, b);
        // A loop, not `array::from_fn`: its closure stayed out of line, one call per row and
        // block without the decoding inlined (3% of an AVX2 prefill).
        let mut x = [_mm256_setzero_si256(); 8];
        for (x, row) in x.iter_mut().zip(rows).take(nr) {
            // SAFETY: AVX2 is this function's; block b exists (rows hold nb blocks).
            *x = unsafe {
                if sign_trick {
                    F::signed(&row[b])
                } else {
                    F::unsigned(&row[b])
                }
            };
        }
        for (c, y) in transpose8(&x).iter().enumerate() {
            let dst = &mut bp[b * bsz + 32 * c..];
            // SAFETY: dst holds 32 (with the magnitudes 256 + 32) writable bytes; storeu has
            // no alignment requirement.
            unsafe {
                _mm256_storeu_si256(dst.as_mut_ptr().cast(), *y);
                if sign_trick {
                    _mm256_storeu_si256(dst[256..].as_mut_ptr().cast(), _mm256_abs_epi8(*y));
                }
            }
        }
        let dw = &mut dw[per * b..][..per];
        for r in 0..nr {
            dw[r] = h2f(F::d(&rows[r][b]));
            if F::HAS_MIN {
                dw[8 + r] = h2f(F::m(&rows[r][b]));
            }
        }
        dw[nr..8].fill(0.0);
        if F::HAS_MIN {
            dw[8 + nr..].fill(0.0);
        }
    }
}

/// Block `b` of a group decoded as unsigned quants (8 vectors, [`b_bytes`]`(false)` bytes a
/// block), its 8 rows' scales and, for a format with them, their minimums: what this
/// module's tile and `q0_avxvnni_rows`' load per block.
///
/// # Safety
/// As [`RowLanes::tile`]'s, for a group decoded without the sign trick; `b < t.nb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unsigned_block<F: Q0Format>(
    t: &Tile<ActSums>,
    b: usize,
) -> ([__m256i; 8], __m256, __m256) {
    let per = dw_per_block::<F>();
    // SAFETY: block b < nb of the scratch, 32-byte aligned, and its 8 scales (and minimums)
    // (caller).
    unsafe {
        let p = t.bp.add(b_bytes(false) * b);
        let m = if F::HAS_MIN {
            _mm256_loadu_ps(t.dw.add(per * b + 8))
        } else {
            _mm256_setzero_ps()
        };
        (
            std::array::from_fn(|j| _mm256_load_si256(p.add(32 * j).cast())),
            _mm256_loadu_ps(t.dw.add(per * b)),
            m,
        )
    }
}

/// The sign trick's tile: per block, each vector's signed quants and magnitudes loaded once
/// and run against the `NT` tokens in turn (vectors outer, tokens inner), so only the
/// tokens' sums stay in registers. With the tokens outer, as the other formats' tile, the
/// block's 16 vectors spilled beside them: Q8_0 ran 102-108 GOP/s there against 115-124
/// here (`examples/gemm_bench.rs`, 64-512 tokens). The same order for the other formats,
/// whose 8 vectors fit, measured slower (their i16 run sums per token take the registers).
///
/// # Safety
/// As [`RowLanes::tile`]'s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sign_trick_tile<F: RowsFormat, const NT: usize>(
    t: &Tile<ActSums>,
    acc: &mut [__m256; NT],
) {
    let ones = _mm256_set1_epi16(1);
    let bsz = b_bytes(true);
    let abytes = std::mem::size_of::<F::A>();
    for b in 0..t.nb {
        // SAFETY: block b < nb of the scratch (caller), 32-byte aligned: its signed quants,
        // then their magnitudes, and its 8 scales; token i < NT's block b has its quants as
        // its last 32 bytes and its ActSums entry at i·nb + b (caller).
        unsafe {
            let p = t.bp.add(bsz * b);
            let q: [*const u8; NT] =
                std::array::from_fn(|i| t.a.add(i * t.arb + abytes * b + F::A::QS_BYTE));
            // The sign trick multiplies the signed quants: no offset, so the sums start at 0.
            let mut s = [_mm256_setzero_si256(); NT];
            for j in 0..8 {
                let w = _mm256_load_si256(p.add(32 * j).cast());
                let mag = _mm256_load_si256(p.add(256 + 32 * j).cast());
                for (s, q) in s.iter_mut().zip(&q) {
                    let aq = _mm256_set1_epi32(q.add(4 * j).cast::<i32>().read_unaligned());
                    let prod = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(aq, w));
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(prod, ones));
                }
            }
            let d = _mm256_loadu_ps(t.dw.add(dw_per_block::<F>() * b));
            for (i, (acc, s)) in acc.iter_mut().zip(s).enumerate() {
                let x = *t.act.add(i * t.nb + b);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, *acc);
            }
        }
    }
}

/// This kernel on format `F`.
pub(super) struct Rows<F>(PhantomData<F>);

impl<F: RowsFormat> RowLanes<8> for Rows<F> {
    type W = F::W;
    type Act = ActSums;
    /// AVX2 has 16 vector registers.
    const TT: usize = 4;
    const MIN_TOKENS: usize = F::MIN;
    const BLOCK_BYTES: usize = b_bytes(F::SIGN_TRICK);
    const BLOCK_F32: usize = dw_per_block::<F>();

    fn shape(c: &Call) -> Option<Shape> {
        q0_shape::<F::W, F::A>(c.k, c.w, c.n_rows, c.a, c.n_tok, c.out, c.ldo)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn act(a: &[u8], n: usize, out: &mut Vec<ActSums>) {
        // The sign trick multiplies the signed quants: no offset to take back.
        let offset = if F::SIGN_TRICK {
            0
        } else {
            i32::from(F::OFFSET)
        };
        act_sums(&as_blocks::<F::A>(a).unwrap_or(&[])[..n], offset, out);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(rows: &[&[F::W]; 8], nr: usize, nb: usize, bp: &mut [u8], dw: &mut [f32]) {
        pack::<F>(rows, nr, nb, bp, dw, F::SIGN_TRICK);
    }

    /// Per token and block, `maddubs` of each vector against the token's 4 broadcast
    /// quants summed [`RowsFormat::RUN`] at a time in i16, widened by one `madd`; one
    /// convert, one scale multiply and one FMA finish the block (one more FMA adds the
    /// minimums times the token's `s`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const NT: usize>(t: Tile<ActSums>) {
        let ones = _mm256_set1_epi16(1);
        let abytes = std::mem::size_of::<F::A>();
        let mut acc = [_mm256_setzero_ps(); NT];
        if F::SIGN_TRICK {
            // SAFETY: forwarded caller contract; rows ..nr of the NT tokens' outputs are
            // writable (caller).
            unsafe {
                sign_trick_tile::<F, NT>(&t, &mut acc);
                store8(&t, &acc);
            }
            return;
        }
        for b in 0..t.nb {
            // SAFETY: block b < nb (caller).
            let (w, d, m) = unsafe { unsigned_block::<F>(&t, b) };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: token i < NT's block b: its quants are its last 32 bytes, its
                // ActSums entry i·nb + b (caller).
                unsafe {
                    let q = t.a.add(i * t.arb + abytes * b + F::A::QS_BYTE);
                    let x = *t.act.add(i * t.nb + b);
                    let mut s = _mm256_set1_epi32(x.base);
                    for (ci, run) in w.chunks_exact(F::RUN).enumerate() {
                        let j0 = ci * F::RUN;
                        let mut s16 = _mm256_setzero_si256();
                        for (j, w) in run.iter().enumerate() {
                            let at = q.add(4 * (j0 + j));
                            let aq = _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
                            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*w, aq));
                        }
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(s16, ones));
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

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<Self, 8>(c) }
    }
}

row_lane_gemms! {
    gemm_q4_0_q8_0 => Rows<Q4_0>, 8, super::q0_avx2_groups::gemm_q4_0_q8_0;
    gemm_q4_1_q8_1 => Rows<Q4_1>, 8, super::q0_avx2_groups::gemm_q4_1_q8_1;
    gemm_q5_0_q8_0 => Rows<Q5_0>, 8, super::q0_avx2_groups::gemm_q5_0_q8_0;
    gemm_q5_1_q8_1 => Rows<Q5_1>, 8, super::q0_avx2_groups::gemm_q5_1_q8_1;
    gemm_q8_0_q8_0 => Rows<Q8_0>, 8, super::q0_avx2_groups::gemm_q8_0_q8_0;
}
