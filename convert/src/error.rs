//! The converter's error type: one enum for the whole crate, each variant carrying the
//! context a user needs to fix the input (file, tensor or key name, expected vs found).

use std::path::PathBuf;

/// Everything that can go wrong while reading a Hugging Face checkpoint or writing GGUF.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file whose framing or header is invalid.
    #[error("{path}: invalid safetensors file: {reason}")]
    SafeTensors { path: PathBuf, reason: String },
    /// A safetensors tensor with a dtype this converter does not know.
    #[error("{path}: tensor '{tensor}' has unsupported dtype '{dtype}'")]
    UnknownDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A tensor was asked for in a representation its dtype cannot give.
    #[error("tensor '{tensor}': dtype {dtype} cannot be read as {wanted}")]
    DtypeMismatch {
        tensor: String,
        dtype: &'static str,
        wanted: &'static str,
    },
    /// A tensor name that is not in the checkpoint.
    #[error("tensor '{0}' not found in the checkpoint")]
    MissingTensor(String),
    /// A shard named by the index that is not on disk.
    #[error("shard '{shard}' (named in {index} for tensor '{tensor}') is missing: {reason}")]
    MissingShard {
        index: PathBuf,
        shard: String,
        tensor: String,
        reason: String,
    },
    /// A JSON file that does not parse or has the wrong structure.
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
    /// A config.json that is not a DeepSeek-VL2 config.
    #[error("{path}: model_type is '{found}', expected '{expected}'")]
    WrongModelType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// Required config keys that are missing (all of them, at once).
    #[error("{path}: missing required keys: {}", keys.join(", "))]
    MissingKeys { path: PathBuf, keys: Vec<String> },
    /// A config value that is present but unusable.
    #[error("{path}: key '{key}': {reason}")]
    BadConfigValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A tensor whose shape is not what the config implies.
    #[error("tensor '{tensor}': expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Checkpoint tensors that are neither mapped nor deliberately skipped.
    #[error("checkpoint tensors with no GGUF mapping: {}", names.join(", "))]
    UnmappedTensors { names: Vec<String> },
    /// models.toml is malformed (a build-time data bug, reported rather than panicking).
    #[error("models.toml: {0}")]
    Models(String),
    /// An invalid quantization recipe or type override.
    #[error("recipe: {0}")]
    Recipe(String),
    /// The tokenizer files are unusable.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An output file exists and `--force` was not given.
    #[error("output {0} already exists (use --force to replace it)")]
    OutputExists(PathBuf),
    /// An error from the GGUF container or a quantizer.
    #[error("{context}: {message}")]
    Quant { context: String, message: String },
}

/// The crate's result type.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

impl ConvertError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConvertError::Io {
            path: path.into(),
            source,
        }
    }
}

/// GGUF writing errors name their file and operation themselves.
impl From<quant::gguf::GgufError> for ConvertError {
    fn from(e: quant::gguf::GgufError) -> Self {
        ConvertError::Quant {
            context: "GGUF output".into(),
            message: e.to_string(),
        }
    }
}
