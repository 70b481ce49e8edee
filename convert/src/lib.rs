//! pocketvl-convert: Hugging Face DeepSeek-VL2 checkpoints to GGUF.
