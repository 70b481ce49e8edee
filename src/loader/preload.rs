//! Reading a mapped model file into memory in the background, from the moment it is
//! opened, so that the first forward passes do not wait on the disk.
//!
//! Why: weights are a file mapping, read on first touch. Cold, the first prompt's
//! prefill (or the first image's tower) faults the file in page by page in the order the
//! forward pass touches it, and computes nothing while each read is in flight: on the
//! 2-core Zen 4 VM a cold Tiny Q4_0 prefill of a 631-token image prompt took 2.8-3.3 s
//! where a warm one takes 1.5 s (BENCHMARKS.md). A reader thread started at load walks
//! the file in order instead, a chunk at a time, while the tokenizer loads and the tower
//! runs; llama.cpp asks the kernel for the same with `MADV_WILLNEED` over its whole
//! mapping. Here it is `MADV_POPULATE_READ`, the same page faults the forward pass would
//! take (their readahead, their 2 MiB folios under `advise_huge_pages`), taken earlier
//! and on another thread, so the pages are also mapped when the compute arrives.
//!
//! Only when the bytes fit in the memory the process may use (`MemAvailable`, and the
//! memory cgroup's limit where there is one): a file larger than that would push its
//! own first pages out before they are used. Models run under `--mem-budget` page their
//! experts themselves and never preload.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quant::gguf::TensorInfo;

use super::ModelFile;

/// Bytes populated per call: small enough that a dropped model stops its reader within
/// one chunk, large enough that the calls cost nothing beside the reads.
const CHUNK: usize = 16 << 20;

/// What a finished (or stopped) preload did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreloadReport {
    /// Bytes brought in (and mapped).
    pub bytes: u64,
    /// Wall time of the reader thread.
    pub elapsed: Duration,
    /// False when it stopped early: the model was dropped, or the kernel refused the
    /// advice (before Linux 5.14); the rest is then read on first touch as before.
    pub complete: bool,
}

/// A file being read in by a background thread; dropping it stops the thread (within one
/// chunk) and waits for it.
#[derive(Debug)]
pub struct Preload {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<PreloadReport>>>,
    report: Mutex<Option<PreloadReport>>,
}

impl Preload {
    /// Starts reading `file` in file order, all of it but the data of `except` (tensors
    /// read a few rows at a time, such as the token embedding). `None` when the bytes do
    /// not fit in the memory this process may use, or outside Linux.
    pub fn start(file: &ModelFile, except: &[&TensorInfo]) -> Option<Preload> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let ranges = file.gguf().ranges_except(except);
        let bytes: u64 = ranges.iter().map(|r| r.len() as u64).sum();
        if bytes == 0 || bytes > available_memory()? {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (file, stop) = (file.clone(), stop.clone());
            std::thread::Builder::new()
                .name("pocketvl-preload".into())
                .spawn(move || read_in(&file, ranges, &stop))
                .ok()?
        };
        Some(Preload {
            stop,
            thread: Mutex::new(Some(thread)),
            report: Mutex::new(None),
        })
    }

    /// Waits until the reader is done (the whole file is in, or it stopped) and says what
    /// it did; later calls return the same report.
    pub fn wait(&self) -> PreloadReport {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = *report {
            return r;
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let r = handle.and_then(|h| h.join().ok()).unwrap_or(PreloadReport {
            bytes: 0,
            elapsed: Duration::ZERO,
            complete: false,
        });
        *report = Some(r);
        r
    }
}

impl Drop for Preload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wait();
    }
}

/// The reader thread: `ranges` of `file` a chunk at a time, at a lower scheduling priority
/// than the compute threads (its own CPU time is the kernel's page-cache work).
fn read_in(file: &ModelFile, ranges: Vec<Range<usize>>, stop: &AtomicBool) -> PreloadReport {
    lower_priority();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut complete = true;
    'ranges: for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let end = r.end.min(at + CHUNK);
            if stop.load(Ordering::Relaxed) || file.gguf().populate(at..end).is_err() {
                complete = false;
                break 'ranges;
            }
            bytes += (end - at) as u64;
            at = end;
        }
    }
    PreloadReport {
        bytes,
        elapsed: t0.elapsed(),
        complete,
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: `gettid` and `setpriority` take no pointers; on Linux a thread id names this
    // thread alone, so only the reader's nice value changes. Failure leaves it as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Bytes this process may still fill: `MemAvailable` (free memory plus what the kernel can
/// reclaim), capped by the memory cgroup's limit less its usage (cgroup v2, or v1's memory
/// controller). `None` where `/proc/meminfo` cannot be read.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    let mut available = kib.saturating_mul(1024);
    if let Some(room) = cgroup_room() {
        available = available.min(room);
    }
    Some(available)
}

/// The memory cgroup's limit less its usage, where the process's cgroup has a limit.
fn cgroup_room() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: String| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (limit, usage) = if id == "0" && controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                read(format!("{dir}/memory.max")),
                read(format!("{dir}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                read(format!("{dir}/memory.limit_in_bytes")),
                read(format!("{dir}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        // "max" (no limit) does not parse; v1's "no limit" is a huge number, harmless.
        if let (Some(limit), Some(usage)) = (limit, usage) {
            return Some(limit.saturating_sub(usage));
        }
    }
    None
}
