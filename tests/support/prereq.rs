//! Test prerequisites outside Rust (the Python venv with the reference packages, a llama.cpp
//! build): one rule for every test crate of the workspace, included by path.
//!
//! A test whose prerequisite is missing must not pass silently. Outside CI it writes
//! `SKIPPED <test>: <why>` straight to the process's stderr — the test harness captures only
//! `print!`/`eprint!`, so the line shows in the run's output although the test reports `ok` —
//! and `scripts/test.sh` counts these lines in its closing summary. Under `CI=true` a missing
//! prerequisite fails the test instead: CI installs every prerequisite, so a skip there is a bug.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Whether this run is CI's (`CI=true`, as CI systems set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports that the calling test cannot run because of `why`: a `SKIPPED` line outside CI, a
/// panic (test failure) under `CI=true`. The caller returns right after.
pub fn skip(why: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("<unnamed test>");
    if under_ci() {
        panic!("{test}: prerequisite missing under CI=true: {why}");
    }
    // Straight to fd 2, past the harness's capture; nothing to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// The Python interpreter named by `POCKETVL_PYTHON` (scripts/test.sh sets it to its venv),
/// or `None` after [`skip`]; a path that does not exist counts as missing (a bare command name
/// is left to `PATH`).
pub fn python() -> Option<String> {
    match std::env::var("POCKETVL_PYTHON") {
        Ok(p) if p.contains('/') && !PathBuf::from(&p).exists() => {
            skip(&format!("POCKETVL_PYTHON={p} does not exist"));
            None
        }
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            skip("POCKETVL_PYTHON not set (scripts/test.sh sets it)");
            None
        }
    }
}
