//! `pocketvl inspect FILE.gguf [--json]`: metadata and tensor table.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use quant::gguf::{GgufFile, Value};
use serde_json::{json, Value as Json};

/// Arrays longer than this are abbreviated in text mode.
const TEXT_ARRAY_ITEMS: usize = 8;
/// Strings longer than this are abbreviated in text mode.
const TEXT_STRING_CHARS: usize = 120;

/// Arguments of `pocketvl inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print one JSON object {"metadata": {...}, "tensors": [...]} with arrays in full.
    #[arg(long)]
    pub json: bool,
}

/// A metadata value as JSON (arrays in full).
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(_, items) => Json::Array(items.iter().map(value_to_json).collect()),
    }
}

fn abbreviate(s: &str) -> String {
    if s.chars().count() <= TEXT_STRING_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(TEXT_STRING_CHARS).collect();
        format!("{head:?}... ({} chars)", s.chars().count())
    }
}

fn value_to_text(v: &Value) -> String {
    match v {
        Value::String(s) => abbreviate(s),
        Value::Array(ty, items) => {
            let shown: Vec<String> = items
                .iter()
                .take(TEXT_ARRAY_ITEMS)
                .map(value_to_text)
                .collect();
            if items.len() > TEXT_ARRAY_ITEMS {
                format!("[{}, ...] ({} x {ty})", shown.join(", "), items.len())
            } else {
                format!("[{}]", shown.join(", "))
            }
        }
        other => other.to_string(),
    }
}

/// Runs `pocketvl inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let file =
        GgufFile::open(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    if args.json {
        let metadata: serde_json::Map<String, Json> = file
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect();
        let tensors: Vec<Json> = file
            .tensors()
            .iter()
            .map(
                |t| json!({"name": t.name, "type": t.ty.name(), "shape": t.ne, "bytes": t.n_bytes}),
            )
            .collect();
        println!("{}", json!({"metadata": metadata, "tensors": tensors}));
        return Ok(());
    }
    println!(
        "{}: GGUF v{}, {} metadata keys, {} tensors",
        args.file.display(),
        file.version(),
        file.metadata().len(),
        file.tensors().len()
    );
    for (k, v) in file.metadata() {
        println!("  {k} = {}", value_to_text(v));
    }
    println!(
        "  {:<40} {:<5} {:<24} {:>12}",
        "tensor", "type", "shape", "bytes"
    );
    let mut total = 0u64;
    for t in file.tensors() {
        total += t.n_bytes;
        println!(
            "  {:<40} {:<5} {:<24} {:>12}",
            t.name,
            t.ty.name(),
            format!("{:?}", t.ne),
            t.n_bytes
        );
    }
    println!(
        "  total tensor data: {total} bytes ({:.2} MB)",
        total as f64 / 1e6
    );
    Ok(())
}
