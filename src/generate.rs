//! Prefill (chunked) and the decode loop, with stop rules and a streaming
//! text callback. Calls only the model's public forward.
//!
//! A [`Session`] remembers what its KV cache holds, position by position, as
//! fingerprints (the token id, or a hash of the image features placed
//! there), so the next chat turn re-runs only the positions after the common
//! prefix (DEEPSEEK-VL2.md §8.4).

use std::time::Instant;

use thiserror::Error;

use crate::model::deepseek_vl2::{LanguageModel, LogitsWanted, ModelError};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Generation errors.
#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the prompt has {n} tokens but the context holds {n_ctx}")]
    PromptTooLong { n: usize, n_ctx: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("image features of {len} floats do not fill the {n} image positions of {n_embd}")]
    ImageFeatures { len: usize, n: usize, n_embd: usize },
}

/// What a generation call does.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most new tokens.
    pub max_new: usize,
    /// Prefill chunk size (0 = the whole prompt at once).
    pub chunk: usize,
    /// Stop when the text contains one of these (cut before it).
    pub stop_strings: Vec<String>,
    pub sampler: SamplerConfig,
    /// Keep the logits each token was chosen from.
    pub keep_logits: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new: 512,
            chunk: 0,
            stop_strings: Vec::new(),
            sampler: SamplerConfig::default(),
            keep_logits: false,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    Context,
}

/// Timings of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Positions actually run in prefill (after prefix reuse).
    pub prefill_tokens: usize,
    pub prefill_ms: f64,
    pub decode_tokens: usize,
    pub decode_ms: f64,
}

impl Timings {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_ms)
    }
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// The result of one call.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text, cut at a stop string.
    pub text: String,
    /// `[tokens.len() (+1 if EOS), n_vocab]` when asked for.
    pub logits: Vec<Vec<f32>>,
    pub stop: StopReason,
    pub timings: Timings,
}

/// A conversation's model state.
pub struct Session {
    pub model: LanguageModel,
    pub tokenizer: Tokenizer,
    /// What each cached position holds.
    cached: Vec<u64>,
}

/// Fingerprint of an image-feature row: FNV-1a over the float bits, with
/// the top bit set so it never equals a token id.
fn feature_fingerprint(row: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in row {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h | (1 << 63)
}

impl Session {
    pub fn new(model: LanguageModel, tokenizer: Tokenizer) -> Session {
        Session {
            model,
            tokenizer,
            cached: Vec::new(),
        }
    }

    /// Forgets the cache (e.g. `/reset`).
    pub fn reset(&mut self) {
        self.cached.clear();
        self.model.truncate_cache(0);
    }

    /// Prompt embeddings and fingerprints: token embeddings, with the rows
    /// of `image_features` (`[n_image_positions, D]`, prompt order) placed at
    /// every position whose id is the model's image token. Public so that
    /// tests can compare the language model's input with the reference's
    /// `inputs_embeds`.
    pub fn embed_prompt(
        &self,
        ids: &[u32],
        image_features: &[f32],
    ) -> Result<(Vec<f32>, Vec<u64>), GenerateError> {
        let d = self.model.hp.n_embd;
        let mut emb = self.model.embed_tokens(ids)?;
        let mut fps: Vec<u64> = ids.iter().map(|&i| i as u64).collect();
        let image_id = self
            .model
            .hp
            .image_token_id
            .or_else(|| self.tokenizer.token_id("<image>"));
        let positions: Vec<usize> = match image_id {
            Some(img) if !image_features.is_empty() => ids
                .iter()
                .enumerate()
                .filter(|(_, &t)| t == img)
                .map(|(i, _)| i)
                .collect(),
            _ => Vec::new(),
        };
        if image_features.len() != positions.len() * d {
            return Err(GenerateError::ImageFeatures {
                len: image_features.len(),
                n: positions.len(),
                n_embd: d,
            });
        }
        for (j, &p) in positions.iter().enumerate() {
            let row = &image_features[j * d..][..d];
            emb[p * d..][..d].copy_from_slice(row);
            fps[p] = feature_fingerprint(row);
        }
        Ok((emb, fps))
    }

    /// Runs the prompt (reusing the cached common prefix) and generates.
    /// `on_text` receives the text as it becomes final.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        image_features: &[f32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, GenerateError> {
        let n_ctx = self.model.hp.n_ctx;
        let d = self.model.hp.n_embd;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() > n_ctx {
            return Err(GenerateError::PromptTooLong {
                n: prompt.len(),
                n_ctx,
            });
        }
        let (emb, fps) = self.embed_prompt(prompt, image_features)?;
        // Common prefix, but always re-run at least the last prompt position
        // to get its logits.
        let common = self
            .cached
            .iter()
            .zip(&fps)
            .take_while(|(a, b)| a == b)
            .count();
        let start = common.min(prompt.len() - 1).min(self.model.cache().len());
        self.cached.truncate(start);
        let t0 = Instant::now();
        let n = prompt.len();
        let chunk = if params.chunk == 0 { n } else { params.chunk };
        let mut logits = Vec::new();
        let mut p = start;
        while p < n {
            let end = (p + chunk).min(n);
            let want = if end == n {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            let l = self.model.forward_logits(&emb[p * d..end * d], p, want)?;
            logits.clear();
            logits.extend_from_slice(l);
            self.cached.extend_from_slice(&fps[p..end]);
            p = end;
        }
        let mut timings = Timings {
            prefill_tokens: n - start,
            prefill_ms: ms(t0),
            ..Timings::default()
        };

        let t1 = Instant::now();
        let mut sampler = Sampler::new(params.sampler.clone());
        let mut history: Vec<u32> = prompt.to_vec();
        let mut out = Generation {
            tokens: Vec::new(),
            text: String::new(),
            logits: Vec::new(),
            stop: StopReason::MaxTokens,
            timings,
        };
        let mut dec = StreamDecoder::default();
        let mut held = String::new();
        let eos = self.tokenizer.eos_id;
        // The decode step's input row, reused.
        let mut token_emb = Vec::new();
        loop {
            if out.tokens.len() >= params.max_new {
                out.stop = StopReason::MaxTokens;
                break;
            }
            if params.keep_logits {
                out.logits.push(logits.clone());
            }
            let id = sampler.sample(&mut logits, &history);
            if id == eos {
                out.stop = StopReason::Eos;
                break;
            }
            out.tokens.push(id);
            history.push(id);
            held.push_str(&dec.push(self.tokenizer.token_bytes(id)));
            if let Some(cut) = find_stop(&held, &params.stop_strings) {
                held.truncate(cut);
                let all = held.len();
                emit(&mut out.text, &mut held, all, on_text);
                out.stop = StopReason::StopString;
                break;
            }
            let safe = held.len() - partial_stop_suffix(&held, &params.stop_strings);
            emit(&mut out.text, &mut held, safe, on_text);
            if out.tokens.len() >= params.max_new {
                out.stop = StopReason::MaxTokens;
                break;
            }
            let pos = self.cached.len();
            if pos >= n_ctx {
                out.stop = StopReason::Context;
                break;
            }
            self.model.embed_tokens_into(&[id], &mut token_emb)?;
            let l = self
                .model
                .forward_logits(&token_emb, pos, LogitsWanted::Last)?;
            logits.clear();
            logits.extend_from_slice(l);
            self.cached.push(id as u64);
        }
        if out.stop != StopReason::StopString {
            held.push_str(&dec.finish());
            let all = held.len();
            emit(&mut out.text, &mut held, all, on_text);
        }
        timings.decode_tokens = out.tokens.len();
        timings.decode_ms = ms(t1);
        out.timings = timings;
        Ok(out)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Moves `held[..upto]` to the callback and the final text.
fn emit(text: &mut String, held: &mut String, upto: usize, on_text: &mut dyn FnMut(&str)) {
    if upto > 0 {
        let s: String = held.drain(..upto).collect();
        on_text(&s);
        text.push_str(&s);
    }
}

/// Byte offset of the first stop string in `s`.
fn find_stop(s: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|t| !t.is_empty())
        .filter_map(|t| s.find(t.as_str()))
        .min()
}

/// Length of the longest suffix of `s` that is a proper prefix of a stop
/// string (text that must be held back until it is known not to stop).
fn partial_stop_suffix(s: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for t in stops {
        for (i, _) in t.char_indices().skip(1) {
            if s.ends_with(&t[..i]) {
                best = best.max(i);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_helpers() {
        let stops = vec!["User:".to_string(), "<｜end▁of▁sentence｜>".to_string()];
        assert_eq!(find_stop("hello User: x", &stops), Some(6));
        assert_eq!(partial_stop_suffix("hello Us", &stops), 2);
        assert_eq!(partial_stop_suffix("hello <｜", &stops), "<｜".len());
        assert_eq!(partial_stop_suffix("hello", &stops), 0);
    }
}
