//! [`Session`]: one conversation on a shared [`Model`], with its own KV cache (positions of an
//! earlier turn are reused when a prompt extends it) and its own vision-feature cache (an image
//! asked about again is not re-encoded).

use std::sync::Arc;

use super::prompt::{lay_out, Laid};
use super::{ChatTurn, Error, ImageInput, Model, Prompt};
use crate::generate::{
    embed_prompt, GenerateOptions, Generation, Sequence, StopReason, Timings, TokenStream,
};
use crate::grounding::{ground, BoxRecord, PixelBox};
use crate::image_io::RgbImage;
use crate::limits;
use crate::model::deepseek_vl2::preprocess::ImageLayout;
use crate::model::deepseek_vl2::prompt::{build_chat, build_raw, Role, STOP_STRINGS};
use crate::trace::Trace;
use crate::vision_cache::{EncodedImages, VisionCache};

/// One conversation: KV cache, feature cache, and the history [`Session::chat`] continues.
pub struct Session {
    model: Model,
    seq: Sequence,
    vision_cache: VisionCache,
    history: Vec<ChatTurn>,
}

/// What the images of a request became.
#[derive(Clone, Debug, Default)]
pub struct ImagesInfo {
    /// Per image: sizes, tiling, token count.
    pub layouts: Vec<ImageLayout>,
    /// Per image: whether its features came from the session's cache.
    pub cached: Vec<bool>,
    /// Time in preprocessing, tower and projector (cache misses only).
    pub vision_ms: f64,
}

impl ImagesInfo {
    pub fn token_counts(&self) -> Vec<usize> {
        self.layouts.iter().map(|l| l.n_tokens).collect()
    }

    pub fn n_cached(&self) -> usize {
        self.cached.iter().filter(|&&c| c).count()
    }
}

/// An answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The text (special tokens kept, so `<|det|>` boxes are there), cut at a stop string.
    pub text: String,
    /// Generated ids (EOS excluded).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// The prompt's ids.
    pub prompt_tokens: Vec<u32>,
    /// Grounding boxes of the text in pixels of the conversation's last image (as shown:
    /// upright unless EXIF rotation is off).
    pub boxes: Vec<(String, PixelBox)>,
    /// The conversation's last image (what the boxes refer to).
    pub last_image: Option<Arc<RgbImage>>,
    pub images: ImagesInfo,
    pub timings: Timings,
    /// The logits each token was chosen from, when asked for.
    pub logits: Vec<Vec<f32>>,
}

impl Reply {
    /// The boxes as `{label, box}` records.
    pub fn box_records(&self) -> Vec<BoxRecord> {
        self.boxes
            .iter()
            .map(|(l, b)| BoxRecord::from_pixels(l, *b))
            .collect()
    }
}

/// A prompt turned into ids and features.
struct Prepared {
    ids: Vec<u32>,
    features: Vec<f32>,
    images: ImagesInfo,
    decoded: Vec<Arc<RgbImage>>,
}

/// An answer being generated: an iterator over final pieces of text. Dropping it (or calling
/// [`ReplyStream::finish`] early) cancels the generation and leaves the session usable.
pub struct ReplyStream<'a> {
    inner: TokenStream<'a>,
    prepared: Prepared,
}

impl Iterator for ReplyStream<'_> {
    type Item = Result<String, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| r.map_err(Error::from))
    }
}

impl ReplyStream<'_> {
    /// Prompt positions (tokens and image features) in the request.
    pub fn prompt_len(&self) -> usize {
        self.prepared.ids.len()
    }

    /// Ends the stream and returns the answer so far.
    pub fn finish(self) -> Reply {
        let g = self.inner.finish();
        reply(g, self.prepared)
    }
}

fn reply(g: Generation, p: Prepared) -> Reply {
    let last_image = p.decoded.last().cloned();
    let boxes = match &last_image {
        Some(img) => ground(&g.text, img.width(), img.height()),
        None => Vec::new(),
    };
    Reply {
        text: g.text,
        tokens: g.tokens,
        stop: g.stop,
        prompt_tokens: p.ids,
        boxes,
        last_image,
        images: p.images,
        timings: g.timings,
        logits: g.logits,
    }
}

impl Session {
    pub(super) fn new(model: Model) -> Session {
        let seq = Sequence::new(model.language());
        Session {
            model,
            seq,
            vision_cache: VisionCache::default(),
            history: Vec::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Sets (or clears) the system message [`Session::chat`] puts first.
    pub fn set_system(&mut self, system: Option<String>) {
        if self.history.first().map(|t| t.role) == Some(Role::System) {
            self.history.remove(0);
        }
        if let Some(s) = system {
            self.history.insert(0, ChatTurn::system(s));
        }
    }

    /// The conversation so far (of [`Session::chat`]).
    pub fn history(&self) -> &[ChatTurn] {
        &self.history
    }

    /// Forgets the conversation (the system message stays) and the KV cache; cached image
    /// features stay (they depend on the image only).
    pub fn reset(&mut self) {
        self.history.retain(|t| t.role == Role::System);
        self.seq.reset();
    }

    /// Number of images in the conversation so far.
    pub fn n_images(&self) -> usize {
        self.history.iter().map(|t| t.images.len()).sum()
    }

    /// Positions held in the KV cache.
    pub fn cached_positions(&self) -> usize {
        self.seq.len()
    }

    /// The forward passes' trace (named intermediate dumps; off by default).
    pub fn trace_mut(&mut self) -> &mut Trace {
        &mut self.seq.state.trace
    }

    /// One turn of the conversation: `text` (with `images`) from the user, answered and
    /// remembered. On error the conversation stays as it was.
    pub fn chat(
        &mut self,
        text: &str,
        images: Vec<ImageInput>,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Reply, Error> {
        // Decoded once here, the images stay in the history as pixels: later turns neither
        // read nor decode them again.
        limits::images_per_prompt(self.n_images() + images.len())?;
        let exif = self.model.exif_rotate();
        let images = images
            .iter()
            .map(|i| i.decode(exif).map(ImageInput::Decoded))
            .collect::<Result<Vec<_>, _>>()?;
        let mut turns = self.history.clone();
        turns.push(ChatTurn::user(text, images));
        let prompt = Prompt::Chat(turns);
        let r = self.complete(&prompt, opts, &mut on_text)?;
        if let Prompt::Chat(mut turns) = prompt {
            turns.push(ChatTurn::assistant(r.text.clone()));
            self.history = turns;
        }
        Ok(r)
    }

    /// A whole request (e.g. a chat-completions call carrying the conversation), answered
    /// without touching [`Session::history`]; the KV cache still reuses whatever prefix it
    /// shares with the previous request.
    pub fn complete(
        &mut self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Reply, Error> {
        let mut stream = self.stream(prompt, opts)?;
        for piece in stream.by_ref() {
            on_text(&piece?);
        }
        Ok(stream.finish())
    }

    /// Prepares `prompt` (images, template, prefill) and returns the answer as an iterator.
    pub fn stream(
        &mut self,
        prompt: &Prompt,
        opts: &GenerateOptions,
    ) -> Result<ReplyStream<'_>, Error> {
        opts.check().map_err(Error::Options)?;
        let prepared = self.prepare(prompt)?;
        let mut opts = opts.clone();
        for s in STOP_STRINGS {
            if !opts.stop_strings.iter().any(|t| t == s) {
                opts.stop_strings.push(s.to_string());
            }
        }
        let Session { model, seq, .. } = self;
        let inner = seq.start(
            model.language(),
            model.tokenizer(),
            &prepared.ids,
            &prepared.features,
            &opts,
        )?;
        Ok(ReplyStream { inner, prepared })
    }

    /// Generation from ids already templated (`image_features` fill the image-token
    /// positions), without the template's stop strings: the low-level entry the oracle tests
    /// and custom templates use.
    pub fn generate_ids(
        &mut self,
        ids: &[u32],
        image_features: &[f32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, Error> {
        opts.check().map_err(Error::Options)?;
        let Session { model, seq, .. } = self;
        Ok(seq.generate(
            model.language(),
            model.tokenizer(),
            ids,
            image_features,
            opts,
            on_text,
        )?)
    }

    /// The language model's input for `ids` with `image_features` scattered in (`[n, D]`).
    pub fn embed_prompt(&self, ids: &[u32], image_features: &[f32]) -> Result<Vec<f32>, Error> {
        let (emb, _) = embed_prompt(
            self.model.language(),
            self.model.tokenizer(),
            ids,
            image_features,
        )?;
        Ok(emb)
    }

    /// Features of `images` (a whole conversation's, in order) through the session's cache.
    pub fn encode_images(&mut self, images: &[Arc<RgbImage>]) -> Result<EncodedImages, Error> {
        if images.is_empty() {
            return Ok(EncodedImages::default());
        }
        let vision = self.model.load_vision()?;
        let cache = &mut self.vision_cache;
        Ok(self.model.install(|| cache.encode(&vision, images))?)
    }

    fn prepare(&mut self, prompt: &Prompt) -> Result<Prepared, Error> {
        let (laid, inputs) = lay_out(prompt)?;
        limits::images_per_prompt(inputs.len())?;
        let exif = self.model.exif_rotate();
        let decoded = inputs
            .iter()
            .map(|i| i.decode(exif))
            .collect::<Result<Vec<_>, _>>()?;
        let enc = self.encode_images(&decoded)?;
        let counts = enc.token_counts();
        let tok = self.model.tokenizer();
        let ids = match laid {
            Laid::Chat(msgs) => build_chat(tok, &msgs, &counts)?.ids,
            Laid::Raw(text) => build_raw(tok, &text, &counts)?.ids,
        };
        check_context(ids.len(), self.model.context_length(), &counts)?;
        let images = ImagesInfo {
            layouts: enc.layouts,
            cached: enc.cached,
            vision_ms: enc.vision_ms,
        };
        Ok(Prepared {
            ids,
            features: enc.features,
            images,
            decoded,
        })
    }
}

/// Refuses a prompt that does not fit the context, saying how much the images take.
fn check_context(n: usize, n_ctx: usize, image_tokens: &[usize]) -> Result<(), Error> {
    // One position is needed for the first generated token's logits only; the prompt itself
    // must fit.
    if n <= n_ctx {
        return Ok(());
    }
    if image_tokens.iter().sum::<usize>() > 0 {
        return Err(Error::ImagesTooLong {
            n,
            n_ctx,
            image_tokens: image_tokens.to_vec(),
        });
    }
    Err(Error::PromptTooLong { n, n_ctx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_error_mentions_images() {
        assert!(check_context(600, 600, &[644]).is_ok());
        let e = check_context(655, 600, &[644]).unwrap_err().to_string();
        assert!(e.contains("644 of them for 1 image(s)"), "{e}");
    }
}
