//! Numerics of the runtime: matrix products over ggml-typed weights, norms,
//! RoPE, softmax, activations and causal attention.
//!
//! Nothing here knows a tensor name or a model: callers hand in slices and
//! shapes. Hot loops are plain indexed loops; parallelism is rayon over the
//! outer dimension (weight rows, or (query block, head) pairs for attention),
//! in whatever pool the caller runs in (the model installs its own); one-token
//! (decode) regions go through [`spin_region`], whose threads spin between
//! tasks instead of parking.

mod act;

/// Below this many values, a per-row loop over a batch (quantizing activations, norms,
/// RoPE, residual sums) runs on the calling thread: waking the workers costs more than
/// the loop (one decode row is ~1 µs of work).
const SERIAL_ELEMS: usize = 1 << 16;

mod attention;
mod exp;
mod gelu;
mod layer_norm;
mod matmul;
mod matvec_group;
mod norm;
pub mod region_clock;
mod rope;
pub mod spin_region;
pub(crate) mod tiles;

/// The matrix view every op takes (defined below the loader, in [`crate::tensor`]).
pub use crate::tensor::{MatView, MatViewError};
pub use act::{silu, silu_mul, softmax};
pub use attention::{causal_attention, KvView};
pub use exp::exp_approx;
pub use gelu::{gelu_erf, gelu_tanh};
pub use layer_norm::layer_norm;
pub(crate) use matmul::{block_row, scatter_blocks};
pub use matmul::{
    gemv_tasks, matmul, matmul_gate_up_silu, matmul_quantized, matmul_view, matvec_serial,
    quantize_activations, row_to_f32, rows_per_gemv_task, rows_per_task, ActsByFormat,
    GEMV_TASK_BYTES,
};
pub use matvec_group::{matmul_group, matvec_group};
pub use norm::{add_assign, rms_norm};
pub use rope::{Rope, RopeLayout};

/// Whether the AVX-512F builds of the f32 loops run (the attention here, the vision
/// tower's attention, softmax and GELU): detected once, never with `POCKETVL_FORCE_SCALAR=1`
/// nor under `POCKETVL_MAX_TIER` below `avx512-vnni`.
/// Those builds do the same f32 operations in the same order as their baseline twins.
#[cfg(target_arch = "x86_64")]
pub fn use_avx512f() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        quant::kernels::tier_allowed("avx512-vnni")
            && std::arch::is_x86_feature_detected!("avx512f")
    })
}

/// Whether the AVX2+FMA(+F16C) builds of the f32 loops run (both attentions, on CPUs
/// without AVX-512F or capped below it): as [`use_avx512f`], the tier `avx2`.
#[cfg(target_arch = "x86_64")]
pub fn use_avx2_fma() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        quant::kernels::tier_allowed("avx2")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// Deterministic pseudo-random data for the twin tests (the attention and tile tests share
/// it): `n` values in `[-scale, scale)` from a 64-bit LCG seeded with `seed`.
#[cfg(test)]
pub(crate) fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
