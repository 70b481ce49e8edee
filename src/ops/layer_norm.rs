//! LayerNorm as the SigLIP tower uses it: `(x - mean) / sqrt(var + eps) * weight + bias`
//! over each row, with the biased (population) variance (spec §4; timm `nn.LayerNorm`).

/// Normalises each row of `x` (rows of `weight.len()` values) into `out`.
///
/// Mean and variance are accumulated in f64 (two passes), so the result does not depend on
/// the summation order; the reference's float32 reductions are within its own noise of this.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    debug_assert_eq!(bias.len(), d);
    debug_assert_eq!(x.len(), out.len());
    if d == 0 {
        return;
    }
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = sum_f64(xr, |v| v) / d as f64;
        let var = sum_f64(xr, |v| (v - mean) * (v - mean)) / d as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for (((o, &v), &w), &b) in or.iter_mut().zip(xr).zip(weight).zip(bias) {
            *o = ((f64::from(v) - mean) * inv) as f32 * w + b;
        }
    }
}

/// `Σ f(x_i)` in f64 over [`LANES`] interleaved partial sums added up in a fixed order: the
/// same value on every CPU, and independent chains the compiler keeps in vector registers (one
/// running f64 sum is a chain of `d` dependent adds: LayerNorm took ~2 % of a 2x2 image's
/// time to first token on the AMX Xeon VM).
#[inline(always)]
fn sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(f64::from(v));
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(f64::from(v))).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_affine_gives_zero_mean_unit_variance() {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.0).collect();
        let (w, b) = (vec![1.0f32; 12], vec![0.0f32; 12]);
        let mut out = vec![0.0f32; 24];
        layer_norm(&x, &w, &b, 0.0, &mut out);
        for row in out.chunks(12) {
            let m: f32 = row.iter().sum::<f32>() / 12.0;
            let v: f32 = row.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / 12.0;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "{m} {v}");
        }
    }

    #[test]
    fn affine_and_eps_follow_the_formula() {
        // Row [1, 3]: mean 2, var 1; eps 1 -> scale 1/sqrt(2).
        let mut out = [0.0f32; 2];
        layer_norm(&[1.0, 3.0], &[2.0, -1.0], &[0.5, 0.25], 1.0, &mut out);
        let s = 1.0 / 2f32.sqrt();
        assert!((out[0] - (-s * 2.0 + 0.5)).abs() < 1e-6);
        assert!((out[1] - (-s + 0.25)).abs() < 1e-6);
    }

    /// Rows of the tower's width and odd widths, values of mixed size around a large offset
    /// (where a sloppy variance would cancel): within f32 rounding of the f64 definition.
    #[test]
    fn matches_the_f64_definition_on_random_rows() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for d in [1usize, 7, 8, 9, 100, 1152] {
            let x: Vec<f32> = (0..3 * d)
                .map(|i| 50.0 * (i % 3) as f32 + next() * 4.0)
                .collect();
            let w: Vec<f32> = (0..d).map(|_| next()).collect();
            let b: Vec<f32> = (0..d).map(|_| next()).collect();
            let mut out = vec![0.0f32; 3 * d];
            layer_norm(&x, &w, &b, 1e-6, &mut out);
            for (xr, or) in x.chunks(d).zip(out.chunks(d)) {
                let m = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = xr.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
                let inv = 1.0 / (var + 1e-6).sqrt();
                for i in 0..d {
                    let want = ((xr[i] as f64 - m) * inv) as f32 * w[i] + b[i];
                    assert!(
                        (or[i] - want).abs() <= 4e-7 * want.abs().max(1.0),
                        "d {d} i {i}"
                    );
                }
            }
        }
    }
}
