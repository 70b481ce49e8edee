//! pocketvl: DeepSeek-VL2 on CPU.

pub mod cli;
