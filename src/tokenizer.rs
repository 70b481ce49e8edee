//! The tokenizer: the exact Hugging Face `tokenizer.json` stored in the GGUF
//! (`tokenizer.huggingface.json`, with the VL special tokens the processor
//! adds), run by the `tokenizers` crate so ids equal the reference's
//! (DEEPSEEK-VL2.md §6.4). Encoding never inserts BOS/EOS (the template adds
//! them by hand) and matches added tokens atomically before BPE.
//!
//! Decoding for streaming works on bytes: each id maps to the bytes it
//! stands for (GPT-2 byte-level alphabet undone; added tokens are their
//! text), and [`StreamDecoder`] emits only complete UTF-8 characters.

use std::collections::HashMap;
use std::str::FromStr;

use quant::schema::tokenizer as tk;
use thiserror::Error;

use crate::loader::ModelFile;

/// Tokenizer errors.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error(
        "{path}: no `{key}` in the model file (convert it with pocketvl to embed the tokenizer)"
    )]
    Missing { path: String, key: &'static str },
    #[error("invalid tokenizer.json: {0}")]
    Parse(String),
    #[error("cannot encode text: {0}")]
    Encode(String),
}

/// A byte-level BPE tokenizer with its special ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Bytes of every id (index = id; ids no token maps to are empty).
    bytes: Vec<Vec<u8>>,
    /// Ids of added tokens marked special.
    special: Vec<bool>,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_tokens", &self.bytes.len())
            .field("bos", &self.bos_id)
            .finish()
    }
}

/// GPT-2's byte-to-character table, inverted: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(ch) = char::from_u32(c) {
            map.insert(ch, b as u8);
        }
    }
    map
}

impl Tokenizer {
    /// Builds from a tokenizer.json text and the BOS/EOS ids.
    pub fn from_json(json: &str, bos_id: u32, eos_id: u32) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_str(json)
            .map_err(|e| TokenizerError::Parse(e.to_string()))?;
        let vocab = inner.get_vocab(true);
        let added = inner.get_added_tokens_decoder();
        let n = vocab
            .values()
            .copied()
            .max()
            .map(|m| m as usize + 1)
            .unwrap_or(0);
        let mut bytes = vec![Vec::new(); n];
        let mut special = vec![false; n];
        let table = unicode_to_byte();
        for (tok, &id) in &vocab {
            let i = id as usize;
            bytes[i] = match added.get(&id) {
                Some(a) => {
                    special[i] = a.special;
                    a.content.as_bytes().to_vec()
                }
                None => match tok
                    .chars()
                    .map(|c| table.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                {
                    Some(b) => b,
                    // Not a byte-level token: its text is its bytes.
                    None => tok.as_bytes().to_vec(),
                },
            };
        }
        Ok(Tokenizer {
            inner,
            bytes,
            special,
            bos_id,
            eos_id,
        })
    }

    /// The tokenizer stored in a pocketvl model file.
    pub fn from_model_file(file: &ModelFile) -> Result<Tokenizer, TokenizerError> {
        let g = file.gguf();
        let path = file.path().display().to_string();
        let json = g
            .get(tk::HF_JSON)
            .and_then(|v| v.as_str())
            .ok_or(TokenizerError::Missing {
                path: path.clone(),
                key: tk::HF_JSON,
            })?;
        let bos = g
            .get(tk::BOS_ID)
            .and_then(|v| v.as_u64())
            .ok_or(TokenizerError::Missing {
                path: path.clone(),
                key: tk::BOS_ID,
            })?;
        let eos = g
            .get(tk::EOS_ID)
            .and_then(|v| v.as_u64())
            .ok_or(TokenizerError::Missing {
                path,
                key: tk::EOS_ID,
            })?;
        Tokenizer::from_json(json, bos as u32, eos as u32)
    }

    /// Ids of `text`, no BOS/EOS added (`add_special_tokens=False`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of a token string (e.g. `<image>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids the tokenizer knows (may be below the embedding rows).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes id `id` stands for (empty for ids no token maps to).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether `id` is an added special token (BOS, EOS, `<image>`, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Whole-sequence decode, special tokens included, invalid UTF-8 as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut d = StreamDecoder::default();
        let mut s = String::new();
        for &id in ids {
            s.push_str(&d.push(self.token_bytes(id)));
        }
        s.push_str(&d.finish());
        s
    }

    /// The `tokenizers` crate's own decode (special tokens kept), for
    /// cross-checks.
    pub fn decode_reference(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }
}

/// Turns a stream of token bytes into text, never splitting a UTF-8
/// character: incomplete trailing bytes are held until the next token;
/// invalid bytes become U+FFFD.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` was just validated.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .unwrap_or_default(),
                    );
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += bad;
                        }
                        // Incomplete character at the end: keep it.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Flushes held bytes (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_decoder_holds_incomplete_characters() {
        let mut d = StreamDecoder::default();
        let snow = "☃".as_bytes(); // 3 bytes
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&snow[..1]), "");
        assert_eq!(d.push(&snow[1..2]), "");
        assert_eq!(d.push(&[snow[2], b'b']), "☃b");
        assert_eq!(d.push(&[0xFF, b'c']), "\u{FFFD}c");
        assert_eq!(d.push(&snow[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn byte_table_covers_all_bytes() {
        let t = unicode_to_byte();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
    }
}
