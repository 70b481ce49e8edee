//! `pocketvl bench model`: prompt and decode speed of a converted model, the vision tower per
//! tile and time to first token for one 2×2-tiled image, each read against the rooflines
//! measured in the same run (memory bandwidth for decode, FMA peak for the rest).
//!
//! Only the runtime's public API is used, as `pocketvl run` uses it: [`LanguageModel`] for
//! prefill and decode (the same `forward` calls a generation makes), [`VisionModel`] and
//! [`Sequence::generate`] for the image request.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::bench::{peak, rss};
use crate::experts::{ExpertOptions, ExpertStats};
use crate::generate::{GenerateOptions, Sequence};
use crate::image_io::RgbImage;
use crate::loader::ModelFile;
use crate::model::deepseek_vl2::preprocess::select_best_resolution;
use crate::model::deepseek_vl2::prompt::{build_chat, Message, Role, IMAGE_TAG};
use crate::model::deepseek_vl2::vision::VisionModel;
use crate::model::deepseek_vl2::{LanguageModel, LogitsWanted};
use crate::ops::region_clock::{self, RegionTotals, SiteTotals};
use crate::sampler::argmax;
use crate::tokenizer::Tokenizer;

/// Most threads accepted: anything above is a typo, not a machine.
const MAX_THREADS: usize = 4096;
/// The question asked about the benchmark image.
const QUESTION: &str = "Describe this image.";
/// Tokens of the untimed warm-up prefill (touches the weights and most experts once).
const WARMUP_TOKENS: usize = 32;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ModelBenchOptions {
    pub model: PathBuf,
    /// The vision GGUF; `None` = `mmproj-<model file>` beside the model, if it exists.
    pub mmproj: Option<PathBuf>,
    /// Measure the vision tower and time to first token (needs an mmproj).
    pub vision: bool,
    pub threads: usize,
    /// Prompt tokens of the prefill measurement (0 = skip).
    pub n_prompt: usize,
    /// Generated tokens of the decode measurement (0 = skip).
    pub n_gen: usize,
    /// Tokens already in the context before each prefill and decode measurement
    /// (llama-bench's `-d`): a chat's decode after an image prompt reads the KV cache of
    /// ~1,000 positions beside the weights.
    pub n_depth: usize,
    pub reps: usize,
    /// Time the decode's parallel regions ([`region_clock`]): `decode_regions` in the result.
    pub regions: bool,
    /// Print progress on stderr.
    pub progress: bool,
    /// The expert store (`--mem-budget` and the paging flags).
    pub experts: ExpertOptions,
    /// Parts to run on a ggml device (`--gpu`, `--offload`, `--gpu-mem`).
    pub backend: crate::backend::BackendOptions,
    /// The vision tower's product arithmetic (`--vision-precision`).
    pub vision_precision: crate::model::deepseek_vl2::vision::VisionPrecision,
    /// The KV cache's element type (`--cache-type`).
    pub cache_type: crate::kv_cache::CacheType,
    /// First drop both files from the page cache and time the first image request from
    /// opening them (`cold_ttft_ms`): the first question a user asks after a reboot.
    pub cold: bool,
}

/// Median and range of one measurement over the repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// The result; serialized as the JSON line of `--json` (medians at top level).
#[derive(Debug, Clone, Serialize)]
pub struct ModelBenchResult {
    pub model: PathBuf,
    pub mmproj: Option<PathBuf>,
    pub threads: usize,
    /// The parts run on a ggml device (`--offload`) and that device.
    pub offload: String,
    pub device: Option<String>,
    pub reps: usize,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub prefill_tok_s: Option<f64>,
    pub decode_tok_s: Option<f64>,
    pub vision_ms_per_tile: Option<f64>,
    /// The tower's product arithmetic (`--vision-precision`: `exact` or `bf16`).
    pub vision_precision: String,
    /// The KV cache's element type (`--cache-type`: `f32` or `f16`).
    pub cache_type: String,
    /// Tiles the tower ran for the image (global view + 2×2 local tiles).
    pub vision_tiles: Option<usize>,
    pub ttft_ms: Option<f64>,
    /// Prompt tokens of the image request (image tokens + question + template).
    pub ttft_prompt_tokens: Option<usize>,
    /// With `--cold`: the first image request's time to first token from opening the files
    /// (model, tokenizer and mmproj loads included), the files dropped from the page cache
    /// first.
    pub cold_ttft_ms: Option<f64>,
    /// With `--cold`: the part of the two files still in the page cache after the drop
    /// (byte-weighted; 0 = really cold, `None` where it cannot be checked).
    pub cold_resident_after_drop: Option<f64>,
    /// The background reads of the model file and the mmproj started at load
    /// ([`crate::loader::Preload`]; none with `--no-preload`, under `--mem-budget` or where
    /// a file does not fit in free memory): megabytes read in and their wall time. The
    /// timed measurements start after they end.
    pub preload_mb: Option<f64>,
    pub preload_ms: Option<f64>,
    /// Peak resident set of the model phase (mapped weights included), before the rooflines.
    pub peak_rss_mb: Option<f64>,
    /// Sizes of the model file and the mmproj used.
    pub file_mb: f64,
    /// Bytes of the mapped files on 2 MiB pages (`FilePmdMapped`) at the end of the run.
    /// Weights streamed from 4 KiB page-cache folios read slower (Tiny's dense-layer gate and
    /// up matrices at ~13 GB/s against ~22 on one Zen 4 core, BENCHMARKS.md, twenty-third
    /// session), and a file the page cache holds in small folios stays so until evicted:
    /// decode figures compare only between runs on the same page cache.
    pub file_huge_mb: Option<f64>,
    pub bandwidth_gb_s: f64,
    pub fma_gflops: f64,
    pub fma_isa: &'static str,
    /// The quantized kernels' tier (`quant::kernels::table().isa`; `POCKETVL_MAX_TIER` caps it).
    pub kernel_isa: &'static str,
    /// Weight bytes one decode step reads (see [`decode_bytes_per_token`]).
    pub decode_weight_mb: f64,
    /// KV cache bytes one decode step reads, averaged over the measured steps (the cache's
    /// rows of every position up to the step's, in every layer, in its element type). Not
    /// in `decode_roofline_tok_s`, which counts weights only (as issue 7 defines it): at
    /// depth 0 this is ~1% of them.
    pub decode_kv_mb: Option<f64>,
    pub decode_roofline_tok_s: f64,
    /// decode_tok_s ÷ decode_roofline_tok_s.
    pub decode_fraction_of_roofline: Option<f64>,
    /// The roofline counting the KV cache's bytes too: bandwidth ÷ (weights + cache read
    /// per token). At depth the cache is a large part of a step's bytes (Tiny after 3,072
    /// positions: 380 MB of f32 rows beside 499 MB of Q4_0 weights), so the weights-only
    /// fraction says little about how near the memory's speed decode runs there.
    pub decode_roofline_kv_tok_s: Option<f64>,
    /// decode_tok_s ÷ decode_roofline_kv_tok_s.
    pub decode_fraction_of_roofline_kv: Option<f64>,
    /// Where the decode's thread time went (`--regions`; its clock slows decode a little).
    pub decode_regions: Option<RegionProfile>,
    pub spread: SpreadTable,
    /// The expert store's counters over the whole benchmark (warm-up included).
    pub expert_stats: Option<ExpertStats>,
}

/// The decode steps' time by the [`region_clock`]: per token, and the threads' time (wall
/// time x threads) as four fractions that add up to 1; then per region site.
#[derive(Debug, Clone, Serialize)]
pub struct RegionProfile {
    /// Parallel regions per decoded token.
    pub regions_per_token: f64,
    /// Mean wall time of one region, µs.
    pub region_us: f64,
    /// Wall time of one decode step, ms.
    pub step_ms: f64,
    /// Fraction of the steps' wall time inside regions.
    pub in_regions: f64,
    /// Threads in tasks.
    pub busy: f64,
    /// Helpers not yet in (or never in) a region they were asked into.
    pub absent: f64,
    /// Threads in a region with no task left to claim.
    pub waiting: f64,
    /// Between regions (one thread at the serial work, the others idle).
    pub outside: f64,
    /// Each region site (the source line that opened its regions), the longest first.
    pub sites: Vec<SiteProfile>,
}

/// One region site's part of the decode steps: its regions per token, their mean wall
/// time, their share of the steps' wall time, and its own threads' time in three parts
/// that add up to 1 (tasks, absent, waiting).
#[derive(Debug, Clone, Serialize)]
pub struct SiteProfile {
    pub site: String,
    pub regions_per_token: f64,
    pub region_us: f64,
    pub of_step: f64,
    pub busy: f64,
    pub absent: f64,
    pub waiting: f64,
}

impl RegionProfile {
    /// From the clock's per-site totals over `tokens` decode steps that took `step_ns` in
    /// all, on a pool of `threads`; `None` if nothing was timed.
    pub fn of(sites: &[SiteTotals], tokens: u64, step_ns: u64, threads: usize) -> Option<Self> {
        let mut t = RegionTotals::default();
        sites.iter().for_each(|s| t.add(&s.totals));
        if tokens == 0 || step_ns == 0 || t.regions == 0 {
            return None;
        }
        let mut sites: Vec<SiteProfile> = sites
            .iter()
            .filter(|s| s.totals.regions > 0 && s.totals.thread_ns > 0)
            .map(|s| {
                let (r, all) = (&s.totals, s.totals.thread_ns as f64);
                SiteProfile {
                    site: s.site.clone(),
                    regions_per_token: r.regions as f64 / tokens as f64,
                    region_us: r.wall_ns as f64 / r.regions as f64 / 1e3,
                    of_step: r.wall_ns as f64 / step_ns as f64,
                    busy: r.busy_ns as f64 / all,
                    absent: r.absent_ns as f64 / all,
                    waiting: r.waiting_ns() as f64 / all,
                }
            })
            .collect();
        sites.sort_by(|a, b| b.of_step.total_cmp(&a.of_step));
        let all = step_ns as f64 * threads as f64;
        // Regions end inside the steps, so their wall time is at most the steps'; the
        // clamp guards only against clock granularity.
        let outside_ns = step_ns.saturating_sub(t.wall_ns) as f64 * threads as f64;
        Some(RegionProfile {
            regions_per_token: t.regions as f64 / tokens as f64,
            region_us: t.wall_ns as f64 / t.regions as f64 / 1e3,
            step_ms: step_ns as f64 / tokens as f64 / 1e6,
            in_regions: t.wall_ns as f64 / step_ns as f64,
            busy: t.busy_ns as f64 / all,
            absent: t.absent_ns as f64 / all,
            waiting: t.waiting_ns() as f64 / all,
            outside: outside_ns / all,
            sites,
        })
    }
}

/// Every repeated measurement's median and range.
#[derive(Debug, Clone, Serialize)]
pub struct SpreadTable {
    pub prefill_tok_s: Option<Spread>,
    pub decode_tok_s: Option<Spread>,
    pub vision_ms_per_tile: Option<Spread>,
    pub ttft_ms: Option<Spread>,
}

/// Everything that stops the benchmark before it runs or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum ModelBenchError {
    #[error("{0}")]
    Args(String),
    #[error("model file {0} does not exist")]
    NoModel(PathBuf),
    #[error("mmproj file {0} does not exist")]
    NoMmproj(PathBuf),
    #[error("{0}")]
    Image(String),
    #[error(transparent)]
    Model(#[from] crate::model::deepseek_vl2::ModelError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Checks the options without touching any file content.
pub fn check_options(o: &ModelBenchOptions) -> Result<(), ModelBenchError> {
    if o.threads == 0 || o.threads > MAX_THREADS {
        return Err(ModelBenchError::Args(format!(
            "--threads must be between 1 and {MAX_THREADS} (got {})",
            o.threads
        )));
    }
    if o.reps == 0 {
        return Err(ModelBenchError::Args("--reps must be at least 1".into()));
    }
    if !o.model.is_file() {
        return Err(ModelBenchError::NoModel(o.model.clone()));
    }
    if let Some(m) = &o.mmproj {
        if !m.is_file() {
            return Err(ModelBenchError::NoMmproj(m.clone()));
        }
    }
    Ok(())
}

/// Runs the benchmark on a pool of `o.threads` threads.
pub fn bench_model(o: &ModelBenchOptions) -> Result<ModelBenchResult, ModelBenchError> {
    check_options(o)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build()
        .map_err(|e| ModelBenchError::Args(format!("cannot start {} threads: {e}", o.threads)))?;
    pool.install(|| run(o))
}

fn run(o: &ModelBenchOptions) -> Result<ModelBenchResult, ModelBenchError> {
    use anyhow::Context;
    let say = |s: &str| {
        if o.progress {
            eprintln!("[bench model] {s}");
        }
    };
    let mmproj = match &o.mmproj {
        _ if !o.vision => None,
        Some(p) => Some(p.clone()),
        None => Some(convert::write::mmproj_path(&o.model)).filter(|p| p.is_file()),
    };
    if o.cold && mmproj.is_none() {
        return Err(ModelBenchError::Args(
            "--cold times the first answer to an image prompt: it needs the mmproj (give \
             --mmproj, and leave out --no-vision)"
                .into(),
        ));
    }
    let cold_resident_after_drop = if o.cold {
        let files: Vec<PathBuf> = std::iter::once(o.model.clone())
            .chain(mmproj.clone())
            .collect();
        say("dropping the model files from the page cache");
        crate::bench::readspeed::drop_all(&files)
            .context("dropping the files from the page cache")?
    } else {
        None
    };
    let opened = Instant::now();
    let file =
        ModelFile::open(&o.model).with_context(|| format!("opening {}", o.model.display()))?;
    let mut model = LanguageModel::load_with(&file, &o.experts)
        .with_context(|| format!("loading {}", o.model.display()))?;
    let mut device = None;
    // The vision tower gets what the layers leave of --gpu-mem (as `Model::load` does).
    let mut vision_backend = o.backend.clone();
    if let Some(off) =
        crate::backend::decoder_offload(&o.backend, &model, o.threads).context("layer offload")?
    {
        vision_backend.gpu_mem = o
            .backend
            .gpu_mem
            .map(|m| m.saturating_sub(off.device_bytes()));
        say(&format!(
            "layer parts {} on {}",
            o.backend.offload,
            off.device()
        ));
        device = Some(off.device());
        model.set_offload(off);
    }
    model.set_cache_type(o.cache_type);
    let n_ctx = model.hp.n_ctx;
    if o.n_depth.saturating_add(o.n_prompt.max(o.n_gen)) > n_ctx {
        return Err(ModelBenchError::Args(format!(
            "-d {} + -p {} / -n {} tokens exceed the model's context of {n_ctx} tokens",
            o.n_depth, o.n_prompt, o.n_gen
        )));
    }
    let decode_bytes = decode_bytes_per_token(&file, model.hp.n_expert_used);
    let tokenizer = Tokenizer::from_model_file(&file).context("reading the tokenizer")?;
    let vision = match &mmproj {
        Some(p) => {
            // As `Model::load_vision`: the mmproj's preload goes first.
            let mut v = VisionModel::load_with(p, o.experts.preload, model.preload())
                .with_context(|| format!("loading the vision model {}", p.display()))?;
            v.set_precision(o.vision_precision);
            if let Some(enc) = crate::backend::vision_encoder(&vision_backend, &v, o.threads)
                .context("vision offload")?
            {
                say(&format!("vision tower and projector on {}", enc.device()));
                device = Some(enc.device());
                v.set_offload(enc);
            }
            Some(v)
        }
        None => {
            if o.vision {
                say("no mmproj beside the model (give --mmproj): vision and ttft are skipped");
            }
            None
        }
    };
    let image = match &vision {
        Some(v) => Some(tiled_2x2_image(v)?),
        None => None,
    };
    let n_vocab = model.hp.n_vocab;
    // The depth's tokens, then the prompt's: deterministic ids.
    let ids: Vec<u32> = (0..o.n_depth + o.n_prompt.max(o.n_gen).max(WARMUP_TOKENS))
        .map(|i| ((i * 7919 + 13) % n_vocab) as u32)
        .collect();
    let (depth, prompt) = ids.split_at(o.n_depth);

    let mut session = Sequence::new(&model);
    let mut cold_ttft_ms = None;
    if let (true, Some(v), Some(img)) = (o.cold, &vision, &image) {
        say("cold image request");
        image_request(&model, &tokenizer, v, img, &mut session)?;
        cold_ttft_ms = Some(opened.elapsed().as_secs_f64() * 1000.0);
    }
    // Nothing is timed while a file is still being read in.
    let preloads: Vec<_> = model
        .preload()
        .into_iter()
        .chain(vision.as_ref().and_then(|v| v.preload()))
        .map(|p| p.wait())
        .collect();
    let preload_mb =
        (!preloads.is_empty()).then(|| preloads.iter().map(|r| r.bytes as f64 / 1e6).sum::<f64>());
    let preload_ms = preloads
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1000.0)
        .reduce(f64::max);

    say("warm-up");
    // At a depth, over every position a measurement will hold: the KV cache grows to its
    // size here, not inside the first timed repetition (llama.cpp allocates its cache for
    // the whole context up front; ours grows with the sequence).
    let warm_len = match o.n_depth {
        0 => WARMUP_TOKENS,
        d => d + o.n_prompt.max(o.n_gen),
    };
    let warm = model.embed_tokens(&ids[..warm_len.min(n_ctx)])?;
    model.forward(&mut session.state, &warm, 0, LogitsWanted::Last)?;

    let (mut prefill, mut decode, mut vis, mut ttft) = (vec![], vec![], vec![], vec![]);
    let (mut tiles, mut ttft_tokens) = (None, None);
    // The decode steps' region totals and wall time (`--regions`).
    let (mut region_sites, mut decode_ns) = (Vec::<SiteTotals>::new(), 0u64);
    // An empty cache, then (untimed) the depth's tokens in it.
    let fill = |session: &mut Sequence| -> Result<(), ModelBenchError> {
        session.reset();
        if !depth.is_empty() {
            let emb = model.embed_tokens(depth)?;
            model.forward(&mut session.state, &emb, 0, LogitsWanted::Last)?;
        }
        Ok(())
    };
    for rep in 0..o.reps {
        if o.n_prompt > 0 {
            fill(&mut session)?;
            let emb = model.embed_tokens(&prompt[..o.n_prompt])?;
            let t0 = Instant::now();
            model.forward(&mut session.state, &emb, o.n_depth, LogitsWanted::Last)?;
            prefill.push(o.n_prompt as f64 / t0.elapsed().as_secs_f64());
        }
        if o.n_gen > 0 {
            fill(&mut session)?;
            let clock = o.regions.then(region_clock::record);
            let t0 = Instant::now();
            let mut id = prompt[0];
            // As the generation loop decodes: buffers reused, logits borrowed.
            let mut e = Vec::new();
            for pos in o.n_depth..o.n_depth + o.n_gen {
                model.embed_tokens_into(&[id], &mut e)?;
                let logits =
                    model.forward_logits(&mut session.state, &e, pos, LogitsWanted::Last)?;
                id = argmax(logits) as u32;
            }
            let took = t0.elapsed();
            if let Some(c) = clock {
                for s in c.stop() {
                    match region_sites.iter_mut().find(|r| r.site == s.site) {
                        Some(r) => r.totals.add(&s.totals),
                        None => region_sites.push(s),
                    }
                }
                decode_ns += u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            }
            decode.push(o.n_gen as f64 / took.as_secs_f64());
        }
        if let (Some(v), Some(img)) = (&vision, &image) {
            let t0 = Instant::now();
            let r = image_request(&model, &tokenizer, v, img, &mut session)?;
            ttft.push(t0.elapsed().as_secs_f64() * 1000.0);
            vis.push(r.vision_ms / r.tiles as f64);
            tiles = Some(r.tiles);
            ttft_tokens = Some(r.prompt_tokens);
        }
        say(&format!("rep {}/{} done", rep + 1, o.reps));
    }
    let peak_rss = rss::status_field("VmHWM").or_else(rss::max_rss_bytes);
    let file_huge = rss::smaps_field("FilePmdMapped");
    // The step at position p reads the rows of positions 0..=p.
    let row_bytes = session.state.cache().bytes_per_position() as f64;
    let mean_rows = o.n_depth as f64 + (o.n_gen as f64 + 1.0) / 2.0;
    let decode_kv_mb = (o.n_gen > 0).then(|| mean_rows * row_bytes / 1e6);
    let expert_stats = model.experts().stats();
    // The rooflines' 512 MiB probe buffer must not stack on the model's memory (an expert
    // cache filled to its budget, the mapped pinned weights): under a memory limit that sum
    // was the peak of the run.
    drop(session);
    drop(vision);
    drop(model);
    drop(file);

    say("rooflines: memory bandwidth, FMA peak");
    let bandwidth_gb_s = peak::read_bandwidth_gb_s();
    let (fma_gflops, fma_isa) = peak::fma_gflops();

    let file_bytes = file_len(&o.model) + mmproj.as_deref().map(file_len).unwrap_or(0);
    let decode_roofline_tok_s = bandwidth_gb_s * 1e9 / decode_bytes as f64;
    let decode_roofline_kv_tok_s =
        decode_kv_mb.map(|kv| bandwidth_gb_s * 1e9 / (decode_bytes as f64 + kv * 1e6));
    let spread = SpreadTable {
        prefill_tok_s: Spread::of(&prefill),
        decode_tok_s: Spread::of(&decode),
        vision_ms_per_tile: Spread::of(&vis),
        ttft_ms: Spread::of(&ttft),
    };
    let decode_tok_s = spread.decode_tok_s.map(|s| s.median);
    Ok(ModelBenchResult {
        model: o.model.clone(),
        mmproj,
        threads: o.threads,
        vision_precision: o.vision_precision.to_string(),
        cache_type: o.cache_type.to_string(),
        offload: o.backend.offload.to_string(),
        device,
        reps: o.reps,
        n_prompt: o.n_prompt,
        n_gen: o.n_gen,
        n_depth: o.n_depth,
        prefill_tok_s: spread.prefill_tok_s.map(|s| s.median),
        decode_tok_s,
        vision_ms_per_tile: spread.vision_ms_per_tile.map(|s| s.median),
        vision_tiles: tiles,
        ttft_ms: spread.ttft_ms.map(|s| s.median),
        ttft_prompt_tokens: ttft_tokens,
        cold_ttft_ms,
        cold_resident_after_drop,
        preload_mb,
        preload_ms,
        peak_rss_mb: peak_rss.map(|b| b as f64 / 1e6),
        file_huge_mb: file_huge.map(|b| b as f64 / 1e6),
        file_mb: file_bytes as f64 / 1e6,
        bandwidth_gb_s,
        fma_gflops,
        fma_isa,
        kernel_isa: quant::kernels::table().isa,
        decode_weight_mb: decode_bytes as f64 / 1e6,
        decode_kv_mb,
        decode_roofline_tok_s,
        decode_fraction_of_roofline: decode_tok_s.map(|d| d / decode_roofline_tok_s),
        decode_roofline_kv_tok_s,
        decode_fraction_of_roofline_kv: decode_tok_s
            .zip(decode_roofline_kv_tok_s)
            .map(|(d, r)| d / r),
        decode_regions: RegionProfile::of(
            &region_sites,
            (o.n_gen * o.reps) as u64,
            decode_ns,
            o.threads,
        ),
        spread,
        expert_stats: Some(expert_stats),
    })
}

/// What one image request took.
struct ImageRequest {
    /// Preprocessing, tower and projector.
    vision_ms: f64,
    tiles: usize,
    prompt_tokens: usize,
}

/// The time-to-first-token request, on an emptied `session`: `img` preprocessed and
/// encoded, the question's chat prompt around its tokens, generation to the first token.
fn image_request(
    model: &LanguageModel,
    tokenizer: &Tokenizer,
    v: &VisionModel,
    img: &RgbImage,
    session: &mut Sequence,
) -> Result<ImageRequest, ModelBenchError> {
    use anyhow::Context;
    session.reset();
    let t0 = Instant::now();
    let pre = v
        .preprocess(std::slice::from_ref(img))
        .context("preprocessing")?;
    let feats = v.encode(&pre).context("vision tower")?;
    let vision_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let counts: Vec<usize> = pre.images.iter().map(|l| l.n_tokens).collect();
    let msgs = [Message::new(Role::User, format!("{IMAGE_TAG}\n{QUESTION}"))];
    let ids = build_chat(tokenizer, &msgs, &counts)
        .context("building the prompt")?
        .ids;
    session
        .generate(
            model,
            tokenizer,
            &ids,
            &feats,
            &first_token_params(),
            &mut |_| {},
        )
        .context("first token")?;
    Ok(ImageRequest {
        vision_ms,
        tiles: pre.unique_tiles.len(),
        prompt_tokens: ids.len(),
    })
}

/// Greedy, one token, no stop strings: the generation ends right after the first token.
fn first_token_params() -> GenerateOptions {
    GenerateOptions {
        max_new: 1,
        ..GenerateOptions::greedy()
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Weight bytes one decode step reads: every tensor once, except that of each layer's routed
/// experts (`*_exps`, stacked along ne[2]) only `n_used` are read, and of the token embedding
/// only one row (counted as nothing) unless it doubles as the output head (no
/// `output.weight`). The KV cache is left out: at short contexts it is small beside them.
pub fn decode_bytes_per_token(file: &ModelFile, n_used: usize) -> u64 {
    let g = file.gguf();
    let tied = g.tensor("output.weight").is_none();
    g.tensors()
        .iter()
        .map(|t| {
            if t.name == "token_embd.weight" {
                return if tied { t.n_bytes } else { 0 };
            }
            match (t.name.contains("_exps"), t.ne.get(2)) {
                (true, Some(&e)) if e > 0 => t.n_bytes * (n_used as u64).min(e) / e,
                _ => t.n_bytes,
            }
        })
        .sum()
}

/// A deterministic synthetic picture for which the preprocessor picks a 2×2 local layout:
/// a square of twice the tile side (least waste among the candidates with full resolution).
/// Smooth gradients plus a pattern, so that it is not a constant image.
pub fn tiled_2x2_image(v: &VisionModel) -> Result<RgbImage, ModelBenchError> {
    let s = v.config.image_size;
    let side = 2 * s;
    let chosen = select_best_resolution((side, side), &v.config.candidate_resolutions);
    if chosen != Some((side, side)) {
        return Err(ModelBenchError::Image(format!(
            "the mmproj's candidate resolutions do not give a {side}x{side} image a 2x2 layout \
             (chosen: {chosen:?})"
        )));
    }
    let mut data = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side {
        for x in 0..side {
            let checker = if (x / 32 + y / 32) % 2 == 0 { 40 } else { 0 };
            data.push(((x * 255 / side) as u8).saturating_add(checker));
            data.push(((y * 255 / side) as u8).saturating_add(checker));
            data.push((((x + y) * 127 / side) as u8).wrapping_add(checker));
        }
    }
    RgbImage::from_raw(side, side, data).map_err(|e| ModelBenchError::Image(e.to_string()))
}

impl ModelBenchResult {
    /// The human-readable lines: medians with their range over the repetitions.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let line = |name: &str, unit: &str, sp: &Option<Spread>| match sp {
            Some(x) => format!(
                "{name:<22} {:>10.2} {unit}  (median of {}; range {:.2} to {:.2})\n",
                x.median, self.reps, x.min, x.max
            ),
            None => format!("{name:<22} {:>10} (not measured)\n", "-"),
        };
        s += &format!(
            "model {} ({:.0} MB with mmproj), {} thread(s)\n",
            self.model.display(),
            self.file_mb,
            self.threads
        );
        if let Some(d) = &self.device {
            s += &format!("offloaded: {} on {d}\n", self.offload);
        }
        let at = match self.n_depth {
            0 => String::new(),
            d => format!(" @ d{d}"),
        };
        s += &line(
            &format!("prefill ({} tok{at})", self.n_prompt),
            "tok/s",
            &self.spread.prefill_tok_s,
        );
        s += &line(
            &format!("decode ({} tok{at})", self.n_gen),
            "tok/s",
            &self.spread.decode_tok_s,
        );
        s += &line(
            &format!("vision per tile ({})", self.vision_precision),
            "ms",
            &self.spread.vision_ms_per_tile,
        );
        s += &line("ttft (2x2 image)", "ms", &self.spread.ttft_ms);
        if let Some(ms) = self.cold_ttft_ms {
            let resident = match self.cold_resident_after_drop {
                Some(r) => format!("{:.1} % of the files resident after the drop", r * 100.0),
                None => "residency after the drop unknown".into(),
            };
            s += &format!(
                "{:<22} {ms:>10.2} ms  (from opening the files; {resident})\n",
                "ttft cold (2x2 image)"
            );
        }
        if let (Some(mb), Some(ms)) = (self.preload_mb, self.preload_ms) {
            s += &format!("preload: {mb:.0} MB read in behind the load in {ms:.0} ms\n");
        }
        s += &format!(
            "roofline: read bandwidth {:.2} GB/s, FMA peak {:.1} GFLOP/s ({}); kernels: {}\n",
            self.bandwidth_gb_s, self.fma_gflops, self.fma_isa, self.kernel_isa
        );
        s += &format!(
            "decode reads {:.1} MB of weights per token: roofline {:.2} tok/s",
            self.decode_weight_mb, self.decode_roofline_tok_s
        );
        if let Some(f) = self.decode_fraction_of_roofline {
            s += &format!(", decode at {:.0}% of it", f * 100.0);
        }
        if let Some(kv) = self.decode_kv_mb {
            s += &format!(" (and {kv:.1} MB of KV cache per token");
            if let Some(f) = self.decode_fraction_of_roofline_kv {
                s += &format!(": {:.0}% of the roofline counting it", f * 100.0);
            }
            s += ")";
        }
        s += "\n";
        if let Some(p) = &self.decode_regions {
            s += &format!(
                "decode regions: {:.1} per token of {:.1} µs, {:.0}% of a {:.2} ms step; \
                 thread time: {:.0}% in tasks, {:.0}% absent, {:.0}% waiting, {:.0}% outside\n",
                p.regions_per_token,
                p.region_us,
                p.in_regions * 100.0,
                p.step_ms,
                p.busy * 100.0,
                p.absent * 100.0,
                p.waiting * 100.0,
                p.outside * 100.0
            );
            for x in &p.sites {
                s += &format!(
                    "  {}: {:.1} per token of {:.1} µs, {:.0}% of the step; {:.0}% in tasks, \
                     {:.0}% absent, {:.0}% waiting\n",
                    x.site,
                    x.regions_per_token,
                    x.region_us,
                    x.of_step * 100.0,
                    x.busy * 100.0,
                    x.absent * 100.0,
                    x.waiting * 100.0
                );
            }
        }
        if let Some(r) = self.peak_rss_mb {
            s += &format!("peak RSS {r:.0} MB (mapped weights included)\n");
        }
        if let Some(h) = self.file_huge_mb {
            s += &format!(
                "mapped on 2 MiB pages: {h:.0} of {:.0} MB of the files\n",
                self.file_mb
            );
        }
        s
    }

    /// The `--json` line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    /// The four parts are shares of steps x threads: regions' thread time split by the
    /// clock, the rest of the steps' wall time outside.
    #[test]
    fn region_profile_parts_add_up() {
        let t = RegionTotals {
            regions: 10,
            wall_ns: 800,
            thread_ns: 1600,
            busy_ns: 1000,
            absent_ns: 200,
        };
        // Two sites that add up to `t`: the first 3 regions of 10, the second 7.
        let a = RegionTotals {
            regions: 3,
            wall_ns: 200,
            thread_ns: 400,
            busy_ns: 100,
            absent_ns: 100,
        };
        let mut b = t;
        b.regions -= a.regions;
        b.wall_ns -= a.wall_ns;
        b.thread_ns -= a.thread_ns;
        b.busy_ns -= a.busy_ns;
        b.absent_ns -= a.absent_ns;
        let site = |site: &str, totals| SiteTotals {
            site: site.into(),
            totals,
        };
        let sites = [site("a.rs:1", a), site("b.rs:2", b)];
        let p = RegionProfile::of(&sites, 2, 1000, 2).unwrap();
        assert_eq!(
            (p.busy, p.absent, p.waiting, p.outside),
            (0.5, 0.1, 0.2, 0.2)
        );
        assert_eq!((p.regions_per_token, p.in_regions), (5.0, 0.8));
        assert_eq!((p.region_us, p.step_ms), (0.08, 0.0005));
        // Per site, the longer first, each site's own thread time split in three.
        let names: Vec<&str> = p.sites.iter().map(|s| s.site.as_str()).collect();
        assert_eq!(names, ["b.rs:2", "a.rs:1"]);
        let sa = &p.sites[1];
        assert_eq!((sa.regions_per_token, sa.of_step), (1.5, 0.2));
        assert_eq!((sa.busy, sa.absent, sa.waiting), (0.25, 0.25, 0.5));
        for x in &p.sites {
            assert!((x.busy + x.absent + x.waiting - 1.0).abs() < 1e-12, "{x:?}");
        }
        assert!(RegionProfile::of(&[], 2, 1000, 2).is_none());
        assert!(RegionProfile::of(&sites, 0, 1000, 2).is_none());
    }
}
