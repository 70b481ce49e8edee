//! `pocketvl bench convert`: conversion throughput against the disk's sequential read speed,
//! both measured in the same run on the same checkpoint.
//!
//! A converter reads every input byte once, so the read speed of the shard files is its
//! roofline: `convert MB/s ÷ read MB/s` near 1 means conversion is I/O-bound, well below 1
//! means compute (quantization) or the write path dominates. The page cache is dropped before
//! the cold read and again before conversion, so the converter starts as cold as a fresh
//! download; the warm read shows how much faster the cache is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::convert::write::{convert as run_convert, ConvertOptions};
use serde::Serialize;

use super::readspeed::{self, ReadSpeed};
use super::rss::{self, AnonSampler};
use super::BenchError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ConvertBenchOptions {
    /// Hugging Face checkpoint directory.
    pub checkpoint: PathBuf,
    /// Recipe name passed to the converter (`--quant`).
    pub quant: String,
    /// Where the temporary output goes (default: the system temp directory); it needs room for
    /// the converted files.
    pub tmp_dir: Option<PathBuf>,
    /// Converter worker threads (`None` = all cores).
    pub threads: Option<usize>,
    /// Draw the converter's progress bar.
    pub progress: bool,
}

/// The conversion measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertPass {
    pub quant: String,
    /// Checkpoint tensor bytes the converter read.
    pub input_bytes: u64,
    /// Bytes of the two GGUF files written.
    pub output_bytes: u64,
    pub seconds: f64,
    /// Input MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Resident fraction of the shards when conversion started (0 = cold).
    pub resident_at_start: Option<f64>,
}

/// Peak memory, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// getrusage `ru_maxrss` over the whole run.
    pub max_rss: Option<u64>,
    /// `VmHWM` reset before conversion: the conversion phase's peak RSS, mapped file pages included.
    pub convert_hwm: Option<u64>,
    /// Peak anonymous RSS during conversion (heap: what the converter really holds).
    pub convert_peak_anon: Option<u64>,
}

/// Everything `bench convert` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertBench {
    pub checkpoint: PathBuf,
    pub shard_bytes: u64,
    pub read: ReadSpeed,
    pub convert: ConvertPass,
    /// convert MB/s ÷ cold read MB/s.
    pub ratio_cold: f64,
    /// convert MB/s ÷ warm read MB/s.
    pub ratio_warm: f64,
    pub memory: Memory,
    pub threads: usize,
}

/// The checkpoint's `*.safetensors` files, sorted.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let rd = std::fs::read_dir(dir).map_err(|e| BenchError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in rd {
        let path = entry.map_err(|e| BenchError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(BenchError::NoShards(dir.to_path_buf()));
    }
    Ok(files)
}

/// Runs the read-speed passes, then one conversion into a temporary directory.
pub fn bench_convert(opts: &ConvertBenchOptions) -> Result<ConvertBench, BenchError> {
    let files = shard_files(&opts.checkpoint)?;
    let mut shard_bytes = 0;
    for f in &files {
        shard_bytes += std::fs::metadata(f)
            .map_err(|e| BenchError::io(f, e))?
            .len();
    }
    let read = readspeed::measure(&files)?;

    let tmp_parent = opts.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = quant::temp_file::TempDir::create(&tmp_parent, "pocketvl-bench-")
        .map_err(|e| BenchError::io(&tmp_parent, e))?;
    let output = tmp.path().join("model.gguf");
    let copts = ConvertOptions {
        input: opts.checkpoint.clone(),
        output,
        quant: Some(opts.quant.clone()),
        overrides: Vec::new(),
        force: false,
        threads: opts.threads,
        progress: opts.progress,
    };

    let resident_at_start = readspeed::drop_all(&files)?;
    let hwm_reset = rss::reset_hwm();
    let sampler = AnonSampler::start(Duration::from_millis(20));
    let start = Instant::now();
    let result = run_convert(&copts);
    let seconds = start.elapsed().as_secs_f64();
    let convert_peak_anon = sampler.finish();
    let convert_hwm = if hwm_reset {
        rss::status_field("VmHWM")
    } else {
        None
    };
    let (_plan, summary) = result?;
    let convert = ConvertPass {
        quant: opts.quant.clone(),
        input_bytes: summary.input_bytes,
        output_bytes: summary.language_bytes + summary.mmproj_bytes,
        seconds,
        mb_per_s: summary.input_bytes as f64 / 1e6 / seconds.max(1e-9),
        resident_at_start,
    };
    // Free the disk before returning (the TempDir guard would too; this reports errors).
    tmp.close().map_err(|e| BenchError::io(&tmp_parent, e))?;
    Ok(ConvertBench {
        checkpoint: opts.checkpoint.clone(),
        shard_bytes,
        ratio_cold: convert.mb_per_s / read.cold.mb_per_s.max(1e-9),
        ratio_warm: convert.mb_per_s / read.warm.mb_per_s.max(1e-9),
        read,
        convert,
        memory: Memory {
            max_rss: rss::max_rss_bytes(),
            convert_hwm,
            convert_peak_anon,
        },
        threads: opts.threads.unwrap_or_else(rayon::current_num_threads),
    })
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "n/a".into(),
        |b| format!("{:.0} MiB", b as f64 / 1048576.0),
    )
}

fn pct(f: Option<f64>) -> String {
    f.map_or_else(|| "n/a".into(), |f| format!("{:.1}%", f * 100.0))
}

impl ConvertBench {
    /// The human-readable report.
    pub fn report(&self) -> String {
        let r = &self.read;
        let c = &self.convert;
        format!(
            "checkpoint        {}\n\
             shards            {} files, {:.2} GB\n\
             read cold         {:8.0} MB/s  ({:.1} s; the faster of buffered {:.0} and direct {} MB/s; resident after drop {})\n\
             read warm         {:8.0} MB/s  ({:.1} s)\n\
             convert {:<9} {:8.0} MB/s  ({:.1} s, {:.2} GB in -> {:.2} GB out, {} threads; resident at start {})\n\
             ratio             {:.2} of cold read, {:.2} of warm read\n\
             peak RSS          {} (getrusage, whole run); conversion: {} VmHWM incl. mapped input, {} anonymous\n",
            self.checkpoint.display(),
            r.files,
            self.shard_bytes as f64 / 1e9,
            r.cold.mb_per_s,
            r.cold.seconds,
            r.cold_buffered.mb_per_s,
            r.cold_direct
                .map_or_else(|| "refused".to_string(), |d| format!("{:.0}", d.mb_per_s)),
            pct(r.resident_after_drop),
            r.warm.mb_per_s,
            r.warm.seconds,
            c.quant,
            c.mb_per_s,
            c.seconds,
            c.input_bytes as f64 / 1e9,
            c.output_bytes as f64 / 1e9,
            self.threads,
            pct(c.resident_at_start),
            self.ratio_cold,
            self.ratio_warm,
            mib(self.memory.max_rss),
            mib(self.memory.convert_hwm),
            mib(self.memory.convert_peak_anon),
        )
    }
}
