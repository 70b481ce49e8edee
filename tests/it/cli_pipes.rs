//! Every printing command exits quietly when its reader has gone away (`pocketvl inspect
//! model.gguf | head`): no panic, no "Broken pipe" message, killed by SIGPIPE like any Unix
//! tool (or done before it wrote). Each command runs with a stdout pipe whose read end is
//! closed before the process starts, so its first write hits the closed pipe every time.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{self, fixture, s};

/// Runs pocketvl with stdout a pipe nobody reads; returns (signal, exit code, stderr).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run pocketvl");
    (
        out.status.signal(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet(what: &str, args: &[&str]) {
    let (signal, code, stderr) = with_closed_stdout(args);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what}: noisy on a closed pipe: {stderr}"
    );
    assert!(
        signal == Some(libc::SIGPIPE) || code == Some(0),
        "{what}: expected SIGPIPE or success, got signal {signal:?} code {code:?}: {stderr}"
    );
}

#[test]
fn inspect_text_and_json_exit_quietly() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    assert_quiet("inspect", &["inspect", s(&model)]);
    assert_quiet("inspect --json", &["inspect", "--json", s(&model)]);
}

#[test]
fn run_stream_and_json_exit_quietly() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let base = ["run", "-m", s(&model), "-p", "Hello", "-n", "8", "-t", "1"];
    assert_quiet("run", &base);
    let mut json = base.to_vec();
    json.push("--json");
    assert_quiet("run --json", &json);
}

#[test]
fn bench_model_exits_quietly() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let args = [
        "bench",
        "model",
        "-m",
        s(&model),
        "-t",
        "1",
        "-p",
        "8",
        "-n",
        "2",
        "--reps",
        "1",
    ];
    assert_quiet("bench model", &args);
    let mut json = args.to_vec();
    json.push("--json");
    assert_quiet("bench model --json", &json);
}

#[test]
fn convert_and_bench_convert_summaries_exit_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let hf = fixture("tiny-mha").join("hf");
    let out = dir.path().join("m.gguf");
    assert_quiet(
        "convert",
        &["convert", s(&hf), "-o", s(&out), "--quant", "q8_0"],
    );
    // The summary comes after both files are committed: they are complete.
    assert!(out.is_file() && dir.path().join("mmproj-m.gguf").is_file());
    let tmp = dir.path().join("bench");
    std::fs::create_dir(&tmp).unwrap();
    assert_quiet(
        "bench convert",
        &[
            "bench",
            "convert",
            s(&hf),
            "--tmp-dir",
            s(&tmp),
            "--threads",
            "1",
        ],
    );
    assert!(Path::new(&tmp).read_dir().unwrap().next().is_none());
}
