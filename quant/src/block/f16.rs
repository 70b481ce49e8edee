//! F16: IEEE binary16, little-endian. Conversion through the `half` crate, which
//! rounds to nearest even like ggml's `GGML_FP32_TO_FP16` (overflow → ±inf).

use super::{f16_to_f32, f32_to_f16};

/// Writes `src.len()` f16 values; sizes are checked by the caller.
pub(super) fn quantize(src: &[f32], dst: &mut [u8]) {
    for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_f16(s));
    }
}

/// Reads `dst.len()` f16 values (exact widening).
pub(super) fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_to_f32([s[0], s[1]]);
    }
}
