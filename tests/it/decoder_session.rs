//! Session behaviour on a converted fixture: chunked prefill equals one-shot
//! prefill, a chat turn reuses the cached prefix and still generates what a
//! fresh session generates, and wrong files are rejected with clear errors.

use std::path::{Path, PathBuf};

use convert::write::mmproj_path;
use pocketvl::generate::GenerateOptions;
use pocketvl::loader::{LoaderError, ModelFile};
use pocketvl::model::deepseek_vl2::prompt::{build_chat, Message, Role};
use pocketvl::model::deepseek_vl2::{LanguageModel, ModelError};
use pocketvl::sampler::SamplerConfig;
use pocketvl::{Model, ModelOptions, Session};

use crate::common;

fn converted(name: &str) -> (tempfile::TempDir, PathBuf) {
    common::converted(name, "f32")
}

fn session(path: &Path, ctx: Option<usize>) -> Session {
    let opts = ModelOptions {
        ctx,
        ..ModelOptions::default()
    };
    Model::load(path, opts).unwrap().session()
}

fn greedy(max_new: usize, chunk: usize) -> GenerateOptions {
    GenerateOptions {
        max_new,
        chunk,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        keep_logits: true,
        ..Default::default()
    }
}

#[test]
fn chunked_prefill_and_prefix_reuse() {
    for name in ["tiny-mha", "tiny-mla"] {
        let (_dir, path) = converted(name);
        let mut s = session(&path, None);
        let mut msgs = vec![Message::new(
            Role::User,
            "Write a short poem about the sea and the stars.",
        )];
        let ids = build_chat(s.model().tokenizer(), &msgs, &[]).unwrap().ids;
        let whole = s
            .generate_ids(&ids, &[], &greedy(6, 0), &mut |_| {})
            .unwrap();
        for chunk in [1usize, 3, 7] {
            s.reset();
            let g = s
                .generate_ids(&ids, &[], &greedy(6, chunk), &mut |_| {})
                .unwrap();
            assert_eq!(g.tokens, whole.tokens, "{name}: chunk {chunk}");
            let d = common::max_abs(&g.logits[0], &whole.logits[0]);
            assert!(d < 1e-4, "{name}: chunk {chunk} logits differ by {d}");
        }
        // Second turn: the first turn's positions are reused.
        msgs.push(Message::new(Role::Assistant, whole.text.clone()));
        msgs.push(Message::new(Role::User, "Another one, shorter."));
        let ids2 = build_chat(s.model().tokenizer(), &msgs, &[]).unwrap().ids;
        let turn2 = s
            .generate_ids(&ids2, &[], &greedy(6, 0), &mut |_| {})
            .unwrap();
        assert!(
            turn2.timings.prefill_tokens < ids2.len(),
            "{name}: no prefix reuse"
        );
        let mut fresh = session(&path, None);
        let want = fresh
            .generate_ids(&ids2, &[], &greedy(6, 0), &mut |_| {})
            .unwrap();
        assert_eq!(
            turn2.tokens, want.tokens,
            "{name}: reused prefix changes the answer"
        );
    }
}

#[test]
fn wrong_files_are_rejected_clearly() {
    let (_dir, path) = converted("tiny-mla");
    // The mmproj is a valid GGUF of another architecture.
    let mm = ModelFile::open(&mmproj_path(&path)).unwrap();
    match LanguageModel::load(&mm) {
        Err(ModelError::Loader(LoaderError::Architecture { found, .. })) => {
            assert_eq!(found, "clip")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("mmproj loaded as a language model"),
    }
    // Not a GGUF at all.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mla/hf/config.json");
    let err = ModelFile::open(&cfg).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    // A prompt longer than the context.
    let mut s = session(&path, Some(8));
    let ids = build_chat(
        s.model().tokenizer(),
        &[Message::new(
            Role::User,
            "a prompt longer than eight tokens for sure",
        )],
        &[],
    )
    .unwrap()
    .ids;
    let err = s
        .generate_ids(&ids, &[], &greedy(4, 0), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}
