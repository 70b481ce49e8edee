//! `POST /v1/chat/completions`: parse and check the request, queue for a session, generate on
//! a blocking thread, and answer as one JSON object or as server-sent events in OpenAI's chunk
//! format. The generation stops when the client goes away: the event channel closes (or the
//! response is dropped, which fires the request's cancel token).

use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::{ChatRequest, Content, MessageIn, Usage};
use super::routes::{require_ready, ApiError};
use super::AppState;
use crate::generate::{CancelToken, GenerateOptions, StopReason};
use crate::pipeline::{Prompt, Reply};
use crate::Session;

/// What the generating thread tells the handler.
enum Ev {
    /// The prompt is prepared and prefilled: the answer starts (status 200 from here on).
    Started,
    Text(String),
    Done(Result<Reply, crate::Error>),
}

/// Cancels the generation when the response (or the waiting handler) is dropped.
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A chat-completions request the server accepts: the parsed body and what the library
/// gets from it.
#[derive(Debug)]
pub struct ChatCall {
    pub req: ChatRequest,
    pub opts: GenerateOptions,
    pub prompt: Prompt,
}

/// The body of `POST /v1/chat/completions` to the library's prompt and options, or the
/// 4xx error the client gets: JSON, the model name (`served`, or empty for any), the
/// options' bounds, roles and image URLs. Pure (no socket, no model, no file read), so
/// the fuzzer drives exactly what the handler runs.
pub fn chat_call(body: &[u8], served: &str, allow_local_files: bool) -> Result<ChatCall, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))?;
    if let Some(m) = &req.model {
        if !m.is_empty() && m != served {
            return Err(ApiError::model_not_found(m, served));
        }
    }
    let opts = req.options()?;
    let prompt = req.prompt(allow_local_files)?;
    Ok(ChatCall { req, opts, prompt })
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ready = require_ready(&st)?;
    let body = body.map_err(ApiError::from)?;
    let ChatCall {
        req,
        mut opts,
        prompt,
    } = chat_call(&body, &ready.name, st.opts.allow_local_files)?;
    let key: Vec<u64> = req.messages.iter().map(message_hash).collect();
    let cancel = CancelToken::new();
    opts.cancel = Some(cancel.clone());
    let guard = CancelOnDrop(cancel);
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let meta = Meta {
        id: format!("chatcmpl-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        created: super::now(),
        model: ready.name.clone(),
    };

    let Some(lease) = ready.workers.take(&key).await else {
        return Err(ApiError::unavailable("the server is shutting down"));
    };
    let (tx, mut rx) = mpsc::channel::<Ev>(64);
    let state = st.clone();
    tokio::task::spawn_blocking(move || {
        let mut lease = lease;
        let result = generate(&mut lease.session, &prompt, &opts, &tx);
        let mut key = key;
        if let Ok(r) = &result {
            key.push(message_hash(&MessageIn {
                role: "assistant".to_owned(),
                content: Some(Content::Text(r.text.clone())),
            }));
        }
        if let Some(ready) = state.ready() {
            ready.workers.put(lease, key);
        }
        let _ = tx.blocking_send(Ev::Done(result));
    });

    // Nothing is sent before the prompt is accepted: a bad image or a prompt longer than the
    // context is a 4xx, not an event inside a 200 stream.
    match rx.recv().await {
        Some(Ev::Started) => {}
        Some(Ev::Done(Err(e))) => return Err(ApiError::from(e)),
        _ => return Err(ApiError::internal("the generation ended before it started")),
    }
    if req.stream {
        return Ok(sse(rx, guard, meta, include_usage).into_response());
    }
    while let Some(ev) = rx.recv().await {
        if let Ev::Done(result) = ev {
            let r = result.map_err(ApiError::from)?;
            drop(guard);
            return Ok(Json(completion(&meta, &r)).into_response());
        }
    }
    Err(ApiError::internal("the generation ended without an answer"))
}

/// Runs one request on `session`, sending the answer's pieces; stops early when the receiver
/// is gone.
fn generate(
    session: &mut Session,
    prompt: &Prompt,
    opts: &GenerateOptions,
    tx: &mpsc::Sender<Ev>,
) -> Result<Reply, crate::Error> {
    let mut stream = session.stream(prompt, opts)?;
    if tx.blocking_send(Ev::Started).is_err() {
        return Ok(stream.finish());
    }
    for piece in stream.by_ref() {
        if tx.blocking_send(Ev::Text(piece?)).is_err() {
            break;
        }
    }
    Ok(stream.finish())
}

/// One hash per message: which idle session holds this conversation's prefix.
fn message_hash(m: &MessageIn) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.hash(&mut h);
    h.finish()
}

/// The fields every response and chunk repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::Context => "length",
        StopReason::Eos | StopReason::StopString | StopReason::Cancelled => "stop",
    }
}

fn usage(r: &Reply) -> Usage {
    let prompt = r.prompt_tokens.len();
    Usage::new(
        prompt,
        r.tokens.len(),
        prompt.saturating_sub(r.timings.prefill_tokens),
    )
}

/// The non-streaming response; grounding boxes (pixels of the conversation's last image)
/// ride in the message's extra `boxes` field.
fn completion(m: &Meta, r: &Reply) -> Value {
    json!({
        "id": m.id,
        "object": "chat.completion",
        "created": m.created,
        "model": m.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": r.text, "boxes": r.box_records()},
            "logprobs": null,
            "finish_reason": finish_reason(r.stop),
        }],
        "usage": usage(r),
    })
}

fn chunk(m: &Meta, delta: Value, finish: Option<&str>, include_usage: bool) -> Event {
    let mut c = json!({
        "id": m.id,
        "object": "chat.completion.chunk",
        "created": m.created,
        "model": m.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if include_usage {
        c["usage"] = Value::Null;
    }
    Event::default().data(c.to_string())
}

/// The event stream: a role chunk, one chunk per piece, the finish chunk, the usage chunk
/// when asked for, then `[DONE]`.
fn sse(
    rx: mpsc::Receiver<Ev>,
    guard: CancelOnDrop,
    meta: Meta,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    enum Phase {
        Role,
        Body,
        Tail(Vec<Event>),
        End,
    }
    let state = (rx, guard, meta, Phase::Role);
    let stream =
        futures_util::stream::unfold(state, move |(mut rx, guard, meta, phase)| async move {
            match phase {
                Phase::Role => {
                    let ev = chunk(
                        &meta,
                        json!({"role": "assistant", "content": ""}),
                        None,
                        include_usage,
                    );
                    Some((Ok(ev), (rx, guard, meta, Phase::Body)))
                }
                Phase::Body => match rx.recv().await {
                    Some(Ev::Text(t)) => {
                        let ev = chunk(&meta, json!({ "content": t }), None, include_usage);
                        Some((Ok(ev), (rx, guard, meta, Phase::Body)))
                    }
                    Some(Ev::Done(Ok(r))) => {
                        let boxes = r.box_records();
                        let delta = if boxes.is_empty() {
                            json!({})
                        } else {
                            json!({ "boxes": boxes })
                        };
                        let mut tail = vec![Event::default().data("[DONE]")];
                        if include_usage {
                            let u = json!({
                                "id": meta.id,
                                "object": "chat.completion.chunk",
                                "created": meta.created,
                                "model": meta.model,
                                "choices": [],
                                "usage": usage(&r),
                            });
                            tail.push(Event::default().data(u.to_string()));
                        }
                        let ev = chunk(&meta, delta, Some(finish_reason(r.stop)), include_usage);
                        Some((Ok(ev), (rx, guard, meta, Phase::Tail(tail))))
                    }
                    Some(Ev::Done(Err(e))) => {
                        let body = ApiError::from(e).body().to_string();
                        let tail = vec![Event::default().data("[DONE]")];
                        Some((
                            Ok(Event::default().data(body)),
                            (rx, guard, meta, Phase::Tail(tail)),
                        ))
                    }
                    Some(Ev::Started) | None => None,
                },
                Phase::Tail(mut rest) => match rest.pop() {
                    Some(ev) => {
                        let next = if rest.is_empty() {
                            Phase::End
                        } else {
                            Phase::Tail(rest)
                        };
                        Some((Ok(ev), (rx, guard, meta, next)))
                    }
                    None => None,
                },
                Phase::End => None,
            }
        });
    Sse::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn chat_call_checks_the_body_as_the_handler_answers() {
        let body =
            br#"{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":3}"#;
        let call = chat_call(body, "tiny", false).unwrap();
        assert_eq!(call.opts.max_new, 3);
        assert!(matches!(&call.prompt, Prompt::Chat(t) if t.len() == 1 && t[0].text == "Hi"));
        // Another model's name is a 404.
        let e = chat_call(body, "other", false).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.body()["error"]["code"], "model_not_found");
        let e = chat_call(b"{\"messages\":", "", false).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.body()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid request body: "));
        let e = chat_call(br#"{"messages":[{"role":"tool"}]}"#, "", false).unwrap_err();
        assert_eq!(e.body()["error"]["param"], "messages");
    }
}
