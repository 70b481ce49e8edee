//! Error messages of the real binary, checked verbatim: one line, each cause once, exit
//! status 1, no panic.

use std::path::Path;

use crate::common::{self, fixture, s};

/// The command fails with exactly `message` on stderr (plus the newline).
fn fails_with(dir: &Path, args: &[&str], message: &str) {
    let (code, _, stderr) = common::pocketvl_in(dir, args);
    assert_eq!(stderr, format!("{message}\n"), "pocketvl {args:?}");
    assert_eq!(code, Some(1), "pocketvl {args:?}: {stderr}");
}

#[test]
fn a_missing_image_names_its_cause_once() {
    let (dir, model) = common::converted("tiny-mha", "q8_0");
    fails_with(
        dir.path(),
        &["run", "-m", s(&model), "--image", "nope.jpg", "-p", "hi"],
        "error: reading image nope.jpg: cannot read image file nope.jpg: No such file or \
         directory (os error 2)",
    );
}

#[test]
fn a_model_that_is_not_gguf_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("README.md"),
        "# pocketvl\n\nRun DeepSeek-VL2 vision-language models on CPU.\n",
    )
    .unwrap();
    fails_with(
        dir.path(),
        &["run", "-m", "README.md", "-p", "hi"],
        "error: cannot open model file README.md: README.md: not a GGUF file: magic is [23, 20, \
         70, 6f], expected \"GGUF\"",
    );
    fails_with(
        dir.path(),
        &["inspect", "README.md"],
        "error: reading README.md: README.md: not a GGUF file: magic is [23, 20, 70, 6f], expected \"GGUF\"",
    );
}

#[test]
fn convert_and_bench_convert_name_the_missing_checkpoint_once() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        dir.path(),
        &["convert", "nope", "-o", "m.gguf"],
        "error: planning the conversion of nope: nope/config.json: No such file or directory (os \
         error 2)",
    );
    fails_with(
        dir.path(),
        &["bench", "convert", "nope"],
        "error: bench convert nope: nope: No such file or directory (os error 2)",
    );
}

#[test]
fn zero_threads_is_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let hf = fixture("tiny-mha").join("hf");
    for args in [
        vec!["run", "-m", "m.gguf", "-p", "hi", "--threads", "0"],
        vec!["convert", s(&hf), "-o", "m.gguf", "--threads", "0"],
        vec!["bench", "model", "-m", "m.gguf", "--threads", "0"],
        vec!["bench", "convert", s(&hf), "--threads", "0"],
    ] {
        fails_with(dir.path(), &args, "error: --threads must be at least 1");
    }
}
