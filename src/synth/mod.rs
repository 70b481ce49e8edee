//! `pocketvl synth`: random-weight DeepSeek-VL2 checkpoints in the real shapes.
//!
//! Real weights are not available on the build machines, yet converter throughput, memory
//! bounds and runtime speed only mean something at full size. This module writes a complete
//! Hugging Face-layout checkpoint (sharded bf16 safetensors + index, `config.json`,
//! `processor_config.json`, tokenizer files) with the exact tensor names and shapes of a chosen
//! variant (docs/DEEPSEEK-VL2.md §1–§2). Tensors are generated and written a batch at a time
//! (bounded memory: one [`BATCH_ELEMS`] buffer), in parallel inside a batch, reproducibly for a
//! seed whatever the thread count.

pub mod rng;
pub mod skew;
pub mod source;
pub mod spec;
pub mod tensors;
pub mod tokenizer;
pub mod writer;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use source::SynthSource;
pub use spec::{ModelSpec, Variant};
pub use tensors::{tensor_list, TensorSpec};
pub use writer::{HeaderEntry, SafetensorsWriter, StDtype};

/// Everything that can go wrong while synthesizing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A variant name that is not one of the three published ones.
    #[error(
        "unknown variant '{0}' (expected deepseek-vl2-tiny, deepseek-vl2-small or deepseek-vl2)"
    )]
    UnknownVariant(String),
    /// `--layers` outside 1..=the variant's depth.
    #[error("--layers {requested}: {variant} has {max} layers, choose 1..={max}")]
    BadLayers {
        variant: &'static str,
        requested: usize,
        max: usize,
    },
    /// The output directory already holds files.
    #[error("output directory {0} is not empty (use --force to write into it)")]
    OutputNotEmpty(PathBuf),
    /// A shard size too small to be meaningful.
    #[error("shard size {0} bytes is too small (minimum {MIN_SHARD_BYTES})")]
    BadShardSize(u64),
    /// The tokenizer to copy is missing or unusable.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// Misuse of the safetensors writer (a bug in the caller, reported rather than panicking).
    #[error("{path}: safetensors writer: {reason}")]
    Writer { path: PathBuf, reason: String },
    /// `--router-skew` outside its range.
    #[error("--router-skew {0}: choose a value in 0..={max}", max = skew::MAX_ALPHA)]
    BadSkew(f64),
    /// `--cold-only`: the existing output is not the model this command would write.
    #[error(
        "{path} is not the model this synth command writes ({why}): --cold-only adds the \
             sidecar to a model written by the same command"
    )]
    NotThatModel { path: PathBuf, why: String },
    /// Writing the GGUF pair directly (`--quant`) failed in the converter.
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
}

impl SynthError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SynthError {
        SynthError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Elements generated per batch: 32 Mi bf16 values = 64 MiB, the writer's whole working set.
pub const BATCH_ELEMS: usize = 512 * rng::BLOCK_ELEMS;

/// Default shard size limit: 4.5 GB, within the 4–5 GB of the published checkpoints.
pub const DEFAULT_SHARD_BYTES: u64 = 4_500_000_000;

/// Smallest accepted shard limit (tests use tiny shards to exercise sharding).
pub const MIN_SHARD_BYTES: u64 = 4096;

/// The tokenizer the synthetic checkpoints ship: a real 128K DeepSeek(-V3) tokenizer.
pub const DEFAULT_TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizers/deepseek-v3/tokenizer.json"
);

/// What to synthesize.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub variant: Variant,
    pub output: PathBuf,
    pub seed: u64,
    /// Truncate the language model to this many layers (`None` = the variant's depth).
    pub layers: Option<usize>,
    /// Write the `vision.*` tensors.
    pub vision: bool,
    /// Upper bound of one shard's data (a larger single tensor gets a shard of its own).
    pub shard_bytes: u64,
    /// tokenizer.json to copy as it is; `None` = the repository's DeepSeek-V3 tokenizer
    /// ([`DEFAULT_TOKENIZER`]), re-laid out for Small ([`tokenizer::v2_layout_from_v3`]).
    pub tokenizer: Option<PathBuf>,
    /// Write into a non-empty directory (or replace the GGUF pair).
    pub force: bool,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Zipf exponent of expert popularity ([`skew`]; 0 = plain random routers).
    pub router_skew: f64,
    /// With a GGUF output: also write the low-bit copy of the routed experts in this type
    /// (`cold-<name>`, the converter's sidecar, as `convert --cold-experts` writes it).
    pub cold_experts: Option<quant::GgmlType>,
}

impl SynthOptions {
    /// Defaults for `variant` written to `output`.
    pub fn new(variant: Variant, output: impl Into<PathBuf>) -> SynthOptions {
        SynthOptions {
            variant,
            output: output.into(),
            seed: 0,
            layers: None,
            vision: true,
            shard_bytes: DEFAULT_SHARD_BYTES,
            tokenizer: None,
            force: false,
            progress: false,
            router_skew: 0.0,
            cold_experts: None,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub shards: Vec<PathBuf>,
    pub n_tensors: usize,
    /// Tensor data bytes (the index's `total_size`).
    pub data_bytes: u64,
    pub elapsed: Duration,
}

impl SynthSummary {
    /// Data MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.data_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Name of shard `i` (0-based) of `n`, as transformers writes them.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Cuts `tensors` (in order) into shards of at most `limit` bytes each.
pub fn plan_shards(tensors: &[TensorSpec], limit: u64) -> Vec<Vec<&TensorSpec>> {
    let mut shards: Vec<Vec<&TensorSpec>> = Vec::new();
    let mut cur: Vec<&TensorSpec> = Vec::new();
    let mut size = 0u64;
    for t in tensors {
        if !cur.is_empty() && size + t.bytes() > limit {
            shards.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += t.bytes();
        cur.push(t);
    }
    if !cur.is_empty() {
        shards.push(cur);
    }
    shards
}

/// Writes the checkpoint described by `opts`.
pub fn synthesize(opts: &SynthOptions) -> Result<SynthSummary, SynthError> {
    synthesize_spec(&spec_of(opts)?, opts)
}

/// The spec `opts` asks for (variant, depth, vision, skew), checked.
pub fn spec_of(opts: &SynthOptions) -> Result<ModelSpec, SynthError> {
    let max = opts.variant.language().num_hidden_layers;
    if let Some(n) = opts.layers {
        if n == 0 || n > max {
            return Err(SynthError::BadLayers {
                variant: opts.variant.name(),
                requested: n,
                max,
            });
        }
    }
    let mut spec = ModelSpec::new(opts.variant, opts.layers, opts.vision);
    spec.router_skew = opts.router_skew;
    Ok(spec)
}

/// Writes a checkpoint of an explicit `spec` (for example a variant shrunk for tests);
/// `opts.variant`, `opts.layers` and `opts.vision` are ignored in favour of `spec`.
pub fn synthesize_spec(spec: &ModelSpec, opts: &SynthOptions) -> Result<SynthSummary, SynthError> {
    let start = Instant::now();
    if opts.shard_bytes < MIN_SHARD_BYTES {
        return Err(SynthError::BadShardSize(opts.shard_bytes));
    }
    check_spec(spec)?;
    let tok_src = tokenizer_source(opts)?;
    prepare_dir(&opts.output, opts.force)?;

    let list = tensor_list(spec);
    let shards = plan_shards(&list, opts.shard_bytes);
    let total: u64 = list.iter().map(TensorSpec::bytes).sum();
    let mut progress = Progress::new(opts.progress, total);
    progress.line(format_args!(
        "synth: {} ({} layers{}), {} tensors, {:.2} GB bf16 in {} shards -> {}",
        spec.variant.name(),
        spec.language.num_hidden_layers,
        if spec.with_vision { "" } else { ", no vision" },
        list.len(),
        total as f64 / 1e9,
        shards.len(),
        opts.output.display()
    ));

    let mut weight_map = BTreeMap::new();
    let mut paths = Vec::new();
    let mut buf = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = shard_name(i, shards.len());
        let path = opts.output.join(&name);
        write_shard(&path, shard, opts.seed, &mut buf, &mut progress)?;
        for t in shard {
            weight_map.insert(t.name.clone(), name.clone());
        }
        paths.push(path);
    }
    drop(buf);

    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    write_json(&opts.output.join("model.safetensors.index.json"), &index)?;
    write_support_files(&opts.output, spec, &tok_src, opts.tokenizer.is_none())?;

    let summary = SynthSummary {
        shards: paths,
        n_tensors: list.len(),
        data_bytes: total,
        elapsed: start.elapsed(),
    };
    progress.line(format_args!(
        "synth: done, {:.2} GB in {:.1} s ({:.0} MB/s)",
        total as f64 / 1e9,
        summary.elapsed.as_secs_f64(),
        summary.mb_per_s()
    ));
    Ok(summary)
}

/// Writes the converted GGUF pair of the variant `opts` asks for straight to `opts.output`
/// (the language model; its mmproj beside it), with recipe `quant`: the bytes `convert` would
/// write from the checkpoint [`synthesize`] writes for the same options, without that
/// checkpoint on disk. `threads`: converter threads (`None` = all cores).
pub fn synthesize_gguf(
    opts: &SynthOptions,
    quant: &str,
    threads: Option<usize>,
) -> Result<(convert::write::Plan, convert::write::Summary), SynthError> {
    synthesize_gguf_spec(&spec_of(opts)?, opts, quant, threads)
}

/// [`synthesize_gguf`] for an explicit `spec` (`opts.variant`, `.layers`, `.vision` ignored).
///
/// Only the small configuration and tokenizer files go to disk, into a temporary directory
/// that the converter reads them from; tensors come from a [`SynthSource`], so memory stays
/// at the converter's chunk buffers. The converter's own guarantees hold: existing outputs are
/// refused without `force`, and a failure leaves no file at either output path. With
/// `opts.cold_experts` the low-bit sidecar follows, written by the converter's sidecar writer.
pub fn synthesize_gguf_spec(
    spec: &ModelSpec,
    opts: &SynthOptions,
    quant: &str,
    threads: Option<usize>,
) -> Result<(convert::write::Plan, convert::write::Summary), SynthError> {
    convert::write::check_outputs(&opts.output, opts.force)?;
    let job = GgufJob::plan(spec, opts, quant, threads)?;
    // Planned before anything is written, so that a type the sidecar cannot take fails first.
    let cold = match opts.cold_experts {
        Some(ty) => Some(convert::write::plan_cold(&job.plan, ty)?),
        None => None,
    };
    let summary = convert::write::execute(&job.source, &job.plan, &job.copts)?;
    if let Some(fp) = &cold {
        convert::write::execute_cold(&job.source, fp, &job.copts)?;
    }
    Ok((job.plan, summary))
}

/// Writes only the low-bit sidecar (`cold-<name>`, type `ty`) of the GGUF that
/// [`synthesize_gguf_spec`] writes for `spec`, `opts` and `quant`, beside an `opts.output`
/// written earlier by it: the existing file's tensor table (names, types, shapes) must be the
/// plan's. Returns the sidecar's path and size. For adding a copy to a large model without
/// writing it again.
pub fn synthesize_cold_sidecar(
    spec: &ModelSpec,
    opts: &SynthOptions,
    quant: &str,
    ty: quant::GgmlType,
    threads: Option<usize>,
) -> Result<(PathBuf, u64), SynthError> {
    let side = convert::write::cold_path(&opts.output);
    if side.exists() && !opts.force {
        return Err(convert::ConvertError::OutputExists(side).into());
    }
    let job = GgufJob::plan(spec, opts, quant, threads)?;
    let mismatch = |why: String| SynthError::NotThatModel {
        path: opts.output.clone(),
        why,
    };
    let model = quant::gguf::GgufFile::open(&opts.output).map_err(|e| mismatch(e.to_string()))?;
    let planned = &job.plan.language.tensors;
    if model.tensors().len() != planned.len() {
        return Err(mismatch(format!(
            "{} tensors, the plan has {}",
            model.tensors().len(),
            planned.len()
        )));
    }
    for (t, p) in model.tensors().iter().zip(planned) {
        if t.name != p.mapped.name || t.ty != p.ty || t.ne != p.mapped.ne {
            return Err(mismatch(format!(
                "tensor {} {} {:?}, the plan has {} {} {:?}",
                t.name,
                t.ty.name(),
                t.ne,
                p.mapped.name,
                p.ty.name(),
                p.mapped.ne
            )));
        }
    }
    let fp = convert::write::plan_cold(&job.plan, ty)?;
    Ok(convert::write::execute_cold(&job.source, &fp, &job.copts)?)
}

/// A planned direct-GGUF synthesis: the converter's plan over a [`SynthSource`], with the
/// temporary directory of support files it reads.
struct GgufJob {
    plan: convert::write::Plan,
    copts: convert::write::ConvertOptions,
    source: SynthSource,
    _support: quant::temp_file::TempDir,
}

impl GgufJob {
    fn plan(
        spec: &ModelSpec,
        opts: &SynthOptions,
        quant: &str,
        threads: Option<usize>,
    ) -> Result<GgufJob, SynthError> {
        check_spec(spec)?;
        let tok_src = tokenizer_source(opts)?;
        let tmp = std::env::temp_dir();
        let support = quant::temp_file::TempDir::create(&tmp, "pocketvl-synth-")
            .map_err(|e| SynthError::io(tmp, e))?;
        write_support_files(support.path(), spec, &tok_src, opts.tokenizer.is_none())?;
        let copts = convert::write::ConvertOptions {
            input: support.path().to_path_buf(),
            output: opts.output.clone(),
            quant: Some(quant.to_string()),
            overrides: Vec::new(),
            force: opts.force,
            threads,
            progress: opts.progress,
        };
        let source = SynthSource::new(spec, opts.seed);
        let plan = convert::write::plan_source(&copts, &source)?;
        Ok(GgufJob {
            plan,
            copts,
            source,
            _support: support,
        })
    }
}

/// Refuses spec values the generator cannot honour.
fn check_spec(spec: &ModelSpec) -> Result<(), SynthError> {
    let a = spec.router_skew;
    if !(0.0..=skew::MAX_ALPHA).contains(&a) {
        return Err(SynthError::BadSkew(a));
    }
    Ok(())
}

/// The tokenizer.json to ship, checked to exist.
fn tokenizer_source(opts: &SynthOptions) -> Result<PathBuf, SynthError> {
    let tok_src = opts
        .tokenizer
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKENIZER));
    if !tok_src.is_file() {
        return Err(SynthError::Tokenizer {
            path: tok_src,
            reason: "not found (pass --tokenizer PATH)".into(),
        });
    }
    Ok(tok_src)
}

/// Writes everything of a checkpoint but its tensors into `dir`: `config.json`,
/// `processor_config.json`, `tokenizer_config.json`, `special_tokens_map.json` and
/// `tokenizer.json` (re-laid out for Small when it is the default one, `default_tokenizer`).
fn write_support_files(
    dir: &Path,
    spec: &ModelSpec,
    tok_src: &Path,
    default_tokenizer: bool,
) -> Result<(), SynthError> {
    write_json(&dir.join("config.json"), &spec.config_json())?;
    write_json(
        &dir.join("processor_config.json"),
        &spec::processor_config_json(),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &spec::tokenizer_config_json(),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &spec::special_tokens_map_json(),
    )?;
    let tok_out = dir.join("tokenizer.json");
    if default_tokenizer && spec.variant == Variant::Small {
        let tok_err = |reason: String| SynthError::Tokenizer {
            path: tok_src.to_path_buf(),
            reason,
        };
        let text = std::fs::read(tok_src).map_err(|e| SynthError::io(tok_src, e))?;
        let v3: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| tok_err(format!("not JSON: {e}")))?;
        let v2 = tokenizer::v2_layout_from_v3(&v3).map_err(tok_err)?;
        let text = serde_json::to_vec(&v2).map_err(|e| tok_err(e.to_string()))?;
        std::fs::write(&tok_out, text).map_err(|e| SynthError::io(&tok_out, e))?;
    } else {
        std::fs::copy(tok_src, &tok_out).map_err(|e| SynthError::Tokenizer {
            path: tok_src.to_path_buf(),
            reason: format!("copy to {}: {e}", tok_out.display()),
        })?;
    }
    Ok(())
}

/// Creates `dir`, refusing a non-empty one unless `force`.
fn prepare_dir(dir: &Path, force: bool) -> Result<(), SynthError> {
    std::fs::create_dir_all(dir).map_err(|e| SynthError::io(dir, e))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| SynthError::io(dir, e))?;
    if !force && entries.next().is_some() {
        return Err(SynthError::OutputNotEmpty(dir.to_path_buf()));
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), SynthError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| SynthError::Writer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| SynthError::io(path, e))
}

/// Generates and writes one shard, a batch at a time through `buf`.
fn write_shard(
    path: &Path,
    tensors: &[&TensorSpec],
    seed: u64,
    buf: &mut Vec<u8>,
    progress: &mut Progress,
) -> Result<(), SynthError> {
    let by_name: BTreeMap<&str, &TensorSpec> =
        tensors.iter().map(|t| (t.name.as_str(), *t)).collect();
    let entries = tensors
        .iter()
        .map(|t| HeaderEntry {
            name: t.name.clone(),
            dtype: StDtype::BF16,
            shape: t.shape.clone(),
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut w = SafetensorsWriter::create(path, entries, &metadata)?;
    let order: Vec<String> = w.entries().iter().map(|e| e.name.clone()).collect();
    for name in &order {
        let Some(t) = by_name.get(name.as_str()) else {
            return Err(SynthError::Writer {
                path: path.to_path_buf(),
                reason: format!("tensor '{name}' in the header but not in the shard plan"),
            });
        };
        let draw = t.draw(seed);
        let numel = t.numel();
        let mut done = 0u64;
        while done < numel {
            let n = (numel - done).min(BATCH_ELEMS as u64) as usize;
            buf.resize(n * 2, 0);
            rng::fill_bf16(&draw, done, buf);
            w.write(buf)?;
            done += n as u64;
            progress.add(n as u64 * 2, path);
        }
    }
    w.finish()?;
    Ok(())
}

/// Progress lines on stderr, one per ~5% of the data.
struct Progress {
    on: bool,
    total: u64,
    done: u64,
    next: u64,
    start: Instant,
}

impl Progress {
    fn new(on: bool, total: u64) -> Progress {
        Progress {
            on,
            total,
            done: 0,
            next: 0,
            start: Instant::now(),
        }
    }

    fn line(&self, args: std::fmt::Arguments<'_>) {
        if self.on {
            let _ = writeln!(std::io::stderr(), "{args}");
        }
    }

    fn add(&mut self, bytes: u64, path: &Path) {
        self.done += bytes;
        if self.done < self.next {
            return;
        }
        self.next = self.done + (self.total / 20).max(1);
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.line(format_args!(
            "synth: {:5.1}%  {:.2}/{:.2} GB  {:.0} MB/s  {}",
            100.0 * self.done as f64 / self.total.max(1) as f64,
            self.done as f64 / 1e9,
            self.total as f64 / 1e9,
            self.done as f64 / 1e6 / secs,
            name.unwrap_or_default()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_shards_like_the_published_checkpoint() {
        let list = tensor_list(&ModelSpec::new(Variant::Tiny, None, true));
        let shards = plan_shards(&list, DEFAULT_SHARD_BYTES);
        assert_eq!(shards.len(), 2);
        let n: usize = shards.iter().map(Vec::len).sum();
        assert_eq!(n, list.len());
        for s in &shards {
            let bytes: u64 = s.iter().map(|t| t.bytes()).sum();
            assert!(bytes <= DEFAULT_SHARD_BYTES);
        }
        assert_eq!(shard_name(0, 2), "model-00001-of-00002.safetensors");
    }

    #[test]
    fn a_tensor_larger_than_the_limit_gets_its_own_shard() {
        let list = tensor_list(&ModelSpec::new(Variant::Tiny, Some(1), false));
        let shards = plan_shards(&list, 1 << 20);
        assert!(shards
            .iter()
            .all(|s| s.len() == 1 || s.iter().map(|t| t.bytes()).sum::<u64>() <= 1 << 20));
    }
}
