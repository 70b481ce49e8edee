//! The one error type of the GGUF container. Every variant carries enough
//! context (key or tensor name, file offset, expected vs found) to tell a user
//! what is wrong with which file without a debugger.

use std::path::PathBuf;

use crate::GgmlType;

/// Everything that can go wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An operating-system error on `path`.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A parse error in the file at `path` (wraps the error found in its bytes).
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<GgufError>,
    },

    /// The file ends before a field that must be there.
    #[error("truncated file: {what} needs {needed} bytes at offset {offset}, but the file is {file_len} bytes long")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },

    /// A big-endian GGUF (the version field reads byte-swapped).
    #[error("big-endian GGUF (version {version} byte-swapped) is not supported; convert it to little-endian")]
    BigEndian { version: u32 },

    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2 and 3)")]
    UnsupportedVersion { version: u32 },

    /// A count in the file cannot possibly fit in the bytes that remain.
    #[error("{what} at offset {offset}: count {count} cannot fit in the {remaining} bytes left in the file")]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        remaining: u64,
    },

    /// A string longer than the format allows or than what is left of the file.
    #[error("{what} at offset {offset}: string length {len} exceeds the limit {max}")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        max: u64,
    },

    /// A string that is not UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    /// A metadata value type id outside 0..=12.
    #[error("metadata key {key:?} at offset {offset}: unknown value type id {id}")]
    UnknownValueType { key: String, offset: u64, id: u32 },

    /// A bool stored as a byte other than 0 or 1.
    #[error("metadata key {key:?} at offset {offset}: bool byte is {byte}, expected 0 or 1")]
    InvalidBool { key: String, offset: u64, byte: u8 },

    /// Arrays nested deeper than the reader accepts.
    #[error("metadata key {key:?}: arrays nested deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },

    /// More array elements in the metadata than the reader accepts.
    #[error("metadata key {key:?}: arrays hold more than {max} elements in all")]
    TooManyValues { key: String, max: u64 },

    /// The same metadata key twice.
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },

    /// A bad `general.alignment` (wrong type, zero, or not a power of two).
    #[error("general.alignment must be a nonzero power-of-two u32, found {found}")]
    BadAlignment { found: String },

    /// The same tensor name twice.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },

    /// A tensor name the format does not allow.
    #[error("tensor name {name:?}: {reason}")]
    BadTensorName { name: String, reason: String },

    /// A tensor with an unsupported number of dimensions.
    #[error("tensor {name:?}: {n_dims} dimensions, expected {min}..={max}")]
    BadDimCount {
        name: String,
        n_dims: u64,
        min: u64,
        max: u64,
    },

    /// A negative dimension (ggml stores dimensions as i64).
    #[error("tensor {name:?}: dimension {index} is negative ({value})")]
    NegativeDim {
        name: String,
        index: usize,
        value: i64,
    },

    /// A ggml type id pocketvl does not know.
    #[error("tensor {name:?}: unknown ggml type id {id}")]
    UnknownGgmlType { name: String, id: u32 },

    /// Dimensions whose byte size is not defined (`ne[0]` not a multiple of the
    /// block size) or overflows.
    #[error("tensor {name:?}: shape {ne:?} of type {ty}: {reason}")]
    BadTensorShape {
        name: String,
        ty: GgmlType,
        ne: Vec<u64>,
        reason: String,
    },

    /// A tensor data offset that is not a multiple of the alignment.
    #[error(
        "tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },

    /// Tensor data that does not lie inside the file.
    #[error("tensor {name:?}: data bytes {start}..{end} (absolute) lie outside the {file_len}-byte file")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },

    /// Two tensors whose data ranges overlap.
    #[error("tensors {first:?} and {second:?} have overlapping data")]
    TensorOverlap { first: String, second: String },

    /// A writer array whose elements do not all have the declared type, or a
    /// nested array (ggml's reader rejects arrays of arrays).
    #[error("metadata key {key:?}: {reason}")]
    BadValue { key: String, reason: String },

    /// The destination exists and overwriting was not requested.
    #[error("{} already exists (pass overwrite to replace it)", path.display())]
    FileExists { path: PathBuf },

    /// More tensor bytes were written than the tensors declared.
    #[error("too many tensor bytes: {extra} bytes after the last tensor ({last:?}) was complete")]
    TooManyBytes { last: String, extra: u64 },

    /// `write_rows` was given more bytes than the current tensor still takes.
    #[error("{rows} bytes of rows do not fit tensor {name:?}: {left} bytes left")]
    RowsPastTensor { name: String, rows: u64, left: u64 },

    /// `finish` was called before every tensor got exactly its bytes.
    #[error("tensor {name:?} is incomplete: {written} of {expected} bytes written")]
    IncompleteTensor {
        name: String,
        expected: u64,
        written: u64,
    },
}

impl GgufError {
    /// Wraps an `io::Error` with the operation and path it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The innermost error (unwraps [`GgufError::InFile`]), handy for matching.
    pub fn root(&self) -> &GgufError {
        match self {
            GgufError::InFile { source, .. } => source.root(),
            other => other,
        }
    }
}
