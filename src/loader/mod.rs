//! The GGUF file as the model sees it: typed hyper-parameters read once with
//! every missing key reported together ([`MetaReader`], [`hparams`]), weights
//! fetched by name with their expected shape ([`ModelFile::weight`]), and a
//! final check that no tensor of the file went unused
//! ([`ModelFile::check_all_used`]). Weights stay in the mmap: a [`Weight`]
//! is an `Arc` to the file plus the tensor's index.

pub mod hparams;
mod meta;
mod preload;
mod weight;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quant::gguf::GgufFile;
use quant::GgmlType;
use thiserror::Error;

pub use hparams::{Attention, Gating, LmHparams, TopkMethod};
pub use meta::MetaReader;
pub use preload::{Preload, PreloadHold, PreloadReport};
pub use weight::Weight;

/// Everything that can be wrong with a model file, named precisely.
#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("cannot open model file {path}: {source}")]
    Open {
        path: PathBuf,
        source: quant::gguf::GgufError,
    },
    #[error("{path}: missing or mistyped metadata: {}", .problems.join("; "))]
    Metadata {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}: architecture `{found}` is not a DeepSeek-VL2 language model (expected one of {expected})")]
    Architecture {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: unsupported value {key} = {value}: {why}")]
    Unsupported {
        path: PathBuf,
        key: String,
        value: String,
        why: String,
    },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("{path}: tensor `{name}` has type {found}, expected one of {expected}")]
    Type {
        path: PathBuf,
        name: String,
        expected: String,
        found: &'static str,
    },
    #[error("{path}: {} tensors are not used by the model: {}", .names.len(), .names.join(", "))]
    Unused { path: PathBuf, names: Vec<String> },
    #[error("{path}: tokenizer: {why}")]
    Tokenizer { path: PathBuf, why: String },
}

pub type Result<T, E = LoaderError> = std::result::Result<T, E>;

/// Types the runtime's matmul can read: every type with a dot kernel.
pub fn matmul_types() -> Vec<GgmlType> {
    quant::types::ALL_TYPES
        .iter()
        .copied()
        .filter(|t| quant::kernels::has_vec_dot(*t))
        .collect()
}

struct Inner {
    path: PathBuf,
    gguf: GgufFile,
    used: Mutex<BTreeSet<usize>>,
}

/// A mapped GGUF file shared by every [`Weight`] taken from it.
#[derive(Clone)]
pub struct ModelFile {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl ModelFile {
    /// Maps and parses `path` (the GGUF reader rejects bad magic, newer
    /// versions and out-of-bounds tensors with its own clear errors).
    pub fn open(path: &Path) -> Result<ModelFile> {
        let gguf = GgufFile::open(path).map_err(|source| LoaderError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ModelFile {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                gguf,
                used: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The underlying container.
    pub fn gguf(&self) -> &GgufFile {
        &self.inner.gguf
    }

    /// A reader that collects every missing or mistyped key of a group of
    /// metadata reads into one error.
    pub fn meta(&self) -> MetaReader<'_> {
        MetaReader::new(self)
    }

    /// The tensor `name`, which must have ggml shape `ne` and a type the
    /// matmul reads. Marks it used.
    pub fn weight(&self, name: &str, ne: &[u64]) -> Result<Weight> {
        self.weight_of(name, ne, &matmul_types())
    }

    /// The tensor `name` with shape `ne` and one of the types `allowed`
    /// (e.g. F32 only for norms and router weights). Marks it used.
    pub fn weight_of(&self, name: &str, ne: &[u64], allowed: &[GgmlType]) -> Result<Weight> {
        self.optional_weight_of(name, ne, allowed)?
            .ok_or_else(|| LoaderError::MissingTensor {
                path: self.inner.path.clone(),
                name: name.to_string(),
            })
    }

    /// Like [`ModelFile::weight`], but a missing tensor is `None` (only for
    /// tensors the model really has optionally).
    pub fn optional_weight(&self, name: &str, ne: &[u64]) -> Result<Option<Weight>> {
        self.optional_weight_of(name, ne, &matmul_types())
    }

    /// Like [`ModelFile::weight_of`], but a missing tensor is `None`.
    pub fn optional_weight_of(
        &self,
        name: &str,
        ne: &[u64],
        allowed: &[GgmlType],
    ) -> Result<Option<Weight>> {
        let tensors = self.inner.gguf.tensors();
        let Some(index) = tensors.iter().position(|t| t.name == name) else {
            return Ok(None);
        };
        let info = &tensors[index];
        if info.ne.as_slice() != ne {
            return Err(LoaderError::Shape {
                path: self.inner.path.clone(),
                name: name.to_string(),
                expected: ne.to_vec(),
                found: info.ne.clone(),
            });
        }
        if !allowed.contains(&info.ty) {
            return Err(LoaderError::Type {
                path: self.inner.path.clone(),
                name: name.to_string(),
                expected: allowed
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join("/"),
                found: info.ty.name(),
            });
        }
        if let Ok(mut used) = self.inner.used.lock() {
            used.insert(index);
        }
        Ok(Some(Weight::mapped(self.clone(), index)))
    }

    /// Fails, naming them, if any tensor of the file was never fetched.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self
            .inner
            .used
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        let names: Vec<String> = self
            .inner
            .gguf
            .tensors()
            .iter()
            .enumerate()
            .filter(|(i, _)| !used.contains(i))
            .map(|(_, t)| t.name.clone())
            .collect();
        if names.is_empty() {
            Ok(())
        } else {
            Err(LoaderError::Unused {
                path: self.inner.path.clone(),
                names,
            })
        }
    }
}
