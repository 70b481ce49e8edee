//! The conversion itself: plan → metadata → streamed, parallel quantization → two GGUF files
//! committed together, and optionally a third, the cold-expert sidecar (`cold-<name>`, see
//! [`plan_cold`]).
//!
//! Memory stays bounded by [`CHUNK_ELEMS`] per tensor chunk, never a whole model: a tensor is
//! produced a chunk of rows at a time (an expert stack expert by expert, since rows are filled
//! from one expert matrix at a time), each chunk's rows are converted in parallel straight from
//! the stored values to the output type (`quant::block::convert_row`; only sources that
//! transpose, or dtypes without a row converter, go through f32 rows in a per-thread scratch
//! buffer), and appended through `GgufDataWriter`. Both files are written to temporaries and renamed into place only when
//! both succeeded; any error leaves no partial file.
//!
//! Disk and CPU overlap, so conversion runs near what the disk allows: read-ahead threads
//! load the next chunks' checkpoint bytes with direct I/O while chunk N is quantized (at most
//! `READ_AHEAD` chunks ahead per reader, see `readahead.rs`); the rows land directly in the GGUF
//! writer's aligned buffers, which its own thread writes past the page cache while the next
//! fills (`quant::gguf`, `quant::direct_io`). Buffers are recycled, not re-zeroed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quant::gguf::{GgufDataWriter, GgufWriter, PendingFile};
use quant::GgmlType;
use rayon::prelude::*;

use crate::error::{ConvertError, Result};
use crate::hf_config::{ProcessorConfig, VlConfig};
use crate::mapping::{self, MappedTensor, Role};
use crate::metadata::{self, Metadata};
use crate::models::ModelsDb;
use crate::readahead::{ReadAhead, Staged};
use crate::recipe::Recipe;
use crate::safetensors::Checkpoint;
use crate::source::TensorSource;
use crate::tokenizer;

/// Elements per chunk (8 MiB of bf16 input): what bounds memory, with `readahead::READ_AHEAD`
/// (per reader) chunks queued and the GGUF writer's buffers. Large because each
/// chunk's input is one read request: on the development VM 8 MiB requests converted q8_0 in
/// 4.7-4.9 s against 7.6-8.0 s with 2 MiB ones (BENCHMARKS.md, "Larger reads in flight").
pub const CHUNK_ELEMS: usize = 1 << 22;
/// f32 elements per parallel task inside a chunk.
const TASK_ELEMS: usize = 64 << 10;

thread_local! {
    /// Each converting thread's f32 rows for the sources [`mapping::convert_rows`] cannot
    /// convert directly, reused from task to task (never shrunk; at most `TASK_ELEMS` or one
    /// row).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// What `pocketvl convert` was asked to do.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The Hugging Face checkpoint directory.
    pub input: PathBuf,
    /// The language-model GGUF; the mmproj goes beside it as `mmproj-<name>`.
    pub output: PathBuf,
    /// Recipe name (`--quant`); `None` = the variant's default.
    pub quant: Option<String>,
    /// Per-role type overrides (`--type-*`).
    pub overrides: Vec<(Role, GgmlType)>,
    /// Replace existing outputs.
    pub force: bool,
    /// Worker threads (`None` = rayon's default).
    pub threads: Option<usize>,
    /// Draw a progress bar on stderr (it hides itself when stderr is not a terminal).
    pub progress: bool,
}

/// One output tensor with its final type.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub mapped: MappedTensor,
    pub ty: GgmlType,
    /// The type the recipe wanted, when the row length forced a fallback.
    pub fell_back_from: Option<GgmlType>,
    /// Data bytes in the file.
    pub bytes: u64,
}

/// One output file.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub path: PathBuf,
    pub metadata: Metadata,
    pub tensors: Vec<PlannedTensor>,
}

impl FilePlan {
    /// Total tensor data bytes.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }
}

/// Everything decided before writing.
#[derive(Debug, Clone)]
pub struct Plan {
    pub language: FilePlan,
    /// `None` for a text-only checkpoint (`mapping::is_text_only`).
    pub mmproj: Option<FilePlan>,
    /// The matched models.toml variant.
    pub variant: Option<String>,
    pub recipe: String,
    /// Warnings to show the user (unknown variant, ...).
    pub warnings: Vec<String>,
    /// Bytes of checkpoint tensor data.
    pub input_bytes: u64,
}

impl Plan {
    /// Every tensor that fell back: (name, wanted, used).
    pub fn fallbacks(&self) -> Vec<(String, GgmlType, GgmlType)> {
        self.language
            .tensors
            .iter()
            .chain(self.mmproj.iter().flat_map(|m| &m.tensors))
            .filter_map(|t| t.fell_back_from.map(|w| (t.mapped.name.clone(), w, t.ty)))
            .collect()
    }
}

/// Result of a finished conversion.
#[derive(Debug, Clone)]
pub struct Summary {
    pub language_path: PathBuf,
    /// `None` when the checkpoint was text-only.
    pub mmproj_path: Option<PathBuf>,
    pub language_bytes: u64,
    /// 0 when the checkpoint was text-only.
    pub mmproj_bytes: u64,
    pub input_bytes: u64,
    pub elapsed: Duration,
    pub fallbacks: Vec<(String, GgmlType, GgmlType)>,
}

impl Summary {
    /// Input checkpoint MB/s (10^6 bytes).
    pub fn input_mb_per_s(&self) -> f64 {
        self.input_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `mmproj-<file name>` beside the language-model output.
pub fn mmproj_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    output.with_file_name(format!("mmproj-{name}"))
}

/// `cold-<file name>` beside the language-model output: the low-bit copy of the routed experts
/// (`pocketvl convert --cold-experts TYPE`), the fallback for expert-store misses under memory
/// pressure (issue 9 item 5; read by `--cold-experts lowbit|only`, `src/experts/cold.rs`).
pub fn cold_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    output.with_file_name(format!("cold-{name}"))
}

/// Plans the cold-expert sidecar of `plan`: every routed-expert tensor of the language file
/// (`blk.N.ffn_{gate,up,down}_exps.weight`) again, same name and shape, in `ty`; a tensor whose
/// rows do not divide by `ty`'s block falls back as the recipes do ([`crate::recipe::fallback`]).
/// Its metadata names the architecture, the requested type and the layer count.
pub fn plan_cold(plan: &Plan, ty: GgmlType) -> Result<FilePlan> {
    if !quant::formats::format(ty).is_some_and(|f| f.storable) {
        return Err(ConvertError::Recipe(format!(
            "--cold-experts {}: not a storable type ({})",
            ty.name(),
            quant::formats::storable_names()
        )));
    }
    let mut tensors = Vec::new();
    for t in &plan.language.tensors {
        if t.mapped.role != Role::Experts {
            continue;
        }
        let ne0 = t.mapped.ne.first().copied().unwrap_or(1);
        let mut used = ty;
        while !ne0.is_multiple_of(used.block_size() as u64) {
            used = crate::recipe::fallback(used);
        }
        let bytes = used.tensor_bytes(&t.mapped.ne).ok_or_else(|| {
            ConvertError::Recipe(format!(
                "{}: size of {:?} overflows",
                t.mapped.name, t.mapped.ne
            ))
        })?;
        tensors.push(PlannedTensor {
            mapped: t.mapped.clone(),
            ty: used,
            fell_back_from: (used != ty).then_some(ty),
            bytes,
        });
    }
    if tensors.is_empty() {
        return Err(ConvertError::Recipe(
            "--cold-experts: the model has no routed experts".into(),
        ));
    }
    use quant::gguf::Value;
    use quant::schema::{cold, general, llm_key};
    let arch = plan
        .language
        .metadata
        .iter()
        .find(|(k, _)| k == general::ARCHITECTURE)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ConvertError::Recipe("language metadata lacks its architecture".into()))?;
    let Value::String(arch_name) = &arch else {
        return Err(ConvertError::Recipe("architecture is not a string".into()));
    };
    let blocks = plan
        .language
        .metadata
        .iter()
        .find(|(k, _)| *k == llm_key(arch_name, quant::schema::llm::BLOCK_COUNT))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ConvertError::Recipe("language metadata lacks its block count".into()))?;
    Ok(FilePlan {
        path: cold_path(&plan.language.path),
        metadata: vec![
            (general::ARCHITECTURE.into(), arch),
            (cold::TYPE.into(), Value::U32(ty.id())),
            (cold::BLOCK_COUNT.into(), blocks),
        ],
        tensors,
    })
}

/// Writes the cold-expert sidecar planned by [`plan_cold`] (to a temporary, renamed into place
/// when complete). Returns its path and size.
pub fn execute_cold(
    ck: &dyn TensorSource,
    fp: &FilePlan,
    opts: &ConvertOptions,
) -> Result<(PathBuf, u64)> {
    let bar = ProgressBar::hidden();
    let run = || write_file(ck, fp, opts.force, &bar);
    let pending = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| quant_err("thread pool", e))?
            .install(run)?,
        None => run()?,
    };
    let path = pending.commit().map_err(|e| quant_err("commit", e))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok((path, bytes))
}

/// Reads the checkpoint and decides every tensor's name, shape and type.
pub fn plan(opts: &ConvertOptions) -> Result<(Checkpoint, Plan)> {
    let db = ModelsDb::builtin()?;
    let cfg = VlConfig::load(&opts.input)?;
    let proc = ProcessorConfig::load(&opts.input, &cfg)?;
    let ck = Checkpoint::open(&opts.input)?;
    let plan = plan_configured(opts, &db, &cfg, &proc, &ck)?;
    Ok((ck, plan))
}

/// [`plan`] for tensors taken from `src` (for example generated ones) instead of the
/// checkpoint's shards; the configuration and tokenizer files are still read from `opts.input`.
pub fn plan_source(opts: &ConvertOptions, src: &dyn TensorSource) -> Result<Plan> {
    let db = ModelsDb::builtin()?;
    let cfg = VlConfig::load(&opts.input)?;
    let proc = ProcessorConfig::load(&opts.input, &cfg)?;
    plan_configured(opts, &db, &cfg, &proc, src)
}

fn plan_configured(
    opts: &ConvertOptions,
    db: &ModelsDb,
    cfg: &VlConfig,
    proc: &ProcessorConfig,
    src: &dyn TensorSource,
) -> Result<Plan> {
    let mapping = mapping::map_checkpoint(cfg, src)?;

    let mut warnings = Vec::new();
    let variant = db.match_config(&cfg.language).map(|v| v.name.clone());
    let recipe_name = opts
        .quant
        .clone()
        .unwrap_or_else(|| db.default_quant(&cfg.language).to_string());
    if variant.is_none() {
        // Name the recipe actually used: the default only when --quant was not given.
        let how = if opts.quant.is_some() {
            "with --quant"
        } else {
            "with the default recipe for unknown variants"
        };
        warnings.push(format!(
            "hyper-parameters match no known variant in models.toml (hidden {}, layers {}); \
             converting anyway {how} '{recipe_name}'",
            cfg.language.hidden_size, cfg.language.num_hidden_layers
        ));
    }
    let recipe = Recipe::new(db, &recipe_name, &opts.overrides)?;

    let l = &cfg.language;
    let tok = tokenizer::load(
        &opts.input,
        l.vocab_size,
        l.bos_token_id,
        l.eos_token_id,
        &proc.pad_token,
        &proc.image_token,
    )?;
    warnings.extend(tok.warnings.iter().cloned());
    let name = variant
        .clone()
        .unwrap_or_else(|| "deepseek-vl2-unknown".into());
    let description = format!(
        "converted by pocketvl {} with recipe {recipe_name}",
        env!("CARGO_PKG_VERSION")
    );
    let lm_meta = metadata::language_metadata(
        cfg,
        &tok,
        &name,
        variant.as_deref(),
        recipe.wanted(Role::Experts),
        &description,
    )?;
    let mm_meta = match mapping.mmproj {
        Some(_) => Some(metadata::mmproj_metadata(
            cfg,
            proc,
            tok.image_token_id,
            &name,
            &description,
        )?),
        None => None,
    };

    let typed = |list: Vec<MappedTensor>| -> Result<Vec<PlannedTensor>> {
        list.into_iter()
            .map(|m| {
                let (ty, fell_back_from) = recipe.choose(&m);
                if !quant::block::has_quantizer(ty) {
                    return Err(ConvertError::Recipe(format!(
                        "{}: no quantizer for type {}",
                        m.name,
                        ty.name()
                    )));
                }
                let bytes = ty.tensor_bytes(&m.ne).ok_or_else(|| {
                    ConvertError::Recipe(format!("{}: size of {:?} overflows", m.name, m.ne))
                })?;
                Ok(PlannedTensor {
                    mapped: m,
                    ty,
                    fell_back_from,
                    bytes,
                })
            })
            .collect()
    };
    let plan = Plan {
        language: FilePlan {
            path: opts.output.clone(),
            metadata: lm_meta,
            tensors: typed(mapping.language)?,
        },
        mmproj: match (mapping.mmproj, mm_meta) {
            (Some(tensors), Some(metadata)) => Some(FilePlan {
                path: mmproj_path(&opts.output),
                metadata,
                tensors: typed(tensors)?,
            }),
            _ => None,
        },
        variant,
        recipe: recipe_name,
        warnings,
        input_bytes: src.data_bytes(),
    };
    Ok(plan)
}

fn quant_err(context: &str, e: impl std::fmt::Display) -> ConvertError {
    ConvertError::Quant {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Fails if an output exists and `force` is off (checked before any work).
pub fn check_outputs(output: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    for p in [output.to_path_buf(), mmproj_path(output), cold_path(output)] {
        if p.exists() {
            return Err(ConvertError::OutputExists(p));
        }
    }
    Ok(())
}

/// Writes both files and commits them together. For a text-only plan only the language model
/// is written, and an `mmproj-<name>` left beside it by an earlier conversion (which `force`
/// allowed to replace) is removed, so that nothing pairs the new model with a stale tower.
pub fn execute(ck: &dyn TensorSource, plan: &Plan, opts: &ConvertOptions) -> Result<Summary> {
    check_outputs(&plan.language.path, opts.force)?;
    let start = Instant::now();
    let total = plan.language.data_bytes() + plan.mmproj.as_ref().map_or(0, FilePlan::data_bytes);
    let bar = if opts.progress {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let run = || -> Result<(PendingFile, Option<PendingFile>)> {
        let lm = write_file(ck, &plan.language, opts.force, &bar)?;
        let mm = match &plan.mmproj {
            Some(fp) => Some(write_file(ck, fp, opts.force, &bar)?),
            None => None,
        };
        Ok((lm, mm))
    };
    let (lm, mm) = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| quant_err("thread pool", e))?
            .install(run)?,
        None => run()?,
    };
    bar.finish_and_clear();
    if mm.is_none() {
        // A text-only conversion must not leave an older mmproj beside the new language file.
        let stale = mmproj_path(&plan.language.path);
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| ConvertError::io(&stale, e))?;
        }
    }
    // A cold-expert sidecar belongs to the language file it was converted with: an older one
    // is removed (`execute_cold` writes the new one after this).
    let stale = cold_path(&plan.language.path);
    if stale.exists() {
        std::fs::remove_file(&stale).map_err(|e| ConvertError::io(&stale, e))?;
    }
    // The mmproj goes into place first and the file the user named last, so that OUT.gguf
    // exists only once its pair is complete, even if the process is killed between the two
    // renames (a kill can still leave a complete mmproj-OUT.gguf without OUT.gguf).
    let mm_path = match mm.map(PendingFile::commit) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return Err(quant_err("commit", e)),
        None => None,
    };
    let language_path = match lm.commit() {
        Ok(p) => p,
        Err(e) => {
            // Keep the pair consistent: without its language file the mmproj is removed.
            if let Some(p) = &mm_path {
                let _ = std::fs::remove_file(p);
            }
            return Err(quant_err("commit", e));
        }
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(Summary {
        language_bytes: size(&language_path),
        mmproj_bytes: mm_path.as_deref().map_or(0, size),
        language_path,
        mmproj_path: mm_path,
        input_bytes: plan.input_bytes,
        elapsed: start.elapsed(),
        fallbacks: plan.fallbacks(),
    })
}

/// The chunks of output rows `t` is produced in: (first row, rows), in order. A chunk is a
/// whole number of parallel tasks ([`rows_per_task`]) of about [`CHUNK_ELEMS`] elements.
fn chunks(t: &PlannedTensor) -> impl Iterator<Item = (usize, usize)> {
    let ne0 = t.mapped.ne.first().copied().unwrap_or(1) as usize;
    let numel: u64 = t.mapped.ne.iter().product();
    let n_rows = if ne0 == 0 {
        0
    } else {
        (numel / ne0 as u64) as usize
    };
    let per_task = rows_per_task(ne0);
    let per_chunk = ((CHUNK_ELEMS / ne0.max(1)).max(1) / per_task).max(1) * per_task;
    (0..n_rows)
        .step_by(per_chunk)
        .map(move |r| (r, per_chunk.min(n_rows - r)))
}

/// Rows of `ne0` elements per parallel task: about [`TASK_ELEMS`] elements, at least a row.
fn rows_per_task(ne0: usize) -> usize {
    (TASK_ELEMS / ne0.max(1)).max(1)
}

fn write_file(
    ck: &dyn TensorSource,
    fp: &FilePlan,
    force: bool,
    bar: &ProgressBar,
) -> Result<PendingFile> {
    let ctx = fp.path.display().to_string();
    let mut w = GgufWriter::new();
    for (k, v) in &fp.metadata {
        w.add_kv(k, v.clone()).map_err(|e| quant_err(&ctx, e))?;
    }
    for t in &fp.tensors {
        w.add_tensor(&t.mapped.name, t.ty, &t.mapped.ne)
            .map_err(|e| quant_err(&ctx, e))?;
    }
    let mut dw = w.create(&fp.path, force).map_err(|e| quant_err(&ctx, e))?;
    std::thread::scope(|s| {
        let mut reads = ReadAhead::start(s, ck, || {
            fp.tensors
                .iter()
                .flat_map(|t| chunks(t).map(move |(row0, rows)| (&t.mapped, row0, rows)))
        });
        let produced = fp.tensors.iter().try_for_each(|t| {
            bar.set_message(t.mapped.name.clone());
            write_tensor(ck, t, &mut dw, &mut reads, bar)
        });
        // Stops the readers if the conversion failed early.
        drop(reads);
        produced?;
        dw.finish().map_err(|e| quant_err(&ctx, e))
    })
}

/// Streams one tensor: chunks of rows, each chunk's input taken from the read-ahead (in the
/// order of [`chunks`], then given back) and its rows converted in parallel straight into the
/// GGUF writer's buffer (`GgufDataWriter::write_rows`, which writes full buffers on its own
/// thread).
fn write_tensor(
    ck: &dyn TensorSource,
    t: &PlannedTensor,
    dw: &mut GgufDataWriter,
    reads: &mut ReadAhead,
    bar: &ProgressBar,
) -> Result<()> {
    let m = &t.mapped;
    let ne0 = m.ne.first().copied().unwrap_or(1) as usize;
    let row_bytes =
        t.ty.row_bytes(ne0 as u64)
            .ok_or_else(|| quant_err(&m.name, "row size overflows"))? as usize;
    let rows_per_task = rows_per_task(ne0);
    for (row0, nr) in chunks(t) {
        let input = reads.next_input()?;
        let src = Staged {
            src: ck,
            input: &input,
        };
        dw.write_rows(row_bytes, nr, |first, out: &mut [u8]| -> Result<()> {
            out.par_chunks_mut(rows_per_task * row_bytes)
                .enumerate()
                .try_for_each(|(k, dst)| {
                    convert_task(&src, t, row0 + first + k * rows_per_task, row_bytes, dst)
                })
        })?;
        reads.give_back(input);
        bar.inc((nr * row_bytes) as u64);
    }
    Ok(())
}

/// Output rows `r ..` of `t` into `dst` (whole rows of `row_bytes`): straight from the stored
/// values where the source allows, else through f32 rows.
fn convert_task(
    src: &dyn TensorSource,
    t: &PlannedTensor,
    r: usize,
    row_bytes: usize,
    dst: &mut [u8],
) -> Result<()> {
    let m = &t.mapped;
    if mapping::convert_rows(src, m, r, t.ty, dst)? {
        return Ok(());
    }
    let ne0 = m.ne.first().copied().unwrap_or(1) as usize;
    let rows = dst.len() / row_bytes;
    SCRATCH.with(|scratch| -> Result<()> {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < rows * ne0 {
            scratch.resize(rows * ne0, 0.0);
        }
        let f = &mut scratch[..rows * ne0];
        mapping::fill_rows(src, m, r, f)?;
        for (src, d) in f.chunks_exact(ne0).zip(dst.chunks_exact_mut(row_bytes)) {
            quant::block::quantize_row(t.ty, src, d).map_err(|e| quant_err(&m.name, e))?;
        }
        Ok(())
    })
}

/// Plans and converts in one call.
pub fn convert(opts: &ConvertOptions) -> Result<(Plan, Summary)> {
    check_outputs(&opts.output, opts.force)?;
    let (ck, plan) = plan(opts)?;
    let summary = execute(&ck, &plan, opts)?;
    Ok((plan, summary))
}
