//! `pocketvl bench`: measurements reported as ratios against a roofline from the same run.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::bench::convert::{bench_convert, ConvertBenchOptions};

/// Arguments of `pocketvl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Checkpoint read speed (cold and warm) vs conversion throughput, with peak RSS.
    Convert(BenchConvertArgs),
}

/// Arguments of `pocketvl bench convert`.
#[derive(Debug, Args)]
pub struct BenchConvertArgs {
    /// Hugging Face checkpoint directory.
    pub checkpoint: PathBuf,
    /// Quantization recipe for the converter (models.toml: f32, f16, bf16, q8_0, q4_0, q4_k, ...).
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// Directory for the temporary GGUF output (default: the system temp directory).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Converter threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pocketvl bench ...`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Convert(a) => {
            let opts = ConvertBenchOptions {
                checkpoint: a.checkpoint.clone(),
                quant: a.quant,
                tmp_dir: a.tmp_dir,
                threads: super::threads::check(a.threads)?,
                progress: !a.json,
            };
            let r = bench_convert(&opts)
                .with_context(|| format!("bench convert {}", a.checkpoint.display()))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.report());
            }
            Ok(())
        }
    }
}
