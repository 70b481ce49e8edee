//! pocketvl-convert: Hugging Face DeepSeek-VL2 checkpoints to GGUF.

pub mod error;
pub mod safetensors;

pub use error::{ConvertError, Result};
