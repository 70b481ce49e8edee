//! Model architectures.
pub mod deepseek_vl2;
