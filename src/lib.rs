//! pocketvl: DeepSeek-VL2 on CPU.
