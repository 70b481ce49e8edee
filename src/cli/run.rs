//! `pocketvl run`: generate from a prompt (streamed to stdout) or chat
//! interactively. Only argument handling and I/O live here; the work is the library's
//! ([`crate::Model`], [`crate::Session`]).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::experts::ExpertStats;
use crate::generate::{GenerateOptions, StopReason};
use crate::grounding::{draw_boxes, PixelBox};
use crate::image_io::RgbImage;
use crate::pipeline::{check_tag_count, with_image_tags, ChatTurn, ImageInput, Prompt, Reply};
use crate::sampler::SamplerConfig;
use crate::trace::Trace;
use crate::{Model, ModelOptions, Session};

/// The chat's commands, as the help line and the unknown-command error list them.
const CHAT_COMMANDS: &str = "/image PATH, /reset, /exit";

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
    #[command(flatten)]
    pub gpu: super::gpu_args::GpuArgs,
    #[command(flatten)]
    pub vision: super::vision_args::VisionArgs,
    #[command(flatten)]
    pub cache: super::cache_args::CacheArgs,
}

/// Runs the subcommand.
pub fn run(args: RunArgs) -> Result<()> {
    let args = &args;
    // Built once, before anything is loaded: a bad --threads fails fast.
    let pool = Arc::new(super::threads::pool(args.threads)?);
    let opts = generate_options(args);
    opts.check().map_err(anyhow::Error::msg)?;
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
    let model = Model::load(
        &args.model,
        ModelOptions {
            mmproj: args.mmproj.clone(),
            ctx: args.ctx,
            pool: Some(pool),
            exif_rotate: !args.no_exif_rotate,
            experts: args.experts.options(),
            backend: args.gpu.options()?,
            vision_precision: args.vision.vision_precision,
            cache_type: args.cache.cache_type,
        },
    )
    .map_err(|e| match e {
        crate::Error::Limit(l) => anyhow::anyhow!("--ctx {}: {l}", args.ctx.unwrap_or(0)),
        e => e.into(),
    })?;
    if !images.is_empty() {
        model.load_vision()?;
    }
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut session = model.session();
    session.set_system(args.system.clone());
    if let Some(dir) = &args.trace {
        *session.trace_mut() =
            Trace::to_dir(dir.clone()).with_context(|| format!("creating {}", dir.display()))?;
    }
    let Some(text) = one_shot_text else {
        return chat(&mut session, images, args, &opts);
    };

    let prompt = if args.raw_prompt.is_some() {
        Prompt::Raw { text, images }
    } else {
        let mut turns = session.history().to_vec();
        turns.push(ChatTurn::user(text, images));
        Prompt::Chat(turns)
    };
    let r = session.complete(&prompt, &opts, print_piece)?;
    println!();
    notice_stop(&r, &model);
    if let Some(path) = &args.logits_out {
        write_logits(path, &r)?;
    }
    if let Some(out) = &args.draw_boxes {
        draw_on(&r, out)?;
    }
    let stats = args.experts.report(model.language().experts().stats());
    if args.json {
        println!("{}", json_line(&r, load_ms, stats));
    }
    if let Some(e) = session.trace_mut().error() {
        eprintln!("warning: trace: {e}");
    }
    Ok(())
}

/// The generation options of the command line.
fn generate_options(args: &RunArgs) -> GenerateOptions {
    GenerateOptions {
        max_new: args.n_predict,
        chunk: args.chunk,
        stop_strings: Vec::new(),
        sampler: SamplerConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
        },
        keep_logits: args.logits_out.is_some(),
        cancel: None,
    }
}

/// Streams a piece of the answer to stdout as it becomes final.
fn print_piece(s: &str) {
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(s.as_bytes());
    let _ = stdout.flush();
}

/// Says on stderr when the answer was cut off by the context rather than ended by the model.
fn notice_stop(r: &Reply, model: &Model) {
    if r.stop == StopReason::Context {
        eprintln!(
            "note: the answer was cut off: the context of {} tokens is full (use a larger --ctx)",
            model.context_length()
        );
    }
}

/// Opens an image, upright unless `--no-exif-rotate`.
fn open_image(path: &Path, args: &RunArgs) -> Result<ImageInput> {
    Ok(ImageInput::Decoded(
        ImageInput::path(path).decode(!args.no_exif_rotate)?,
    ))
}

/// Writes the conversation's last image with the answer's boxes drawn (PNG); says so when the
/// answer has none.
fn draw_on(r: &Reply, out: &Path) -> Result<()> {
    let Some(img) = &r.last_image else {
        bail!("--draw-boxes needs an --image to draw on");
    };
    if r.boxes.is_empty() {
        eprintln!(
            "note: the answer has no grounding boxes; {} is the image without boxes",
            out.display()
        );
    }
    draw(img, &r.boxes, out)
}

fn draw(img: &RgbImage, boxes: &[(String, PixelBox)], out: &Path) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width(), img.height(), img.as_raw().to_vec())
        .context("image buffer does not match its size")?;
    draw_boxes(&buf, boxes, out).with_context(|| format!("--draw-boxes {}", out.display()))
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
    first_images: Vec<ImageInput>,
    args: &RunArgs,
    opts: &GenerateOptions,
) -> Result<()> {
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
        if cmd.is_empty() {
            continue;
        }
        match command(cmd) {
            Some(("/exit", _)) => return Ok(()),
            Some(("/reset", _)) => {
                pending.clear();
                session.reset();
                eprintln!("conversation cleared");
            }
            Some(("/image", path)) => {
                if path.is_empty() {
                    eprintln!("error: usage: /image PATH");
                    continue;
                }
                match open_image(Path::new(path), args) {
                    Ok(img) => {
                        if let ImageInput::Decoded(d) = &img {
                            eprintln!(
                                "image {path} ({}x{}) goes with the next message",
                                d.width(),
                                d.height()
                            );
                        }
                        pending.push(img);
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            Some((name, _)) => {
                eprintln!("error: unknown command {name}; the commands are {CHAT_COMMANDS}")
            }
            None => match chat_turn(session, &pending, line, args, opts) {
                Ok(()) => pending.clear(),
                Err(e) => eprintln!("error: {e:#}"),
            },
        }
    }
}

/// A chat command (`/word` first, then its argument), or `None` for a message.
fn command(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('/')?;
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    // `/` followed by something else than a word (a path like `/usr/bin`, a lone `/`) is text.
    if end == 0
        || rest[end..]
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace())
    {
        return None;
    }
    Some((&line[..end + 1], rest[end..].trim()))
}

/// One chat turn; on error the conversation is left as it was (pending images stay pending).
fn chat_turn(
    session: &mut Session,
    pending: &[ImageInput],
    line: &str,
    args: &RunArgs,
    opts: &GenerateOptions,
) -> Result<()> {
    let before = session.n_images();
    if !pending.is_empty() {
        let vision = session.model().load_vision()?;
        let after = before + pending.len();
        if vision.config.tiles(before) && !vision.config.tiles(after) {
            eprintln!(
                "note: {after} images in the conversation: every image is now laid out \
                 untiled, so the prompt is re-run from the first image"
            );
        }
    }
    let r = session.chat(line, pending.to_vec(), opts, print_piece)?;
    println!();
    let n_images = r.images.layouts.len();
    if n_images > 0 {
        eprintln!(
            "vision: {n_images} image(s), {} from cache, {:.1} ms, tokens {:?}",
            r.images.n_cached(),
            r.images.vision_ms,
            r.images.token_counts()
        );
    }
    notice_stop(&r, session.model());
    eprintln!(
        "prefill: {} of {} positions run",
        r.timings.prefill_tokens,
        r.prompt_tokens.len()
    );
    if !r.boxes.is_empty() {
        let json = serde_json::to_string(&r.box_records()).unwrap_or_default();
        eprintln!("boxes: {json}");
    }
    if let Some(out) = &args.draw_boxes {
        if r.last_image.is_some() {
            if let Err(e) = draw_on(&r, out) {
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(())
}

fn write_logits(path: &Path, r: &Reply) -> Result<()> {
    let rows = r.tokens.len();
    let vocab = r.logits.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<f32> = r.logits.iter().take(rows).flatten().copied().collect();
    crate::npy::write_f32(path, &[rows, vocab], &flat)
        .with_context(|| format!("writing {}", path.display()))
}

fn json_line(r: &Reply, load_ms: f64, expert_stats: Option<ExpertStats>) -> String {
    let sizes: Vec<[u32; 2]> = r
        .images
        .layouts
        .iter()
        .map(|l| [l.original_wh.0, l.original_wh.1])
        .collect();
    serde_json::json!({
        "prompt_tokens": r.prompt_tokens,
        "tokens": r.tokens,
        "text": r.text,
        "stop": r.stop.name(),
        "image_tokens": r.images.token_counts(),
        "image_sizes": sizes,
        "vision_ms": r.images.vision_ms,
        "vision_cached": r.images.n_cached(),
        "boxes": r.box_records(),
        "timings": {
            "load_ms": load_ms,
            "vision_ms": r.images.vision_ms,
            "prefill_ms": r.timings.prefill_ms,
            "prefill_tok_s": r.timings.prefill_tok_s(),
            "decode_tok_s": r.timings.decode_tok_s(),
            // Which quantized kernels ran (`POCKETVL_MAX_TIER` caps them): a speed report
            // needs it.
            "kernels": quant::kernels::table().isa,
        },
        "expert_stats": expert_stats,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_words_after_a_slash() {
        assert_eq!(command("/reset"), Some(("/reset", "")));
        assert_eq!(command("/image a b.png"), Some(("/image", "a b.png")));
        assert_eq!(command("/foo"), Some(("/foo", "")));
        assert_eq!(command("/usr/bin is where?"), None);
        assert_eq!(command("hello /reset"), None);
        assert_eq!(command("/"), None);
    }
}
