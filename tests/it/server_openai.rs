//! `pocketvl serve` against real clients: the official `openai` Python package (plain,
//! streaming with usage, a data-URL image, a follow-up turn reusing the KV prefix, errors in
//! OpenAI's JSON, the API key, 16 clients x 10 requests identical to `pocketvl run`, a client
//! that disconnects mid-stream), `curl -N` for the SSE framing, and `/health` answering 503
//! before the model is loaded. Expectations come from `pocketvl run --json` and the library.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pocketvl::server::{router, AppState, ServeOptions};
use pocketvl::{ChatTurn, GenerateOptions, ImageInput, Model, ModelOptions, Prompt};
use serde_json::{json, Value};

use crate::common;
use common::{fixture, s};

fn model_path() -> &'static Path {
    common::tiny_mha_f32()
}

fn giraffe() -> PathBuf {
    fixture("tiny-mha").join("images").join("giraffe.jpg")
}

/// A `pocketvl serve` child on a free loopback port; killed on drop.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pocketvl"))
            .args(["serve", "-m", s(model_path()), "--port", "0", "-t", "2"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server printed its address");
        let server = Server { child, base, log };
        let t0 = Instant::now();
        while curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &server.url("/health"),
        ]) != "200"
        {
            assert!(t0.elapsed() < Duration::from_secs(60), "{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let o = Command::new("curl").args(args).output().expect("curl runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `pocketvl run --json` on one user message.
fn run_json(text: &str, image: Option<&Path>, n: usize) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pocketvl"));
    cmd.args([
        "run",
        "-m",
        s(model_path()),
        "-t",
        "2",
        "--temperature",
        "0",
    ])
    .args(["-p", text, "-n", &n.to_string(), "--json"]);
    if let Some(i) = image {
        cmd.args(["--image", s(i)]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// One expectation case for the Python checks.
fn case(name: &str, messages: Value, max_tokens: usize, run: &Value) -> Value {
    json!({
        "name": name,
        "messages": messages,
        "max_tokens": max_tokens,
        "text": run["text"],
        "stop": run["stop"],
        "prompt_tokens": run["prompt_tokens"].as_array().unwrap().len(),
        "completion_tokens": run["tokens"].as_array().unwrap().len(),
    })
}

/// Everything the Python checks compare against.
fn spec(api_key: Option<&str>) -> Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    let mut v = SPEC
        .get_or_init(|| {
            let g = giraffe();
            let poem = "Write a short poem about the sea.";
            let describe = "Describe this image.";
            let text_run = run_json(poem, None, 12);
            let image_run = run_json(describe, Some(&g), 12);
            let cases = vec![
                case(
                    "text",
                    json!([{"role": "user", "text": poem}]),
                    12,
                    &text_run,
                ),
                case(
                    "image",
                    json!([{"role": "user", "text": describe, "image": s(&g)}]),
                    12,
                    &image_run,
                ),
            ];
            // The follow-up's answer from the library (a fresh session, the whole conversation).
            let first = image_run["text"].as_str().unwrap().to_string();
            let follow = "And the colours?";
            let model = Model::load(model_path(), ModelOptions::default()).unwrap();
            let r = model
                .session()
                .complete(
                    &Prompt::Chat(vec![
                        ChatTurn::user(describe, vec![ImageInput::path(&g)]),
                        ChatTurn::assistant(first.clone()),
                        ChatTurn::user(follow, vec![]),
                    ]),
                    &GenerateOptions {
                        max_new: 12,
                        ..GenerateOptions::greedy()
                    },
                    |_| {},
                )
                .unwrap();
            let second = json!({
                "name": "follow-up",
                "messages": [
                    {"role": "user", "text": describe, "image": s(&g)},
                    {"role": "assistant", "text": first},
                    {"role": "user", "text": follow},
                ],
                "max_tokens": 12,
                "text": r.text,
                "stop": r.stop.name(),
                "prompt_tokens": r.prompt_tokens.len(),
                "completion_tokens": r.tokens.len(),
            });
            let hello = "Hello world, how are you?";
            json!({
                "model": "tiny",
                "image": s(&g),
                "cases": cases,
                "follow_up": {
                    "first": cases[1],
                    "second": second,
                    // At least the first turn's image and text come from the cache.
                    "min_cached": image_run["prompt_tokens"].as_array().unwrap().len(),
                },
                "long": {"name": "long", "messages": [{"role": "user", "text": poem}],
                         "max_tokens": 3000},
                "tokenize": {"text": hello, "ids": model.tokenizer().encode(hello).unwrap()},
                "max_request_bytes": pocketvl::limits::MAX_REQUEST_BYTES,
            })
        })
        .clone();
    if let Some(k) = api_key {
        v["api_key"] = json!(k);
    }
    v
}

/// Runs the Python checks against `server`; skipped without the test venv.
fn python_checks(server: &Server, spec: &Value, checks: &[&str]) {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_checks.py");
    let o = Command::new(py)
        .arg(&script)
        .arg(&server.base)
        .arg(&spec_path)
        .args(checks)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python checks {checks:?} failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        server.log()
    );
}

#[test]
fn openai_client_plain_stream_image_follow_up_and_errors() {
    let server = Server::start(&["--parallel", "2"]);
    python_checks(&server, &spec(None), &["basic", "errors", "disconnect"]);
}

#[test]
fn sixteen_clients_ten_requests_each_match_run() {
    let server = Server::start(&["--parallel", "4"]);
    python_checks(&server, &spec(None), &["load"]);
}

#[test]
fn api_key_is_required() {
    let server = Server::start(&["--api-key", "sekrit"]);
    python_checks(&server, &spec(Some("sekrit")), &["auth"]);
}

/// The raw SSE bytes as `curl -N` receives them: `data: <json>` events separated by blank
/// lines, chunks of one id, a usage chunk, then `data: [DONE]`.
#[test]
fn curl_sees_openai_sse_framing() {
    let server = Server::start(&[]);
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let out = curl(&[
        "-sN",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
        &server.url("/v1/chat/completions"),
    ]);
    assert!(out.ends_with("data: [DONE]\n\n"), "{out:?}");
    let events: Vec<&str> = out.trim_end().split("\n\n").collect();
    let mut ids = Vec::new();
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}"));
        assert!(!data.contains('\n'), "one line per event: {e:?}");
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        ids.push(v["id"].as_str().unwrap().to_string());
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    let usage: Value = serde_json::from_str(&events[events.len() - 2][6..]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let run = run_json("Write a short poem about the sea.", None, 6);
    assert_eq!(text, run["text"].as_str().unwrap());
    // Errors are OpenAI's JSON, with the status.
    let e = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-d",
        "{\"messages\": 3}",
        &server.url("/v1/chat/completions"),
    ]);
    let (body, code) = e.rsplit_once('\n').unwrap();
    assert_eq!(code, "400");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

/// `/health` is 503 (in OpenAI's error JSON) until the model is loaded, then 200; other
/// endpoints wait for the model the same way.
#[test]
fn health_is_503_while_loading() {
    let state = AppState::new(ServeOptions {
        model: model_path().to_path_buf(),
        mmproj: None,
        host: "127.0.0.1".into(),
        port: 0,
        api_key: None,
        parallel: 1,
        ctx: None,
        pool: None,
        allow_local_files: false,
        exif_rotate: true,
        backend: Default::default(),
        experts: Default::default(),
        vision_precision: Default::default(),
        cache_type: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    let status = |path: &str| {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}{path}"),
        ])
    };
    assert_eq!(status("/health"), "503");
    assert_eq!(status("/v1/models"), "503");
    let body = curl(&["-s", &format!("{base}/health")]);
    assert!(body.contains("the model is loading"), "{body}");
    state.load().unwrap();
    assert_eq!(status("/health"), "200");
    assert_eq!(status("/v1/models"), "200");
}
