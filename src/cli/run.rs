//! `pocketvl run`: generate from a prompt (streamed to stdout) or chat
//! interactively. Only argument handling and I/O live here; the work is in
//! [`crate::generate`].

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::generate::{GenerateParams, Generation, Session};
use crate::image_io::load_rgb;
use crate::loader::ModelFile;
use crate::model::deepseek_vl2::prompt::{
    build_chat, build_raw, Message, Role, IMAGE_TAG, STOP_STRINGS,
};
use crate::model::deepseek_vl2::vision::VisionModel;
use crate::model::deepseek_vl2::LanguageModel;
use crate::sampler::SamplerConfig;
use crate::tokenizer::Tokenizer;
use crate::trace::Trace;

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
    /// prompt, one `<image>\n` per image is put in front (as the reference web demo does).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// The vision GGUF (default: `mmproj-<model file name>` beside the model).
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
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
}

/// Runs the subcommand.
pub fn run(args: RunArgs) -> Result<()> {
    let args = &args;
    if let Some(t) = args.threads {
        // Fails only if a pool exists already (then the existing one is used).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    let t0 = Instant::now();
    if !args.model.is_file() {
        bail!("model file {} does not exist", args.model.display());
    }
    let file = ModelFile::open(&args.model)?;
    let mut model =
        LanguageModel::load(&file).with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_model_file(&file)?;
    if let Some(n) = args.ctx {
        model.set_context_length(n);
    }
    if let Some(dir) = &args.trace {
        model.trace =
            Trace::to_dir(dir.clone()).with_context(|| format!("creating {}", dir.display()))?;
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
    let (features, counts) = encode_images(args)?;
    let with_tags = |text: &str| {
        if counts.is_empty() || text.contains(IMAGE_TAG) {
            text.to_string()
        } else {
            format!("{}{text}", format!("{IMAGE_TAG}\n").repeat(counts.len()))
        }
    };
    let one_shot = if let Some(raw) = &args.raw_prompt {
        Some(build_raw(&session.tokenizer, raw, &counts)?.ids)
    } else if let Some(p) = &args.prompt {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::new(Role::System, s.clone()));
        }
        msgs.push(Message::new(Role::User, with_tags(p)));
        Some(build_chat(&session.tokenizer, &msgs, &counts)?.ids)
    } else {
        None
    };
    match one_shot {
        Some(ids) => {
            let g = generate_streamed(&mut session, &ids, &features, &params)?;
            println!();
            if let Some(path) = &args.logits_out {
                write_logits(path, &g)?;
            }
            if args.json {
                println!("{}", json_line(&ids, &g, load_ms));
            }
            if let Some(e) = session.model.trace.error() {
                eprintln!("warning: trace: {e}");
            }
            Ok(())
        }
        None => {
            if !counts.is_empty() {
                bail!("--image needs a prompt (-p or --raw-prompt)");
            }
            chat(&mut session, args, &params)
        }
    }
}

/// Loads, tiles and encodes `--image` files with the mmproj: the features
/// `[n_image_tokens, D]` and the token count of each image.
fn encode_images(args: &RunArgs) -> Result<(Vec<f32>, Vec<usize>)> {
    if args.images.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mm = args
        .mmproj
        .clone()
        .unwrap_or_else(|| convert::write::mmproj_path(&args.model));
    let vision = VisionModel::load(&mm)
        .with_context(|| format!("loading the vision model {}", mm.display()))?;
    let mut images = Vec::with_capacity(args.images.len());
    for p in &args.images {
        // The reference opens images without EXIF rotation.
        images.push(load_rgb(p, false).with_context(|| format!("reading image {}", p.display()))?);
    }
    let pre = vision.preprocess(&images)?;
    let features = vision.encode(&pre)?;
    Ok((features, pre.images.iter().map(|l| l.n_tokens).collect()))
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

/// The interactive loop: history, `/reset`, `/exit`, Ctrl-D.
fn chat(session: &mut Session, args: &RunArgs, params: &GenerateParams) -> Result<()> {
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &args.system {
        history.push(Message::new(Role::System, s.clone()));
    }
    let stdin = std::io::stdin();
    eprintln!("pocketvl chat: /reset clears the conversation, /exit or Ctrl-D quits");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "/exit" => return Ok(()),
            "/reset" => {
                history.retain(|m| m.role == Role::System);
                session.reset();
                continue;
            }
            "" => continue,
            _ => {}
        }
        history.push(Message::new(Role::User, line));
        let ids = build_chat(&session.tokenizer, &history, &[])?.ids;
        match generate_streamed(session, &ids, &[], params) {
            Ok(g) => {
                println!();
                history.push(Message::new(Role::Assistant, g.text));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
}

fn write_logits(path: &std::path::Path, g: &Generation) -> Result<()> {
    let rows = g.tokens.len();
    let vocab = g.logits.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<f32> = g.logits.iter().take(rows).flatten().copied().collect();
    crate::npy::write_f32(path, &[rows, vocab], &flat)
        .with_context(|| format!("writing {}", path.display()))
}

fn json_line(prompt: &[u32], g: &Generation, load_ms: f64) -> String {
    serde_json::json!({
        "prompt_tokens": prompt,
        "tokens": g.tokens,
        "text": g.text,
        "stop": format!("{:?}", g.stop).to_lowercase(),
        "timings": {
            "load_ms": load_ms,
            "prefill_ms": g.timings.prefill_ms,
            "prefill_tok_s": g.timings.prefill_tok_s(),
            "decode_tok_s": g.timings.decode_tok_s(),
        }
    })
    .to_string()
}
