//! The library's error type: every way a load or a request can fail, each with its context.

use std::path::PathBuf;

use crate::backend::BackendError;
use crate::generate::GenerateError;
use crate::image_io::ImageIoError;
use crate::limits::LimitError;
use crate::loader::LoaderError;
use crate::model::deepseek_vl2::prompt::PromptError;
use crate::model::deepseek_vl2::vision_config::VisionError;
use crate::model::deepseek_vl2::ModelError;
use crate::tokenizer::TokenizerError;
use crate::vision_cache::VisionCacheError;

/// Errors of [`crate::Model`] and [`crate::Session`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {0} does not exist")]
    NoModelFile(PathBuf),
    #[error("loading {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<ModelError>,
    },
    /// The loader's messages already name the file.
    #[error("{source}")]
    File {
        path: PathBuf,
        #[source]
        source: Box<LoaderError>,
    },
    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: Box<TokenizerError>,
    },
    #[error("images need the vision model, but {0} does not exist (give --mmproj)")]
    NoMmproj(PathBuf),
    #[error("loading the vision model {path}: {source}")]
    LoadVision {
        path: PathBuf,
        #[source]
        source: Box<VisionError>,
    },
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("reading image {what}: {source}")]
    Image {
        what: String,
        #[source]
        source: ImageIoError,
    },
    #[error(transparent)]
    Vision(Box<VisionCacheError>),
    #[error(
        "the prompt has {tags} <image> tag(s) but only {images} image(s) were given \
         (one --image or /image per tag)"
    )]
    TooManyTags { tags: usize, images: usize },
    #[error(
        "{images} image(s) were given but the prompt has only {tags} <image> tag(s) \
         (write one tag per image, or none to put them all in front)"
    )]
    TooFewTags { tags: usize, images: usize },
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(
        "the prompt needs {n} tokens, {} of them for {} image(s) ({image_tokens:?} per \
         image), but the context holds {n_ctx}; use a larger --ctx or fewer images",
        .image_tokens.iter().sum::<usize>(), .image_tokens.len()
    )]
    ImagesTooLong {
        n: usize,
        n_ctx: usize,
        image_tokens: Vec<usize>,
    },
    #[error("the prompt needs {n} tokens but the context holds {n_ctx}; use a larger --ctx")]
    PromptTooLong { n: usize, n_ctx: usize },
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Generate(Box<GenerateError>),
}

// Boxed: the model's error types are large, and every request returns this one.
impl From<VisionCacheError> for Error {
    fn from(e: VisionCacheError) -> Error {
        Error::Vision(Box::new(e))
    }
}

impl From<GenerateError> for Error {
    fn from(e: GenerateError) -> Error {
        Error::Generate(Box::new(e))
    }
}

impl Error {
    /// Whether the request, not the model or the machine, is at fault (a server answers
    /// these with 400).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            Error::Limit(_)
                | Error::Image { .. }
                | Error::TooManyTags { .. }
                | Error::TooFewTags { .. }
                | Error::Request(_)
                | Error::Prompt(_)
                | Error::ImagesTooLong { .. }
                | Error::PromptTooLong { .. }
                | Error::Options(_)
                | Error::NoMmproj(_)
        ) || matches!(self, Error::Vision(v) if matches!(**v, VisionCacheError::Preprocess { .. }))
    }
}
