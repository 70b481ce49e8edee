//! Q4_K / Q5_K sub-block fits, one sub-block per vector lane: the SIMD twins of
//! [`kfit::fit_sub_blocks`], bit for bit.
//!
//! ggml's fit (`make_qkx2_quants`) tries 21 (Q4_K) or 16 (Q5_K) scales per 32-value sub-block,
//! each a pass of rounding, sums and an error over the values: ~2.4 µs per sub-block on a
//! Zen 4 core, which made a Q4_K conversion of Tiny take a minute where Q8_0 takes seconds.
//! Its sums run in element order, so vectorizing across one sub-block's values would change
//! their rounding; across sub-blocks it does not: lane `l` of every vector here belongs to
//! sub-block `l` and runs the reference's very f32 operations in the reference's order (a
//! multiply and an add are never fused). The instruction set is a [`Lanes`] implementation
//! (`simd_avx512.rs`: 16 lanes, `simd_avx2.rs`: 8; aarch64 keeps the scalar fits); this file is
//! the algorithm, once.
//!
//! A super-block with a NaN or an infinity goes to the scalar reference: a NaN's payload may
//! travel differently through reordered operands. From finite values only the default NaN can
//! arise (inf − inf after an overflow), identical in every lane and in the scalar code.
//!
//! [`kfit::fit_sub_blocks`]: super::kfit::fit_sub_blocks

use super::kfit::{self, finish_kx, KxFit, KxParts, SubFits};
use super::{as_blocks_mut, ByteBlock};

/// A vector of [`Lanes::W`] f32 lanes with the operations the fit needs, each lane by lane
/// exactly the scalar f32 operation (IEEE, round to nearest even).
pub(super) trait Lanes: Copy {
    /// Lanes per vector: a multiple of 8 (a super-block's sub-blocks).
    const W: usize;
    /// A lane mask, as the comparisons return it.
    type Mask: Copy;
    fn splat(v: f32) -> Self;
    /// Lane l = `x[stride · l]`; `x` holds at least `stride · (W − 1) + 1` values.
    fn gather(x: &[f32], stride: usize) -> Self;
    /// Writes the lanes to `out[..W]`.
    fn store(self, out: &mut [f32]);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    /// The sign flipped (−0 from 0, as the scalar `-x`).
    fn neg(self) -> Self;
    /// Ordered comparisons: false where either lane is NaN, as in the scalar code.
    fn lt(self, o: Self) -> Self::Mask;
    fn gt(self, o: Self) -> Self::Mask;
    fn eq(self, o: Self) -> Self::Mask;
    fn and(a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// `a` where `m` is set, else `b`.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// ggml's `nearest_int` clamped to `0..=nmax`, as f32.
    fn nearest_clamped(self, nmax: i32) -> Self;
}

/// A row of Q4_K / Q5_K super-blocks (`pack` makes a block of its parts), `V::W / 8`
/// super-blocks per pass of lane-parallel fits.
#[inline(always)]
pub(super) fn kx_row<V: Lanes, B: ByteBlock>(
    src: &[f32],
    dst: &mut [u8],
    p: KxFit,
    pack: fn(KxParts) -> B,
) {
    let per = V::W / 8;
    let blocks = as_blocks_mut::<B>(dst).unwrap_or_default();
    let mut fits = [SubFits::default(); 2];
    assert!(per <= fits.len());
    for (bs, xs) in blocks.chunks_mut(per).zip(src.chunks(256 * per)) {
        let fits = &mut fits[..per];
        if xs.len() == 256 * per {
            fit_lanes::<V>(xs, p, fits);
        } else {
            // The row's last super-blocks: the missing lanes fit zeros, never stored.
            let mut padded = [0f32; 512];
            padded[..xs.len()].copy_from_slice(xs);
            fit_lanes::<V>(&padded[..256 * per], p, fits);
        }
        for ((b, x), fit) in bs.iter_mut().zip(xs.chunks_exact(256)).zip(fits.iter()) {
            if let Ok(x) = <&[f32; 256]>::try_from(x) {
                let fit = if x.iter().all(|v| v.is_finite()) {
                    *fit
                } else {
                    kfit::fit_sub_blocks(x, p)
                };
                *b = pack(finish_kx(x, &fit, p.nmax));
            }
        }
    }
}

/// The fits of the `V::W / 8` super-blocks of `x` (`32 V::W` values) into `out`: in each lane
/// the weights of `kfit::fit_sub_blocks`, then `kfit::make_qkx2_quants` with squared errors,
/// step for step.
#[inline(always)]
fn fit_lanes<V: Lanes>(x: &[f32], p: KxFit, out: &mut [SubFits]) {
    assert!(x.len() >= 32 * V::W);
    // Plain loops, no closures: a closure is a function of its own, compiled without the
    // caller's target features, where the intrinsics would not be inlined.
    let zero = V::splat(0.0);
    // xt[i]: value i of every sub-block.
    let mut xt = [zero; 32];
    for (i, v) in xt.iter_mut().enumerate() {
        *v = V::gather(&x[i..], 32);
    }
    // The weights: av_x + |x|, av_x the sub-block's root mean square.
    let mut sum_x2 = zero;
    for v in xt {
        sum_x2 = sum_x2.add(v.mul(v));
    }
    let av_x = sum_x2.div(V::splat(32.0)).sqrt();
    let mut w = [zero; 32];
    for (wv, v) in w.iter_mut().zip(xt) {
        *wv = av_x.add(v.abs());
    }

    let (mut min, mut max) = (xt[0], xt[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w.mul(xt[0]);
    for i in 1..32 {
        let v = xt[i];
        min = V::select(v.lt(min), v, min);
        max = V::select(v.gt(max), v, max);
        sum_w = sum_w.add(w[i]);
        sum_x = sum_x.add(w[i].mul(v));
    }
    min = V::select(min.gt(zero), zero, min);
    // A flat sub-block returns (0, −min) and all-zero quants before any fitting.
    let flat = max.eq(min);
    let flat_min = min.neg();

    let nmax = V::splat(p.nmax as f32);
    let mut iscale = nmax.div(max.sub(min));
    let mut scale = V::splat(1.0).div(iscale);
    // Quants as f32 (exact small integers), the best so far and this step's.
    let mut best = [zero; 32];
    let mut best_error = zero;
    for i in 0..32 {
        let q = iscale.mul(xt[i].sub(min)).nearest_clamped(p.nmax);
        best[i] = q;
        let diff = scale.mul(q).add(min).sub(xt[i]);
        best_error = best_error.add(w[i].mul(diff.mul(diff)));
    }
    if p.nstep >= 1 {
        let mut laux = [zero; 32];
        for is in 0..=p.nstep {
            let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
            // (rmin + rdelta·is) + nmax, as the reference groups it.
            let top = V::splat(p.rmin + p.rdelta * is as f32).add(nmax);
            iscale = top.div(max.sub(min));
            for i in 0..32 {
                let (v, wv) = (xt[i], w[i]);
                let q = iscale.mul(v.sub(min)).nearest_clamped(p.nmax);
                laux[i] = q;
                let wq = wv.mul(q);
                sum_l = sum_l.add(wq);
                sum_l2 = sum_l2.add(wq.mul(q));
                sum_xl = sum_xl.add(wq.mul(v));
            }
            // Every lane computes a candidate; only those with d > 0 may take it.
            let d = sum_w.mul(sum_l2).sub(sum_l.mul(sum_l));
            let ts = sum_w.mul(sum_xl).sub(sum_x.mul(sum_l)).div(d);
            let tm = sum_l2.mul(sum_x).sub(sum_l.mul(sum_xl)).div(d);
            let positive_min = tm.gt(zero);
            let this_min = V::select(positive_min, zero, tm);
            let this_scale = V::select(positive_min, sum_xl.div(sum_l2), ts);
            let mut cur_error = zero;
            for i in 0..32 {
                let diff = this_scale.mul(laux[i]).add(this_min).sub(xt[i]);
                cur_error = cur_error.add(w[i].mul(diff.mul(diff)));
            }
            let take = V::and(d.gt(zero), cur_error.lt(best_error));
            best_error = V::select(take, cur_error, best_error);
            scale = V::select(take, this_scale, scale);
            min = V::select(take, this_min, min);
            for (b, a) in best.iter_mut().zip(laux) {
                *b = V::select(take, a, *b);
            }
        }
    }
    let scale = V::select(flat, zero, scale);
    let mins = V::select(flat, flat_min, min.neg());
    for b in &mut best {
        *b = V::select(flat, zero, *b);
    }

    // Back to sub-block order: lane l of the vectors is sub-block l % 8 of super-block l / 8.
    let mut lanes = [0f32; 16];
    let w8 = V::W;
    for (s, fits) in out.iter_mut().enumerate().take(w8 / 8) {
        scale.store(&mut lanes);
        fits.scales.copy_from_slice(&lanes[8 * s..8 * s + 8]);
        mins.store(&mut lanes);
        fits.mins.copy_from_slice(&lanes[8 * s..8 * s + 8]);
    }
    let mut quants = [0f32; 32 * 16];
    for (i, b) in best.iter().enumerate() {
        b.store(&mut quants[w8 * i..]);
    }
    for (s, fits) in out.iter_mut().enumerate().take(w8 / 8) {
        for j in 0..8 {
            for i in 0..32 {
                fits.l[32 * j + i] = quants[w8 * i + 8 * s + j] as u8;
            }
        }
    }
}
