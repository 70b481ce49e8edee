//! `pocketvl bench`: measurements reported as ratios against a roofline from the same run.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::bench::convert::{bench_convert, ConvertBenchOptions};
use crate::bench::model::{bench_model, ModelBenchOptions};

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
    /// Prefill, decode, vision tower per tile and time to first token of a converted model,
    /// beside the memory-bandwidth and FMA rooflines measured in the same run.
    Model(BenchModelArgs),
}

/// Arguments of `pocketvl bench model`.
#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// The language-model GGUF.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// The vision GGUF (default: `mmproj-<model file name>` beside the model; without one,
    /// vision and time to first token are skipped).
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Language model only: no vision or time-to-first-token measurement (as llama-bench).
    #[arg(long = "no-vision", conflicts_with = "mmproj")]
    pub no_vision: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Prompt tokens of the prefill measurement (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens of the decode measurement (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Tokens already in the context before each prefill and decode measurement (as
    /// llama-bench's -d): decode after an image prompt (~1,000 tokens) also reads their
    /// KV cache.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    pub n_depth: usize,
    /// Repetitions; medians and ranges are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Time the decode's parallel regions: regions per token and the threads' time in
    /// tasks, absent (a helper not yet in a region it was asked into), waiting (no task
    /// left) and outside regions, overall and per region site (JSON: `decode_regions`).
    /// The clock slows decode a little.
    #[arg(long)]
    pub regions: bool,
    /// First drop the model file and the mmproj from the page cache and time the first
    /// image request from opening them (`cold_ttft_ms`: the first answer after a reboot;
    /// needs the mmproj).
    #[arg(long)]
    pub cold: bool,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub experts: super::expert_args::ExpertArgs,
    #[command(flatten)]
    pub gpu: super::gpu_args::GpuArgs,
    #[command(flatten)]
    pub vision: super::vision_args::VisionArgs,
    #[command(flatten)]
    pub cache: super::cache_args::CacheArgs,
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
        BenchCommand::Model(a) => {
            let threads = match super::threads::check(a.threads)? {
                Some(t) => t,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            let opts = ModelBenchOptions {
                model: a.model.clone(),
                mmproj: a.mmproj,
                vision: !a.no_vision,
                threads,
                n_prompt: a.n_prompt,
                n_gen: a.n_gen,
                n_depth: a.n_depth,
                reps: a.reps,
                regions: a.regions,
                cold: a.cold,
                progress: true,
                experts: a.experts.options(),
                backend: a.gpu.options()?,
                vision_precision: a.vision.vision_precision,
                cache_type: a.cache.cache_type,
            };
            let mut r =
                bench_model(&opts).with_context(|| format!("bench model {}", a.model.display()))?;
            print!("{}", r.report());
            r.expert_stats = r.expert_stats.take().and_then(|s| a.experts.report(s));
            if a.json {
                println!("{}", r.json_line());
            }
            Ok(())
        }
    }
}
