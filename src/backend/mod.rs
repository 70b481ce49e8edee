//! Offload to a GPU (or another ggml device) of the parts of the model that gain most from
//! one: the vision tower and projector (about 0.67 TFLOP per tile on the real model), and
//! the language model's attention with its KV cache, its dense and shared-expert MLPs and
//! its routed experts (those that fit; the CPU keeps the rest). The CPU path stays the
//! reference; an offloaded part is tested against it (tests/it/backend_offload.rs).
//!
//! The flags and their checks ([`options`]) are pure Rust and always built. The device code
//! (`ggml/`) exists only with the `ggml-cpu`, `vulkan` or `metal` features; without them
//! asking for a device is a clear error.

pub mod options;

#[cfg(feature = "ggml-cpu")]
mod ggml;

use std::sync::Arc;

pub use options::{BackendOptions, DeviceChoice, Offload};

use crate::model::deepseek_vl2::layer_offload::LayerOffload;
use crate::model::deepseek_vl2::vision::{TileEncoder, VisionModel};
use crate::model::deepseek_vl2::LanguageModel;

#[cfg(feature = "ggml-cpu")]
pub use ggml::decoder::GgmlDecoder;
#[cfg(feature = "ggml-cpu")]
pub use ggml::vision::GgmlVision;

/// Errors of device selection and offload.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "this pocketvl was built without GPU support; rebuild with `--features vulkan` \
         (or `metal`, `ggml-cpu`) to use --gpu/--offload or list devices"
    )]
    NotBuilt,
    #[error("{0}")]
    Device(String),
    #[error("{0} (give a larger --gpu-mem, or --offload none)")]
    Memory(String),
    #[error("ggml: {0}")]
    Ggml(String),
}

/// What kind of device ggml reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    IntegratedGpu,
    Accelerator,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
            DeviceKind::IntegratedGpu => "igpu",
            DeviceKind::Accelerator => "accel",
        })
    }
}

/// One device of ggml's registry (`pocketvl devices`).
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Its `--gpu` index.
    pub index: usize,
    /// Its `--gpu` name (`CPU`, `Vulkan0`, `Metal`...).
    pub name: String,
    pub description: String,
    pub kind: DeviceKind,
    pub memory_free: u64,
    pub memory_total: u64,
}

/// The ggml backends compiled into this binary.
pub fn compiled_backends() -> &'static [&'static str] {
    if cfg!(feature = "metal") {
        &["cpu", "metal"]
    } else if cfg!(feature = "vulkan") {
        &["cpu", "vulkan"]
    } else if cfg!(feature = "ggml-cpu") {
        &["cpu"]
    } else {
        &[]
    }
}

/// Every device this build can run on.
pub fn devices() -> Result<Vec<DeviceInfo>, BackendError> {
    #[cfg(feature = "ggml-cpu")]
    {
        Ok(ggml::device::devices())
    }
    #[cfg(not(feature = "ggml-cpu"))]
    {
        Err(BackendError::NotBuilt)
    }
}

/// Checks `opts` before anything is loaded: a build with a device backend and a device that
/// exists.
pub fn check(opts: &BackendOptions) -> Result<(), BackendError> {
    if !opts.wants_device() {
        return Ok(());
    }
    if cfg!(not(feature = "ggml-cpu")) {
        return Err(BackendError::NotBuilt);
    }
    #[cfg(feature = "ggml-cpu")]
    ggml::device::find(opts.device.as_ref())?;
    Ok(())
}

/// The layer offload `opts` asks for on `lm` (`None`: every layer on the CPU), its weights
/// uploaded. `threads` are ggml's CPU workers when the device is ggml's CPU backend.
pub fn decoder_offload(
    opts: &BackendOptions,
    lm: &LanguageModel,
    threads: usize,
) -> Result<Option<Arc<dyn LayerOffload>>, BackendError> {
    check(opts)?;
    let o = opts.offload;
    if !(o.attn || o.dense || o.experts) {
        return Ok(None);
    }
    #[cfg(feature = "ggml-cpu")]
    {
        ggml::decoder::offload(lm, opts.device.as_ref(), opts.gpu_mem, threads, o).map(Some)
    }
    #[cfg(not(feature = "ggml-cpu"))]
    {
        let _ = (lm, threads);
        Err(BackendError::NotBuilt)
    }
}

/// The tile encoder `opts` asks for on `vision` (`None`: the CPU path), its weights uploaded.
/// `threads` are ggml's CPU workers when the device is ggml's CPU backend.
pub fn vision_encoder(
    opts: &BackendOptions,
    vision: &VisionModel,
    threads: usize,
) -> Result<Option<Arc<dyn TileEncoder>>, BackendError> {
    check(opts)?;
    if !opts.offload.vision {
        return Ok(None);
    }
    #[cfg(feature = "ggml-cpu")]
    {
        ggml::vision::encoder(vision, opts.device.as_ref(), opts.gpu_mem, threads).map(Some)
    }
    #[cfg(not(feature = "ggml-cpu"))]
    {
        let _ = (vision, threads);
        Err(BackendError::NotBuilt)
    }
}
