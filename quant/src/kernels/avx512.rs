//! AVX-512 (F, BW, VL with VNNI) kernels. The tier sits on top of the AVX2
//! table: a slot without an AVX-512 kernel keeps its AVX2 one.

#![cfg(target_arch = "x86_64")]

/// Whether this CPU runs every kernel of this file (AVX-512 F/BW/VL + VNNI).
pub fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}
