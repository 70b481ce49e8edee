//! RMSNorm as the reference computes it in float32:
//! `x * rsqrt(mean(x^2) + eps) * weight` (fixtures README rule 11).

use rayon::prelude::*;

use super::SERIAL_ELEMS;

/// Normalises each row of `x` (rows of `weight.len()` values) into `out`, the rows of a
/// large batch in parallel.
/// The mean of squares is accumulated in f64 so that the result does not
/// depend on the summation order (the reference's f32 sum is within its noise).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    debug_assert_eq!(x.len(), out.len());
    debug_assert!(d > 0 && x.len().is_multiple_of(d));
    let row = |(xr, or): (&[f32], &mut [f32])| {
        let ss: f64 = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let mean = (ss / d as f64) as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    };
    if x.len() < SERIAL_ELEMS {
        x.chunks_exact(d).zip(out.chunks_exact_mut(d)).for_each(row);
    } else {
        x.par_chunks_exact(d)
            .zip(out.par_chunks_exact_mut(d))
            .for_each(row);
    }
}

/// `h += y` element by element (the residual stream), a large batch in parallel.
pub fn add_assign(h: &mut [f32], y: &[f32]) {
    debug_assert_eq!(h.len(), y.len());
    let add = |(h, y): (&mut [f32], &[f32])| h.iter_mut().zip(y).for_each(|(h, y)| *h += y);
    if h.len() < SERIAL_ELEMS {
        add((h, y));
    } else {
        h.par_chunks_mut(SERIAL_ELEMS / 4)
            .zip(y.par_chunks(SERIAL_ELEMS / 4))
            .for_each(add);
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

    /// A batch large enough to run in parallel gives each row's bits from a call on the
    /// row alone; so does the residual sum.
    #[test]
    fn a_parallel_batch_equals_its_rows_alone() {
        let d = 1280;
        let n = 2 * SERIAL_ELEMS / d + 3;
        let x = crate::ops::lcg(1, n * d, 3.0);
        let w = crate::ops::lcg(2, d, 1.0);
        let mut batch = vec![0.0f32; n * d];
        rms_norm(&x, &w, 1e-6, &mut batch);
        let mut h = x.clone();
        add_assign(&mut h, &batch);
        for t in 0..n {
            let mut one = vec![0.0f32; d];
            rms_norm(&x[t * d..][..d], &w, 1e-6, &mut one);
            assert_eq!(one, batch[t * d..][..d], "row {t}");
            for i in 0..d {
                assert_eq!(h[t * d + i], x[t * d + i] + one[i]);
            }
        }
    }
}
