//! [`Model`]: the weights, tokenizer and (lazily) the vision model, loaded once and shared by
//! every [`Session`] through an `Arc`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

use super::{Error, Session};
use crate::backend::{self, BackendOptions};
use crate::experts::ExpertOptions;
use crate::kv_cache::CacheType;
use crate::limits;
use crate::loader::ModelFile;
use crate::model::deepseek_vl2::vision::{VisionModel, VisionPrecision};
use crate::model::deepseek_vl2::LanguageModel;
use crate::tokenizer::Tokenizer;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// The vision GGUF (default: `mmproj-<model file name>` beside the model).
    pub mmproj: Option<PathBuf>,
    /// Context length (default: the model's; never beyond it).
    pub ctx: Option<usize>,
    /// The workers forward passes run in (default: the caller's rayon pool).
    pub pool: Option<Arc<ThreadPool>>,
    /// Turn images upright from their EXIF orientation (the reference does not; boxes then
    /// refer to the upright image).
    pub exif_rotate: bool,
    /// The expert store: plain mmap, or paging under a memory budget.
    pub experts: ExpertOptions,
    /// Parts to run on a ggml device (`--gpu`, `--offload`, `--gpu-mem`).
    pub backend: BackendOptions,
    /// The vision tower's product arithmetic (`--vision-precision`; default exact).
    pub vision_precision: VisionPrecision,
    /// The element type of the sessions' KV caches (`--cache-type`; default f32).
    pub cache_type: CacheType,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            mmproj: None,
            ctx: None,
            pool: None,
            exif_rotate: true,
            experts: ExpertOptions::default(),
            backend: BackendOptions::default(),
            vision_precision: VisionPrecision::default(),
            cache_type: CacheType::default(),
        }
    }
}

/// A loaded model; cloning is cheap (one `Arc`), and every clone shares the same mapping.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lm: LanguageModel,
    tokenizer: Tokenizer,
    mmproj: PathBuf,
    /// Loaded on first use: a text-only conversation never needs the mmproj.
    vision: Mutex<Option<Arc<VisionModel>>>,
    pool: Option<Arc<ThreadPool>>,
    exif_rotate: bool,
    /// The vision tower's offload (`--gpu-mem` less what the layers took).
    backend: BackendOptions,
    vision_precision: VisionPrecision,
    /// Whether the mmproj is read in behind its load, as the model file is
    /// (`ExpertOptions::preload`).
    preload: bool,
}

impl Model {
    /// Maps `path` (the language-model GGUF) and checks every tensor; the vision model is
    /// loaded when the first image arrives (or by [`Model::load_vision`]).
    pub fn load(path: &Path, opts: ModelOptions) -> Result<Model, Error> {
        if !path.is_file() {
            return Err(Error::NoModelFile(path.to_path_buf()));
        }
        // The device exists and the parts can go there, before gigabytes are mapped.
        backend::check(&opts.backend)?;
        let file = ModelFile::open(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let mut lm =
            LanguageModel::load_with(&file, &opts.experts).map_err(|source| Error::Load {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let n_ctx = limits::context_length(opts.ctx, lm.hp.n_ctx)?;
        if n_ctx != lm.hp.n_ctx {
            lm.set_context_length(n_ctx);
        }
        let tokenizer = Tokenizer::from_model_file(&file).map_err(|source| Error::Tokenizer {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        if let Some(pool) = &opts.pool {
            lm.set_thread_pool(pool.clone());
        }
        lm.set_cache_type(opts.cache_type);
        let threads = opts
            .pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let mut vision_backend = opts.backend.clone();
        if let Some(off) = backend::decoder_offload(&opts.backend, &lm, threads)? {
            // The vision tower gets what the layers left of --gpu-mem.
            vision_backend.gpu_mem = opts
                .backend
                .gpu_mem
                .map(|m| m.saturating_sub(off.device_bytes()));
            lm.set_offload(off);
        }
        let mmproj = opts
            .mmproj
            .unwrap_or_else(|| convert::write::mmproj_path(path));
        Ok(Model {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                lm,
                tokenizer,
                mmproj,
                vision: Mutex::new(None),
                pool: opts.pool,
                exif_rotate: opts.exif_rotate,
                backend: vision_backend,
                vision_precision: opts.vision_precision,
                preload: opts.experts.preload,
            }),
        })
    }

    /// A new conversation with its own KV cache and feature cache.
    pub fn session(&self) -> Session {
        Session::new(self.clone())
    }

    /// The vision model, loading it on first use.
    pub fn load_vision(&self) -> Result<Arc<VisionModel>, Error> {
        let mut slot = self
            .inner
            .vision
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let path = &self.inner.mmproj;
        if !path.is_file() {
            return Err(Error::NoMmproj(path.clone()));
        }
        let ahead_of = self.inner.lm.preload();
        let mut v =
            VisionModel::load_with(path, self.inner.preload, ahead_of).map_err(|source| {
                Error::LoadVision {
                    path: path.clone(),
                    source: Box::new(source),
                }
            })?;
        v.set_precision(self.inner.vision_precision);
        let threads = self
            .inner
            .pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        if let Some(enc) = backend::vision_encoder(&self.inner.backend, &v, threads)? {
            v.set_offload(enc);
        }
        let v = Arc::new(v);
        *slot = Some(v.clone());
        Ok(v)
    }

    /// Whether an mmproj file is there to load (images can be answered).
    pub fn has_vision(&self) -> bool {
        self.inner.mmproj.is_file()
    }

    /// The language model (weights, hyper-parameters).
    pub fn language(&self) -> &LanguageModel {
        &self.inner.lm
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The context length in use (positions of a session's KV cache).
    pub fn context_length(&self) -> usize {
        self.inner.lm.hp.n_ctx
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The model's name: its file name without `.gguf` (what a server advertises).
    pub fn name(&self) -> String {
        self.inner
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pocketvl".to_owned())
    }

    pub(super) fn exif_rotate(&self) -> bool {
        self.inner.exif_rotate
    }

    /// Runs `f` in the model's worker pool (the caller's when none was given).
    pub(super) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.inner.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}
