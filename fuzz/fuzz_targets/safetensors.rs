//! The safetensors reader on arbitrary bytes: a shard's header (JSON, dtypes, shapes, offsets
//! against the file size) and a sharded checkpoint's index (`weight_map` against the shards).
//! The first byte picks which; the rest is the file. Any input gives `Ok` or `Err`, and an
//! accepted tensor reads back with exactly its element count.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use convert::safetensors::{Checkpoint, INDEX_FILE, SINGLE_FILE};
use libfuzzer_sys::fuzz_target;

/// A valid shard the fuzzed index can point at: `a.safetensors` with f32 `x` [2] and bf16
/// `y` [1].
fn shard_bytes() -> Vec<u8> {
    let header = br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&1.5f32.to_le_bytes());
    out.extend_from_slice(&(-2.0f32).to_le_bytes());
    out.extend_from_slice(&[0x80, 0x3f]);
    out
}

/// This process's scratch directory (a checkpoint is a directory of files).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("pocketvl-fuzz-safetensors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(dir.join("a.safetensors"), shard_bytes()).expect("shard");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let dir = scratch();
    let (write, remove) = if mode % 2 == 0 {
        (SINGLE_FILE, INDEX_FILE)
    } else {
        (INDEX_FILE, SINGLE_FILE)
    };
    let _ = std::fs::remove_file(dir.join(remove));
    std::fs::write(dir.join(write), body).expect("write input");
    let Ok(ck) = Checkpoint::open(dir) else {
        return;
    };
    let names: Vec<String> = ck.names().map(str::to_string).collect();
    for name in names {
        let Ok(t) = ck.tensor(&name) else {
            continue;
        };
        if let Ok(v) = t.to_f32() {
            assert_eq!(v.len(), t.numel());
        }
    }
});
