//! BF16: the upper half of an f32, as ggml's `ggml_compute_fp32_to_bf16` makes
//! it: round to nearest even, NaN forced quiet (bit 6 of the result set).

/// f32 → bf16 bits, ggml's rounding.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        // NaN: keep sign and payload top, force quiet.
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Widens the first `dst.len()` little-endian bf16 values of `src` to f32 (exact), with the
/// fastest kernel this CPU has; `src` must hold at least `2 * dst.len()` bytes (a shorter
/// `src` leaves the rest of `dst` untouched).
pub fn widen_row(src: &[u8], dst: &mut [f32]) {
    (super::simd_quantize::table().bf16_to_f32)(src, dst)
}

pub(super) fn quantize(src: &[f32], dst: &mut [u8]) {
    for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16(s).to_le_bytes());
    }
}

pub(super) fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_quiets_nan() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (1.0).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1 + 3·2^-8 halfway, rounds up to the even 0x3f82.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        // A signalling NaN becomes quiet, not infinity.
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80); // overflow rounds to inf
        assert_eq!(bf16_to_f32(0xc000), -2.0);
    }
}
