//! The KV cache flag shared by `pocketvl run`, `serve` and `bench model` (flattened into each).

use crate::kv_cache::CacheType;

/// How the KV cache stores its rows.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// KV cache element type: f32 (the fixtures' parity) or f16 (half the cache's memory
    /// and the bytes decode reads from it per token: decode after an image prompt is
    /// faster; keys and values rounded to f16, as llama.cpp stores them by default; its
    /// accuracy cost is in BENCHMARKS.md).
    #[arg(long = "cache-type", value_name = "f32|f16", default_value = "f32")]
    pub cache_type: CacheType,
}
