//! pocketvl-quant's integration tests, gathered into one test binary (`--test it`): one link
//! instead of one per file (tests/README.md). Add a file as a module here.

#[path = "../../../tests/support/prereq.rs"]
mod prereq;

mod gguf_hostile;
mod gguf_python;
mod gguf_roundtrip;
mod golden;
