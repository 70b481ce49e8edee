//! The vision flag shared by `pocketvl run`, `serve` and `bench model` (flattened into each).

use crate::model::deepseek_vl2::vision::VisionPrecision;

/// How the vision tower computes.
#[derive(Debug, Clone, clap::Args)]
pub struct VisionArgs {
    /// Vision tower arithmetic on a bf16 mmproj: exact (f32 activations, the fixtures'
    /// parity) or bf16 (activations, and on AVX512_BF16 the attention's operands, rounded
    /// to bf16 as the official bf16 inference holds them, on CPUs with AVX512_BF16 or AMX:
    /// 1.8x per tile on a Zen 4; exact elsewhere; its accuracy cost is in BENCHMARKS.md).
    #[arg(
        long = "vision-precision",
        value_name = "exact|bf16",
        default_value = "exact"
    )]
    pub vision_precision: VisionPrecision,
}
