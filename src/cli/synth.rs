//! `pocketvl synth`: write a random-weight checkpoint in a variant's real shapes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::synth::{self, SynthOptions, Variant};

/// Arguments of `pocketvl synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// deepseek-vl2-tiny, deepseek-vl2-small or deepseek-vl2.
    #[arg(long)]
    pub variant: String,
    /// Output directory (created; must be empty unless --force).
    #[arg(short, long)]
    pub output: PathBuf,
    /// PRNG seed: the same seed gives the same bytes on any machine and thread count.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep only the first N language-model layers (quick tests).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Leave out the `vision.*` tensors (config.json still describes the tower).
    #[arg(long)]
    pub no_vision: bool,
    /// Maximum bytes of tensor data per shard.
    #[arg(long, default_value_t = synth::DEFAULT_SHARD_BYTES)]
    pub shard_bytes: u64,
    /// tokenizer.json to ship (default: the repository's DeepSeek-V3 fixture tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write into a non-empty directory.
    #[arg(long)]
    pub force: bool,
}

/// Runs `pocketvl synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let variant = Variant::from_name(&args.variant)
        .ok_or_else(|| synth::SynthError::UnknownVariant(args.variant.clone()))?;
    let mut opts = SynthOptions::new(variant, &args.output);
    opts.seed = args.seed;
    opts.layers = args.layers;
    opts.vision = !args.no_vision;
    opts.shard_bytes = args.shard_bytes;
    opts.tokenizer = args.tokenizer;
    opts.force = args.force;
    opts.progress = true;
    let summary = synth::synthesize(&opts).with_context(|| {
        format!(
            "synthesizing {} into {}",
            variant.name(),
            args.output.display()
        )
    })?;
    println!(
        "wrote {} tensors ({:.2} GB) in {} shards to {} in {:.1} s",
        summary.n_tensors,
        summary.data_bytes as f64 / 1e9,
        summary.shards.len(),
        args.output.display(),
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}
