//! pocketvl: DeepSeek-VL2 on CPU.

pub mod experts;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod npy;
pub mod ops;
pub mod trace;
pub mod cli;
pub mod generate;
pub mod sampler;
pub mod tokenizer;
