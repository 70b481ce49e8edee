//! The tokenizer a synthetic checkpoint ships.
//!
//! Tiny and VL2 use the 129,280-row DeepSeek(-V3 family) tokenizer: `tokenizer.json` holds
//! 128,815 entries and the processor appends `<image>` at 128815 (docs/DEEPSEEK-VL2.md §1.4), so
//! the repository's DeepSeek-V3 tokenizer is copied as it is. Small has only 102,400 embedding
//! rows and the DeepSeek-V2 layout (BOS/EOS/pad at 100000/100001/100002, `<image>` appended at
//! 100003), which no file here provides; it is derived from the V3 tokenizer by keeping the
//! first 100,000 ordinary BPE tokens (ids shifted down past the three specials at 0..2), the
//! merges among them, and re-adding the three specials after them. That is not the real V2
//! vocabulary, but it has the real V2 *layout*, which is all a random-weight model needs.

use serde_json::{json, Map, Value};

/// Ordinary BPE tokens in a DeepSeek-V2-layout vocabulary.
pub const V2_BPE_TOKENS: u64 = 100_000;

/// Derives a DeepSeek-V2-layout tokenizer.json from a DeepSeek-V3 one (see the module docs).
/// Returns a description of what is missing when `v3` does not have the expected structure.
pub fn v2_layout_from_v3(v3: &Value) -> Result<Value, String> {
    let vocab = v3
        .pointer("/model/vocab")
        .and_then(Value::as_object)
        .ok_or("no model.vocab object")?;
    let merges = v3
        .pointer("/model/merges")
        .and_then(Value::as_array)
        .ok_or("no model.merges array")?;
    let added = v3
        .get("added_tokens")
        .and_then(Value::as_array)
        .ok_or("no added_tokens array")?;
    // The three specials at ids 0..2 (BOS, EOS, pad) move behind the ordinary tokens.
    let mut specials = Vec::new();
    for id in 0..3u64 {
        let tok = added
            .iter()
            .find(|t| t.get("id").and_then(Value::as_u64) == Some(id))
            .ok_or_else(|| format!("no added token with id {id}"))?;
        specials.push(tok.clone());
    }
    let mut new_vocab = Map::new();
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("vocab entry '{tok}' has no integer id"))?;
        if (3..3 + V2_BPE_TOKENS).contains(&id) {
            new_vocab.insert(tok.clone(), json!(id - 3));
        }
    }
    let mut new_added = Vec::new();
    for (k, mut tok) in specials.into_iter().enumerate() {
        let content = tok
            .get("content")
            .and_then(Value::as_str)
            .ok_or("special token without content")?
            .to_string();
        let id = V2_BPE_TOKENS + k as u64;
        if let Value::Object(m) = &mut tok {
            m.insert("id".into(), json!(id));
        }
        new_vocab.insert(content, json!(id));
        new_added.push(tok);
    }
    // A merge survives when both parts and their concatenation are still in the vocabulary.
    let kept: Vec<Value> = merges
        .iter()
        .filter(|m| {
            let (a, b) = match m {
                Value::String(s) => match s.split_once(' ') {
                    Some(p) => p,
                    None => return false,
                },
                Value::Array(p) => match (
                    p.first().and_then(Value::as_str),
                    p.get(1).and_then(Value::as_str),
                ) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return false,
                },
                _ => return false,
            };
            new_vocab.contains_key(a)
                && new_vocab.contains_key(b)
                && new_vocab.contains_key(&format!("{a}{b}"))
        })
        .cloned()
        .collect();
    let mut out = v3.clone();
    out["added_tokens"] = Value::Array(new_added);
    out["model"]["vocab"] = Value::Object(new_vocab);
    out["model"]["merges"] = Value::Array(kept);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived tokenizer loads in Hugging Face `tokenizers`, has the V2 layout, and splits
    /// ordinary text exactly like the V3 one (ids shifted by the three specials).
    #[test]
    fn v2_layout_tokenizes_like_v3() {
        let text = std::fs::read_to_string(crate::synth::DEFAULT_TOKENIZER).unwrap();
        let v3: Value = serde_json::from_str(&text).unwrap();
        let v2 = v2_layout_from_v3(&v3).unwrap();
        let t3 = tokenizers::Tokenizer::from_bytes(text.as_bytes()).unwrap();
        let t2 = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&v2).unwrap()).unwrap();
        assert_eq!(t2.get_vocab_size(true), 100_003);
        assert_eq!(t2.token_to_id("<｜begin▁of▁sentence｜>"), Some(100_000));
        assert_eq!(t2.token_to_id("<｜end▁of▁sentence｜>"), Some(100_001));
        assert_eq!(t2.token_to_id("<｜▁pad▁｜>"), Some(100_002));
        let s = "The quick brown fox jumps over the lazy dog. 12345 café";
        let a = t3.encode(s, false).unwrap();
        let b = t2.encode(s, false).unwrap();
        // Common English text uses early (low-id) merges only, so every V3 id is kept.
        assert!(a.get_ids().iter().all(|&i| (3..100_003).contains(&i)));
        let shifted: Vec<u32> = a.get_ids().iter().map(|&i| i - 3).collect();
        assert_eq!(b.get_ids(), &shifted[..]);
    }
}
