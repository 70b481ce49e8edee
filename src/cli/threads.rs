//! `--threads N`: one check for every subcommand that takes it, and the worker pool the
//! runtime computes in (built once, handed to the model; never rayon's global pool, so a
//! library user's own pool is left alone).

use anyhow::{bail, Context, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// The most worker threads accepted: far above any CPU this runs on, low enough that a typo
/// (`--threads 40000`) is an error rather than thousands of stacks.
pub const MAX_THREADS: usize = 4096;

/// Checks a `--threads` value: at least 1, at most [`MAX_THREADS`]; `None` stays the default.
pub fn check(threads: Option<usize>) -> Result<Option<usize>> {
    match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) if n > MAX_THREADS => {
            bail!("--threads {n} is more than the {MAX_THREADS} worker threads allowed")
        }
        t => Ok(t),
    }
}

/// The worker pool for `--threads` (default: one thread per available core). Fails with a
/// clear message when the count is invalid or the threads cannot be started.
pub fn pool(threads: Option<usize>) -> Result<ThreadPool> {
    let n = match check(threads)? {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("pocketvl-{i}"))
        .build()
        .with_context(|| format!("cannot start {n} worker threads"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_impossible_counts_are_errors() {
        assert!(check(Some(0)).is_err());
        assert!(check(Some(MAX_THREADS + 1)).is_err());
        assert_eq!(check(Some(3)).unwrap(), Some(3));
        assert_eq!(check(None).unwrap(), None);
        assert_eq!(pool(Some(2)).unwrap().current_num_threads(), 2);
        assert!(pool(Some(0)).is_err());
    }
}
