//! The library API on a converted fixture: two sessions computing in parallel on one model
//! give the tokens of two separate runs; a multi-turn chat equals `pocketvl run`'s answers;
//! the streaming iterator equals the callback; a cancelled generation leaves the session
//! usable; the limits are the library's too.

use std::path::{Path, PathBuf};
use std::process::Command;

use pocketvl::{
    CancelToken, ChatTurn, GenerateOptions, ImageInput, Model, ModelOptions, Prompt, StopReason,
};

use crate::common;
use common::{fixture, s};

fn model_path() -> &'static Path {
    common::tiny_mha_f32()
}

fn image(name: &str) -> PathBuf {
    fixture("tiny-mha").join("images").join(name)
}

fn load() -> Model {
    Model::load(model_path(), ModelOptions::default()).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new: n,
        ..GenerateOptions::greedy()
    }
}

/// One request per conversation: a text one and one with an image.
fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Chat(vec![ChatTurn::user(
            "Write a short poem about the sea.",
            vec![],
        )]),
        Prompt::Chat(vec![ChatTurn::user(
            "Describe this image.",
            vec![ImageInput::path(image("giraffe.jpg"))],
        )]),
    ]
}

#[test]
fn parallel_sessions_equal_separate_runs() {
    let opts = greedy(12);
    // Separate runs: a fresh model per prompt, one after the other.
    let want: Vec<Vec<u32>> = prompts()
        .iter()
        .map(|p| {
            let m = load();
            m.session().complete(p, &opts, |_| {}).unwrap().tokens
        })
        .collect();
    // One model, two sessions, both generating at the same time, three rounds each (the
    // later rounds reuse each session's cache).
    let model = load();
    let got: Vec<Vec<Vec<u32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts()
            .into_iter()
            .map(|p| {
                let mut session = model.session();
                let opts = opts.clone();
                scope.spawn(move || {
                    (0..3)
                        .map(|_| session.complete(&p, &opts, |_| {}).unwrap().tokens)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, rounds) in got.iter().enumerate() {
        assert!(!want[i].is_empty());
        for r in rounds {
            assert_eq!(r, &want[i], "prompt {i}");
        }
    }
}

/// `pocketvl run --json` through the real binary; returns (stdout JSON).
fn cli_json(args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
        .args([
            "run",
            "-m",
            s(model_path()),
            "-t",
            "2",
            "--temperature",
            "0",
        ])
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn chat_and_stream_equal_the_cli() {
    let giraffe = image("giraffe.jpg");
    let cli = cli_json(&[
        "--image",
        s(&giraffe),
        "-p",
        "Describe this image.",
        "-n",
        "10",
    ]);
    let want: Vec<u32> = serde_json::from_value(cli["tokens"].clone()).unwrap();
    let model = load();
    let mut chat = model.session();
    let opts = greedy(10);
    let mut streamed = String::new();
    let r = chat
        .chat(
            "Describe this image.",
            vec![ImageInput::path(&giraffe)],
            &opts,
            |t| streamed.push_str(t),
        )
        .unwrap();
    assert_eq!(r.tokens, want);
    assert_eq!(r.text, cli["text"].as_str().unwrap());
    assert_eq!(streamed, r.text);
    // A follow-up reuses the first turn's positions and the image's features.
    let r2 = chat
        .chat("And the colours?", vec![], &opts, |_| {})
        .unwrap();
    assert_eq!(r2.images.n_cached(), 1);
    assert!(r2.timings.prefill_tokens < r2.prompt_tokens.len() / 2);
    assert_eq!(chat.history().len(), 4);

    // The same second turn as one stateless request, through the iterator, on a fresh
    // session: same tokens.
    let bytes = std::fs::read(&giraffe).unwrap();
    let prompt = Prompt::Chat(vec![
        ChatTurn::user("Describe this image.", vec![ImageInput::bytes(bytes)]),
        ChatTurn::assistant(r.text.clone()),
        ChatTurn::user("And the colours?", vec![]),
    ]);
    let mut fresh = model.session();
    let mut stream = fresh.stream(&prompt, &opts).unwrap();
    let pieces: String = stream.by_ref().map(|p| p.unwrap()).collect();
    let r3 = stream.finish();
    assert_eq!(r3.tokens, r2.tokens);
    assert_eq!(pieces, r3.text);
}

#[test]
fn cancellation_leaves_the_session_usable() {
    let model = load();
    let mut session = model.session();
    let prompt = &prompts()[0];
    let want = model
        .session()
        .complete(prompt, &greedy(8), |_| {})
        .unwrap();
    // Cancelled from the callback after the first piece.
    let cancel = CancelToken::new();
    let opts = GenerateOptions {
        cancel: Some(cancel.clone()),
        ..greedy(8)
    };
    let r = session
        .complete(prompt, &opts, |_| cancel.cancel())
        .unwrap();
    assert_eq!(r.stop, StopReason::Cancelled);
    assert!(r.tokens.len() < want.tokens.len());
    // Dropping a stream early is a cancellation too.
    let mut stream = session.stream(prompt, &greedy(8)).unwrap();
    let _ = stream.next();
    drop(stream);
    let again = session.complete(prompt, &greedy(8), |_| {}).unwrap();
    assert_eq!(again.tokens, want.tokens);
}

#[test]
fn limits_and_options_are_checked() {
    let model = load();
    let mut session = model.session();
    let opts = greedy(4);
    let many =
        vec![ImageInput::path(image("giraffe.jpg")); pocketvl::limits::MAX_IMAGES_PER_PROMPT + 1];
    let e = session
        .complete(
            &Prompt::Chat(vec![ChatTurn::user("x", many)]),
            &opts,
            |_| {},
        )
        .unwrap_err();
    assert!(e.is_request_error());
    assert_eq!(e.to_string(), "17 images in one prompt; the limit is 16");
    let e = session
        .complete(&prompts()[0], &greedy(0), |_| {})
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the number of tokens to generate must be at least 1"
    );
    let e = Model::load(
        model_path(),
        ModelOptions {
            ctx: Some(5000),
            ..ModelOptions::default()
        },
    )
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "a context length of 5000 tokens is beyond the model's context length of 4096"
    );
}
