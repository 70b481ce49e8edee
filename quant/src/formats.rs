//! One table, [`FORMATS`], says everything pocketvl does with each ggml type:
//! whether the converter may store weights in it, its row quantizer and
//! dequantizer, the activation type its dot product pairs with, and its dot
//! and GEMM kernels per instruction-set tier (scalar; AVX2 + FMA + F16C;
//! AVX-512 F/BW/VL + VNNI; aarch64 NEON, `sdot`, `smmla`). The dispatchers
//! (`block::{quantize_row, dequantize_row, has_quantizer}`, `kernels::{table,
//! vec_dot_type, ...}`), the converter's type parser and the CLI's type lists
//! all read it; a type or kernel is added here, in one entry, and nowhere else.
//!
//! Tiers are chosen once at start-up by CPU features (see `kernels::table`);
//! each tier starts from the one below and overrides the slots it fills.

use crate::block::codec::*;
use crate::kernels::{scalar, DotFn, GemmFn};
use crate::types::GgmlType;

/// The dot and GEMM kernels of one format in one tier (`None`: the tier
/// below serves it; for GEMM ultimately `kernels::gemm_by_dots`).
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dot: Option<DotFn>,
    pub gemm: Option<GemmFn>,
}

/// No kernel in this tier.
pub const NONE: Kernels = Kernels {
    dot: None,
    gemm: None,
};

/// Everything pocketvl knows about one ggml type.
pub struct Format {
    pub ty: GgmlType,
    /// Whether `pocketvl convert` may store weights in this type.
    pub storable: bool,
    /// ggml's reference quantizer for a whole row (bytes identical to ggml's).
    pub quantize: Option<QuantizeFn>,
    /// ggml's `dequantize_row_*`.
    pub dequantize: Option<DequantizeFn>,
    /// The activation type the dot product pairs with (ggml's `vec_dot_type`).
    pub vec_dot_type: GgmlType,
    pub scalar: Kernels,
    /// AVX2 + FMA + F16C.
    pub avx2: Kernels,
    /// AVX-VNNI on top of the AVX2 tier (GEMMs of batches only), for CPUs without AVX-512.
    pub avx_vnni: Kernels,
    /// AVX-512 F/BW/VL + VNNI.
    pub avx512: Kernels,
    /// AMX-TILE + AMX-INT8 on top of the AVX-512 tier (GEMMs of batches only).
    pub amx: Kernels,
    /// aarch64: plain NEON, then `sdot` (FEAT_DotProd), then `smmla` (FEAT_I8MM).
    pub neon: Neon,
}

/// The aarch64 tiers of one format, lowest first (each overrides the one before).
#[derive(Clone, Copy)]
pub struct Neon {
    /// Base NEON: every aarch64 CPU.
    pub plain: Kernels,
    /// FEAT_DotProd (`sdot`): Cortex-A76 (Raspberry Pi 5) and later.
    pub dotprod: Kernels,
    /// FEAT_I8MM (`smmla`) on top of dotprod.
    pub i8mm: Kernels,
}

/// A kernel that exists only on x86_64 (`None` elsewhere, so the table
/// compiles on every target).
macro_rules! x86 {
    ($($path:tt)*) => {{
        #[cfg(target_arch = "x86_64")]
        let k = Some(crate::kernels::$($path)* as _);
        #[cfg(not(target_arch = "x86_64"))]
        let k = None;
        k
    }};
}

/// Dot only.
const fn dot(f: DotFn) -> Kernels {
    Kernels {
        dot: Some(f),
        gemm: None,
    }
}

/// A format's row quantizer and dequantizer.
const fn codec(q: QuantizeFn, dq: DequantizeFn) -> (Option<QuantizeFn>, Option<DequantizeFn>) {
    (Some(q), Some(dq))
}

/// Builds an entry; `$c` is the (quantize, dequantize) pair.
macro_rules! entry {
    ($ty:ident, storable: $st:expr, $c:expr, pairs: $vdt:ident,
     scalar: $s:expr, avx2: $a2:expr, avx512: $a5:expr) => {
        Format {
            ty: GgmlType::$ty,
            storable: $st,
            quantize: $c.0,
            dequantize: $c.1,
            vec_dot_type: GgmlType::$vdt,
            scalar: $s,
            avx2: $a2,
            avx512: $a5,
            avx_vnni: avx_vnni_kernels(GgmlType::$ty),
            amx: amx_kernels(GgmlType::$ty),
            neon: neon_kernels(GgmlType::$ty),
        }
    };
}

/// Every type pocketvl handles, one entry each (other ggml types, e.g. F64,
/// are readable in GGUF headers only).
pub static FORMATS: [Format; 15] = [
    entry!(F32, storable: true, codec(quantize_f32, dequantize_f32), pairs: F32,
        scalar: dot(scalar::dot_f32_f32),
        avx2: Kernels { dot: x86!(avx2::dot_f32_f32), gemm: x86!(float_gemm_avx2::gemm_f32) },
        avx512: Kernels { dot: None, gemm: x86!(float_gemm_avx512::gemm_f32) }),
    entry!(F16, storable: true, codec(quantize_f16, dequantize_f16), pairs: F32,
        scalar: dot(scalar::dot_f16_f32),
        avx2: Kernels { dot: x86!(avx2::dot_f16_f32), gemm: x86!(float_gemm_avx2::gemm_f16) },
        avx512: Kernels { dot: None, gemm: x86!(float_gemm_avx512::gemm_f16) }),
    entry!(BF16, storable: true, codec(quantize_bf16, dequantize_bf16), pairs: F32,
        scalar: dot(scalar::dot_bf16_f32),
        avx2: Kernels { dot: x86!(avx2::dot_bf16_f32), gemm: x86!(float_gemm_avx2::gemm_bf16) },
        avx512: Kernels { dot: None, gemm: x86!(float_gemm_avx512::gemm_bf16) }),
    entry!(Q4_0, storable: true, codec(quantize_q4_0, dequantize_q4_0), pairs: Q8_0,
        scalar: dot(scalar::dot_q4_0_q8_0),
        avx2: Kernels { dot: x86!(q0_avx2_groups::dot_q4_0_q8_0), gemm: x86!(q0_avx2_rows::gemm_q4_0_q8_0) },
        avx512: Kernels { dot: x86!(q0_avx512_units::dot_q4_0_q8_0), gemm: x86!(q0_avx512_rows::gemm_q4_0_q8_0) }),
    entry!(Q4_1, storable: true, codec(quantize_q4_1, dequantize_q4_1), pairs: Q8_1,
        scalar: dot(scalar::dot_q4_1_q8_1),
        avx2: Kernels { dot: x86!(q0_avx2_groups::dot_q4_1_q8_1), gemm: x86!(q0_avx2_rows::gemm_q4_1_q8_1) },
        avx512: Kernels { dot: x86!(q0_avx512_units::dot_q4_1_q8_1), gemm: x86!(q0_avx512_rows::gemm_q4_1_q8_1) }),
    entry!(Q5_0, storable: true, codec(quantize_q5_0, dequantize_q5_0), pairs: Q8_0,
        scalar: dot(scalar::dot_q5_0_q8_0),
        avx2: Kernels { dot: x86!(q0_avx2_groups::dot_q5_0_q8_0), gemm: x86!(q0_avx2_rows::gemm_q5_0_q8_0) },
        avx512: Kernels { dot: x86!(q0_avx512_units::dot_q5_0_q8_0), gemm: x86!(q0_avx512_rows::gemm_q5_0_q8_0) }),
    entry!(Q5_1, storable: true, codec(quantize_q5_1, dequantize_q5_1), pairs: Q8_1,
        scalar: dot(scalar::dot_q5_1_q8_1),
        avx2: Kernels { dot: x86!(q0_avx2_groups::dot_q5_1_q8_1), gemm: x86!(q0_avx2_rows::gemm_q5_1_q8_1) },
        avx512: Kernels { dot: x86!(q0_avx512_units::dot_q5_1_q8_1), gemm: x86!(q0_avx512_rows::gemm_q5_1_q8_1) }),
    entry!(Q8_0, storable: true, codec(quantize_q8_0, dequantize_q8_0), pairs: Q8_0,
        scalar: dot(scalar::dot_q8_0_q8_0),
        avx2: Kernels { dot: x86!(q0_avx2_groups::dot_q8_0_q8_0), gemm: x86!(q0_avx2_rows::gemm_q8_0_q8_0) },
        avx512: Kernels { dot: x86!(q0_avx512_units::dot_q8_0_q8_0), gemm: x86!(q0_avx512_rows::gemm_q8_0_q8_0) }),
    // Q2_K, Q3_K: the low-bit fallback copy of cold routed experts (`convert --cold-experts`).
    entry!(Q2_K, storable: true, codec(quantize_q2_k, dequantize_q2_k), pairs: Q8_K,
        scalar: dot(scalar::dot_q2_k_q8_k),
        avx2: Kernels { dot: x86!(kquant_avx2::dot_q2_k_q8_k), gemm: x86!(kquant_avx2_rows::gemm_q2_k_q8_k) },
        avx512: Kernels { dot: x86!(kquant_avx512::dot_q2_k_q8_k), gemm: x86!(kquant_avx512_rows::gemm_q2_k_q8_k) }),
    entry!(Q3_K, storable: true, codec(quantize_q3_k, dequantize_q3_k), pairs: Q8_K,
        scalar: dot(scalar::dot_q3_k_q8_k),
        avx2: Kernels { dot: x86!(kquant_avx2::dot_q3_k_q8_k), gemm: x86!(kquant_avx2_rows::gemm_q3_k_q8_k) },
        avx512: Kernels { dot: x86!(kquant_avx512::dot_q3_k_q8_k), gemm: x86!(kquant_avx512_rows::gemm_q3_k_q8_k) }),
    entry!(Q4_K, storable: true, codec(quantize_q4_k, dequantize_q4_k), pairs: Q8_K,
        scalar: dot(scalar::dot_q4_k_q8_k),
        avx2: Kernels { dot: x86!(kquant_avx2::dot_q4_k_q8_k), gemm: x86!(kquant_avx2_rows::gemm_q4_k_q8_k) },
        avx512: Kernels { dot: x86!(kquant_avx512::dot_q4_k_q8_k), gemm: x86!(kquant_avx512_rows::gemm_q4_k_q8_k) }),
    entry!(Q5_K, storable: true, codec(quantize_q5_k, dequantize_q5_k), pairs: Q8_K,
        scalar: dot(scalar::dot_q5_k_q8_k),
        avx2: Kernels { dot: x86!(kquant_avx2::dot_q5_k_q8_k), gemm: x86!(kquant_avx2_rows::gemm_q5_k_q8_k) },
        avx512: Kernels { dot: x86!(kquant_avx512::dot_q5_k_q8_k), gemm: x86!(kquant_avx512_rows::gemm_q5_k_q8_k) }),
    entry!(Q6_K, storable: true, codec(quantize_q6_k, dequantize_q6_k), pairs: Q8_K,
        scalar: dot(scalar::dot_q6_k_q8_k),
        avx2: Kernels { dot: x86!(kquant_avx2::dot_q6_k_q8_k), gemm: x86!(kquant_avx2_rows::gemm_q6_k_q8_k) },
        avx512: Kernels { dot: x86!(kquant_avx512::dot_q6_k_q8_k), gemm: x86!(kquant_avx512_rows::gemm_q6_k_q8_k) }),
    // Activation-only formats: quantized rows feed the dots, never stored.
    entry!(Q8_1, storable: false, codec(quantize_q8_1, dequantize_q8_1), pairs: F32,
        scalar: NONE, avx2: NONE, avx512: NONE),
    entry!(Q8_K, storable: false, codec(quantize_q8_k, dequantize_q8_k), pairs: F32,
        scalar: NONE, avx2: NONE, avx512: NONE),
];

/// A kernel that exists only on aarch64 (`None` elsewhere).
macro_rules! arm {
    ($($path:tt)*) => {{
        #[cfg(target_arch = "aarch64")]
        let k = Some(crate::kernels::$($path)* as _);
        #[cfg(not(target_arch = "aarch64"))]
        let k = None;
        k
    }};
}

/// The AVX-VNNI column of [`FORMATS`]: the AVX2 row-lane GEMMs of the 32-element formats
/// with `vpdpbusd` (`kernels/q0_avxvnni_rows.rs`); `entry!` reads it. The K-quants keep
/// the AVX2 tier's: their tiles multiply each sub-block's sum by its scale, and a
/// `vpmulld` (two instructions on the ports `vpdpbusd` needs) took what `vpdpbusd` saved
/// (measured level with AVX2 on a Sapphire Rapids core, BENCHMARKS.md).
const fn avx_vnni_kernels(ty: GgmlType) -> Kernels {
    let gemm: Option<GemmFn> = match ty {
        GgmlType::Q4_0 => x86!(q0_avxvnni_rows::gemm_q4_0_q8_0),
        GgmlType::Q4_1 => x86!(q0_avxvnni_rows::gemm_q4_1_q8_1),
        GgmlType::Q5_0 => x86!(q0_avxvnni_rows::gemm_q5_0_q8_0),
        GgmlType::Q5_1 => x86!(q0_avxvnni_rows::gemm_q5_1_q8_1),
        GgmlType::Q8_0 => x86!(q0_avxvnni_rows::gemm_q8_0_q8_0),
        _ => None,
    };
    Kernels { dot: None, gemm }
}

/// The AMX column of [`FORMATS`]: `tdpbssd` tiles for the Q8_0-paired 32-element formats
/// (`kernels/q0_amx.rs`); `entry!` reads it.
const fn amx_kernels(ty: GgmlType) -> Kernels {
    let gemm: Option<GemmFn> = match ty {
        GgmlType::Q4_0 => x86!(q0_amx::gemm_q4_0_q8_0),
        GgmlType::Q5_0 => x86!(q0_amx::gemm_q5_0_q8_0),
        GgmlType::Q8_0 => x86!(q0_amx::gemm_q8_0_q8_0),
        _ => None,
    };
    Kernels { dot: None, gemm }
}

/// The aarch64 column of [`FORMATS`] (kept apart from the x86 columns so the
/// two are edited independently; `entry!` reads it).
const fn neon_kernels(ty: GgmlType) -> Neon {
    /// plain dot; sdot dot; GEMMs: plain, sdot, smmla.
    const fn tiers(
        dot: Option<DotFn>,
        dot_dp: Option<DotFn>,
        gemm: Option<GemmFn>,
        gemm_dp: Option<GemmFn>,
        gemm_mm: Option<GemmFn>,
    ) -> Neon {
        Neon {
            plain: Kernels { dot, gemm },
            dotprod: Kernels {
                dot: dot_dp,
                gemm: gemm_dp,
            },
            i8mm: Kernels {
                dot: None,
                gemm: gemm_mm,
            },
        }
    }
    use GgmlType::*;
    match ty {
        F32 => tiers(
            arm!(neon::dot_f32_f32),
            None,
            arm!(neon_float_gemm::gemm_f32),
            None,
            None,
        ),
        F16 => tiers(
            arm!(neon::dot_f16_f32),
            None,
            arm!(neon_float_gemm::gemm_f16),
            None,
            None,
        ),
        BF16 => tiers(
            arm!(neon::dot_bf16_f32),
            None,
            arm!(neon_float_gemm::gemm_bf16),
            None,
            None,
        ),
        Q4_0 => tiers(
            arm!(neon::dot_q4_0_q8_0),
            arm!(neon::dot_q4_0_q8_0_dotprod),
            arm!(neon_sdot_gemm::gemm_q4_0_q8_0),
            arm!(neon_sdot_gemm::gemm_q4_0_q8_0_dotprod),
            arm!(neon::gemm_q4_0_q8_0_i8mm),
        ),
        Q4_1 => tiers(
            arm!(neon::dot_q4_1_q8_1),
            arm!(neon::dot_q4_1_q8_1_dotprod),
            arm!(neon_sdot_gemm::gemm_q4_1_q8_1),
            arm!(neon_sdot_gemm::gemm_q4_1_q8_1_dotprod),
            arm!(neon::gemm_q4_1_q8_1_i8mm),
        ),
        Q5_0 => tiers(
            arm!(neon::dot_q5_0_q8_0),
            arm!(neon::dot_q5_0_q8_0_dotprod),
            arm!(neon_sdot_gemm::gemm_q5_0_q8_0),
            arm!(neon_sdot_gemm::gemm_q5_0_q8_0_dotprod),
            arm!(neon::gemm_q5_0_q8_0_i8mm),
        ),
        Q5_1 => tiers(
            arm!(neon::dot_q5_1_q8_1),
            arm!(neon::dot_q5_1_q8_1_dotprod),
            arm!(neon_sdot_gemm::gemm_q5_1_q8_1),
            arm!(neon_sdot_gemm::gemm_q5_1_q8_1_dotprod),
            arm!(neon::gemm_q5_1_q8_1_i8mm),
        ),
        Q8_0 => tiers(
            arm!(neon::dot_q8_0_q8_0),
            arm!(neon::dot_q8_0_q8_0_dotprod),
            arm!(neon_sdot_gemm::gemm_q8_0_q8_0),
            arm!(neon_sdot_gemm::gemm_q8_0_q8_0_dotprod),
            arm!(neon::gemm_q8_0_q8_0_i8mm),
        ),
        Q2_K => tiers(
            arm!(neon_kquant::dot_q2_k_q8_k),
            arm!(neon_kquant::dot_q2_k_q8_k_dotprod),
            arm!(neon_kquant_gemm::gemm_q2_k_q8_k),
            arm!(neon_kquant_gemm::gemm_q2_k_q8_k_dotprod),
            arm!(neon_kquant_i8mm::gemm_q2_k_q8_k_i8mm),
        ),
        Q3_K => tiers(
            arm!(neon_kquant::dot_q3_k_q8_k),
            arm!(neon_kquant::dot_q3_k_q8_k_dotprod),
            arm!(neon_kquant_gemm::gemm_q3_k_q8_k),
            arm!(neon_kquant_gemm::gemm_q3_k_q8_k_dotprod),
            arm!(neon_kquant_i8mm::gemm_q3_k_q8_k_i8mm),
        ),
        Q4_K => tiers(
            arm!(neon_kquant::dot_q4_k_q8_k),
            arm!(neon_kquant::dot_q4_k_q8_k_dotprod),
            arm!(neon_kquant_gemm::gemm_q4_k_q8_k),
            arm!(neon_kquant_gemm::gemm_q4_k_q8_k_dotprod),
            arm!(neon_kquant_i8mm::gemm_q4_k_q8_k_i8mm),
        ),
        Q5_K => tiers(
            arm!(neon_kquant::dot_q5_k_q8_k),
            arm!(neon_kquant::dot_q5_k_q8_k_dotprod),
            arm!(neon_kquant_gemm::gemm_q5_k_q8_k),
            arm!(neon_kquant_gemm::gemm_q5_k_q8_k_dotprod),
            arm!(neon_kquant_i8mm::gemm_q5_k_q8_k_i8mm),
        ),
        Q6_K => tiers(
            arm!(neon_kquant::dot_q6_k_q8_k),
            arm!(neon_kquant::dot_q6_k_q8_k_dotprod),
            arm!(neon_kquant_gemm::gemm_q6_k_q8_k),
            arm!(neon_kquant_gemm::gemm_q6_k_q8_k_dotprod),
            arm!(neon_kquant_i8mm::gemm_q6_k_q8_k_i8mm),
        ),
        _ => tiers(None, None, None, None, None),
    }
}

/// The entry of `ty`, if pocketvl handles it.
pub fn format(ty: GgmlType) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.ty == ty)
}

/// The types the converter may store weights in, lower-case, comma-separated
/// (for help texts and error messages).
pub fn storable_names() -> String {
    FORMATS
        .iter()
        .filter(|f| f.storable)
        .map(|f| f.ty.name().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_complete_and_unique() {
        for (i, f) in FORMATS.iter().enumerate() {
            let ty = f.ty;
            assert!(FORMATS[..i].iter().all(|g| g.ty != ty), "{ty}: two entries");
            assert!(f.quantize.is_some() && f.dequantize.is_some(), "{ty}");
            // A storable type can be multiplied: a scalar dot whose activation
            // type has a quantizer.
            if f.storable {
                assert!(f.scalar.dot.is_some(), "{ty}: storable without a dot");
                let act = format(f.vec_dot_type).and_then(|a| a.quantize);
                assert!(act.is_some(), "{ty}: activation type without a quantizer");
            }
            // Every SIMD kernel has a scalar twin; a GEMM comes with a dot.
            for k in [
                f.avx2,
                f.avx_vnni,
                f.avx512,
                f.amx,
                f.neon.plain,
                f.neon.dotprod,
                f.neon.i8mm,
            ] {
                assert!(k.dot.is_none() || f.scalar.dot.is_some(), "{ty}");
                assert!(k.gemm.is_none() || f.scalar.dot.is_some(), "{ty}");
            }
        }
        assert!(storable_names().starts_with("f32, f16, bf16, q4_0"));
    }
}
