//! Full-size conversion benchmark (plain `harness = false` binary): conversion throughput of a
//! random-weight checkpoint in the real shapes, as a ratio of the disk's read speed measured in
//! the same run (see BENCHMARKS.md).
//!
//! Until the CLI root dispatches `pocketvl synth` / `pocketvl bench convert`, this is how both
//! run from cargo:
//!
//! ```text
//! POCKETVL_BENCH_DIR=/work/synth-tiny POCKETVL_BENCH_QUANTS=q8_0,f16 cargo bench --bench convert
//! ```
//!
//! `POCKETVL_BENCH_DIR` is synthesized first (variant `POCKETVL_BENCH_VARIANT`, default
//! deepseek-vl2-tiny) when it holds no checkpoint; `POCKETVL_BENCH_TMP` is where the GGUF output
//! goes (default: the checkpoint's parent directory); `POCKETVL_BENCH_JSON=1` prints JSON.

use std::path::PathBuf;

use pocketvl::bench::convert::{bench_convert, ConvertBenchOptions};
use pocketvl::synth::{self, SynthOptions, Variant};

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("POCKETVL_BENCH_DIR").map(PathBuf::from) else {
        println!(
            "skipped: POCKETVL_BENCH_DIR not set (a checkpoint directory, synthesized if empty)"
        );
        return Ok(());
    };
    let quants = std::env::var("POCKETVL_BENCH_QUANTS").unwrap_or_else(|_| "q8_0".into());
    let json = std::env::var_os("POCKETVL_BENCH_JSON").is_some();
    if !dir.join("model.safetensors.index.json").is_file() {
        let name =
            std::env::var("POCKETVL_BENCH_VARIANT").unwrap_or_else(|_| "deepseek-vl2-tiny".into());
        let variant = Variant::from_name(&name).ok_or(synth::SynthError::UnknownVariant(name))?;
        let mut o = SynthOptions::new(variant, &dir);
        o.progress = true;
        synth::synthesize(&o)?;
    }
    let tmp_dir = std::env::var_os("POCKETVL_BENCH_TMP")
        .map(PathBuf::from)
        .or_else(|| dir.parent().map(PathBuf::from));
    for quant in quants.split(',').filter(|q| !q.is_empty()) {
        let r = bench_convert(&ConvertBenchOptions {
            checkpoint: dir.clone(),
            quant: quant.to_string(),
            tmp_dir: tmp_dir.clone(),
            threads: None,
            progress: false,
        })?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{}", r.report());
        }
    }
    Ok(())
}
