//! pocketvl: DeepSeek-VL2 on CPU.

pub mod bench;
pub mod synth;
