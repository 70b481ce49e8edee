//! Model architectures. One folder per architecture; its forward pass reads
//! top to bottom like the reference.

pub mod deepseek_vl2;
