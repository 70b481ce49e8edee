//! The router: authentication, the small endpoints (`/health`, `/v1/models`, `/tokenize`,
//! `/detokenize`), and every error as OpenAI's error JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::BadRequest;
use super::chat::chat_completions;
use super::{AppState, Ready};
use crate::limits::MAX_REQUEST_BYTES;

/// The routes of `pocketvl serve` over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// An error response in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub fn model_not_found(asked: &str, have: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{asked}` does not exist; this server serves `{have}`"),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<BadRequest> for ApiError {
    fn from(b: BadRequest) -> ApiError {
        ApiError::invalid(b.message, b.param)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than the limit of {MAX_REQUEST_BYTES} bytes")
        } else {
            r.body_text()
        };
        ApiError {
            status,
            message,
            kind: "invalid_request_error",
            param: None,
            code: (status == StatusCode::PAYLOAD_TOO_LARGE).then_some("request_too_large"),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        if e.is_request_error() {
            ApiError::invalid(e.to_string(), Some("messages"))
        } else {
            ApiError::internal(e.to_string())
        }
    }
}

/// The loaded model, or 503 while loading (500 if loading failed).
pub(crate) fn require_ready(st: &AppState) -> Result<&Ready, ApiError> {
    if let Some(r) = st.ready() {
        return Ok(r);
    }
    match st.failed.get() {
        Some(e) => Err(ApiError::internal(format!("the model failed to load: {e}"))),
        None => Err(ApiError::unavailable("the model is loading")),
    }
}

/// With `--api-key`, every route but `/health` needs `Authorization: Bearer KEY`.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong API key (send Authorization: Bearer KEY)".to_owned(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint".to_owned(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

/// 200 `{"status":"ok"}` when ready, 503 while loading, 500 if loading failed.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    match require_ready(&st) {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The one model, advertising image input and its context length.
async fn models(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let r = require_ready(&st)?;
    let mut input = vec!["text"];
    if r.model.has_vision() {
        input.push("image");
    }
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": r.name,
            "object": "model",
            "created": r.created,
            "owned_by": "pocketvl",
            "input_modalities": input,
            "context_length": r.model.context_length(),
            "parallel": r.workers.len(),
        }],
    })))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    /// Put BOS first (as a prompt starts).
    #[serde(default)]
    add_special: bool,
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i64>,
}

fn parse<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(ApiError::from)?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

/// `{"content": "...", "add_special": false}` → `{"tokens": [...]}` (llama.cpp's shape).
async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let r = require_ready(&st)?;
    let req: TokenizeRequest = parse(body)?;
    let tok = r.model.tokenizer();
    let mut ids = Vec::new();
    if req.add_special {
        ids.push(tok.bos_id);
    }
    ids.extend(
        tok.encode(&req.content)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("content")))?,
    );
    Ok(Json(json!({ "tokens": ids })))
}

/// `{"tokens": [...]}` → `{"content": "..."}`.
async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let r = require_ready(&st)?;
    let req: DetokenizeRequest = parse(body)?;
    let tok = r.model.tokenizer();
    let n = tok.len();
    let ids = req
        .tokens
        .iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&id| (id as usize) < n)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("token id {t} is outside the vocabulary of {n}"),
                        Some("tokens"),
                    )
                })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(Json(json!({ "content": tok.decode(&ids) })))
}
