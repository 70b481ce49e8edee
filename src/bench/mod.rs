//! `pocketvl bench`: measurements whose targets are ratios against a roofline measured in the
//! same run (BENCHMARKS.md), so numbers from different machines stay comparable.

pub mod convert;
pub mod model;
pub mod peak;
pub mod readspeed;
pub mod rss;

use std::path::PathBuf;

/// Everything that can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A directory with no safetensors shards.
    #[error("{0}: no *.safetensors files (not a Hugging Face checkpoint directory?)")]
    NoShards(PathBuf),
    /// The converter failed.
    #[error("conversion failed")]
    Convert(#[from] ::convert::ConvertError),
}

impl BenchError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}
