pub mod block;
pub mod direct_io;
pub mod formats;
pub mod gguf;
pub mod kernels;
pub mod schema;
pub mod temp_file;
pub mod types;

pub use types::GgmlType;
