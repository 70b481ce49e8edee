//! The GGUF container (format v3, read-compatible with v2), as ggml's
//! `gguf.cpp` and the Python `gguf` package read and write it.
//!
//! * [`GgufFile`] memory-maps a file and validates it completely at open:
//!   afterwards every accessor is infallible and tensor data is a zero-copy
//!   slice of the map.
//! * [`GgufWriter`] collects metadata and tensor infos, writes the header to
//!   a temporary file next to the destination, then [`GgufDataWriter`]
//!   streams tensor data through a bounded buffer and [`PendingFile::commit`]
//!   renames the finished file into place, so a reader never sees a partial
//!   model file.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count, the key/value pairs, the tensor infos, zero padding to the
//! alignment, then the tensor data, each tensor padded to the alignment.

mod direct;
mod error;
mod reader;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use value::{Value, ValueType, ALL_VALUE_TYPES};
pub use writer::{GgufDataWriter, GgufWriter, PendingFile};

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Bytes of the fixed header: magic, version, tensor count, metadata count.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 8;

/// Longest string accepted (ggml's limit, 1 GiB).
pub const MAX_STRING_LEN: u64 = 1 << 30;

/// Most tensor dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Tensor names must be shorter than this many bytes (`GGML_MAX_NAME`).
pub const MAX_NAME_LEN: usize = 64;

/// Deepest nesting of arrays the reader accepts. ggml rejects nested arrays
/// outright; gguf-py can write them, so we read a few levels, and the bound
/// keeps a hostile file from recursing the stack away.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Most array elements, over all metadata, the reader accepts (16 Mi; a
/// 128k-token vocabulary with scores, types and merges needs well under 1 Mi).
/// Each parsed element is a [`Value`] of about 32 bytes, so without a cap a
/// hostile file of u8 arrays would cost 32 times its size in memory.
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// The smallest possible tensor info: empty name (u64 length), u32 n_dims
/// with no dims, u32 type, u64 offset.
const MIN_TENSOR_INFO_LEN: usize = 8 + 4 + 4 + 8;

/// `x` rounded up to a multiple of the power of two `align`, or `None` on
/// overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    x.checked_add(mask).map(|v| v & !mask)
}

// Errors travel through `anyhow` and files are shared across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<GgufError>();
    assert_send_sync::<GgufFile>();
    assert_send_sync::<GgufWriter>();
};
