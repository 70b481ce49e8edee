//! `pocketvl synth`: write a random-weight checkpoint in a variant's real shapes, or (with
//! `--quant`) its converted GGUF pair directly.

use std::io::IsTerminal;
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
    /// Output: the checkpoint directory (created; must be empty unless --force), or with
    /// --quant the language-model GGUF (its mmproj is written beside it as mmproj-<name>).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Write the converted GGUF pair with this recipe (the names `convert --quant` takes:
    /// f32, f16, bf16, q8_0, q4_0, q4_k, ...) straight to --output, byte-identical to
    /// `synth` + `convert --quant` and without the bf16 checkpoint on disk.
    #[arg(long, value_name = "RECIPE")]
    pub quant: Option<String>,
    /// PRNG seed: the same seed gives the same bytes on any machine and thread count.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep only the first N language-model layers (quick tests).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Leave out the vision tower, projector and tile tags: a text-only checkpoint, which
    /// `convert` turns into NAME.gguf alone (config.json still describes the tower).
    #[arg(long)]
    pub no_vision: bool,
    /// Zipf-like expert popularity in the routers (0 = plain random routers, which route
    /// nearly uniformly). The expert of popularity rank r is picked for a token with
    /// probability min(0.45, c·r^-ALPHA), summing to the experts per token; each layer has
    /// its own popular experts. 1.0 is a typical skew for trained MoE models. See
    /// docs/SYNTH.md.
    #[arg(long, value_name = "ALPHA", default_value_t = 0.0)]
    pub router_skew: f64,
    /// With --quant: also write the low-bit copy of the routed experts in TYPE (e.g. q2_K,
    /// q3_K) as cold-<name> beside the GGUF, the sidecar `convert --cold-experts` writes (for
    /// `run --cold-experts lowbit|only`).
    #[arg(long, value_name = "TYPE", requires = "quant")]
    pub cold_experts: Option<String>,
    /// With --cold-experts: write only the sidecar, beside an --output that this same command
    /// (variant, seed, skew, recipe) wrote before; its tensor table is checked against the plan.
    #[arg(long, requires = "cold_experts")]
    pub cold_only: bool,
    /// Maximum bytes of tensor data per shard.
    #[arg(long, default_value_t = synth::DEFAULT_SHARD_BYTES)]
    pub shard_bytes: u64,
    /// tokenizer.json to ship (default: the repository's DeepSeek-V3 fixture tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write into a non-empty directory (with --quant: replace existing GGUF files).
    #[arg(long)]
    pub force: bool,
    /// Worker threads for --quant (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs `pocketvl synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let variant = Variant::from_name(&args.variant)
        .ok_or_else(|| synth::SynthError::UnknownVariant(args.variant.clone()))?;
    let threads = super::threads::check(args.threads)?;
    let mut opts = SynthOptions::new(variant, &args.output);
    opts.seed = args.seed;
    opts.layers = args.layers;
    opts.vision = !args.no_vision;
    opts.shard_bytes = args.shard_bytes;
    opts.tokenizer = args.tokenizer;
    opts.force = args.force;
    opts.router_skew = args.router_skew;
    opts.cold_experts = match &args.cold_experts {
        Some(name) => Some(convert::recipe::parse_type(name).context("--cold-experts")?),
        None => None,
    };
    if let (Some(quant), Some(ty), true) = (&args.quant, opts.cold_experts, args.cold_only) {
        let (path, bytes) = synth::spec_of(&opts)
            .and_then(|spec| synth::synthesize_cold_sidecar(&spec, &opts, quant, ty, threads))
            .with_context(|| {
                format!(
                    "synthesizing the {} cold-expert copy of {}; no sidecar written",
                    ty.name(),
                    args.output.display()
                )
            })?;
        eprintln!(
            "cold experts: {} ({:.1} MB)",
            path.display(),
            bytes as f64 / 1e6
        );
        println!("{}", path.display());
        return Ok(());
    }
    if let Some(quant) = &args.quant {
        opts.progress = std::io::stderr().is_terminal();
        let (plan, s) = synth::synthesize_gguf(&opts, quant, threads).with_context(|| {
            format!(
                "synthesizing {} as {quant} GGUF into {}; no output written",
                variant.name(),
                args.output.display()
            )
        })?;
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        let mmproj = match &s.mmproj_path {
            Some(p) => format!("{} ({:.1} MB)", p.display(), s.mmproj_bytes as f64 / 1e6),
            None => "no mmproj (--no-vision)".to_string(),
        };
        eprintln!(
            "synthesized {:.1} MB of bf16 weights as {} in {:.2} s: {} ({:.1} MB), {mmproj}",
            s.input_bytes as f64 / 1e6,
            plan.recipe,
            s.elapsed.as_secs_f64(),
            s.language_path.display(),
            s.language_bytes as f64 / 1e6,
        );
        println!("{}", s.language_path.display());
        if let Some(p) = &s.mmproj_path {
            println!("{}", p.display());
        }
        if opts.cold_experts.is_some() {
            let p = convert::write::cold_path(&s.language_path);
            let mb = std::fs::metadata(&p).map_or(0.0, |m| m.len() as f64 / 1e6);
            eprintln!("cold experts: {} ({mb:.1} MB)", p.display());
            println!("{}", p.display());
        }
        return Ok(());
    }
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
