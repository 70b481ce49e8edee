//! What a request asks: a chat conversation or an exact post-template text, each with its
//! images; and the two rules that pair images with `<image>` tags.

use super::{Error, ImageInput};
use crate::model::deepseek_vl2::prompt::{Message, Role, IMAGE_TAG};

/// One message of a conversation with the images that go with it.
#[derive(Clone, Debug)]
pub struct ChatTurn {
    pub role: Role,
    /// The text; `<image>` tags place this turn's images, or without tags one `<image>\n`
    /// per image is put in front (the reference web demo's layout).
    pub text: String,
    /// Only user turns carry images.
    pub images: Vec<ImageInput>,
}

impl ChatTurn {
    pub fn system(text: impl Into<String>) -> ChatTurn {
        ChatTurn {
            role: Role::System,
            text: text.into(),
            images: Vec::new(),
        }
    }

    pub fn user(text: impl Into<String>, images: Vec<ImageInput>) -> ChatTurn {
        ChatTurn {
            role: Role::User,
            text: text.into(),
            images,
        }
    }

    pub fn assistant(text: impl Into<String>) -> ChatTurn {
        ChatTurn {
            role: Role::Assistant,
            text: text.into(),
            images: Vec::new(),
        }
    }
}

/// A whole request.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// A conversation in DeepSeek-VL2's chat template, answered as the next assistant turn.
    Chat(Vec<ChatTurn>),
    /// An exact post-template text (BOS is added; split at `<image>` like the reference).
    Raw {
        text: String,
        images: Vec<ImageInput>,
    },
}

/// A prompt with its tags laid out: template messages (or the raw text) and the images in
/// prompt order.
pub(super) enum Laid {
    Chat(Vec<Message>),
    Raw(String),
}

/// Applies the tag rules to every turn and collects the images in prompt order.
pub(super) fn lay_out(prompt: &Prompt) -> Result<(Laid, Vec<ImageInput>), Error> {
    match prompt {
        Prompt::Raw { text, images } => {
            let text = with_image_tags(text, images.len());
            check_tag_count(&text, images.len())?;
            Ok((Laid::Raw(text), images.clone()))
        }
        Prompt::Chat(turns) => {
            let mut msgs = Vec::with_capacity(turns.len());
            let mut images = Vec::new();
            if turns.last().map(|t| t.role) != Some(Role::User) {
                return Err(Error::Request(
                    "the conversation must end with a user message".to_owned(),
                ));
            }
            for (i, t) in turns.iter().enumerate() {
                match t.role {
                    Role::System if i > 0 => {
                        return Err(Error::Request(
                            "a system message is only allowed first".to_owned(),
                        ))
                    }
                    Role::User => {
                        let text = with_image_tags(&t.text, t.images.len());
                        check_tag_count(&text, t.images.len())?;
                        images.extend(t.images.iter().cloned());
                        msgs.push(Message::new(Role::User, text));
                        continue;
                    }
                    _ => {}
                }
                if !t.images.is_empty() {
                    return Err(Error::Request(
                        "only user messages can carry images".to_owned(),
                    ));
                }
                if t.text.contains(IMAGE_TAG) {
                    return Err(Error::Request(format!(
                        "{IMAGE_TAG} tags belong in user messages only"
                    )));
                }
                msgs.push(Message::new(t.role, t.text.clone()));
            }
            Ok((Laid::Chat(msgs), images))
        }
    }
}

/// The rule for images without tags: one `<image>\n` per image in front of the text (the
/// reference web demo's layout); a text with tags is used as written.
pub fn with_image_tags(text: &str, n_images: usize) -> String {
    if n_images == 0 || text.contains(IMAGE_TAG) {
        text.to_string()
    } else {
        format!("{}{text}", format!("{IMAGE_TAG}\n").repeat(n_images))
    }
}

/// Refuses a text whose `<image>` tags and images do not pair up, naming both counts.
pub fn check_tag_count(text: &str, images: usize) -> Result<(), Error> {
    let tags = text.matches(IMAGE_TAG).count();
    if tags > images {
        return Err(Error::TooManyTags { tags, images });
    }
    if tags < images {
        return Err(Error::TooFewTags { tags, images });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_put_in_front_only_without_tags() {
        assert_eq!(with_image_tags("hi", 2), "<image>\n<image>\nhi");
        assert_eq!(with_image_tags("a <image> b", 2), "a <image> b");
        assert_eq!(with_image_tags("hi", 0), "hi");
    }

    #[test]
    fn tag_count_errors_name_both_counts() {
        assert!(check_tag_count("<image>\n<image> x", 2).is_ok());
        let e = check_tag_count("<image><image>", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 <image> tag(s) but only 1 image"), "{e}");
        let e = check_tag_count("<image>", 3).unwrap_err().to_string();
        assert!(
            e.contains("3 image(s) were given but the prompt has only 1"),
            "{e}"
        );
    }

    #[test]
    fn a_conversation_ends_with_the_user() {
        let p = Prompt::Chat(vec![ChatTurn::user("hi", vec![]), ChatTurn::assistant("x")]);
        assert!(lay_out(&p).is_err());
        let p = Prompt::Chat(vec![
            ChatTurn::user("hi", vec![]),
            ChatTurn::system("s"),
            ChatTurn::user("x", vec![]),
        ]);
        assert!(lay_out(&p).is_err());
    }
}
