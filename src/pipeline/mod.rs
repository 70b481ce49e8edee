//! The library API: a [`Model`] loaded once (weights mapped and shared behind an `Arc`) and any
//! number of [`Session`]s on it, each with its own KV cache and vision-feature cache. One
//! request flows images → tiling → features → prompt → prefill → generate → grounding, the
//! same path for `pocketvl run`, `pocketvl serve` and programs that embed the model.
//!
//! ```no_run
//! use pocketvl::{GenerateOptions, ImageInput, Model, ModelOptions};
//! let model = Model::load("tiny.gguf".as_ref(), ModelOptions::default())?;
//! let mut chat = model.session();
//! let opts = GenerateOptions { max_new: 32, ..GenerateOptions::greedy() };
//! let reply = chat.chat("Describe this image.", vec![ImageInput::path("cat.jpg")], &opts, |t| print!("{t}"))?;
//! let again = chat.chat("What colour is it?", vec![], &opts, |t| print!("{t}"))?;
//! # Ok::<(), pocketvl::Error>(())
//! ```

mod error;
mod image;
mod model;
mod prompt;
mod session;

pub use error::Error;
pub use image::ImageInput;
pub use model::{Model, ModelOptions};
pub use prompt::{check_tag_count, with_image_tags, ChatTurn, Prompt};
pub use session::{ImagesInfo, Reply, ReplyStream, Session};
