//! Prefill (chunked) and the decode loop, with stop rules, streaming and
//! cancellation. Calls only the model's public forward.
//!
//! A [`Sequence`] is one conversation's state against a shared
//! [`LanguageModel`]: its KV cache and what each cached position holds, as
//! fingerprints (the token id, or a hash of the image features placed
//! there), so the next chat turn re-runs only the positions after the common
//! prefix (DEEPSEEK-VL2.md §8.4). [`Sequence::start`] runs the prompt and
//! returns a [`TokenStream`], an iterator over the answer's text pieces;
//! [`Sequence::generate`] drives it with a callback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use crate::model::deepseek_vl2::{DecoderState, LanguageModel, LogitsWanted, ModelError};
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

/// Stops a generation from another thread (a closed connection, a UI button): checked
/// between prefill chunks and before every decode step.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks the generation to stop; it ends with [`StopReason::Cancelled`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a generation call does.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_new: usize,
    /// Prefill chunk size (0 = the whole prompt at once).
    pub chunk: usize,
    /// Stop when the text contains one of these (cut before it).
    pub stop_strings: Vec<String>,
    pub sampler: SamplerConfig,
    /// Keep the logits each token was chosen from.
    pub keep_logits: bool,
    /// Cancellation from another thread.
    pub cancel: Option<CancelToken>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new: 512,
            chunk: 0,
            stop_strings: Vec::new(),
            sampler: SamplerConfig::default(),
            keep_logits: false,
            cancel: None,
        }
    }
}

impl GenerateOptions {
    /// The defaults with greedy decoding (temperature 0: the same answer every time).
    pub fn greedy() -> GenerateOptions {
        GenerateOptions {
            sampler: SamplerConfig {
                temperature: 0.0,
                ..SamplerConfig::default()
            },
            ..GenerateOptions::default()
        }
    }

    /// Refuses options that cannot generate anything meaningful (the CLI, the library and
    /// the server all ask here).
    pub fn check(&self) -> Result<(), String> {
        let s = &self.sampler;
        if self.max_new == 0 {
            return Err("the number of tokens to generate must be at least 1".to_owned());
        }
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return Err(format!(
                "temperature must be 0 (greedy) or more, got {}",
                s.temperature
            ));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", s.top_p));
        }
        if !(0.0..=1.0).contains(&s.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", s.min_p));
        }
        if !(s.repeat_penalty > 0.0 && s.repeat_penalty.is_finite()) {
            return Err(format!(
                "the repeat penalty must be positive, got {}",
                s.repeat_penalty
            ));
        }
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    /// The context is full.
    Context,
    /// A [`CancelToken`] fired, or the stream was finished before its end.
    Cancelled,
}

impl StopReason {
    /// Lower-case name (`--json`'s `"stop"`).
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stopstring",
            StopReason::MaxTokens => "maxtokens",
            StopReason::Context => "context",
            StopReason::Cancelled => "cancelled",
        }
    }
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

/// One conversation's model state: KV cache and what each cached position holds.
pub struct Sequence {
    /// KV cache, forward buffers and trace.
    pub state: DecoderState,
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

/// Prompt embeddings and fingerprints: token embeddings, with the rows of
/// `image_features` (`[n_image_positions, D]`, prompt order) placed at every
/// position whose id is the model's image token. Public so that tests can
/// compare the language model's input with the reference's `inputs_embeds`.
pub fn embed_prompt(
    model: &LanguageModel,
    tokenizer: &Tokenizer,
    ids: &[u32],
    image_features: &[f32],
) -> Result<(Vec<f32>, Vec<u64>), GenerateError> {
    let d = model.hp.n_embd;
    let mut emb = model.embed_tokens(ids)?;
    let mut fps: Vec<u64> = ids.iter().map(|&i| i as u64).collect();
    let image_id = model
        .hp
        .image_token_id
        .or_else(|| tokenizer.token_id("<image>"));
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

impl Sequence {
    /// An empty sequence for `model`.
    pub fn new(model: &LanguageModel) -> Sequence {
        Sequence {
            state: model.new_state(),
            cached: Vec::new(),
        }
    }

    /// Forgets the cache (e.g. `/reset`).
    pub fn reset(&mut self) {
        self.cached.clear();
        self.state.truncate_cache(0);
    }

    /// Positions held in the cache.
    pub fn len(&self) -> usize {
        self.cached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cached.is_empty()
    }

    /// Positions of `fingerprints` already in the cache (the common prefix).
    pub fn common_prefix(&self, fingerprints: &[u64]) -> usize {
        self.cached
            .iter()
            .zip(fingerprints)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Runs the prompt (reusing the cached common prefix) and returns the stream of the
    /// answer. A cancelled prefill gives a stream that ends at once ([`StopReason::Cancelled`]).
    pub fn start<'a>(
        &'a mut self,
        model: &'a LanguageModel,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        image_features: &[f32],
        opts: &GenerateOptions,
    ) -> Result<TokenStream<'a>, GenerateError> {
        let n_ctx = model.hp.n_ctx;
        let d = model.hp.n_embd;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() > n_ctx {
            return Err(GenerateError::PromptTooLong {
                n: prompt.len(),
                n_ctx,
            });
        }
        let (emb, fps) = embed_prompt(model, tokenizer, prompt, image_features)?;
        // Common prefix, but always re-run at least the last prompt position
        // to get its logits.
        let start = self
            .common_prefix(&fps)
            .min(prompt.len() - 1)
            .min(self.state.cache().len());
        self.cached.truncate(start);
        let t0 = Instant::now();
        let n = prompt.len();
        let chunk = if opts.chunk == 0 { n } else { opts.chunk };
        let mut logits = Vec::new();
        let mut p = start;
        let mut cancelled = false;
        while p < n {
            if opts.cancelled() {
                cancelled = true;
                break;
            }
            let end = (p + chunk).min(n);
            let want = if end == n {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            let l = model.forward_logits(&mut self.state, &emb[p * d..end * d], p, want)?;
            logits.clear();
            logits.extend_from_slice(l);
            self.cached.extend_from_slice(&fps[p..end]);
            p = end;
        }
        let timings = Timings {
            prefill_tokens: p - start,
            prefill_ms: ms(t0),
            ..Timings::default()
        };
        Ok(TokenStream {
            model,
            tokenizer,
            seq: self,
            opts: opts.clone(),
            sampler: Sampler::new(opts.sampler.clone()),
            history: prompt.to_vec(),
            logits,
            out: Generation {
                tokens: Vec::new(),
                text: String::new(),
                logits: Vec::new(),
                stop: StopReason::Cancelled,
                timings,
            },
            dec: StreamDecoder::default(),
            held: String::new(),
            token_emb: Vec::new(),
            t1: Instant::now(),
            done: cancelled,
        })
    }

    /// [`Sequence::start`] driven to its end; `on_text` receives the text as it becomes final.
    pub fn generate(
        &mut self,
        model: &LanguageModel,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        image_features: &[f32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, GenerateError> {
        let mut stream = self.start(model, tokenizer, prompt, image_features, opts)?;
        for piece in stream.by_ref() {
            on_text(&piece?);
        }
        Ok(stream.finish())
    }
}

/// The answer being generated: each item is a piece of text that is final (stop strings
/// are held back until they can no longer match). The KV cache stays consistent after any
/// item, so dropping the stream early is a valid cancellation.
pub struct TokenStream<'a> {
    model: &'a LanguageModel,
    tokenizer: &'a Tokenizer,
    seq: &'a mut Sequence,
    opts: GenerateOptions,
    sampler: Sampler,
    /// Prompt and generated ids (for the repetition penalty).
    history: Vec<u32>,
    /// The logits the next token is chosen from.
    logits: Vec<f32>,
    out: Generation,
    dec: StreamDecoder,
    /// Text not yet released (a possible stop-string prefix).
    held: String,
    /// The decode step's input row, reused.
    token_emb: Vec<f32>,
    t1: Instant,
    done: bool,
}

impl TokenStream<'_> {
    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.out.tokens
    }

    /// Ends the stream (cancelled if it had not ended) and returns what was generated.
    pub fn finish(mut self) -> Generation {
        self.out.timings.decode_tokens = self.out.tokens.len();
        self.out.timings.decode_ms = ms(self.t1);
        std::mem::replace(
            &mut self.out,
            Generation {
                tokens: Vec::new(),
                text: String::new(),
                logits: Vec::new(),
                stop: StopReason::Cancelled,
                timings: Timings::default(),
            },
        )
    }

    /// Ends the stream with `reason`, releasing the held text unless a stop string cut it.
    fn end(&mut self, reason: StopReason) -> Option<String> {
        self.done = true;
        self.out.stop = reason;
        if reason != StopReason::StopString {
            self.held.push_str(&self.dec.finish());
        }
        self.release(self.held.len())
    }

    /// Moves `held[..upto]` to the final text and returns it (`None` when empty).
    fn release(&mut self, upto: usize) -> Option<String> {
        if upto == 0 {
            return None;
        }
        let s: String = self.held.drain(..upto).collect();
        self.out.text.push_str(&s);
        Some(s)
    }

    /// One decode step: choose a token, and run it unless generation ends. Returns the text
    /// it made final, if any.
    fn step(&mut self) -> Result<Option<String>, GenerateError> {
        if self.out.tokens.len() >= self.opts.max_new {
            return Ok(self.end(StopReason::MaxTokens));
        }
        if self.opts.cancelled() {
            return Ok(self.end(StopReason::Cancelled));
        }
        if self.opts.keep_logits {
            self.out.logits.push(self.logits.clone());
        }
        let id = self.sampler.sample(&mut self.logits, &self.history);
        if id == self.tokenizer.eos_id {
            return Ok(self.end(StopReason::Eos));
        }
        self.out.tokens.push(id);
        self.history.push(id);
        let piece = self.dec.push(self.tokenizer.token_bytes(id));
        self.held.push_str(&piece);
        if let Some(cut) = find_stop(&self.held, &self.opts.stop_strings) {
            self.held.truncate(cut);
            let text = self.release(self.held.len());
            self.end(StopReason::StopString);
            return Ok(text);
        }
        let safe = self.held.len() - partial_stop_suffix(&self.held, &self.opts.stop_strings);
        let text = self.release(safe);
        if self.out.tokens.len() >= self.opts.max_new {
            return Ok(join(text, self.end(StopReason::MaxTokens)));
        }
        let pos = self.seq.cached.len();
        if pos >= self.model.hp.n_ctx {
            return Ok(join(text, self.end(StopReason::Context)));
        }
        self.model.embed_tokens_into(&[id], &mut self.token_emb)?;
        let l = self.model.forward_logits(
            &mut self.seq.state,
            &self.token_emb,
            pos,
            LogitsWanted::Last,
        )?;
        self.logits.clear();
        self.logits.extend_from_slice(l);
        self.seq.cached.push(id as u64);
        Ok(text)
    }
}

fn join(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.push_str(&b);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<String, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.step() {
                Ok(Some(text)) => return Some(Ok(text)),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
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
    fn options_are_checked() {
        let mut o = GenerateOptions::default();
        assert!(o.check().is_ok());
        o.max_new = 0;
        assert!(o.check().is_err());
        o.max_new = 1;
        o.sampler.temperature = -1.0;
        assert_eq!(
            o.check().unwrap_err(),
            "temperature must be 0 (greedy) or more, got -1"
        );
    }

    #[test]
    fn stop_string_helpers() {
        let stops = vec!["User:".to_string(), "<｜end▁of▁sentence｜>".to_string()];
        assert_eq!(find_stop("hello User: x", &stops), Some(6));
        assert_eq!(partial_stop_suffix("hello Us", &stops), 2);
        assert_eq!(partial_stop_suffix("hello <｜", &stops), "<｜".len());
        assert_eq!(partial_stop_suffix("hello", &stops), 0);
    }
}
