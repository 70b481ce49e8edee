//! The chat template and the tokenizer on arbitrary conversations (the fixture's real
//! DeepSeek-VL2 tokenizer, with the processor's special tokens): building the prompt must give
//! ids or a clear error, and ids must decode (also byte by byte, as the stream does).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pocketvl::model::deepseek_vl2::prompt::{build_chat, build_raw, Message, Role, IMAGE_TAG};
use pocketvl::tokenizer::{StreamDecoder, Tokenizer};

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = include_str!("../../tests/fixtures/tiny-mha/hf/tokenizer.json");
        let json = convert::tokenizer::augment_tokenizer_json(json).expect("fixture tokenizer");
        Tokenizer::from_json(&json, 0, 1).expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    // Messages are separated by 0 bytes; a message's first byte picks its role.
    let messages: Vec<Message> = data
        .split(|&b| b == 0)
        .filter_map(|m| m.split_first())
        .map(|(&role, text)| {
            let role = match role % 3 {
                0 => Role::System,
                1 => Role::User,
                _ => Role::Assistant,
            };
            Message::new(role, String::from_utf8_lossy(text))
        })
        .collect();
    let tags: usize = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.matches(IMAGE_TAG).count())
        .sum();
    // One entry per tag (a prompt the template accepts), and one too many (one it refuses).
    for n in [tags, tags + 1] {
        let counts: Vec<usize> = (0..n).map(|i| 1 + i % 5).collect();
        if let Ok(p) = build_chat(tok, &messages, &counts) {
            assert_eq!(n, tags);
            let mut stream = StreamDecoder::default();
            let mut streamed = String::new();
            for &id in &p.ids {
                streamed.push_str(&stream.push(tok.token_bytes(id)));
            }
            streamed.push_str(&stream.finish());
            std::hint::black_box((tok.decode(&p.ids), streamed));
        }
    }
    let raw = String::from_utf8_lossy(data);
    let counts = vec![3; raw.matches(IMAGE_TAG).count()];
    let _ = std::hint::black_box(build_raw(tok, &raw, &counts).map(|p| p.ids.len()));
    let _ = std::hint::black_box(tok.encode(&raw).map(|ids| ids.len()));
});
