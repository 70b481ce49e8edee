//! The OpenAI chat-completions wire format, as far as pocketvl serves it (request fields it
//! reads, response and chunk shapes it writes), and the conversion of a request into the
//! library's [`Prompt`] and [`GenerateOptions`].

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::generate::GenerateOptions;
use crate::pipeline::{ChatTurn, ImageInput, Prompt};
use crate::sampler::SamplerConfig;
use crate::Role;

/// A request body of `POST /v1/chat/completions`. Fields pocketvl does not use (e.g.
/// `frequency_penalty`, `user`) are accepted and ignored, as OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<MessageIn>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Hash)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// `content`: a string or an array of parts.
#[derive(Debug, Deserialize, Hash)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, Hash)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize, Hash)]
pub struct ImageUrl {
    pub url: String,
}

/// A request that cannot be served, with the OpenAI error `param` it concerns.
#[derive(Debug)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<&'static str>,
}

fn bad(message: impl Into<String>, param: &'static str) -> BadRequest {
    BadRequest {
        message: message.into(),
        param: Some(param),
    }
}

/// Default answer length when the request gives none.
pub const DEFAULT_MAX_TOKENS: usize = 512;

impl ChatRequest {
    /// The library's generation options; OpenAI's defaults (temperature 1, top_p 1) apply
    /// where the request says nothing, and no top-k.
    pub fn options(&self) -> Result<GenerateOptions, BadRequest> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(bad("only n = 1 is supported", "n"));
            }
        }
        let max = match self.max_completion_tokens.or(self.max_tokens) {
            None => DEFAULT_MAX_TOKENS,
            Some(m) if m >= 1 => m as usize,
            Some(m) => {
                return Err(bad(
                    format!("max_tokens must be at least 1, got {m}"),
                    "max_tokens",
                ))
            }
        };
        let stop_strings = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let opts = GenerateOptions {
            max_new: max,
            chunk: 0,
            stop_strings: stop_strings.into_iter().filter(|s| !s.is_empty()).collect(),
            sampler: SamplerConfig {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: 0,
                top_p: self.top_p.unwrap_or(1.0),
                min_p: 0.0,
                repeat_penalty: 1.0,
                seed: self.seed.unwrap_or(0),
            },
            keep_logits: false,
            cancel: None,
        };
        opts.check().map_err(|m| BadRequest {
            message: m,
            param: None,
        })?;
        Ok(opts)
    }

    /// The conversation as the library's prompt. Each message's images follow the CLI's rule:
    /// `<image>` tags in its text place them, otherwise they go in front.
    pub fn prompt(&self, allow_local_files: bool) -> Result<Prompt, BadRequest> {
        if self.messages.is_empty() {
            return Err(bad("messages must not be empty", "messages"));
        }
        let mut turns = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(bad(
                        format!("unsupported message role `{other}` (system, user, assistant)"),
                        "messages",
                    ))
                }
            };
            let mut text = String::new();
            let mut images = Vec::new();
            match &m.content {
                None => {}
                Some(Content::Text(t)) => text.push_str(t),
                Some(Content::Parts(parts)) => {
                    for p in parts {
                        match p {
                            Part::Text { text: t } => {
                                if !text.is_empty() {
                                    text.push('\n');
                                }
                                text.push_str(t);
                            }
                            Part::ImageUrl { image_url } => {
                                images.push(image_input(&image_url.url, allow_local_files)?)
                            }
                        }
                    }
                }
            }
            turns.push(ChatTurn { role, text, images });
        }
        Ok(Prompt::Chat(turns))
    }
}

/// An `image_url`: a `data:image/...;base64,` URL, or a local path (`file://` or plain) when
/// the server allows them. Remote URLs are refused: the server never reaches the network.
fn image_input(url: &str, allow_local_files: bool) -> Result<ImageInput, BadRequest> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, payload)) = rest.split_once(',') else {
            return Err(bad("a data URL needs a comma before its data", "messages"));
        };
        if !meta.starts_with("image/") || !meta.ends_with(";base64") {
            return Err(bad(
                format!("unsupported data URL `data:{meta}`: expected data:image/...;base64,"),
                "messages",
            ));
        }
        // The decoded size bounds the base64 text: check before decoding.
        let approx = payload.len() as u64 / 4 * 3;
        crate::limits::image_bytes(approx).map_err(|e| bad(e.to_string(), "messages"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|e| bad(format!("the data URL's base64 is invalid: {e}"), "messages"))?;
        return Ok(ImageInput::bytes(bytes));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(bad(
            "remote image URLs are not fetched (the server has no network access); send the \
             image as a data:image/...;base64, URL",
            "messages",
        ));
    }
    if !allow_local_files {
        return Err(bad(
            "local image paths are refused unless the server runs with --allow-local-files; \
             send the image as a data:image/...;base64, URL",
            "messages",
        ));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    Ok(ImageInput::path(path))
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: CachedTokens,
}

/// Prompt positions served from the KV cache of an earlier turn.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CachedTokens {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize, cached: usize) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: CachedTokens {
                cached_tokens: cached,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parts_and_data_urls() {
        let r = req(r#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"What is it?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}"#);
        let Prompt::Chat(turns) = r.prompt(false).unwrap() else {
            panic!("a chat prompt")
        };
        assert_eq!(turns[0].text, "What is it?");
        match &turns[0].images[0] {
            ImageInput::Bytes(b) => assert_eq!(&b[..4], b"\x89PNG"),
            other => panic!("{other:?}"),
        }
        let r = req(r#"{"messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"/tmp/x.png"}}]}]}"#);
        assert!(r.prompt(false).is_err());
        assert!(r.prompt(true).is_ok());
        let r = req(r#"{"messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"https://example.com/x.png"}}]}]}"#);
        assert!(r.prompt(true).unwrap_err().message.contains("not fetched"));
    }

    #[test]
    fn options_follow_openai_defaults_and_limits() {
        let o = req(r#"{"messages":[],"max_tokens":7,"stop":"x"}"#)
            .options()
            .unwrap();
        assert_eq!(o.max_new, 7);
        assert_eq!(o.sampler.temperature, 1.0);
        assert_eq!(o.stop_strings, vec!["x".to_string()]);
        let e = req(r#"{"messages":[],"max_tokens":0}"#)
            .options()
            .unwrap_err();
        assert_eq!(e.message, "max_tokens must be at least 1, got 0");
        assert!(req(r#"{"messages":[],"n":2}"#).options().is_err());
        assert!(req(r#"{"messages":[],"temperature":-1}"#)
            .options()
            .is_err());
    }
}
