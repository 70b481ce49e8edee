//! Tokenizer and chat-template parity with the reference.
//!
//! - Prompt ids: our template + tokenizer rebuild every case's `input_ids`
//!   of the fixture goldens (made by the reference processor), image runs
//!   included (counts from cases.json).
//! - Tokenization: our tokenizer gives the ids the Python `tokenizers`
//!   library gives on the original tokenizer.json (`scripts/tokenizer_ref.py`,
//!   interpreter from `POCKETVL_PYTHON`), for English, code, CJK, emoji and
//!   every special token.

use std::path::Path;
use std::process::Command;

use convert::safetensors::SafeTensorsFile;
use pocketvl::model::deepseek_vl2::prompt::build_chat;
use pocketvl::tokenizer::Tokenizer;

use crate::common;
use common::{converted, fixture, load_json, messages};

/// Every case's prompt ids equal the reference processor's.
fn check_prompt_ids(fixture_name: &str, tok: &Tokenizer) {
    let dir = fixture(fixture_name);
    let cases = load_json(&dir.join("cases.json"));
    let golden = SafeTensorsFile::open(&dir.join("golden.safetensors")).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let counts: Vec<usize> = case["image_token_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let p = build_chat(tok, &messages(case), &counts).unwrap();
        let want: Vec<u32> = golden
            .tensor(&format!("{name}.input_ids"))
            .unwrap()
            .to_i64()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(p.ids, want, "{fixture_name}/{name}: prompt ids");
        let mask = golden
            .tensor(&format!("{name}.images_seq_mask"))
            .unwrap()
            .to_bool()
            .unwrap();
        let mut ours = vec![false; p.ids.len()];
        for r in &p.images {
            ours[r.start..r.start + r.len]
                .iter_mut()
                .for_each(|m| *m = true);
        }
        assert_eq!(ours, mask, "{fixture_name}/{name}: image positions");
    }
}

#[test]
fn tiny_mha_prompt_ids_match_reference() {
    let json = std::fs::read_to_string(fixture("tiny-mha/hf/tokenizer.json")).unwrap();
    let tok = Tokenizer::from_json(&json, 0, 1).unwrap();
    check_prompt_ids("tiny-mha", &tok);
}

/// Strings covering the tokenizer's paths.
pub fn parity_strings(specials: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "Write a short poem about the sea and the stars.",
        "  leading spaces, trailing spaces   ",
        "Numbers: 1234567 3.14159 -42 1e10",
        "fn main() {\n    println!(\"hi {}\", x.len());\n}\n",
        "def f(x):\n\treturn [i**2 for i in range(x)]  # comment",
        "深度求索的视觉语言模型。日本語のテキスト、カタカナ。",
        "한국어 문장입니다.",
        "Emoji: 🦒🌊⭐️👩‍👩‍👧 and accents: café naïve Ångström",
        "\n\n\n",
        "<|User|>: hello\n\n<|Assistant|>:",
        "<image>\n<|ref|>The giraffe at the back.<|/ref|>.",
        "<|det|>[[580, 270, 999, 900]]<|/det|><|grounding|>",
        "<｜begin▁of▁sentence｜>x<｜end▁of▁sentence｜><｜▁pad▁｜>",
        "User: not a special token, <|User|> is",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(specials.iter().map(|s| s.to_string()));
    v.push(specials.concat());
    v
}

pub const VL_SPECIALS: &[&str] = &[
    "<｜▁pad▁｜>",
    "<image>",
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    "<|User|>",
    "<|Assistant|>",
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
];

/// Ids from the Python reference, or `None` (with a message) when
/// `POCKETVL_PYTHON` is unset.
pub fn python_ids(
    tokenizer_json: &Path,
    add_vl: bool,
    strings: &[String],
) -> Option<Vec<Vec<u32>>> {
    let py = crate::prereq::python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tokenizer_ref.py");
    let mut cmd = Command::new(py);
    cmd.arg(script).arg(tokenizer_json);
    if add_vl {
        cmd.arg("--add-vl-specials");
    }
    let input = serde_json::to_string(strings).unwrap();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run tokenizer_ref.py");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tokenizer_ref.py failed");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn tiny_mha_tokenizer_matches_python() {
    let path = fixture("tiny-mha/hf/tokenizer.json");
    let tok = Tokenizer::from_json(&std::fs::read_to_string(&path).unwrap(), 0, 1).unwrap();
    let strings = parity_strings(VL_SPECIALS);
    let Some(want) = python_ids(&path, true, &strings) else {
        return;
    };
    for (s, w) in strings.iter().zip(&want) {
        assert_eq!(&tok.encode(s).unwrap(), w, "{s:?}");
    }
}

#[test]
fn stream_decode_equals_reference_decode() {
    let path = fixture("tiny-mha/hf/tokenizer.json");
    let tok = Tokenizer::from_json(&std::fs::read_to_string(&path).unwrap(), 0, 1).unwrap();
    for s in parity_strings(VL_SPECIALS) {
        let ids = tok.encode(&s).unwrap();
        assert_eq!(
            tok.decode(&ids),
            tok.decode_reference(&ids).unwrap(),
            "{s:?}"
        );
        assert_eq!(tok.decode(&ids), s, "round trip {s:?}");
    }
}

/// Converts a fixture (f32) and loads the tokenizer stored in the GGUF.
fn tokenizer_from_converted(name: &str) -> (tempfile::TempDir, Tokenizer) {
    let (dir, out) = converted(name, "f32");
    let file = pocketvl::loader::ModelFile::open(&out).unwrap();
    let tok = Tokenizer::from_model_file(&file).unwrap();
    (dir, tok)
}

#[test]
fn converted_gguf_tokenizers_match_reference() {
    for name in ["tiny-mha", "tiny-mla"] {
        let (_dir, tok) = tokenizer_from_converted(name);
        check_prompt_ids(name, &tok);
        let strings = parity_strings(VL_SPECIALS);
        let Some(want) = python_ids(
            &fixture(&format!("{name}/hf/tokenizer.json")),
            true,
            &strings,
        ) else {
            continue;
        };
        for (s, w) in strings.iter().zip(&want) {
            assert_eq!(&tok.encode(s).unwrap(), w, "{name}: {s:?}");
        }
    }
}

#[test]
fn deepseek_v3_tokenizer_with_vl_tokens_matches_python() {
    let path = fixture("tokenizers/deepseek-v3/tokenizer.json");
    let json = convert::tokenizer::augment_tokenizer_json(&std::fs::read_to_string(&path).unwrap())
        .unwrap();
    let tok = Tokenizer::from_json(&json, 0, 1).unwrap();
    let strings = parity_strings(VL_SPECIALS);
    let Some(want) = python_ids(&path, true, &strings) else {
        return;
    };
    for (s, w) in strings.iter().zip(&want) {
        assert_eq!(&tok.encode(s).unwrap(), w, "{s:?}");
    }
    // The added VL tokens follow the 128k vocabulary, as in the published files.
    assert!(tok.token_id("<image>").is_some());
}
