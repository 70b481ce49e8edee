//! pocketvl: DeepSeek-VL2 on CPU.

pub mod bench;
pub mod cli;
pub mod experts;
pub mod generate;
pub mod grounding;
pub mod image_io;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod npy;
pub mod ops;
pub mod sampler;
pub mod synth;
pub mod tokenizer;
pub mod trace;
pub mod vision_cache;
