pub mod gguf;
pub mod schema;
pub mod types;

pub use types::GgmlType;
