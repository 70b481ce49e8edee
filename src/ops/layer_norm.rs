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
        let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
        let var = xr
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for (((o, &v), &w), &b) in or.iter_mut().zip(xr).zip(weight).zip(bias) {
            *o = ((f64::from(v) - mean) * inv) as f32 * w + b;
        }
    }
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
}
