//! pocketvl-convert: Hugging Face DeepSeek-VL2 checkpoints to GGUF.

pub mod error;
pub mod hf_config;
pub mod mapping;
pub mod metadata;
pub mod models;
pub mod readahead;
pub mod recipe;
pub mod safetensors;
pub mod source;
pub mod tokenizer;
pub mod write;

pub use error::{ConvertError, Result};
