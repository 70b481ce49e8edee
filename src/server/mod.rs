//! `pocketvl serve`: an OpenAI-compatible HTTP server over the library API, on axum + tokio.
//!
//! - `POST /v1/chat/completions` (plain or server-sent events), `GET /v1/models`,
//!   `GET /health` (503 while the model loads), `POST /tokenize`, `POST /detokenize`.
//! - One [`crate::Model`] (one mapping) and `parallel` [`crate::Session`]s: requests queue for
//!   a free session; each goes to the idle session whose last conversation shares the longest
//!   prefix with it, so a follow-up turn reuses its KV prefix and image features.
//! - A client that goes away cancels its generation (the event channel closes).
//!
//! Rooms: `api.rs` (the OpenAI wire types), `chat.rs` (chat completions), `routes.rs` (the
//! other endpoints, auth, errors' JSON), `workers.rs` (the session pool).

mod api;
mod chat;
mod routes;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rayon::ThreadPool;

use crate::{Model, ModelOptions};
pub use chat::{chat_call, ChatCall};
pub use routes::{router, ApiError};
use workers::Workers;

/// What `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub mmproj: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Sessions (conversations computed at the same time).
    pub parallel: usize,
    pub ctx: Option<usize>,
    pub pool: Option<Arc<ThreadPool>>,
    /// Accept `image_url`s that are local file paths (off: only data URLs).
    pub allow_local_files: bool,
    pub exif_rotate: bool,
    /// Parts to run on a ggml device (`--gpu`, `--offload`, `--gpu-mem`).
    pub backend: crate::backend::BackendOptions,
    /// The expert store (`--mem-budget`, `--cold-experts`, ...).
    pub experts: crate::experts::ExpertOptions,
    /// The vision tower's product arithmetic (`--vision-precision`).
    pub vision_precision: crate::model::deepseek_vl2::vision::VisionPrecision,
    /// The KV caches' element type (`--cache-type`).
    pub cache_type: crate::kv_cache::CacheType,
}

/// The server's shared state: set up at once, with the model arriving when loaded.
pub struct AppState {
    pub(crate) opts: ServeOptions,
    ready: OnceLock<Ready>,
    /// A load failure, reported by `/health` and every request.
    failed: OnceLock<String>,
}

/// A loaded model and its sessions.
pub(crate) struct Ready {
    pub(crate) model: Model,
    pub(crate) workers: Workers,
    /// Advertised model id (the file name without `.gguf`).
    pub(crate) name: String,
    pub(crate) created: u64,
}

impl AppState {
    pub fn new(opts: ServeOptions) -> Arc<AppState> {
        Arc::new(AppState {
            opts,
            ready: OnceLock::new(),
            failed: OnceLock::new(),
        })
    }

    /// Loads the model (and the vision model when its file is there) and opens the sessions.
    pub fn load(&self) -> Result<(), crate::Error> {
        let o = &self.opts;
        let model = Model::load(
            &o.model,
            ModelOptions {
                mmproj: o.mmproj.clone(),
                ctx: o.ctx,
                pool: o.pool.clone(),
                exif_rotate: o.exif_rotate,
                experts: o.experts.clone(),
                backend: o.backend.clone(),
                vision_precision: o.vision_precision,
                cache_type: o.cache_type,
            },
        )?;
        if model.has_vision() {
            model.load_vision()?;
        }
        let workers = Workers::new(&model, o.parallel.max(1));
        let _ = self.ready.set(Ready {
            name: model.name(),
            model,
            workers,
            created: now(),
        });
        Ok(())
    }

    pub(crate) fn ready(&self) -> Option<&Ready> {
        self.ready.get()
    }
}

/// Seconds since the epoch (OpenAI's `created`).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Binds, prints the address, loads the model in the background and serves until killed.
pub fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local: SocketAddr = listener.local_addr()?;
        if !local.ip().is_loopback() && opts.api_key.is_none() {
            eprintln!(
                "warning: listening on {} without --api-key: anyone who can reach it can use it",
                local.ip()
            );
        }
        let state = AppState::new(opts);
        eprintln!("pocketvl serve: listening on http://{local} (loading the model)");
        let loader = state.clone();
        tokio::task::spawn_blocking(move || match loader.load() {
            Ok(()) => eprintln!("pocketvl serve: model loaded, ready"),
            Err(e) => {
                eprintln!("error: {e}");
                let _ = loader.failed.set(e.to_string());
            }
        });
        axum::serve(listener, router(state))
            .await
            .context("serving")?;
        Ok(())
    })
}
