//! The seam through which a device (a ggml backend, src/backend) takes over parts of the
//! language model's layers: a layer's attention with its KV cache rows, its dense MLP or
//! shared experts, and its routed experts (the router stays on the CPU and hands the device
//! each token's experts and weights). The decoder keeps its one loop (language.rs) and asks, per layer and
//! part, whether the device runs it; the CPU code of every part stays the reference the
//! device is tested against (tests/it/backend_offload.rs).

use std::any::Any;

use super::attention::{MhaWeights, MlaWeights};
use super::moe::Routing;

/// A layer's attention weights, as a device uploads them.
#[derive(Clone, Copy)]
pub enum AttnWeights<'a> {
    Mha(&'a MhaWeights),
    Mla(&'a MlaWeights),
}

/// One sequence's state on the device (its KV cache rows), made by
/// [`LayerOffload::new_cache`] and handed back to every call of that sequence.
pub type DeviceCache = Box<dyn Any + Send>;

/// Parts of the language model's layers run on a device.
pub trait LayerOffload: Send + Sync {
    /// Where it runs (a device name), for logs and stats.
    fn device(&self) -> String;
    /// Bytes it holds on the device (weights, and one sequence's cache rows).
    fn device_bytes(&self) -> u64;
    /// Whether layer `il`'s attention runs on the device.
    fn attention_on_device(&self, il: usize) -> bool;
    /// Whether layer `il`'s dense MLP, or its shared experts, run on the device.
    fn mlp_on_device(&self, il: usize) -> bool;
    /// A new sequence's KV cache rows on the device, for positions `0..n_ctx`.
    fn new_cache(&self, n_ctx: usize) -> Result<DeviceCache, String>;
    /// Attention of layer `il` for `x` `[n, D]` (normalised) at positions `pos0..pos0+n`:
    /// writes their cache rows, attends over rows `0..pos0+n`, and writes `out` `[n, D]`.
    fn attention(
        &self,
        cache: &mut DeviceCache,
        il: usize,
        x: &[f32],
        n: usize,
        pos0: usize,
        out: &mut [f32],
    ) -> Result<(), String>;
    /// Layer `il`'s dense MLP (or its shared experts' MLP) for `x` `[n, D]`; `out` `[n, D]`.
    fn mlp(&self, il: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), String>;
    /// Whether layer `il`'s routed experts run on the device.
    fn experts_on_device(&self, il: usize) -> bool;
    /// Layer `il`'s routed experts for `x` `[n, D]`: `out` `[n, D]` = Σ over each token's
    /// chosen experts of weight × expert(x), as `routing` gives them (the shared experts are
    /// not included).
    fn experts(
        &self,
        il: usize,
        x: &[f32],
        n: usize,
        routing: Routing<'_>,
        out: &mut [f32],
    ) -> Result<(), String>;
}
