//! `pocketvl devices`: the ggml devices this build can offload to, with their `--gpu`
//! index and name.

use anyhow::Result;

use crate::backend;

/// List the devices `--gpu` can name.
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DevicesArgs) -> Result<()> {
    let devices = backend::devices()?;
    if args.json {
        let list: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "index": d.index,
                    "name": d.name,
                    "description": d.description,
                    "type": d.kind.to_string(),
                    "memory_free": d.memory_free,
                    "memory_total": d.memory_total,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!(
        "backends in this build: {}",
        backend::compiled_backends().join(", ")
    );
    println!(
        "{:>5}  {:<12} {:<6} {:>10} {:>10}  description",
        "index", "name", "type", "free MiB", "total MiB"
    );
    for d in &devices {
        println!(
            "{:>5}  {:<12} {:<6} {:>10} {:>10}  {}",
            d.index,
            d.name,
            d.kind,
            d.memory_free >> 20,
            d.memory_total >> 20,
            d.description
        );
    }
    Ok(())
}
