//! The root package's integration tests, gathered into one test binary (`--test it`).
//!
//! Each file used to be its own test binary, and each binary linked the whole crate with its
//! dependencies: about twenty links of the same code on every build. One binary links once.
//! Add a test file as a module here (see tests/README.md); run one file's tests with
//! `cargo test --test it <module>::`.

mod common;
mod preprocess_common;
#[path = "../support/prereq.rs"]
mod prereq;

mod backend_offload;
mod bench_model;
mod cli_convert;
mod cli_errors;
mod cli_pipes;
mod cli_run_images;
mod cli_run_messages;
mod cold_experts;
mod decoder_loader;
mod decoder_oracle;
mod decoder_session;
mod expert_paging;
mod faults;
mod grounding_draw;
mod grounding_parse;
mod grounding_python;
mod image_oracle;
mod library_sessions;
mod llamacpp_interop;
mod preload;
mod preprocess_fixtures;
mod preprocess_pillow;
mod server_openai;
mod synth_checkpoint;
mod synth_convert;
mod tokenizer_parity;
mod vision_fixtures;
mod vision_tower_recipes;
