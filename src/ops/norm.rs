//! RMSNorm as the reference computes it in float32:
//! `x * rsqrt(mean(x^2) + eps) * weight` (fixtures README rule 11).

/// Normalises each row of `x` (rows of `weight.len()` values) into `out`.
/// The mean of squares is accumulated in f64 so that the result does not
/// depend on the summation order (the reference's f32 sum is within its noise).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    debug_assert_eq!(x.len(), out.len());
    debug_assert!(d > 0 && x.len().is_multiple_of(d));
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f64 = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let mean = (ss / d as f64) as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_weight_has_unit_rms() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) * 0.37).collect();
        let w = vec![1.0f32; 16];
        let mut out = vec![0.0f32; 32];
        rms_norm(&x, &w, 0.0, &mut out);
        for row in out.chunks(16) {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 16.0;
            assert!((ms - 1.0).abs() < 1e-5);
        }
    }
}
