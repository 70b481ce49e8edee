//! `pocketvl convert HF_DIR -o OUT.gguf [--quant T] [--type-* T] [--cold-experts T] [--force]
//! [--dry-run] [--threads N]`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::Args;
use convert::mapping::Role;
use convert::recipe::parse_type;
use convert::write::{self, ConvertOptions, FilePlan, Plan};

/// Arguments of `pocketvl convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Hugging Face checkpoint directory (config.json, safetensors, tokenizer files).
    pub hf_dir: PathBuf,
    /// Output language-model GGUF; the mmproj is written beside it as mmproj-<name>.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Recipe: f32, f16, bf16 (every matrix; norms, biases and routers stay f32) or q8_0, q4_0, q4_k, q5_k, q6_k (routed
    /// experts). Default: the variant's recipe from models.toml.
    #[arg(long)]
    pub quant: Option<String>,
    /// Type of the routed experts.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_experts: Option<String>,
    /// Type of the attention matrices.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_attn: Option<String>,
    /// Type of the dense MLP.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_ffn: Option<String>,
    /// Type of the shared experts.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_shexp: Option<String>,
    /// Type of token_embd.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_embd: Option<String>,
    /// Type of the output (lm_head) matrix.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_output: Option<String>,
    /// Type of the vision-tower matrices.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_vision: Option<String>,
    /// Type of the projector matrices.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub type_projector: Option<String>,
    /// Also write a low-bit copy of the routed experts in TYPE (q2_K or q3_K) as cold-<name>
    /// beside the output: what `--cold-experts lowbit` serves on a miss under a memory budget.
    /// A separate GGUF: llama.cpp refuses extra tensors in the model.
    #[arg(long, value_name = "TYPE", value_parser = storable_type(), ignore_case = true)]
    pub cold_experts: Option<String>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
    /// Print the plan (tensor, type, shape, bytes, role) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The types `--type-*` accept, listed in `--help` from the format table.
fn storable_type() -> PossibleValuesParser {
    PossibleValuesParser::new(
        quant::formats::FORMATS
            .iter()
            .filter(|f| f.storable)
            .map(|f| f.ty.name()),
    )
}

impl ConvertArgs {
    fn options(&self) -> anyhow::Result<ConvertOptions> {
        let mut overrides = Vec::new();
        for (arg, role) in [
            (&self.type_experts, Role::Experts),
            (&self.type_attn, Role::Attn),
            (&self.type_ffn, Role::Ffn),
            (&self.type_shexp, Role::Shexp),
            (&self.type_embd, Role::Embd),
            (&self.type_output, Role::Output),
            (&self.type_vision, Role::Vision),
            (&self.type_projector, Role::Projector),
        ] {
            if let Some(name) = arg {
                let ty = parse_type(name).with_context(|| format!("--type-{}", role.name()))?;
                overrides.push((role, ty));
            }
        }
        let threads = super::threads::check(self.threads)?;
        Ok(ConvertOptions {
            input: self.hf_dir.clone(),
            output: self.output.clone(),
            quant: self.quant.clone(),
            overrides,
            force: self.force,
            threads,
            progress: std::io::stderr().is_terminal(),
        })
    }
}

fn print_plan(plan: &Plan, cold: Option<&FilePlan>) {
    for fp in std::iter::once(&plan.language)
        .chain(&plan.mmproj)
        .chain(cold)
    {
        println!("{}:", fp.path.display());
        println!(
            "  {:<34} {:<18} {:<16} {:>12}  {:<9} source",
            "tensor", "type", "shape", "bytes", "role"
        );
        for t in &fp.tensors {
            let shape = format!("{:?}", t.mapped.ne);
            let ty = match t.fell_back_from {
                Some(w) => format!("{} (wanted {})", t.ty.name(), w.name()),
                None => t.ty.name().to_string(),
            };
            println!(
                "  {:<34} {:<18} {:<16} {:>12}  {:<9} {}",
                t.mapped.name,
                ty,
                shape,
                t.bytes,
                t.mapped.role.name(),
                t.mapped.source.describe()
            );
        }
        println!(
            "  {} tensors, {:.2} MB of tensor data",
            fp.tensors.len(),
            fp.data_bytes() as f64 / 1e6
        );
    }
}

fn print_fallbacks(plan: &Plan, cold: Option<&FilePlan>) {
    let mut fb = plan.fallbacks();
    for t in cold.iter().flat_map(|c| &c.tensors) {
        if let Some(w) = t.fell_back_from {
            fb.push((format!("{} (cold copy)", t.mapped.name), w, t.ty));
        }
    }
    if !fb.is_empty() {
        eprintln!("block-size fallbacks ({}):", fb.len());
        for (name, wanted, used) in fb {
            eprintln!("  {name}: {} -> {}", wanted.name(), used.name());
        }
    }
}

/// Runs `pocketvl convert`.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    if !args.dry_run {
        write::check_outputs(&opts.output, opts.force)?;
    }
    let (ck, plan) = write::plan(&opts)
        .with_context(|| format!("planning the conversion of {}", opts.input.display()))?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "variant: {}, recipe: {}",
        plan.variant.as_deref().unwrap_or("unknown"),
        plan.recipe
    );
    let cold = match &args.cold_experts {
        Some(name) => {
            let ty = parse_type(name).context("--cold-experts")?;
            Some(write::plan_cold(&plan, ty).context("--cold-experts")?)
        }
        None => None,
    };
    if args.dry_run {
        print_plan(&plan, cold.as_ref());
        print_fallbacks(&plan, cold.as_ref());
        return Ok(());
    }
    let s = write::execute(&ck, &plan, &opts).context("conversion failed; no output written")?;
    print_fallbacks(&plan, cold.as_ref());
    let mmproj = match &s.mmproj_path {
        Some(p) => format!("{} ({:.1} MB)", p.display(), s.mmproj_bytes as f64 / 1e6),
        None => "no mmproj (text-only checkpoint)".to_string(),
    };
    eprintln!(
        "converted {:.1} MB of checkpoint in {:.2} s ({:.1} MB/s): {} ({:.1} MB), {mmproj}",
        s.input_bytes as f64 / 1e6,
        s.elapsed.as_secs_f64(),
        s.input_mb_per_s(),
        s.language_path.display(),
        s.language_bytes as f64 / 1e6,
    );
    println!("{}", s.language_path.display());
    if let Some(p) = &s.mmproj_path {
        println!("{}", p.display());
    }
    if let Some(fp) = &cold {
        let (path, bytes) = write::execute_cold(&ck, fp, &opts)
            .context("writing the cold-expert copy failed; no sidecar written")?;
        eprintln!(
            "cold experts: {} ({:.1} MB)",
            path.display(),
            bytes as f64 / 1e6
        );
        println!("{}", path.display());
    }
    Ok(())
}
