//! The `deepseek` conversation template as the reference's processor builds
//! token ids (`format_messages_v2` / `tokenize_with_images`,
//! DEEPSEEK-VL2.md §6.3, fixtures README rules 1–3):
//!
//! - `[BOS]` once; an optional system message's text right after it;
//! - each user turn: `"<|User|>: " + content.strip() + "\n\n<|Assistant|>:"`
//!   (an empty content renders `"<|User|>:<|Assistant|>:"`), split at each
//!   `<image>`, every piece tokenized on its own, each `<image>` becoming a
//!   run of image-token ids;
//! - each history assistant turn: its stripped text, then `[EOS]`, directly
//!   after the previous `<|Assistant|>:` (no space, no newline);
//! - for generation the prompt ends with the tokens of `<|Assistant|>:`.

use thiserror::Error;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// User role tag (ASCII bars, not DeepSeek-V3's full-width `<｜User｜>`).
pub const USER_ROLE: &str = "<|User|>";
/// Assistant role tag.
pub const ASSISTANT_ROLE: &str = "<|Assistant|>";
/// The image placeholder in message text.
pub const IMAGE_TAG: &str = "<image>";
/// Separator after a user message.
pub const USER_SEP: &str = "\n\n";
/// Text of the end-of-sentence token (full-width bars and U+2581).
pub const EOS_TEXT: &str = "<｜end▁of▁sentence｜>";
/// Stop strings of the template (the web demo cuts displayed text at them).
pub const STOP_STRINGS: &[&str] = &["User:", EOS_TEXT];

/// Who speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One conversation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A run of image-token ids in a prompt, to be overwritten by one image's
/// features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRun {
    pub start: usize,
    pub len: usize,
}

/// Prompt ids and where each image goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromptTokens {
    pub ids: Vec<u32>,
    /// One run per `<image>` tag, in prompt order.
    pub images: Vec<ImageRun>,
}

/// Template errors.
#[derive(Debug, Error)]
pub enum PromptError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the prompt has {tags} <image> tags but {given} image token counts were given")]
    ImageCount { tags: usize, given: usize },
    #[error("the tokenizer has no `<image>` token")]
    NoImageToken,
    #[error("a system message is only allowed first")]
    SystemNotFirst,
    #[error("an assistant message cannot contain <image>")]
    ImageInAssistant,
}

/// Appends `text` tokenized piece by piece around `<image>` tags; each tag
/// becomes a run of `counts[next]` image ids.
fn push_with_images(
    tok: &Tokenizer,
    text: &str,
    counts: &[usize],
    next_image: &mut usize,
    out: &mut PromptTokens,
) -> Result<(), PromptError> {
    for (i, piece) in text.split(IMAGE_TAG).enumerate() {
        if i > 0 {
            let len = *counts.get(*next_image).ok_or(PromptError::ImageCount {
                tags: *next_image + 1,
                given: counts.len(),
            })?;
            let id = tok.token_id(IMAGE_TAG).ok_or(PromptError::NoImageToken)?;
            out.images.push(ImageRun {
                start: out.ids.len(),
                len,
            });
            out.ids.extend(std::iter::repeat_n(id, len));
            *next_image += 1;
        }
        out.ids.extend(tok.encode(piece)?);
    }
    Ok(())
}

fn count_tags(text: &str) -> usize {
    text.matches(IMAGE_TAG).count()
}

/// The text a user turn renders to (before tokenization).
fn user_turn(content: &str) -> String {
    let c = content.trim();
    if c.is_empty() {
        format!("{USER_ROLE}:{ASSISTANT_ROLE}:")
    } else {
        format!("{USER_ROLE}: {c}{USER_SEP}{ASSISTANT_ROLE}:")
    }
}

/// Token ids of a conversation ready for generation. `image_tokens[i]` is
/// the number of image-token ids the i-th `<image>` tag (in prompt order)
/// expands to; it must have one entry per tag.
pub fn build_chat(
    tok: &Tokenizer,
    messages: &[Message],
    image_tokens: &[usize],
) -> Result<PromptTokens, PromptError> {
    let tags: usize = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| count_tags(&m.content))
        .sum();
    if tags != image_tokens.len() {
        return Err(PromptError::ImageCount {
            tags,
            given: image_tokens.len(),
        });
    }
    let mut out = PromptTokens {
        ids: vec![tok.bos_id],
        images: Vec::new(),
    };
    let mut next = 0;
    for (i, m) in messages.iter().enumerate() {
        match m.role {
            Role::System => {
                if i != 0 {
                    return Err(PromptError::SystemNotFirst);
                }
                out.ids.extend(tok.encode(m.content.trim())?);
            }
            Role::User => push_with_images(
                tok,
                &user_turn(&m.content),
                image_tokens,
                &mut next,
                &mut out,
            )?,
            Role::Assistant => {
                if m.content.contains(IMAGE_TAG) {
                    return Err(PromptError::ImageInAssistant);
                }
                let c = m.content.trim();
                // The final empty assistant message of a generation prompt
                // contributes nothing (its EOS is removed).
                if c.is_empty() && i + 1 == messages.len() {
                    continue;
                }
                out.ids.extend(tok.encode(c)?);
                out.ids.push(tok.eos_id);
            }
        }
    }
    Ok(out)
}

/// Token ids of an exact post-template text (`--raw-prompt`): BOS, then the
/// text split at `<image>` and tokenized piece by piece, as the reference
/// tokenizes a rendered prompt.
pub fn build_raw(
    tok: &Tokenizer,
    text: &str,
    image_tokens: &[usize],
) -> Result<PromptTokens, PromptError> {
    let tags = count_tags(text);
    if tags != image_tokens.len() {
        return Err(PromptError::ImageCount {
            tags,
            given: image_tokens.len(),
        });
    }
    let mut out = PromptTokens {
        ids: vec![tok.bos_id],
        images: Vec::new(),
    };
    let mut next = 0;
    push_with_images(tok, text, image_tokens, &mut next, &mut out)?;
    Ok(out)
}

/// The display string of a conversation (the reference's `sft_format`), for
/// logs only: ids come from [`build_chat`].
pub fn render(messages: &[Message]) -> String {
    let mut s = String::new();
    for (i, m) in messages.iter().enumerate() {
        match m.role {
            Role::System => s.push_str(m.content.trim()),
            Role::User => s.push_str(&user_turn(&m.content)),
            Role::Assistant => {
                let c = m.content.trim();
                if c.is_empty() && i + 1 == messages.len() {
                    continue;
                }
                s.push_str(c);
                s.push_str(EOS_TEXT);
            }
        }
    }
    s
}
