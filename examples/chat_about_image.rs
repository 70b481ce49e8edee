//! A multi-turn chat about an image through the library API: one [`Model`] loaded once, one
//! [`pocketvl::Session`] that remembers the conversation, answers streamed as they come.
//!
//! ```sh
//! cargo run --release --example chat_about_image                  # the bundled tiny fixture
//! cargo run --release --example chat_about_image -- vl2-tiny.gguf photo.jpg
//! ```
//!
//! Without arguments the bundled random-weight fixture (`tests/fixtures/tiny-mha`) is
//! converted to a temporary GGUF first, so the answers are gibberish, but the tokens are the
//! ones the official implementation produces on the same weights.

use std::io::Write;
use std::path::{Path, PathBuf};

use pocketvl::{GenerateOptions, ImageInput, Model, ModelOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp = tempfile::tempdir()?;
    let (model_path, image) = match args.as_slice() {
        [m, i] => (PathBuf::from(m), PathBuf::from(i)),
        [] => bundled_fixture(tmp.path())?,
        _ => return Err("usage: chat_about_image [MODEL.gguf IMAGE]".into()),
    };

    // Weights are mapped once; every session shares them.
    let model = Model::load(&model_path, ModelOptions::default())?;
    let mut chat = model.session();
    let opts = GenerateOptions {
        max_new: 24,
        ..GenerateOptions::greedy()
    };
    let turns = [
        ("Describe this image.", vec![ImageInput::path(&image)]),
        ("What is the main colour?", vec![]),
        ("<|ref|>The animal<|/ref|>.", vec![]),
    ];
    for (question, images) in turns {
        println!("> {question}");
        let reply = chat.chat(question, images, &opts, |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        })?;
        println!();
        // A follow-up re-runs only the new positions and reuses the image's features.
        println!(
            "  [{} prompt positions, {} computed, images from cache: {}, boxes: {:?}]",
            reply.prompt_tokens.len(),
            reply.timings.prefill_tokens,
            reply.images.n_cached(),
            reply.box_records()
        );
    }
    Ok(())
}

/// Converts the bundled tiny checkpoint into `dir` and returns it with one of its images.
fn bundled_fixture(dir: &Path) -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mha");
    let out = dir.join("tiny.gguf");
    convert::write::convert(&convert::write::ConvertOptions {
        input: fixture.join("hf"),
        output: out.clone(),
        quant: Some("f32".to_string()),
        overrides: Vec::new(),
        force: true,
        threads: None,
        progress: false,
    })?;
    Ok((out, fixture.join("images/giraffe.jpg")))
}
