//! ggml block formats: byte layouts, reference quantizers and dequantizers.
//!
//! Every quantizer here is a re-implementation of ggml's `quantize_row_*_ref`
//! (`ggml/src/ggml-quants.c`, no importance matrix) and must produce the very same
//! bytes: the same f32 operations in the same order, the same rounding helper per
//! format (DEEPSEEK-VL2.md §9.5, pitfalls 46–47). `quant/tests/it/golden.rs` checks
//! this against bytes written by ggml's own C code and by the `gguf` package.
//!
//! Blocks are `#[repr(C)]` structs made only of byte arrays, so they have
//! alignment 1 and can be viewed in place inside an (unaligned) mmap'd tensor.

pub mod bf16;
mod f16;
mod kfit;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod kfit_lanes;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8_1;
mod q8_k;
mod simd_avx2;
mod simd_avx512;
mod simd_neon;
mod simd_quantize;

pub use kfit::get_scale_min_k4;
pub use q2_k::{unpack_q2k, BlockQ2K};
pub use q3_k::{q3k_scale, unpack_q3k, BlockQ3K};
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::{unpack_q6k, BlockQ6K};
pub use q8_0::BlockQ8_0;
pub use q8_1::BlockQ8_1;
pub use q8_k::BlockQ8K;

use crate::types::GgmlType;

/// Errors of the row quantizers and dequantizers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The element count is not a whole number of blocks.
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    NotBlockMultiple {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    /// The byte buffer does not hold exactly the blocks for the element count.
    #[error("{ty}: {n} elements need {expected} bytes, the buffer has {found}")]
    BufferSize {
        ty: GgmlType,
        n: usize,
        expected: usize,
        found: usize,
    },
    /// pocketvl has no (de)quantizer for this type.
    #[error("{ty}: no {op} for this type")]
    Unsupported { ty: GgmlType, op: &'static str },
}

/// Marker for block structs that may be viewed in place inside a byte slice.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs whose fields are all `u8`/`i8`
/// arrays: alignment 1, no padding, and every bit pattern a valid value.
pub unsafe trait ByteBlock: Copy + 'static {}

/// Views `bytes` as a slice of blocks, or `None` when the length is not a whole
/// number of blocks.
pub fn as_blocks<B: ByteBlock>(bytes: &[u8]) -> Option<&[B]> {
    let size = std::mem::size_of::<B>();
    if size == 0 || !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: B has alignment 1, no padding and no invalid bit patterns (ByteBlock
    // contract), and bytes.len() is an exact multiple of size_of::<B>(), so the
    // new slice covers exactly the same initialised memory with the same lifetime.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}

/// Views f32 values as their bytes: on a little-endian target, the F32 activation rows the
/// [`GemmFn`](crate::kernels::GemmFn) kernels take, without a copy.
#[cfg(target_endian = "little")]
pub fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and every byte of an f32 is initialised; the view covers
    // exactly `x`'s memory (4 bytes per value) for `x`'s lifetime, read-only.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

/// Mutable twin of [`as_blocks`].
pub fn as_blocks_mut<B: ByteBlock>(bytes: &mut [u8]) -> Option<&mut [B]> {
    let size = std::mem::size_of::<B>();
    if size == 0 || !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: as in `as_blocks`; the exclusive borrow of `bytes` is moved into
    // the returned slice, so no aliasing view exists while it lives.
    Some(unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size)
    })
}

/// ggml's `nearest_int`: adds 1.5·2²³ and reads the low mantissa bits, which
/// rounds half to even for |v| ≤ 4194303. Reproduced bit for bit (including its
/// behaviour outside that range) because the K-quant quantizers depend on it.
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// f16 stored little-endian → f32 (exact).
#[inline]
pub fn f16_to_f32(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

/// f32 → f16 little-endian bytes, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Whether [`quantize_row`] supports `ty` (see [`crate::formats`]).
pub fn has_quantizer(ty: GgmlType) -> bool {
    crate::formats::format(ty).is_some_and(|f| f.quantize.is_some())
}

/// Checks the element count and byte length of a row of `n` elements of `ty`.
fn check_row(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple { ty, n, block });
    }
    let expected = n / block * ty.type_size();
    if bytes != expected {
        return Err(QuantError::BufferSize {
            ty,
            n,
            expected,
            found: bytes,
        });
    }
    Ok(())
}

/// Quantizes one row exactly as ggml's reference quantizer for `ty` does.
/// `dst` must hold exactly the bytes of `src.len()` elements of `ty`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let Some(quantize) = crate::formats::format(ty).and_then(|f| f.quantize) else {
        return Err(QuantError::Unsupported {
            ty,
            op: "quantizer",
        });
    };
    check_row(ty, src.len(), dst.len())?;
    quantize(src, dst);
    Ok(())
}

/// Converts one row of stored floats — `src` holds little-endian `src_ty` values (F32, F16 or
/// BF16), as a checkpoint stores them — to `ty`, byte for byte what [`quantize_row`] makes of
/// the row widened to f32, without that f32 row: bf16 rows to F16 / BF16 / Q8_0 / Q4_0 go
/// through fused kernels that widen each block in registers; every other pair is widened a
/// small group at a time into a stack buffer and quantized from there.
pub fn convert_row(
    ty: GgmlType,
    src_ty: GgmlType,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let table = simd_quantize::table();
    let widen: simd_quantize::WidenFn = match src_ty {
        GgmlType::F32 => codec::dequantize_f32,
        GgmlType::F16 => f16::dequantize,
        GgmlType::BF16 => table.bf16_to_f32,
        _ => {
            return Err(QuantError::Unsupported {
                ty: src_ty,
                op: "row source",
            })
        }
    };
    let in_size = src_ty.type_size();
    check_row(src_ty, src.len() / in_size, src.len())?;
    let n = src.len() / in_size;
    let quantize = crate::formats::format(ty).and_then(|f| f.quantize);
    let (Some(quantize), true) = (
        quantize,
        simd_quantize::GROUP.is_multiple_of(ty.block_size()),
    ) else {
        return Err(QuantError::Unsupported {
            ty,
            op: "row converter",
        });
    };
    check_row(ty, n, dst.len())?;
    match table.from_bf16.get(ty) {
        Some(fused) if src_ty == GgmlType::BF16 => fused(src, dst),
        _ => simd_quantize::widened(src, in_size, dst, ty, widen, quantize),
    }
    Ok(())
}

/// Dequantizes one row (ggml's `dequantize_row_*`). `dst.len()` is the element count.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let Some(dequantize) = crate::formats::format(ty).and_then(|f| f.dequantize) else {
        return Err(QuantError::Unsupported {
            ty,
            op: "dequantizer",
        });
    };
    check_row(ty, dst.len(), src.len())?;
    dequantize(src, dst);
    Ok(())
}

/// Row quantizers and dequantizers of every format, for the format table
/// ([`crate::formats`]). Sizes are checked by [`quantize_row`] /
/// [`dequantize_row`] before these run.
pub(crate) mod codec {
    use super::*;

    /// A whole-row quantizer: `dst` holds exactly the blocks of `src`.
    pub type QuantizeFn = fn(&[f32], &mut [u8]);
    /// A whole-row dequantizer: `src` holds exactly the blocks of `dst`.
    pub type DequantizeFn = fn(&[u8], &mut [f32]);

    pub fn quantize_f32(src: &[f32], dst: &mut [u8]) {
        for (d, s) in dst.chunks_exact_mut(4).zip(src) {
            d.copy_from_slice(&s.to_le_bytes());
        }
    }

    pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        }
    }

    pub fn quantize_f16(src: &[f32], dst: &mut [u8]) {
        (simd_quantize::table().f16)(src, dst)
    }

    pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
        f16::dequantize(src, dst)
    }

    pub fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
        (simd_quantize::table().bf16)(src, dst)
    }

    pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
        bf16::widen_row(src, dst)
    }

    /// `quantize_<fmt>` over the per-block reference quantizer.
    macro_rules! block_quantizers {
        ($($fmt:ident: $q:ident;)*) => {$(
            pub fn $q(src: &[f32], dst: &mut [u8]) {
                each_block(src, dst, $fmt::quantize_block)
            }
        )*};
    }

    /// `quantize_<fmt>` through the SIMD row quantizers of
    /// `simd_quantize.rs` (byte-identical to the per-block reference; the
    /// formats convert writes most and the activation formats every matmul
    /// quantizes into).
    macro_rules! simd_quantizers {
        ($($slot:ident: $q:ident;)*) => {$(
            pub fn $q(src: &[f32], dst: &mut [u8]) {
                (simd_quantize::table().$slot)(src, dst)
            }
        )*};
    }

    /// `dequantize_<fmt>` over the per-block functions.
    macro_rules! block_dequantizers {
        ($($fmt:ident: $dq:ident;)*) => {$(
            pub fn $dq(src: &[u8], dst: &mut [f32]) {
                each_block_out(src, dst, $fmt::dequantize_block)
            }
        )*};
    }

    block_quantizers! {
        q4_1: quantize_q4_1;
        q5_1: quantize_q5_1;
    }

    simd_quantizers! {
        q4_0: quantize_q4_0;
        q5_0: quantize_q5_0;
        q8_0: quantize_q8_0;
        q8_1: quantize_q8_1;
        q8_k: quantize_q8_k;
        q2_k: quantize_q2_k;
        q3_k: quantize_q3_k;
        q4_k: quantize_q4_k;
        q5_k: quantize_q5_k;
        q6_k: quantize_q6_k;
    }

    block_dequantizers! {
        q4_0: dequantize_q4_0;
        q4_1: dequantize_q4_1;
        q5_0: dequantize_q5_0;
        q5_1: dequantize_q5_1;
        q8_0: dequantize_q8_0;
        q8_1: dequantize_q8_1;
        q2_k: dequantize_q2_k;
        q3_k: dequantize_q3_k;
        q4_k: dequantize_q4_k;
        q5_k: dequantize_q5_k;
        q6_k: dequantize_q6_k;
        q8_k: dequantize_q8_k;
    }
}

/// Runs a per-block quantizer over a row whose sizes `check_row` has validated.
fn each_block<B: ByteBlock, const N: usize>(src: &[f32], dst: &mut [u8], f: fn(&[f32; N]) -> B) {
    let Some(blocks) = as_blocks_mut::<B>(dst) else {
        return;
    };
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(N)) {
        if let Ok(x) = <&[f32; N]>::try_from(x) {
            *b = f(x);
        }
    }
}

/// Runs a per-block dequantizer over a row whose sizes `check_row` has validated.
fn each_block_out<B: ByteBlock, const N: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: fn(&B, &mut [f32; N]),
) {
    let Some(blocks) = as_blocks::<B>(src) else {
        return;
    };
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(N)) {
        if let Ok(y) = <&mut [f32; N]>::try_from(y) {
            f(b, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_endian = "little")]
    #[test]
    fn f32_bytes_are_the_little_endian_encoding() {
        let x = [1.0f32, -2.5, f32::MIN_POSITIVE, f32::NAN];
        let want: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(f32_bytes(&x), &want[..]);
        assert!(f32_bytes(&[]).is_empty());
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.7), -3);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }

    #[test]
    fn block_struct_sizes_match_type_table() {
        use std::mem::size_of;
        assert_eq!(size_of::<BlockQ4_0>(), GgmlType::Q4_0.type_size());
        assert_eq!(size_of::<BlockQ4_1>(), GgmlType::Q4_1.type_size());
        assert_eq!(size_of::<BlockQ5_0>(), GgmlType::Q5_0.type_size());
        assert_eq!(size_of::<BlockQ5_1>(), GgmlType::Q5_1.type_size());
        assert_eq!(size_of::<BlockQ8_0>(), GgmlType::Q8_0.type_size());
        assert_eq!(size_of::<BlockQ8_1>(), GgmlType::Q8_1.type_size());
        assert_eq!(size_of::<BlockQ2K>(), GgmlType::Q2_K.type_size());
        assert_eq!(size_of::<BlockQ3K>(), GgmlType::Q3_K.type_size());
        assert_eq!(size_of::<BlockQ4K>(), GgmlType::Q4_K.type_size());
        assert_eq!(size_of::<BlockQ5K>(), GgmlType::Q5_K.type_size());
        assert_eq!(size_of::<BlockQ6K>(), GgmlType::Q6_K.type_size());
        assert_eq!(size_of::<BlockQ8K>(), GgmlType::Q8_K.type_size());
    }

    #[test]
    fn row_errors_carry_context() {
        let mut out = [0u8; 18];
        assert_eq!(
            quantize_row(GgmlType::Q4_0, &[0.0; 31], &mut out),
            Err(QuantError::NotBlockMultiple {
                ty: GgmlType::Q4_0,
                n: 31,
                block: 32
            })
        );
        assert_eq!(
            quantize_row(GgmlType::Q4_0, &[0.0; 64], &mut out),
            Err(QuantError::BufferSize {
                ty: GgmlType::Q4_0,
                n: 64,
                expected: 36,
                found: 18
            })
        );
        assert!(matches!(
            quantize_row(GgmlType::F64, &[0.0; 256], &mut [0u8; 2048]),
            Err(QuantError::Unsupported { .. })
        ));
        let mut y = [0f32; 32];
        assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut y).is_err());
    }

    #[test]
    fn non_finite_inputs_never_panic() {
        use GgmlType::*;
        let rows: [Vec<f32>; 3] = [
            vec![f32::NAN; 256],
            (0..256)
                .map(|i| if i % 2 == 0 { f32::INFINITY } else { -1.0 })
                .collect(),
            (0..256)
                .map(|i| if i == 7 { f32::MAX } else { f32::MIN_POSITIVE })
                .collect(),
        ];
        for ty in [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
        ] {
            let mut q = vec![0u8; ty.row_bytes(256).unwrap_or(0) as usize];
            let mut y = vec![0f32; 256];
            for x in &rows {
                quantize_row(ty, x, &mut q).unwrap();
                dequantize_row(ty, &q, &mut y).unwrap();
            }
        }
    }

    /// `convert_row` from every source encoding to every type with a quantizer equals
    /// `quantize_row` of the widened row: random values (bf16 also random bit patterns, so
    /// NaN, ±inf, subnormals), rows of one to several groups plus a partial one.
    #[test]
    fn convert_row_equals_quantize_of_the_widened_row() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for n in [256usize, 512 + 32, 3 * 256 + 64] {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let bits: Vec<u8> = (0..2 * n).map(|_| rng.gen()).collect();
            let sources: [(GgmlType, Vec<u8>); 4] = [
                (
                    GgmlType::F32,
                    x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                (
                    GgmlType::F16,
                    x.iter().flat_map(|&v| f32_to_f16(v)).collect(),
                ),
                (
                    GgmlType::BF16,
                    x.iter()
                        .flat_map(|&v| bf16::f32_to_bf16(v).to_le_bytes())
                        .collect(),
                ),
                (GgmlType::BF16, bits),
            ];
            for ty in &crate::types::ALL_TYPES {
                if !has_quantizer(*ty) || !n.is_multiple_of(ty.block_size()) {
                    continue;
                }
                for (src_ty, raw) in &sources {
                    let mut wide = vec![0f32; n];
                    dequantize_row(*src_ty, raw, &mut wide).unwrap();
                    let mut want = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
                    quantize_row(*ty, &wide, &mut want).unwrap();
                    let mut got = vec![0u8; want.len()];
                    convert_row(*ty, *src_ty, raw, &mut got).unwrap();
                    assert_eq!(got, want, "{src_ty} → {ty}, n {n}");
                }
            }
        }
        assert!(convert_row(GgmlType::Q8_0, GgmlType::Q8_0, &[0; 34], &mut [0; 34]).is_err());
        assert!(convert_row(GgmlType::Q8_0, GgmlType::BF16, &[0; 63], &mut [0; 34]).is_err());
        assert!(convert_row(GgmlType::Q8_0, GgmlType::BF16, &[0; 64], &mut [0; 33]).is_err());
    }
}
