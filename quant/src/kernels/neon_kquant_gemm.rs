//! `sdot` GEMM tiles of the K-quants (Q4_K, Q5_K, Q6_K against Q8_K) for the
//! neon-dotprod tier (Cortex-A76 = Raspberry Pi 5) and the i8mm tier above it.
//!
//! [`tile`] holds `NR` weight rows × up to 4 tokens: per super-block and
//! 64-element chunk each row is decoded once into four 16-byte vectors of
//! signed quants (the [`KFormat`] decode) and meets the tile's tokens; per
//! scale group (Q4_K/Q5_K: 32 elements, Q6_K: 16) `sdot` forms the exact
//! integer sum and `mla` weighs it by the group's scale, so each (row, token)
//! gets the same integers as the scalar twin: Σ scale·Σq_w·q_a and, for
//! Q4_K/Q5_K, Σ min·bsum from the activation's 32-element sums. Those are
//! gathered four tokens to a vector by a pairwise add tree and scaled in f32,
//! `d·d_a·Σ − dmin·d_a·Σmin`; only the order of the f32 additions differs
//! from the scalar twins (`tier_tests` bounds it).

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::neon::{gemm_entry_points, h2f, load16, nibbles, Dot4, Sdot};
use crate::block::{
    as_blocks, get_scale_min_k4, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, ByteBlock,
};

/// Weight rows × tokens (lanes) of a GEMM tile: 8 weight vectors, 8 integer
/// accumulators and 4 activation vectors per chunk.
const R: usize = 2;
const T: usize = 4;
/// Rows of a one-token tile (decode): 16 weight vectors, 4 accumulators.
const RV: usize = 4;
/// Activation bytes per token chunk (~28 tokens at k = 2048): the chunk stays
/// in the A76's L1D/L2 while every row tile passes over it, so the weights are
/// streamed from memory once per chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// The per-row values of one super-block that do not depend on the token.
pub(super) struct Head {
    pub(super) d: f32,
    pub(super) dmin: f32,
    /// Scale of each scale group (Q4_K/Q5_K: 8, Q6_K: 16).
    pub(super) scales: [i32; 16],
    /// The 8 minimums of Q4_K/Q5_K as i16 (zero for Q6_K).
    pub(super) mins: int16x8_t,
}

/// A K-quant as the tiles read it.
pub(super) trait KFormat {
    type W: ByteBlock;
    /// Whether the format subtracts `dmin·Σ min·bsum` (Q4_K, Q5_K).
    const HAS_MIN: bool;
    /// Vectors (of 16 quants) per scale group.
    const GROUP: usize;
    /// # Safety
    /// NEON only: part of every aarch64 CPU.
    unsafe fn head(b: &Self::W) -> Head;
    /// The 4 weight vectors of chunk `c` (< 4) as signed quants, their
    /// elements' offsets in the super-block and their scale group (for
    /// vectors `0, GROUP, ..`).
    ///
    /// # Safety
    /// NEON only: part of every aarch64 CPU.
    unsafe fn chunk(b: &Self::W, c: usize) -> [int8x16_t; 4];
    fn offsets(c: usize) -> [usize; 4];
    fn group(c: usize, v: usize) -> usize;
}

pub(super) struct Q4K;
pub(super) struct Q5K;
pub(super) struct Q6K;

/// Head of Q4_K/Q5_K.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn head45(d: [u8; 2], dmin: [u8; 2], s: &[u8; 12]) -> Head {
    let mut scales = [0i32; 16];
    let mut mins = [0i16; 8];
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, s);
        scales[j] = sc as i32;
        mins[j] = m as i16;
    }
    Head {
        d: h2f(d),
        dmin: h2f(dmin),
        scales,
        // SAFETY: mins is 8 readable i16.
        mins: unsafe { vld1q_s16(mins.as_ptr()) },
    }
}

/// Elements 64c..64c+64 of Q4_K/Q5_K are the low nibbles of qs[32c..32c+32]
/// (scale group 2c), then the high nibbles (group 2c+1).
fn offsets45(c: usize) -> [usize; 4] {
    [64 * c, 64 * c + 16, 64 * c + 32, 64 * c + 48]
}

impl KFormat for Q4K {
    type W = BlockQ4K;
    const HAS_MIN: bool = true;
    const GROUP: usize = 2;
    #[inline(always)]
    unsafe fn head(b: &BlockQ4K) -> Head {
        head45(b.d, b.dmin, &b.scales)
    }
    #[inline(always)]
    unsafe fn chunk(b: &BlockQ4K, c: usize) -> [int8x16_t; 4] {
        let (l0, h0) = nibbles(&b.qs[32 * c..]);
        let (l1, h1) = nibbles(&b.qs[32 * c + 16..]);
        [l0, l1, h0, h1].map(|v| vreinterpretq_s8_u8(v))
    }
    #[inline(always)]
    fn offsets(c: usize) -> [usize; 4] {
        offsets45(c)
    }
    #[inline(always)]
    fn group(c: usize, v: usize) -> usize {
        2 * c + v / 2
    }
}

impl KFormat for Q5K {
    type W = BlockQ5K;
    const HAS_MIN: bool = true;
    const GROUP: usize = 2;
    #[inline(always)]
    unsafe fn head(b: &BlockQ5K) -> Head {
        head45(b.d, b.dmin, &b.scales)
    }
    #[inline(always)]
    unsafe fn chunk(b: &BlockQ5K, c: usize) -> [int8x16_t; 4] {
        let (l0, h0) = nibbles(&b.qs[32 * c..]);
        let (l1, h1) = nibbles(&b.qs[32 * c + 16..]);
        // The 5th bit of element 64c + i is bit 2c of qh[i % 32], of element
        // 64c + 32 + i bit 2c + 1.
        let (qh0, qh1) = (
            vreinterpretq_u8_s8(load16(&b.qh[..16])),
            vreinterpretq_u8_s8(load16(&b.qh[16..])),
        );
        let bit = |v: uint8x16_t, b: u8| vandq_u8(vtstq_u8(v, vdupq_n_u8(b)), vdupq_n_u8(0x10));
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        [
            vorrq_u8(l0, bit(qh0, u1)),
            vorrq_u8(l1, bit(qh1, u1)),
            vorrq_u8(h0, bit(qh0, u2)),
            vorrq_u8(h1, bit(qh1, u2)),
        ]
        .map(|v| vreinterpretq_s8_u8(v))
    }
    #[inline(always)]
    fn offsets(c: usize) -> [usize; 4] {
        offsets45(c)
    }
    #[inline(always)]
    fn group(c: usize, v: usize) -> usize {
        2 * c + v / 2
    }
}

/// Q6_K chunk c = (half h = c / 2, part p = c % 2): vector g holds elements
/// 128h + 32g + 16p + l, l < 16, one 16-element scale group each.
impl KFormat for Q6K {
    type W = BlockQ6K;
    const HAS_MIN: bool = false;
    const GROUP: usize = 1;
    #[inline(always)]
    unsafe fn head(b: &BlockQ6K) -> Head {
        Head {
            d: h2f(b.d),
            dmin: 0.0,
            scales: b.scales.map(i32::from),
            mins: vdupq_n_s16(0),
        }
    }
    #[inline(always)]
    unsafe fn chunk(b: &BlockQ6K, c: usize) -> [int8x16_t; 4] {
        let (h, o) = (c / 2, 16 * (c % 2));
        let low = vdupq_n_u8(0x0f);
        let three = vdupq_n_u8(3);
        let ql0 = vreinterpretq_u8_s8(load16(&b.ql[64 * h + o..]));
        let ql1 = vreinterpretq_u8_s8(load16(&b.ql[64 * h + 32 + o..]));
        let qh = vreinterpretq_u8_s8(load16(&b.qh[32 * h + o..]));
        [
            vorrq_u8(vandq_u8(ql0, low), vshlq_n_u8::<4>(vandq_u8(qh, three))),
            vorrq_u8(
                vandq_u8(ql1, low),
                vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), three)),
            ),
            vorrq_u8(
                vshrq_n_u8::<4>(ql0),
                vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), three)),
            ),
            vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
        ]
        .map(|q| vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32)))
    }
    #[inline(always)]
    fn offsets(c: usize) -> [usize; 4] {
        let (h, o) = (c / 2, 16 * (c % 2));
        [0, 1, 2, 3].map(|g| 128 * h + 32 * g + o)
    }
    #[inline(always)]
    fn group(c: usize, v: usize) -> usize {
        (128 * (c / 2) + 32 * v + 16 * (c % 2)) / 16
    }
}

/// Lane i = the sum of `p[i]`'s lanes (exact integer adds).
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn sum_lanes(p: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]))
}

/// The 8 sums of 32 activations of a Q8_K block (≤ 4064: no i16 overflow).
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn bsums32(y: &BlockQ8K) -> int16x8_t {
    let b0 = vreinterpretq_s16_s8(load16(&y.bsums[..16]));
    let b1 = vreinterpretq_s16_s8(load16(&y.bsums[16..]));
    vpaddq_s16(b0, b1)
}

/// Σ_j mins_j·bsums_j in the lanes of an i32 vector.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn min_lanes(b: int16x8_t, m: int16x8_t) -> int32x4_t {
    vmlal_high_s16(vmull_s16(vget_low_s16(b), vget_low_s16(m)), b, m)
}

/// `out[t·ldo + r] = dot(rows[r], toks[t])` for `NR` rows and `NT ≤ 4` tokens.
///
/// # Safety
/// The CPU must have FEAT_DotProd.
#[inline(always)]
unsafe fn tile<F: KFormat, const NR: usize, const NT: usize>(
    rows: [&[F::W]; NR],
    toks: [&[BlockQ8K]; NT],
    out: &mut [f32],
    ldo: usize,
) {
    let nb = rows[0].len();
    let mut facc = [vdupq_n_f32(0.0); NR];
    for b in 0..nb {
        let heads: [Head; NR] = std::array::from_fn(|r| F::head(&rows[r][b]));
        let mut acc = [[vdupq_n_s32(0); 4]; NR];
        for c in 0..4 {
            let wv: [[int8x16_t; 4]; NR] = std::array::from_fn(|r| F::chunk(&rows[r][b], c));
            // The chunk's scales, looked up once for the tile's tokens.
            let sc: [[i32; 4]; NR] =
                std::array::from_fn(|r| std::array::from_fn(|v| heads[r].scales[F::group(c, v)]));
            let offs = F::offsets(c);
            for t in 0..NT {
                let qa = &toks[t][b].qs;
                let av = offs.map(|o| load16(&qa[o..]));
                for r in 0..NR {
                    for v in (0..4).step_by(F::GROUP) {
                        let mut p = vdupq_n_s32(0);
                        for i in v..v + F::GROUP {
                            // SAFETY: FEAT_DotProd is the caller's contract.
                            p = unsafe { Sdot::dot4(p, wv[r][i], av[i]) };
                        }
                        acc[r][t] = vmlaq_n_s32(acc[r][t], p, sc[r][v]);
                    }
                }
            }
        }
        let mut da = [0f32; 4];
        for t in 0..NT {
            da[t] = toks[t][b].d();
        }
        // SAFETY: da is 4 readable f32.
        let da = unsafe { vld1q_f32(da.as_ptr()) };
        let bs: [int16x8_t; NT] = std::array::from_fn(|t| {
            if F::HAS_MIN {
                bsums32(&toks[t][b])
            } else {
                vdupq_n_s16(0)
            }
        });
        for r in 0..NR {
            let h = &heads[r];
            let sumi = vcvtq_f32_s32(sum_lanes(acc[r]));
            let mut v = vmulq_f32(vmulq_n_f32(da, h.d), sumi);
            if F::HAS_MIN {
                let mut m = [vdupq_n_s32(0); 4];
                for t in 0..NT {
                    m[t] = min_lanes(bs[t], h.mins);
                }
                let summ = vcvtq_f32_s32(sum_lanes(m));
                v = vsubq_f32(v, vmulq_f32(vmulq_n_f32(da, h.dmin), summ));
            }
            facc[r] = vaddq_f32(facc[r], v);
        }
    }
    for (r, &v) in facc.iter().enumerate() {
        let mut l = [0f32; 4];
        // SAFETY: l is 4 writable f32.
        unsafe { vst1q_f32(l.as_mut_ptr(), v) };
        for (t, &x) in l.iter().enumerate().take(NT) {
            out[t * ldo + r] = x;
        }
    }
}

/// `out[r] = dot(rows[r], tok)` for `RV` rows (lanes) and one token.
///
/// # Safety
/// The CPU must have FEAT_DotProd.
#[inline(always)]
unsafe fn gemv<F: KFormat>(rows: [&[F::W]; RV], tok: &[BlockQ8K], out: &mut [f32]) {
    let mut facc = vdupq_n_f32(0.0);
    for (b, y) in tok.iter().enumerate() {
        let heads: [Head; RV] = std::array::from_fn(|r| F::head(&rows[r][b]));
        let mut acc = [vdupq_n_s32(0); RV];
        for c in 0..4 {
            let av = F::offsets(c).map(|o| load16(&y.qs[o..]));
            for r in 0..RV {
                let wv = F::chunk(&rows[r][b], c);
                for v in (0..4).step_by(F::GROUP) {
                    let mut p = vdupq_n_s32(0);
                    for i in v..v + F::GROUP {
                        // SAFETY: FEAT_DotProd is the caller's contract.
                        p = unsafe { Sdot::dot4(p, wv[i], av[i]) };
                    }
                    acc[r] = vmlaq_n_s32(acc[r], p, heads[r].scales[F::group(c, v)]);
                }
            }
        }
        let yd = y.d();
        let (dl, ml) = (
            heads.each_ref().map(|h| h.d),
            heads.each_ref().map(|h| h.dmin),
        );
        // SAFETY: dl is 4 readable f32.
        let d = unsafe { vld1q_f32(dl.as_ptr()) };
        let mut v = vmulq_f32(vmulq_n_f32(d, yd), vcvtq_f32_s32(sum_lanes(acc)));
        if F::HAS_MIN {
            let bs = bsums32(y);
            let summ = sum_lanes(heads.each_ref().map(|h| min_lanes(bs, h.mins)));
            // SAFETY: ml is 4 readable f32.
            let dmin = unsafe { vld1q_f32(ml.as_ptr()) };
            v = vsubq_f32(v, vmulq_f32(vmulq_n_f32(dmin, yd), vcvtq_f32_s32(summ)));
        }
        facc = vaddq_f32(facc, v);
    }
    let mut l = [0f32; 4];
    // SAFETY: l is 4 writable f32.
    unsafe { vst1q_f32(l.as_mut_ptr(), facc) };
    out[..RV].copy_from_slice(&l);
}

/// The [`super::GemmFn`] of format `F`: tokens in chunks that stay in cache,
/// inside a chunk every 2-row weight tile meets the chunk's tokens 4 at a
/// time; a lone token (and a chunk's last odd one) goes through 4-row
/// [`gemv`] tiles, the rows past them through a 1×1 tile.
///
/// # Safety
/// The CPU must have FEAT_DotProd.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn gemm_k_sdot<F: KFormat>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = k / 256;
    let (wrb, arb) = (
        nb * std::mem::size_of::<F::W>(),
        nb * std::mem::size_of::<BlockQ8K>(),
    );
    assert!(
        nb * 256 == k && w.len() >= n_rows * wrb && a.len() >= n_tok * arb,
        "gemm: input sizes"
    );
    assert!(
        n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "gemm: output size"
    );
    let wb = as_blocks::<F::W>(&w[..n_rows * wrb]).unwrap_or(&[]);
    let ab = as_blocks::<BlockQ8K>(&a[..n_tok * arb]).unwrap_or(&[]);
    let row = |r: usize| &wb[r * nb..][..nb];
    let tok = |t: usize| &ab[t * nb..][..nb];
    let chunk = (CHUNK_BYTES / arb.max(1) / T).max(1) * T;
    for c0 in (0..n_tok).step_by(chunk) {
        let c1 = (c0 + chunk).min(n_tok);
        // Tokens c0..multi in tiles of 2..=4; a last lone one goes to gemv.
        let multi = if (c1 - c0) % T == 1 { c1 - 1 } else { c1 };
        for r0 in (0..n_rows).step_by(R) {
            let nr = R.min(n_rows - r0);
            for t0 in (c0..multi).step_by(T) {
                macro_rules! go {
                    ($nr:literal, $nt:literal) => {
                        // SAFETY: FEAT_DotProd is the caller's contract.
                        unsafe {
                            tile::<F, $nr, $nt>(
                                std::array::from_fn(|i| row(r0 + i)),
                                std::array::from_fn(|j| tok(t0 + j)),
                                &mut out[t0 * ldo + r0..],
                                ldo,
                            )
                        }
                    };
                }
                match (nr, multi - t0) {
                    (R, 2) => go!(2, 2),
                    (R, 3) => go!(2, 3),
                    (R, _) => go!(2, 4),
                    (_, 2) => go!(1, 2),
                    (_, 3) => go!(1, 3),
                    (_, _) => go!(1, 4),
                }
            }
        }
        if multi < c1 {
            let t = multi;
            let whole = n_rows / RV * RV;
            for r0 in (0..whole).step_by(RV) {
                let rows = std::array::from_fn(|i| row(r0 + i));
                // SAFETY: FEAT_DotProd is the caller's contract.
                unsafe { gemv::<F>(rows, tok(t), &mut out[t * ldo + r0..]) };
            }
            for r in whole..n_rows {
                // SAFETY: FEAT_DotProd is the caller's contract.
                unsafe { tile::<F, 1, 1>([row(r)], [tok(t)], &mut out[t * ldo + r..], ldo) };
            }
        }
    }
}

gemm_entry_points! {
    "dotprod", gemm_k_sdot;
    Q4K => gemm_q4_k_q8_k_dotprod;
    Q5K => gemm_q5_k_q8_k_dotprod;
    Q6K => gemm_q6_k_q8_k_dotprod;
}
