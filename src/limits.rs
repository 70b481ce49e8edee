//! Every input limit of the runtime, defined once and applied identically by the CLI, the
//! library ([`crate::Session`]) and the server. README's "Limits" section lists them.
//!
//! They bound what a request can make the process allocate or compute, with a clear error
//! instead of an out-of-memory kill; none is near what a legitimate use needs.

/// Largest accepted image width or height, in pixels (checked from the header, before any
/// pixel is decoded).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Largest accepted pixel count of one image: 2^28, about 268 megapixels (805 MB as RGB8).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 28;

/// Largest accepted encoded image (a file given to `--image`/`/image`, bytes handed to the
/// library, a data URL's payload): 32 MiB, several times a 50-megapixel JPEG.
pub const MAX_IMAGE_BYTES: u64 = 32 << 20;

/// Most images in one prompt (a whole conversation's). Beyond `max_images_for_tiling` (2)
/// every image costs 421 tokens on the released models, so 16 images already need a
/// 6.7k-token context, more than the models' 4096.
pub const MAX_IMAGES_PER_PROMPT: usize = 16;

/// Largest HTTP request body the server reads (a chat request with its data-URL images):
/// room for two images of [`MAX_IMAGE_BYTES`] in base64.
pub const MAX_REQUEST_BYTES: usize = 96 << 20;

/// A context length asked for (`--ctx`, [`crate::ModelOptions::ctx`]) checked against the
/// model's trained context `model_max`: between 1 and `model_max` (RoPE tables and the KV cache
/// are sized for it; positions beyond what the model was trained on give garbage).
pub fn context_length(requested: Option<usize>, model_max: usize) -> Result<usize, LimitError> {
    match requested {
        None => Ok(model_max),
        Some(0) => Err(LimitError::ContextZero),
        Some(n) if n > model_max => Err(LimitError::ContextBeyondModel { n, model_max }),
        Some(n) => Ok(n),
    }
}

/// Checks the size of an encoded image before it is decoded.
pub fn image_bytes(len: u64) -> Result<(), LimitError> {
    if len > MAX_IMAGE_BYTES {
        return Err(LimitError::ImageBytes { len });
    }
    Ok(())
}

/// Checks the number of images of one prompt.
pub fn images_per_prompt(n: usize) -> Result<(), LimitError> {
    if n > MAX_IMAGES_PER_PROMPT {
        return Err(LimitError::TooManyImages { n });
    }
    Ok(())
}

/// A limit was exceeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("a context length of 0 tokens cannot hold a prompt")]
    ContextZero,
    #[error("a context length of {n} tokens is beyond the model's context length of {model_max}")]
    ContextBeyondModel { n: usize, model_max: usize },
    #[error(
        "the image is {len} bytes; the limit is {} bytes ({} MiB)",
        MAX_IMAGE_BYTES,
        MAX_IMAGE_BYTES >> 20
    )]
    ImageBytes { len: u64 },
    #[error("{n} images in one prompt; the limit is {}", MAX_IMAGES_PER_PROMPT)]
    TooManyImages { n: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_between_one_and_the_model() {
        assert_eq!(context_length(None, 4096), Ok(4096));
        assert_eq!(context_length(Some(512), 4096), Ok(512));
        assert_eq!(context_length(Some(4096), 4096), Ok(4096));
        assert_eq!(context_length(Some(0), 4096), Err(LimitError::ContextZero));
        assert_eq!(
            context_length(Some(4097), 4096).unwrap_err().to_string(),
            "a context length of 4097 tokens is beyond the model's context length of 4096"
        );
    }

    #[test]
    fn image_limits() {
        assert!(image_bytes(MAX_IMAGE_BYTES).is_ok());
        assert!(image_bytes(MAX_IMAGE_BYTES + 1).is_err());
        assert!(images_per_prompt(MAX_IMAGES_PER_PROMPT).is_ok());
        assert_eq!(
            images_per_prompt(17).unwrap_err().to_string(),
            "17 images in one prompt; the limit is 16"
        );
    }
}
