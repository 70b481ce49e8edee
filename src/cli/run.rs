//! `pocketvl run`: generate from a prompt (streamed to stdout) or chat
//! interactively. Only argument handling and I/O live here; the work is in
//! [`crate::generate`].

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::ThreadPool;

use crate::experts::ExpertStats;
use crate::generate::{GenerateParams, Generation, Session};
use crate::grounding::{draw_boxes, ground, BoxRecord, PixelBox};
use crate::image_io::{load_rgb, RgbImage};
use crate::loader::ModelFile;
use crate::model::deepseek_vl2::prompt::{
    build_chat, build_raw, Message, Role, IMAGE_TAG, STOP_STRINGS,
};
use crate::model::deepseek_vl2::vision::VisionModel;
use crate::model::deepseek_vl2::LanguageModel;
use crate::sampler::SamplerConfig;
use crate::tokenizer::Tokenizer;
use crate::trace::Trace;
use crate::vision_cache::{EncodedImages, VisionCache};

/// Arguments of `pocketvl run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The language-model GGUF (`model.gguf`).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// One user message; without it (and without --raw-prompt) an interactive chat starts.
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// An image for the prompt (repeatable, prompt order). Without `<image>` tags in the
    /// prompt, one `<image>\n` per image is put in front (as the reference web demo does);
    /// with tags, their number must equal the number of images. In chat, these images go
    /// with the first message (`/image PATH` adds more later).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// The vision GGUF (default: `mmproj-<model file name>` beside the model).
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Open images as stored, ignoring the EXIF orientation (exactly what the reference
    /// sees). By default images are turned upright first, and boxes refer to the upright image.
    #[arg(long = "no-exif-rotate")]
    pub no_exif_rotate: bool,
    /// Write the last image with the answer's grounding boxes drawn and labelled (PNG).
    #[arg(long = "draw-boxes", value_name = "OUT.png")]
    pub draw_boxes: Option<PathBuf>,
    /// Exact post-template text (BOS is added; split at <image> like the reference).
    #[arg(long = "raw-prompt", conflicts_with = "prompt")]
    pub raw_prompt: Option<String>,
    /// System message placed right after BOS.
    #[arg(long)]
    pub system: Option<String>,
    /// Most new tokens per answer.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n_predict: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = SamplerConfig::default().temperature)]
    pub temperature: f32,
    #[arg(long = "top-p", default_value_t = SamplerConfig::default().top_p)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long = "top-k", default_value_t = SamplerConfig::default().top_k)]
    pub top_k: usize,
    #[arg(long = "min-p", default_value_t = SamplerConfig::default().min_p)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = SamplerConfig::default().repeat_penalty)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context length (default: the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Prefill chunk size in tokens (0 = whole prompt).
    #[arg(long, default_value_t = 0)]
    pub chunk: usize,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Write the logits each generated token was chosen from (float32 [n, vocab]).
    #[arg(long = "logits-out")]
    pub logits_out: Option<PathBuf>,
    /// Dump named intermediates as .npy files into this directory.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub experts: super::expert_args::ExpertArgs,
}

/// Runs the subcommand.
pub fn run(args: RunArgs) -> Result<()> {
    let args = &args;
    // Built once, before anything is loaded: a bad --threads fails fast.
    let pool = Arc::new(super::threads::pool(args.threads)?);
    // Cheap checks first, before any model is loaded: tag count, then the image files.
    let one_shot_text = match (&args.raw_prompt, &args.prompt) {
        (Some(raw), _) => Some(with_image_tags(raw, args.images.len())),
        (None, Some(p)) => Some(with_image_tags(p, args.images.len())),
        (None, None) => None,
    };
    if let Some(text) = &one_shot_text {
        check_tag_count(text, args.images.len())?;
        if args.draw_boxes.is_some() && args.images.is_empty() {
            bail!("--draw-boxes needs an --image to draw on");
        }
    }
    let images = args
        .images
        .iter()
        .map(|p| open_image(p, args))
        .collect::<Result<Vec<_>>>()?;

    let t0 = Instant::now();
    if !args.model.is_file() {
        bail!("model file {} does not exist", args.model.display());
    }
    let file = ModelFile::open(&args.model)?;
    let mut model = LanguageModel::load_with(&file, &args.experts.options())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_model_file(&file)?;
    model.set_thread_pool(pool.clone());
    if let Some(n) = args.ctx {
        model.set_context_length(n);
    }
    if let Some(dir) = &args.trace {
        model.trace =
            Trace::to_dir(dir.clone()).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut vision = LazyVision::new(args, pool);
    if !images.is_empty() {
        vision.get()?;
    }
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut session = Session::new(model, tokenizer);
    let params = GenerateParams {
        max_new: args.n_predict,
        chunk: args.chunk,
        stop_strings: STOP_STRINGS.iter().map(|s| s.to_string()).collect(),
        sampler: SamplerConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
        },
        keep_logits: args.logits_out.is_some(),
    };
    let Some(text) = one_shot_text else {
        return chat(&mut session, &mut vision, images, args, &params);
    };

    let enc = vision.encode(&images)?;
    let counts = enc.token_counts();
    let ids = if args.raw_prompt.is_some() {
        build_raw(&session.tokenizer, &text, &counts)?.ids
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::new(Role::System, s.clone()));
        }
        msgs.push(Message::new(Role::User, text));
        build_chat(&session.tokenizer, &msgs, &counts)?.ids
    };
    check_context(ids.len(), session.model.hp.n_ctx, &counts)?;
    let g = generate_streamed(&mut session, &ids, &enc.features, &params)?;
    println!();
    if let Some(path) = &args.logits_out {
        write_logits(path, &g)?;
    }
    let boxes = grounded_boxes(&g.text, images.last());
    if let (Some(out), Some(last)) = (&args.draw_boxes, images.last()) {
        draw_on(last, &boxes, out)?;
    }
    let stats = args.experts.report(session.model.experts().stats());
    if args.json {
        println!("{}", json_line(&ids, &g, load_ms, &enc, &boxes, stats));
    }
    if let Some(e) = session.model.trace.error() {
        eprintln!("warning: trace: {e}");
    }
    Ok(())
}

/// The rule for `--image` without tags: one `<image>\n` per image in front of the text (the
/// reference web demo's layout); a text with tags is used as written.
fn with_image_tags(text: &str, n_images: usize) -> String {
    if n_images == 0 || text.contains(IMAGE_TAG) {
        text.to_string()
    } else {
        format!("{}{text}", format!("{IMAGE_TAG}\n").repeat(n_images))
    }
}

/// Refuses a prompt whose `<image>` tags and images do not pair up, naming both counts.
fn check_tag_count(text: &str, n_images: usize) -> Result<()> {
    let tags = text.matches(IMAGE_TAG).count();
    if tags > n_images {
        bail!(
            "the prompt has {tags} {IMAGE_TAG} tag(s) but only {n_images} image(s) were given \
             (one --image or /image per tag)"
        );
    }
    if tags < n_images {
        bail!(
            "{n_images} image(s) were given but the prompt has only {tags} {IMAGE_TAG} tag(s) \
             (write one tag per image, or none to put them all in front)"
        );
    }
    Ok(())
}

/// Refuses a prompt that does not fit the context, saying how much the images take.
fn check_context(n: usize, n_ctx: usize, image_tokens: &[usize]) -> Result<()> {
    // One position is needed for the first generated token's logits only; the prompt itself
    // must fit.
    if n <= n_ctx {
        return Ok(());
    }
    let img: usize = image_tokens.iter().sum();
    if img > 0 {
        bail!(
            "the prompt needs {n} tokens, {img} of them for {} image(s) ({image_tokens:?} per \
             image), but the context holds {n_ctx}; use a larger --ctx or fewer images",
            image_tokens.len()
        );
    }
    bail!("the prompt needs {n} tokens but the context holds {n_ctx}; use a larger --ctx")
}

/// Opens an image, upright unless `--no-exif-rotate`.
fn open_image(path: &Path, args: &RunArgs) -> Result<RgbImage> {
    load_rgb(path, !args.no_exif_rotate)
        .with_context(|| format!("reading image {}", path.display()))
}

/// The vision model, loaded on first use (a text-only chat never needs the mmproj), and the
/// feature cache that lives as long as the process.
struct LazyVision {
    path: PathBuf,
    model: Option<VisionModel>,
    cache: VisionCache,
    /// The workers the tower computes in (the language model's pool).
    pool: Arc<ThreadPool>,
}

impl LazyVision {
    fn new(args: &RunArgs, pool: Arc<ThreadPool>) -> LazyVision {
        let path = args
            .mmproj
            .clone()
            .unwrap_or_else(|| convert::write::mmproj_path(&args.model));
        LazyVision {
            path,
            model: None,
            cache: VisionCache::default(),
            pool,
        }
    }

    fn get(&mut self) -> Result<&VisionModel> {
        if self.model.is_none() {
            if !self.path.is_file() {
                bail!(
                    "images need the vision model, but {} does not exist (give --mmproj)",
                    self.path.display()
                );
            }
            let m = VisionModel::load(&self.path)
                .with_context(|| format!("loading the vision model {}", self.path.display()))?;
            self.model = Some(m);
        }
        self.model
            .as_ref()
            .context("the vision model is not loaded")
    }

    /// Features of every image of the conversation (tiling decided by their total number).
    fn encode(&mut self, images: &[RgbImage]) -> Result<EncodedImages> {
        if images.is_empty() {
            return Ok(EncodedImages::default());
        }
        self.get()?;
        let Some(model) = self.model.as_ref() else {
            bail!("the vision model is not loaded");
        };
        let cache = &mut self.cache;
        Ok(self.pool.install(|| cache.encode(model, images))?)
    }
}

/// The answer's grounding boxes in pixels of `last` (the conversation's last image, as shown:
/// upright unless `--no-exif-rotate`). The text keeps special tokens, so `<|det|>` is there.
fn grounded_boxes(text: &str, last: Option<&RgbImage>) -> Vec<(String, PixelBox)> {
    match last {
        Some(img) => ground(text, img.width(), img.height()),
        None => Vec::new(),
    }
}

/// Writes `img` with `boxes` drawn to `out` (PNG).
fn draw_on(img: &RgbImage, boxes: &[(String, PixelBox)], out: &Path) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width(), img.height(), img.as_raw().to_vec())
        .context("image buffer does not match its size")?;
    draw_boxes(&buf, boxes, out).with_context(|| format!("--draw-boxes {}", out.display()))
}

fn box_records(boxes: &[(String, PixelBox)]) -> Vec<BoxRecord> {
    boxes
        .iter()
        .map(|(l, b)| BoxRecord::from_pixels(l, *b))
        .collect()
}

fn generate_streamed(
    session: &mut Session,
    ids: &[u32],
    features: &[f32],
    params: &GenerateParams,
) -> Result<Generation> {
    let mut stdout = std::io::stdout();
    let g = session.generate(ids, features, params, &mut |s| {
        let _ = stdout.write_all(s.as_bytes());
        let _ = stdout.flush();
    })?;
    Ok(g)
}

/// The interactive loop: history, `/image PATH`, `/reset`, `/exit`, Ctrl-D.
///
/// Images given with `/image` (or `--image`) go with the next message. Every turn re-encodes
/// the whole conversation's image list through the feature cache and rebuilds the prompt;
/// the session then re-runs only the positions after the common prefix. When a third image
/// arrives, the earlier images lose their tiling (spec §3.2), their features and token runs
/// change, and the prefix match stops before the first image: the prompt is re-run from there.
fn chat(
    session: &mut Session,
    vision: &mut LazyVision,
    first_images: Vec<RgbImage>,
    args: &RunArgs,
    params: &GenerateParams,
) -> Result<()> {
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &args.system {
        history.push(Message::new(Role::System, s.clone()));
    }
    let mut conv_images: Vec<RgbImage> = Vec::new();
    let mut pending = first_images;
    let stdin = std::io::stdin();
    eprintln!(
        "pocketvl chat: /image PATH adds an image to the next message, /reset clears the \
         conversation, /exit or Ctrl-D quits"
    );
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        let cmd = line.trim();
        if cmd == "/exit" {
            return Ok(());
        }
        if cmd == "/reset" {
            history.retain(|m| m.role == Role::System);
            conv_images.clear();
            pending.clear();
            session.reset();
            continue;
        }
        if let Some(path) = cmd.strip_prefix("/image") {
            let path = path.trim();
            if path.is_empty() {
                eprintln!("error: usage: /image PATH");
                continue;
            }
            match open_image(Path::new(path), args) {
                Ok(img) => {
                    eprintln!(
                        "image {path} ({}x{}) goes with the next message",
                        img.width(),
                        img.height()
                    );
                    pending.push(img);
                }
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        if cmd.is_empty() {
            continue;
        }
        match chat_turn(
            session,
            vision,
            &mut history,
            &conv_images,
            &pending,
            line,
            args,
            params,
        ) {
            Ok(()) => conv_images.append(&mut pending),
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
}

/// One chat turn; on error the history is left as it was (pending images stay pending).
#[allow(clippy::too_many_arguments)]
fn chat_turn(
    session: &mut Session,
    vision: &mut LazyVision,
    history: &mut Vec<Message>,
    conv_images: &[RgbImage],
    pending: &[RgbImage],
    line: &str,
    args: &RunArgs,
    params: &GenerateParams,
) -> Result<()> {
    let content = with_image_tags(line, pending.len());
    check_tag_count(&content, pending.len())?;
    let all: Vec<RgbImage> = conv_images.iter().chain(pending).cloned().collect();
    let enc = vision.encode(&all)?;
    if !all.is_empty() {
        eprintln!(
            "vision: {} image(s), {} from cache, {:.1} ms, tokens {:?}",
            all.len(),
            enc.n_cached(),
            enc.vision_ms,
            enc.token_counts()
        );
    }
    let max_tiled = vision
        .model
        .as_ref()
        .map(|m| m.config.max_images_for_tiling)
        .unwrap_or(2);
    if !pending.is_empty() && conv_images.len() <= max_tiled && all.len() > max_tiled {
        eprintln!(
            "note: {} images in the conversation: every image is now laid out untiled, so the \
             prompt is re-run from the first image",
            all.len()
        );
    }
    history.push(Message::new(Role::User, content));
    let ids = match build_chat(&session.tokenizer, history, &enc.token_counts())
        .map_err(anyhow::Error::from)
        .and_then(|p| {
            check_context(p.ids.len(), session.model.hp.n_ctx, &enc.token_counts())?;
            Ok(p.ids)
        }) {
        Ok(ids) => ids,
        Err(e) => {
            history.pop();
            return Err(e);
        }
    };
    let g = match generate_streamed(session, &ids, &enc.features, params) {
        Ok(g) => g,
        Err(e) => {
            history.pop();
            return Err(e);
        }
    };
    println!();
    eprintln!(
        "prefill: {} of {} positions run",
        g.timings.prefill_tokens,
        ids.len()
    );
    let boxes = grounded_boxes(&g.text, all.last());
    if !boxes.is_empty() {
        let json = serde_json::to_string(&box_records(&boxes)).unwrap_or_default();
        eprintln!("boxes: {json}");
    }
    if let (Some(out), Some(last)) = (&args.draw_boxes, all.last()) {
        if let Err(e) = draw_on(last, &boxes, out) {
            eprintln!("error: {e:#}");
        }
    }
    history.push(Message::new(Role::Assistant, g.text));
    Ok(())
}

fn write_logits(path: &std::path::Path, g: &Generation) -> Result<()> {
    let rows = g.tokens.len();
    let vocab = g.logits.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<f32> = g.logits.iter().take(rows).flatten().copied().collect();
    crate::npy::write_f32(path, &[rows, vocab], &flat)
        .with_context(|| format!("writing {}", path.display()))
}

fn json_line(
    prompt: &[u32],
    g: &Generation,
    load_ms: f64,
    enc: &EncodedImages,
    boxes: &[(String, PixelBox)],
    expert_stats: Option<ExpertStats>,
) -> String {
    let sizes: Vec<[u32; 2]> = enc
        .layouts
        .iter()
        .map(|l| [l.original_wh.0, l.original_wh.1])
        .collect();
    serde_json::json!({
        "prompt_tokens": prompt,
        "tokens": g.tokens,
        "text": g.text,
        "stop": format!("{:?}", g.stop).to_lowercase(),
        "image_tokens": enc.token_counts(),
        "image_sizes": sizes,
        "vision_ms": enc.vision_ms,
        "vision_cached": enc.n_cached(),
        "boxes": box_records(boxes),
        "timings": {
            "load_ms": load_ms,
            "vision_ms": enc.vision_ms,
            "prefill_ms": g.timings.prefill_ms,
            "prefill_tok_s": g.timings.prefill_tok_s(),
            "decode_tok_s": g.timings.decode_tok_s(),
        },
        "expert_stats": expert_stats,
    })
    .to_string()
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
    fn context_error_mentions_images() {
        assert!(check_context(600, 600, &[644]).is_ok());
        let e = check_context(655, 600, &[644]).unwrap_err().to_string();
        assert!(e.contains("644 of them for 1 image(s)"), "{e}");
    }

    #[test]
    fn boxes_follow_the_shown_image() {
        // The spec's grounding answer on a 362x543 giraffe, and on the same image turned
        // upright from EXIF orientation 6 (543x362).
        let text = "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>";
        let img = RgbImage::filled(362, 543, [0, 0, 0]);
        let b = box_records(&grounded_boxes(text, Some(&img)));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].label, "The giraffe at the back.");
        // trunc(580/999*362) = 210, trunc(270/999*543) = 146, 999 -> last pixel, trunc(900/999*543) = 489.
        assert_eq!(b[0].bbox, [210, 146, 361, 489]);
        let turned = RgbImage::filled(543, 362, [0, 0, 0]);
        let b = box_records(&grounded_boxes(text, Some(&turned)));
        assert_eq!(b[0].bbox, [315, 97, 542, 326]);
        assert!(grounded_boxes(text, None).is_empty());
    }
}
