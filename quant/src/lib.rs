pub mod block;
pub mod kernels;
pub mod schema;
pub mod types;

pub use types::GgmlType;
