//! The `pocketvl` command line. Each subcommand lives in its own file and exposes an `Args`
//! struct (clap) and a `run(args) -> anyhow::Result<()>`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod convert;
pub mod inspect;
pub mod run;
pub mod serve;
pub mod synth;
pub mod threads;

/// Run DeepSeek-VL2 vision-language models on CPU.
#[derive(Debug, Parser)]
#[command(name = "pocketvl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once per process; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert a Hugging Face DeepSeek-VL2 checkpoint to OUT.gguf + mmproj-OUT.gguf.
    Convert(convert::ConvertArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(inspect::InspectArgs),
    /// Generate from a prompt, or chat interactively.
    Run(run::RunArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions with images).
    Serve(serve::ServeArgs),
    /// Write a random-weight checkpoint in a variant's real shapes (for benchmarks and tests).
    Synth(synth::SynthArgs),
    /// Measure against a roofline from the same run (`bench convert`: read speed vs conversion).
    Bench(bench::BenchArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// The binary's entry point: parse, run, report errors with their causes, exit non-zero.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
