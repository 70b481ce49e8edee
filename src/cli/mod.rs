//! Command-line surfaces.

pub mod run;
