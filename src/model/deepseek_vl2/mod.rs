//! DeepSeek-VL2: preprocessing, vision tower, projector, language model.
pub mod preprocess;
pub mod resample;
