//! The offload flags shared by `pocketvl run`, `serve` and `bench model` (flattened into
//! each): which ggml device, which parts, how much of its memory.

use crate::backend::{BackendOptions, DeviceChoice, Offload};
use crate::experts::parse_size;

/// GPU offload (builds with the `vulkan`, `metal` or `ggml-cpu` feature).
#[derive(Debug, Clone, clap::Args)]
pub struct GpuArgs {
    /// Device to offload to: its index or name in `pocketvl devices` (alone: offload all
    /// that this version can).
    #[arg(long = "gpu", value_name = "NAME|INDEX")]
    pub gpu: Option<DeviceChoice>,
    /// Parts to run on the device: a list of vision, attn, dense, experts; or all, none
    /// (alone: on the first GPU).
    #[arg(long = "offload", value_name = "PARTS")]
    pub offload: Option<Offload>,
    /// Device memory the offloaded parts may use (e.g. 6GiB; default: what it has free).
    #[arg(long = "gpu-mem", value_name = "SIZE", value_parser = parse_size)]
    pub gpu_mem: Option<u64>,
}

impl GpuArgs {
    /// The options the flags ask for; combinations that mean nothing are an error.
    pub fn options(&self) -> anyhow::Result<BackendOptions> {
        BackendOptions::from_flags(self.gpu.clone(), self.offload, self.gpu_mem)
            .map_err(anyhow::Error::msg)
    }
}
