//! Tokenizer: the processor's added tokens, and llama.cpp's `tokenizer.ggml.*` metadata.
//!
//! The reference processor (`DeepseekVLV2Processor.__init__`) registers, only if missing and
//! in this order, the pad token, `<image>`, the grounding tokens and the chat roles, each as a
//! special token at id = current tokenizer length. The published 129,280-row tokenizer.json
//! lacks them (its `<image>` id 128815 is the file's length), so a converter that only reads
//! tokenizer.json would lose them: we add them the same way and store the augmented JSON whole
//! (`tokenizer.huggingface.json`) so the runtime rebuilds the processor's exact tokenizer.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use crate::error::{ConvertError, Result};

/// Tokens the processor appends when missing, in its order (after the pad token).
pub const PROCESSOR_TOKENS: [&str; 8] = [
    "<image>",
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    "<|User|>",
    "<|Assistant|>",
];

/// Everything the GGUF needs from the tokenizer files.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerData {
    /// tokenizer.json with the processor's tokens added.
    pub hf_json: String,
    /// `tokenizer.ggml.pre`: "deepseek-v3" or "deepseek-llm".
    pub pre: &'static str,
    /// Exactly `vocab_size` entries; ids no token maps to are `[PAD{id}]`.
    pub tokens: Vec<String>,
    /// llama.cpp token types, parallel to `tokens`.
    pub token_types: Vec<i32>,
    /// BPE merges as "left right", in rank order.
    pub merges: Vec<String>,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub image_token_id: u32,
    /// Inconsistencies the reference tolerates, to show the user (e.g. config.json's BOS id
    /// disagreeing with the tokenizer's).
    pub warnings: Vec<String>,
}

fn tok_err(msg: impl Into<String>) -> ConvertError {
    ConvertError::Tokenizer(msg.into())
}

/// Number of ids the tokenizer knows (`len(tokenizer)`): one past the largest id of the
/// vocabulary and the added tokens.
fn tokenizer_len(root: &Map<String, Json>) -> Result<u64> {
    let vocab = root
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Json::as_object)
        .ok_or_else(|| tok_err("tokenizer.json has no model.vocab object"))?;
    let mut next = 0u64;
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| tok_err(format!("vocab entry '{tok}' has a non-integer id")))?;
        next = next.max(id + 1);
    }
    if let Some(added) = root.get("added_tokens").and_then(Json::as_array) {
        for t in added {
            let id = t
                .get("id")
                .and_then(Json::as_u64)
                .ok_or_else(|| tok_err("added token without an integer id"))?;
            next = next.max(id + 1);
        }
    }
    Ok(next)
}

/// Adds the processor's special tokens (pad `<｜▁pad▁｜>` first) that tokenizer.json lacks,
/// each at id = current length, and returns the new tokenizer.json text.
pub fn augment_tokenizer_json(text: &str) -> Result<String> {
    augment_with_pad(text, crate::hf_config::defaults::PAD_TOKEN)
}

/// [`augment_tokenizer_json`] with the processor's configured pad token.
pub fn augment_with_pad(text: &str, pad_token: &str) -> Result<String> {
    let mut root: Json =
        serde_json::from_str(text).map_err(|e| tok_err(format!("tokenizer.json: {e}")))?;
    let obj = root
        .as_object_mut()
        .ok_or_else(|| tok_err("tokenizer.json is not an object"))?;
    let mut next = tokenizer_len(obj)?;
    let known: Vec<String> = {
        let mut k: Vec<String> = obj
            .get("model")
            .and_then(|m| m.get("vocab"))
            .and_then(Json::as_object)
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(added) = obj.get("added_tokens").and_then(Json::as_array) {
            k.extend(
                added
                    .iter()
                    .filter_map(|t| t.get("content").and_then(Json::as_str).map(str::to_string)),
            );
        }
        k
    };
    let added = obj
        .entry("added_tokens")
        .or_insert_with(|| Json::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| tok_err("added_tokens is not an array"))?;
    for content in std::iter::once(pad_token).chain(PROCESSOR_TOKENS) {
        if known.iter().any(|k| k == content) {
            continue;
        }
        added.push(json!({
            "id": next,
            "content": content,
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": false,
            "special": true,
        }));
        next += 1;
    }
    serde_json::to_string(&root).map_err(|e| tok_err(e.to_string()))
}

/// Decides llama.cpp's pre-tokenizer name from tokenizer.json's `pre_tokenizer` regexes.
fn detect_pre(root: &Map<String, Json>) -> Result<&'static str> {
    let pre = root
        .get("pre_tokenizer")
        .map(|p| p.to_string())
        .unwrap_or_default();
    // DeepSeek-V3: digit runs of 1-3, a CJK/kana run split, then the main pattern.
    if pre.contains(r"\\p{N}{1,3}") && pre.contains("一-龥") {
        return Ok("deepseek-v3");
    }
    // DeepSeek-LLM: newline split, Latin letter runs, digit runs `\p{N}+`.
    if pre.contains(r"\\p{N}+") && pre.contains(r"[\\r\\n]") {
        return Ok("deepseek-llm");
    }
    Err(tok_err(
        "pre_tokenizer matches neither DeepSeek-V3 nor DeepSeek-LLM's regexes",
    ))
}

fn merges(root: &Map<String, Json>) -> Result<Vec<String>> {
    let Some(list) = root
        .get("model")
        .and_then(|m| m.get("merges"))
        .and_then(Json::as_array)
    else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => Ok(format!("{a} {b}")),
                _ => Err(tok_err(format!("merge {m} is not a pair of strings"))),
            },
            _ => Err(tok_err(format!("merge {m} is neither \"a b\" nor [a, b]"))),
        })
        .collect()
}

/// The `content` string of a tokenizer_config.json special-token entry (string or AddedToken).
fn config_token(cfg: &Map<String, Json>, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// Reads `dir/tokenizer.json` (+ tokenizer_config.json) and builds the GGUF tokenizer data
/// for a model with `vocab_size` embedding rows and the config's BOS/EOS ids.
pub fn load(
    dir: &Path,
    vocab_size: usize,
    bos_id: u32,
    eos_id: u32,
    pad_token: &str,
    image_token: &str,
) -> Result<TokenizerData> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ConvertError::io(&path, e))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Map<String, Json> = if cfg_path.exists() {
        let t = std::fs::read_to_string(&cfg_path).map_err(|e| ConvertError::io(&cfg_path, e))?;
        serde_json::from_str(&t).map_err(|e| ConvertError::Json {
            path: cfg_path.clone(),
            reason: e.to_string(),
        })?
    } else {
        Map::new()
    };
    build(
        &text,
        &cfg,
        vocab_size,
        bos_id,
        eos_id,
        pad_token,
        image_token,
    )
}

/// [`load`] on already-read texts.
pub fn build(
    tokenizer_json: &str,
    tokenizer_config: &Map<String, Json>,
    vocab_size: usize,
    bos_id: u32,
    eos_id: u32,
    pad_token: &str,
    image_token: &str,
) -> Result<TokenizerData> {
    let hf_json = augment_with_pad(tokenizer_json, pad_token)?;
    let root: Map<String, Json> =
        serde_json::from_str(&hf_json).map_err(|e| tok_err(e.to_string()))?;
    if let Some(n) = root.get("normalizer").filter(|n| !n.is_null()) {
        let empty_seq = n
            .get("normalizers")
            .and_then(Json::as_array)
            .is_some_and(Vec::is_empty);
        if !empty_seq {
            return Err(tok_err(format!("unexpected normalizer {n}")));
        }
    }
    let model_type = root
        .get("model")
        .and_then(|m| m.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("");
    if model_type != "BPE" {
        return Err(tok_err(format!("model type '{model_type}', expected BPE")));
    }
    let pre = detect_pre(&root)?;
    let len = tokenizer_len(&root)? as usize;
    if len > vocab_size {
        return Err(tok_err(format!(
            "tokenizer knows {len} ids but the model has only {vocab_size} embedding rows"
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![quant::schema::token_type::UNUSED; vocab_size];
    let vocab = root
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Json::as_object)
        .ok_or_else(|| tok_err("no model.vocab"))?;
    for (tok, id) in vocab {
        let id = id.as_u64().unwrap_or(u64::MAX) as usize;
        if let (Some(slot), Some(ty)) = (tokens.get_mut(id), types.get_mut(id)) {
            *slot = Some(tok.clone());
            *ty = quant::schema::token_type::NORMAL;
        }
    }
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    for t in root
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let id = t.get("id").and_then(Json::as_u64).unwrap_or(u64::MAX) as usize;
        let content = t.get("content").and_then(Json::as_str).unwrap_or("");
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        if let (Some(slot), Some(ty)) = (tokens.get_mut(id), types.get_mut(id)) {
            *slot = Some(content.to_string());
            *ty = if special {
                quant::schema::token_type::CONTROL
            } else {
                quant::schema::token_type::USER_DEFINED
            };
            ids.insert(content.to_string(), id as u32);
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let lookup = |content: &str| -> Result<u32> {
        ids.get(content)
            .copied()
            .or_else(|| vocab.get(content).and_then(Json::as_u64).map(|v| v as u32))
            .ok_or_else(|| tok_err(format!("token '{content}' not in the tokenizer")))
    };
    // The reference's processor takes BOS/EOS from the tokenizer (`tokenizer.bos_token_id`),
    // never from config.json, and runs whatever config.json says: so do we, with a warning.
    // Without a token named in tokenizer_config.json, config.json's id is all there is.
    let mut warnings = Vec::new();
    let mut special = |what: &str, key: &str, config_id: u32| -> Result<u32> {
        let Some(content) = config_token(tokenizer_config, key) else {
            return Ok(config_id);
        };
        let found = lookup(&content)?;
        if found != config_id {
            warnings.push(format!(
                "{what} '{content}' has id {found} in the tokenizer but {config_id} in \
                 config.json; using the tokenizer's {found}, as the reference's processor does"
            ));
        }
        Ok(found)
    };
    let bos_id = special("BOS", "bos_token", bos_id)?;
    let eos_id = special("EOS", "eos_token", eos_id)?;
    Ok(TokenizerData {
        pad_id: lookup(pad_token)?,
        image_token_id: lookup(image_token)?,
        merges: merges(&root)?,
        hf_json,
        pre,
        tokens,
        token_types: types,
        bos_id,
        eos_id,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    fn special_ids(fixture_name: &str) -> BTreeMap<String, u32> {
        let cases: Json = serde_json::from_str(
            &std::fs::read_to_string(fixture(fixture_name).join("cases.json")).unwrap(),
        )
        .unwrap();
        serde_json::from_value(cases["special_token_ids"].clone()).unwrap()
    }

    #[test]
    fn both_fixtures_get_the_processor_ids() {
        for name in ["tiny-mla", "tiny-mha"] {
            let d = load(
                &fixture(name).join("hf"),
                1280,
                0,
                1,
                "<｜▁pad▁｜>",
                "<image>",
            )
            .unwrap();
            assert_eq!(d.tokens.len(), 1280);
            assert_eq!(d.pre, "deepseek-v3");
            for (tok, id) in special_ids(name) {
                assert_eq!(d.tokens[id as usize], tok, "{name}");
            }
            assert_eq!(
                (d.bos_id, d.eos_id, d.pad_id, d.image_token_id),
                (0, 1, 2, 1200)
            );
            assert_eq!(d.tokens[1208], "[PAD1208]");
            assert_eq!(d.token_types[1208], quant::schema::token_type::UNUSED);
            assert_eq!(d.token_types[1200], quant::schema::token_type::CONTROL);
            assert_eq!(d.merges[0], "Ġ Ġ");
        }
    }

    #[test]
    fn deepseek_v3_tokenizer_gets_image_at_128815() {
        let text =
            std::fs::read_to_string(fixture("tokenizers/deepseek-v3/tokenizer.json")).unwrap();
        let out: Json = serde_json::from_str(&augment_tokenizer_json(&text).unwrap()).unwrap();
        let added = out["added_tokens"].as_array().unwrap();
        let find = |c: &str| {
            added
                .iter()
                .find(|t| t["content"] == c)
                .map(|t| t["id"].clone())
        };
        assert_eq!(find("<image>"), Some(json!(128815)));
        assert_eq!(find("<|Assistant|>"), Some(json!(128822)));
        // The pad token already exists there and is not added twice.
        assert_eq!(
            added
                .iter()
                .filter(|t| t["content"] == "<｜▁pad▁｜>")
                .count(),
            1
        );
    }

    #[test]
    fn pair_merges_are_joined() {
        let j = json!({"model": {"merges": [["a", "b"], "c d"]}});
        assert_eq!(merges(j.as_object().unwrap()).unwrap(), vec!["a b", "c d"]);
    }
}
