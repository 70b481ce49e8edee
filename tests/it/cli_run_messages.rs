//! `pocketvl run`'s messages for input it used to accept silently (issue 11), each checked
//! verbatim: a context beyond the model's, a negative temperature, `-n 0`, an answer cut off
//! by the context, an unknown chat command, `/reset`, and `--draw-boxes` without boxes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common;
use common::{fixture, s};

fn model() -> &'static Path {
    common::tiny_mha_f32()
}

fn pocketvl(args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pocketvl"));
    cmd.args(["run", "-m", s(model()), "-t", "2"]);
    if !args.iter().any(|a| a.starts_with("--temperature")) {
        cmd.args(["--temperature", "0"]);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run that must fail with exactly `message` as its stderr.
fn fails_with(args: &[&str], message: &str) {
    let o = pocketvl(args, "");
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(stderr(&o), format!("{message}\n"), "{args:?}");
    assert!(o.stdout.is_empty(), "{args:?} printed {:?}", o.stdout);
}

/// A run that must succeed with `line` as one whole line of its stderr.
fn has_line(o: &Output, line: &str) {
    let e = stderr(o);
    assert!(o.status.success(), "{e}");
    // Chat prompts (`> `) share a line with what follows them.
    let bare = |l: &str| l.trim_start_matches("> ").to_string();
    assert!(e.lines().any(|l| bare(l) == line), "{line:?} not in:\n{e}");
}

#[test]
fn options_that_cannot_work_are_errors() {
    fails_with(
        &["-p", "hi", "--ctx", "5000"],
        "error: --ctx 5000: a context length of 5000 tokens is beyond the model's context \
         length of 4096",
    );
    fails_with(
        &["-p", "hi", "--ctx", "0"],
        "error: --ctx 0: a context length of 0 tokens cannot hold a prompt",
    );
    fails_with(
        &["-p", "hi", "--temperature=-1"],
        "error: temperature must be 0 (greedy) or more, got -1",
    );
    fails_with(
        &["-p", "hi", "-n", "0"],
        "error: the number of tokens to generate must be at least 1",
    );
}

#[test]
fn an_answer_cut_off_by_the_context_says_so() {
    let o = pocketvl(
        &["-p", "Write a poem.", "--ctx", "24", "-n", "100", "--json"],
        "",
    );
    has_line(
        &o,
        "note: the answer was cut off: the context of 24 tokens is full (use a larger --ctx)",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().last().unwrap().contains("\"stop\":\"context\""),
        "{out}"
    );
}

#[test]
fn chat_commands_answer() {
    let o = pocketvl(&["-n", "2"], "/frobnicate now\n/reset\n/exit\n");
    has_line(
        &o,
        "error: unknown command /frobnicate; the commands are /image PATH, /reset, /exit",
    );
    has_line(&o, "conversation cleared");
    // Nothing was sent to the model.
    assert!(!stderr(&o).contains("prefill:"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn draw_boxes_without_boxes_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("boxes.png");
    let img = fixture("tiny-mha").join("images").join("giraffe.jpg");
    let o = pocketvl(
        &[
            "--image",
            s(&img),
            "-p",
            "Describe.",
            "-n",
            "2",
            "--draw-boxes",
            s(&out),
        ],
        "",
    );
    has_line(
        &o,
        &format!(
            "note: the answer has no grounding boxes; {} is the image without boxes",
            out.display()
        ),
    );
    assert!(out.is_file());
}
