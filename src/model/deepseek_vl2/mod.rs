//! DeepSeek-VL2 (github.com/deepseek-ai/DeepSeek-VL2, `deepseek_vl2/models/`):
//! the language model (MHA or MLA attention, DeepSeek MoE), and the prompt
//! template. The vision tower, projector and preprocessing live beside them.

pub mod attention;
pub mod language;
pub mod layer_offload;
pub mod moe;
mod moe_batch;
mod moe_token;
pub mod preprocess;
pub mod projector;
pub mod prompt;
pub mod resample;
pub mod vision;
mod vision_attention;
mod vision_attention_bf16;
mod vision_attention_split;
pub mod vision_config;
mod vision_math;

pub use language::{DecoderState, LanguageModel, LogitsWanted, ModelError};
