//! pocketvl: DeepSeek-VL2 on CPU.
pub mod image_io;
pub mod model;
