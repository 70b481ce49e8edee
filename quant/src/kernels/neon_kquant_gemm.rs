//! GEMM tiles of the K-quants (Q2_K to Q6_K against Q8_K) for the plain NEON
//! tier (base NEON's widening multiplies: Cortex-A53/A72 = Raspberry Pi 3 and 4),
//! the neon-dotprod tier (`sdot`: Cortex-A76 = Raspberry Pi 5) and the i8mm
//! tier's tails, through the [`Dot4`] of each.
//!
//! [`tile`] holds `NR` weight rows × up to 4 tokens: per super-block and
//! 64-element chunk each row is decoded once into four 16-byte vectors of
//! signed quants (the [`KFormat`] decode) and meets the tile's tokens; per
//! scale group (Q4_K/Q5_K: 32 elements, Q2_K/Q3_K/Q6_K: 16) `sdot` forms the
//! exact integer sum and `mla` weighs it by the group's scale, so each (row,
//! token) gets the same integers as the scalar twin: Σ scale·Σq_w·q_a and, for
//! Q2_K/Q4_K/Q5_K, Σ min·bsum from the activation's 32-element (16-element for
//! Q2_K) sums. Those are
//! gathered four tokens to a vector by a pairwise add tree and scaled in f32,
//! `d·d_a·Σ − dmin·d_a·Σmin`; only the order of the f32 additions differs
//! from the scalar twins (`tier_tests` bounds it).

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::neon::{gemm_entry_points, h2f, load16, nibbles, Dot4, Plain, Sdot};
use crate::block::{
    as_blocks, get_scale_min_k4, q3k_scale, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K,
    BlockQ8K, ByteBlock,
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
    /// Scale of each scale group (Q4_K/Q5_K: 8, the others 16).
    pub(super) scales: [i32; 16],
    /// The minimums as i16: Q4_K/Q5_K's 8 in the first vector, Q2_K's 16 in both (zero
    /// for the formats without).
    pub(super) mins: [int16x8_t; 2],
}

/// A K-quant as the tiles read it.
pub(super) trait KFormat {
    type W: ByteBlock;
    /// Whether the format subtracts `dmin·Σ min·bsum` (Q2_K, Q4_K, Q5_K).
    const HAS_MIN: bool;
    /// Whether its minimums are per 16 elements (Q2_K) rather than per 32.
    const MINS16: bool = false;
    /// Vectors (of 16 quants) per scale group.
    const GROUP: usize;
    /// # Safety
    /// NEON only: part of every aarch64 CPU.
    unsafe fn head(b: &Self::W) -> Head;
    /// The 4 weight vectors of chunk `c` (< 4) as signed quants, their
    /// elements' offsets in the super-block and their scale group (for
    /// vectors `0, GROUP, ..`); by default the 16-element formats' layout:
    /// chunk c = (half h = c / 2, part p = c % 2), vector g holds elements
    /// 128h + 32g + 16p + l, l < 16, one 16-element scale group each.
    ///
    /// # Safety
    /// NEON only: part of every aarch64 CPU.
    unsafe fn chunk(b: &Self::W, c: usize) -> [int8x16_t; 4];
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

pub(super) struct Q2K;
pub(super) struct Q3K;
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
        mins: [unsafe { vld1q_s16(mins.as_ptr()) }, vdupq_n_s16(0)],
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

/// Q6_K: 6-bit quants less 32 in the 16-element layout, i8 scales.
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
            mins: [vdupq_n_s16(0); 2],
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
}

/// Chunk c's 2-bit quants (Q2_K, Q3_K's low bits): element 128h + 32g + 16p + l is bits
/// 2g, 2g + 1 of qs[32h + 16p + l].
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
unsafe fn two_bits(qs: &[u8; 64], c: usize) -> [uint8x16_t; 4] {
    let (h, o) = (c / 2, 16 * (c % 2));
    let q = vreinterpretq_u8_s8(load16(&qs[32 * h + o..]));
    let three = vdupq_n_u8(3);
    [
        vandq_u8(q, three),
        vandq_u8(vshrq_n_u8::<2>(q), three),
        vandq_u8(vshrq_n_u8::<4>(q), three),
        vshrq_n_u8::<6>(q),
    ]
}

/// Q3_K: the 2 low bits from `qs`, the third from `hmask` (element 32g' + l: bit g' of
/// hmask[l]), less 4; 6-bit scales less 32.
impl KFormat for Q3K {
    type W = BlockQ3K;
    const HAS_MIN: bool = false;
    const GROUP: usize = 1;
    #[inline(always)]
    unsafe fn head(b: &BlockQ3K) -> Head {
        Head {
            d: h2f(b.d),
            dmin: 0.0,
            scales: std::array::from_fn(|j| q3k_scale(j, &b.scales) as i32),
            mins: [vdupq_n_s16(0); 2],
        }
    }
    #[inline(always)]
    unsafe fn chunk(b: &BlockQ3K, c: usize) -> [int8x16_t; 4] {
        let (h, o) = (c / 2, 16 * (c % 2));
        let hm = vreinterpretq_u8_s8(load16(&b.hmask[o..]));
        let low = two_bits(&b.qs, c);
        std::array::from_fn(|g| {
            let bit = vdupq_n_u8(1 << (4 * h + g));
            let high = vandq_u8(vtstq_u8(hm, bit), vdupq_n_u8(4));
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low[g], high)), vdupq_n_s8(4))
        })
    }
}

/// Q2_K: 2-bit quants, 4-bit scales and minimums per 16 elements.
impl KFormat for Q2K {
    type W = BlockQ2K;
    const HAS_MIN: bool = true;
    const MINS16: bool = true;
    const GROUP: usize = 1;
    #[inline(always)]
    unsafe fn head(b: &BlockQ2K) -> Head {
        // The minimums are the high nibbles of the 16 scale bytes.
        let mins = vshrq_n_u8::<4>(vreinterpretq_u8_s8(load16(&b.scales)));
        let mins = [vmovl_u8(vget_low_u8(mins)), vmovl_high_u8(mins)];
        Head {
            d: h2f(b.d),
            dmin: h2f(b.dmin),
            scales: b.scales.map(|v| i32::from(v & 0x0f)),
            mins: mins.map(|m| vreinterpretq_s16_u16(m)),
        }
    }
    #[inline(always)]
    unsafe fn chunk(b: &BlockQ2K, c: usize) -> [int8x16_t; 4] {
        two_bits(&b.qs, c).map(|v| vreinterpretq_s8_u8(v))
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

/// The sums of activations of a Q8_K block that format `F`'s minimums multiply: the 16
/// sums of 16 (Q2_K), or the 8 sums of 32 (≤ 4064: no i16 overflow) in the first vector.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn min_sums<F: KFormat>(y: &BlockQ8K) -> [int16x8_t; 2] {
    let b0 = vreinterpretq_s16_s8(load16(&y.bsums[..16]));
    let b1 = vreinterpretq_s16_s8(load16(&y.bsums[16..]));
    if F::MINS16 {
        [b0, b1]
    } else {
        [vpaddq_s16(b0, b1), vdupq_n_s16(0)]
    }
}

/// Σ_j mins_j·sums_j of format `F` ([`min_sums`], [`Head::mins`]) in the lanes of an i32
/// vector.
///
/// # Safety
/// NEON only: part of every aarch64 CPU.
#[inline(always)]
pub(super) unsafe fn min_lanes<F: KFormat>(b: &[int16x8_t; 2], m: &[int16x8_t; 2]) -> int32x4_t {
    let p = vmlal_high_s16(
        vmull_s16(vget_low_s16(b[0]), vget_low_s16(m[0])),
        b[0],
        m[0],
    );
    if F::MINS16 {
        vmlal_high_s16(
            vmlal_s16(p, vget_low_s16(b[1]), vget_low_s16(m[1])),
            b[1],
            m[1],
        )
    } else {
        p
    }
}

/// `out[t·ldo + r] = dot(rows[r], toks[t])` for `NR` rows and `NT ≤ 4` tokens.
///
/// # Safety
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn tile<F: KFormat, M: Dot4, const NR: usize, const NT: usize>(
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
                            // SAFETY: `M`'s instructions are the caller's contract.
                            p = unsafe { M::dot4(p, wv[r][i], av[i]) };
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
        let bs: [[int16x8_t; 2]; NT] = std::array::from_fn(|t| {
            if F::HAS_MIN {
                min_sums::<F>(&toks[t][b])
            } else {
                [vdupq_n_s16(0); 2]
            }
        });
        for r in 0..NR {
            let h = &heads[r];
            let sumi = vcvtq_f32_s32(sum_lanes(acc[r]));
            let mut v = vmulq_f32(vmulq_n_f32(da, h.d), sumi);
            if F::HAS_MIN {
                let mut m = [vdupq_n_s32(0); 4];
                for t in 0..NT {
                    m[t] = min_lanes::<F>(&bs[t], &h.mins);
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
/// The CPU must have `M`'s instructions.
#[inline(always)]
unsafe fn gemv<F: KFormat, M: Dot4>(rows: [&[F::W]; RV], tok: &[BlockQ8K], out: &mut [f32]) {
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
                        // SAFETY: `M`'s instructions are the caller's contract.
                        p = unsafe { M::dot4(p, wv[i], av[i]) };
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
            let bs = min_sums::<F>(y);
            let summ = sum_lanes(heads.each_ref().map(|h| min_lanes::<F>(&bs, &h.mins)));
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
/// The CPU must have `M`'s instructions.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn gemm_k<F: KFormat, M: Dot4>(
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
                        // SAFETY: `M`'s instructions are the caller's contract.
                        unsafe {
                            tile::<F, M, $nr, $nt>(
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
                // SAFETY: `M`'s instructions are the caller's contract.
                unsafe { gemv::<F, M>(rows, tok(t), &mut out[t * ldo + r0..]) };
            }
            for r in whole..n_rows {
                // SAFETY: `M`'s instructions are the caller's contract.
                unsafe { tile::<F, M, 1, 1>([row(r)], [tok(t)], &mut out[t * ldo + r..], ldo) };
            }
        }
    }
}

gemm_entry_points! {
    "neon", gemm_k, Plain;
    Q2K => gemm_q2_k_q8_k;
    Q3K => gemm_q3_k_q8_k;
    Q4K => gemm_q4_k_q8_k;
    Q5K => gemm_q5_k_q8_k;
    Q6K => gemm_q6_k_q8_k;
}

gemm_entry_points! {
    "dotprod", gemm_k, Sdot;
    Q2K => gemm_q2_k_q8_k_dotprod;
    Q3K => gemm_q3_k_q8_k_dotprod;
    Q4K => gemm_q4_k_q8_k_dotprod;
    Q5K => gemm_q5_k_q8_k_dotprod;
    Q6K => gemm_q6_k_q8_k_dotprod;
}
