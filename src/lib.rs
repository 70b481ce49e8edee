//! pocketvl: DeepSeek-VL2 on CPU.
//!
//! The library API is [`Model`] (weights loaded once, shared) and [`Session`] (one
//! conversation: KV cache, feature cache, history); see [`pipeline`].

// First: its macro serves the modules below.
#[macro_use]
mod names;

pub mod backend;
pub mod bench;
pub mod cli;
pub mod experts;
pub mod generate;
pub mod grounding;
pub mod image_io;
pub mod kv_cache;
pub mod limits;
pub mod loader;
pub mod model;
pub mod npy;
pub mod ops;
pub mod pipeline;
pub mod sampler;
pub mod server;
pub mod synth;
pub mod tensor;
pub mod tokenizer;
pub mod trace;
pub mod vision_cache;

pub use generate::{CancelToken, GenerateOptions, StopReason};
pub use model::deepseek_vl2::prompt::Role;
pub use model::deepseek_vl2::vision::VisionPrecision;
pub use pipeline::{ChatTurn, Error, ImageInput, Model, ModelOptions, Prompt, Reply, Session};
pub use sampler::SamplerConfig;
