//! `pocketvl serve`: arguments only; the server is [`crate::server`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::server::{serve, ServeOptions};

/// Arguments of `pocketvl serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The language-model GGUF (`model.gguf`).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// The vision GGUF (default: `mmproj-<model file name>` beside the model).
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Address to listen on (loopback by default: only this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every request but /health.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Option<String>,
    /// Conversations computed at the same time (each has its own KV cache); more requests
    /// queue.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Context length per conversation (default: the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Worker threads shared by all conversations (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Accept `image_url`s that are paths of local files (default: data URLs only).
    #[arg(long = "allow-local-files")]
    pub allow_local_files: bool,
    /// Open images as stored, ignoring the EXIF orientation (what the reference sees).
    #[arg(long = "no-exif-rotate")]
    pub no_exif_rotate: bool,
    #[command(flatten)]
    pub gpu: super::gpu_args::GpuArgs,
    #[command(flatten)]
    pub vision: super::vision_args::VisionArgs,
    #[command(flatten)]
    pub cache: super::cache_args::CacheArgs,
    #[command(flatten)]
    pub experts: super::expert_args::ExpertStoreArgs,
}

/// Runs the subcommand (until the process is stopped).
pub fn run(args: ServeArgs) -> Result<()> {
    if args.parallel == 0 || args.parallel > 256 {
        anyhow::bail!("--parallel must be between 1 and 256");
    }
    let pool = Arc::new(super::threads::pool(args.threads)?);
    let backend = args.gpu.options()?;
    if !args.model.is_file() {
        anyhow::bail!("model file {} does not exist", args.model.display());
    }
    serve(ServeOptions {
        model: args.model,
        mmproj: args.mmproj,
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        parallel: args.parallel,
        ctx: args.ctx,
        pool: Some(pool),
        allow_local_files: args.allow_local_files,
        exif_rotate: !args.no_exif_rotate,
        backend,
        experts: args.experts.options(),
        vision_precision: args.vision.vision_precision,
        cache_type: args.cache.cache_type,
    })
}
