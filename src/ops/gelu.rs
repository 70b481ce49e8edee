//! The two GELUs of DeepSeek-VL2 (pitfall 13): the SigLIP MLP uses the **tanh**
//! approximation (timm `GELUTanh`), the projector the **exact erf** form (`nn.GELU()`).
//! Mixing them up still runs, with features off by up to ~1e-3 per element.

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in place, float32 like the reference.
pub fn gelu_tanh(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let z = *v;
        *v = 0.5 * z * (1.0 + (SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)).tanh());
    }
}

/// `0.5 x (1 + erf(x / sqrt(2)))`, in place; erf evaluated in double precision (`libm`,
/// std's `erf` is unstable) and the product rounded to float32.
pub fn gelu_erf(x: &mut [f32]) {
    for v in x.iter_mut() {
        let z = f64::from(*v);
        *v = (0.5 * z * (1.0 + libm::erf(z * std::f64::consts::FRAC_1_SQRT_2))) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Reference values: the formulas in Python double precision (math.erf, math.tanh).
        let mut e = [-3.0f32, -1.0, 0.0, 0.5, 1.0, 2.0];
        gelu_erf(&mut e);
        let want_erf: [f64; 6] = [
            -0.004_049_694,
            -0.158_655_25,
            0.0,
            0.345_731_23,
            0.841_344_75,
            1.954_499_7,
        ];
        for (a, b) in e.iter().zip(&want_erf) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "erf: {a} vs {b}");
        }
        let mut t = [-3.0f32, -1.0, 0.0, 0.5, 1.0, 2.0];
        gelu_tanh(&mut t);
        let want_tanh: [f64; 6] = [
            -0.003_637_392,
            -0.158_808_01,
            0.0,
            0.345_714_01,
            0.841_191_99,
            1.954_597_7,
        ];
        for (a, b) in t.iter().zip(&want_tanh) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "tanh: {a} vs {b}");
        }
    }
}
