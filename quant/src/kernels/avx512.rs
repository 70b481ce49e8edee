//! The AVX-512 tier (F, BW, VL with VNNI): its CPU check. The tier sits on top
//! of the AVX2 table: a slot without an AVX-512 kernel keeps its AVX2 one. Its
//! kernels: `q0_avx512_units` (32-element formats, GEMV and small batches),
//! `q0_avx512_rows` and `kquant_avx512_rows` (batches, weight rows in the
//! lanes), `kquant_avx512` (K-quants), `float_gemm_avx512`.

#![cfg(target_arch = "x86_64")]

/// Whether this CPU runs every kernel of the tier (AVX-512 F/BW/VL + VNNI).
pub fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}
