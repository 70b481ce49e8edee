//! Command-line surfaces.

pub mod bench;
pub mod run;
pub mod synth;
