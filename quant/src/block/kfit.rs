//! Shared pieces of the K-quant reference quantizers (ggml-quants.c):
//! `make_qkx2_quants` (weighted scale + min fit for Q2_K/Q4_K/Q5_K), `make_qx_quants`
//! (signed scale fit for Q6_K) and the 6-bit scale/min packing of Q4_K/Q5_K.
//! Float operations keep ggml's order so that results are bit-identical.

use super::nearest_int;

/// ggml's `GROUP_MAX_EPS`: below this a group counts as all zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// How [`make_qkx2_quants`] weighs a residual.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FitError {
    /// Squared (Q4_K, Q5_K).
    Squared,
    /// Absolute (ggml's `use_mad`, Q2_K).
    Absolute,
}

/// Weighted fit of `x ≈ scale·L − min` with L in 0..=nmax over N values (ggml
/// `make_qkx2_quants`). Writes L and returns (scale, min) where min ≥ 0 is subtracted.
#[allow(clippy::too_many_arguments)]
pub(super) fn make_qkx2_quants<const N: usize>(
    x: &[f32; N],
    weights: &[f32; N],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    err: FitError,
    l_out: &mut [u8; N],
) -> (f32, f32) {
    let cost = |diff: f32| match err {
        FitError::Squared => diff * diff,
        FitError::Absolute => diff.abs(),
    };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *l_out = [0; N];
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * cost(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..N {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * cost(diff);
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Signed fit of 16 values with weights x² (ggml `make_qx_quants`, rmse_type 1,
/// nmax 32). Writes L + nmax (0..=63) and returns the scale.
pub(super) fn make_qx_quants(x: &[f32; 16], l_out: &mut [u8; 16]) -> f32 {
    const NMAX: i32 = 32;
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        *l_out = [0; 16];
        return 0.0;
    }
    let mut iscale = -(NMAX as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..16 {
        let l = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
        l_out[i] = (l + NMAX) as u8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..16 {
                let l = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
                l_out[i] = (l + NMAX) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Sub-block j's 6-bit (scale, min) from the 12 packed bytes (ggml `get_scale_min_k4`).
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The parameters of a `make_qkx2_quants` sub-block fit (Q4_K, Q5_K; Q2_K's in `q2_k.rs`).
#[derive(Clone, Copy, Debug)]
pub(super) struct KxFit {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// ggml `quantize_row_q4_K_ref`'s fit.
pub(super) const Q4_K_FIT: KxFit = KxFit {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
};

/// ggml `quantize_row_q5_K_ref`'s fit.
pub(super) const Q5_K_FIT: KxFit = KxFit {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
};

/// The packed parts of a Q4_K / Q5_K super-block: d and dmin (f16), the 6-bit scales and
/// mins packed, and the final quants L (0..=nmax) in element order.
pub(super) type KxParts = ([u8; 2], [u8; 2], [u8; 12], [u8; 256]);

/// Q4_K/Q5_K super-block quantization up to the final quants: per 32-element sub-block
/// weights av + |x| and `make_qkx2_quants`, then [`finish_kx`].
pub(super) fn quantize_kx(x: &[f32; 256], p: KxFit) -> KxParts {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut l_all = [0u8; 256];
    for j in 0..8 {
        let xs: &[f32; 32] = sub32(x, j);
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let mut l = [0u8; 32];
        let (sc, mn) = make_qkx2_quants(
            xs,
            &weights,
            p.nmax,
            p.rmin,
            p.rdelta,
            p.nstep,
            FitError::Squared,
            &mut l,
        );
        l_all[32 * j..32 * j + 32].copy_from_slice(&l);
        scales[j] = sc;
        mins[j] = mn;
    }
    finish_kx(x, &scales, &mins, l_all, p.nmax)
}

/// The rest of the reference after the sub-block fits (each sub-block's scale, min to
/// subtract and quants L in element order): 6-bit scales and mins relative to their maxima,
/// then the quants recomputed from the stored f16 d/dmin (pitfall 47). Inlined so that the
/// SIMD tiers' callers compile its loops with their instructions.
#[inline]
pub(super) fn finish_kx(
    x: &[f32; 256],
    scales: &[f32; 8],
    mins: &[f32; 8],
    mut l_all: [u8; 256],
    nmax: i32,
) -> KxParts {
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for (&sc, &mn) in scales.iter().zip(mins) {
        if sc > max_scale {
            max_scale = sc;
        }
        if mn > max_min {
            max_min = mn;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // C stores nearest_int into uint8_t (wrapping) before MIN(63, ·).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d16 = super::f32_to_f16(max_scale / 63.0);
    let dmin16 = super::f32_to_f16(max_min / 63.0);
    let d_stored = super::f16_to_f32(d16);
    let dmin_stored = super::f16_to_f32(dmin16);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let d = d_stored * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_stored * m as f32;
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax);
            l_all[32 * j + ii] = l as u8;
        }
    }
    (d16, dmin16, packed, l_all)
}

/// Sub-block j (32 elements) of a 256-element super-block.
#[inline]
fn sub32(x: &[f32; 256], j: usize) -> &[f32; 32] {
    let s = &x[32 * j..32 * j + 32];
    s.try_into().unwrap_or(&[0.0; 32])
}
