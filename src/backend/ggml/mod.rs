//! ggml through the raw `ggml_*` API of `llama-cpp-sys-2` (features `ggml-cpu`, `vulkan`,
//! `metal`). All FFI of the crate lives under this folder: `device` (registry, backends),
//! `graph` (contexts, operations, resident weights, compute graphs) and the offloaded
//! parts built on them (`vision`, `decoder` with its routed `experts`).

pub(super) mod decoder;
pub(super) mod device;
mod experts;
mod graph;
pub(super) mod vision;
