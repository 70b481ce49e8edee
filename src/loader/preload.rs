//! Reading a mapped model file into memory in the background, right after it is loaded,
//! so that the first forward passes do not wait on the disk.
//!
//! Why: weights are a file mapping, read on first touch. Cold, the first prompt's
//! prefill (or the first image's tower) faults the file in page by page in the order the
//! forward pass touches it, and computes nothing while each read is in flight: on the
//! 2-core Zen 4 VM the first answer to a 2x2-image question on Tiny Q4_0 from cold files
//! took 23.2-24.1 s where a warm one takes ~19.5, and 40.6 s with reads limited to 100 MB/s
//! (`benches/cold_start.sh`, BENCHMARKS.md, twenty-eighth session). A reader thread
//! walks the file in order instead, 2 MiB at a time, while the tokenizer loads and the
//! tower runs; llama.cpp asks the kernel for the same with `MADV_WILLNEED` over its whole
//! mapping. Here it is `MADV_POPULATE_READ`, the same page faults the forward pass would
//! take (their readahead, their 2 MiB folios under `advise_huge_pages`), taken earlier
//! and on another thread, so the pages are also mapped when the compute arrives.
//!
//! A read faulted in by the compute waits behind the reads already queued on the disk, so
//! the loaders start their preload only after their own reads (each norm and bias
//! widened to f32 faults in the 2 MiB around it), and the language model's preload holds
//! back while the mmproj's runs ([`Preload::hold`]): an image's tower needs that file first.
//!
//! Only when the bytes fit in the memory the process may use (`MemAvailable`, and the
//! memory cgroup's limit where there is one): a file larger than that would push its
//! own first pages out before they are used. Models run under `--mem-budget` page their
//! experts themselves and never preload.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quant::gguf::TensorInfo;

use super::ModelFile;

/// Bytes populated per call: one 2 MiB folio, so that a read the compute faults in waits
/// behind at most this much of the preload's on the disk (and a dropped model stops its
/// reader within one); the calls cost nothing beside the reads.
const CHUNK: usize = 2 << 20;
/// How often a paused preload looks whether it may go on: short beside the files' reads.
const PAUSE_POLL: Duration = Duration::from_millis(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<PreloadReport>>>,
    report: Mutex<Option<PreloadReport>>,
}

/// What the reader thread and its owner share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Holds on this preload ([`Preload::hold`]): it reads while there are none.
    holds: AtomicUsize,
    /// Holds on other preloads, dropped when this one's thread ends (`None` once it has;
    /// [`Preload::release_when_done`]).
    releases: Mutex<Option<Vec<PreloadHold>>>,
}

/// A pause of a preload, from [`Preload::hold`] until it is dropped.
#[derive(Debug)]
pub struct PreloadHold(Arc<Shared>);

impl Drop for PreloadHold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
    }
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
        let shared = Arc::new(Shared {
            releases: Mutex::new(Some(Vec::new())),
            ..Shared::default()
        });
        let thread = {
            let (file, shared) = (file.clone(), shared.clone());
            std::thread::Builder::new()
                .name("pocketvl-preload".into())
                .spawn(move || {
                    let report = read_in(&file, ranges, &shared);
                    // Whoever waited for this file goes on.
                    drop(lock(&shared.releases).take());
                    report
                })
                .ok()?
        };
        Some(Preload {
            shared,
            thread: Mutex::new(Some(thread)),
            report: Mutex::new(None),
        })
    }

    /// Pauses this preload (after the chunk in flight) until the returned hold is dropped,
    /// so that reads needed sooner get the disk alone: with the language model's file read
    /// behind it, loading the mmproj (each of its norms and biases faults in the 2 MiB
    /// around it) and the tower's first layers waited on both files (BENCHMARKS.md,
    /// twenty-eighth session). [`Preload::wait`] on a held preload waits for the hold.
    pub fn hold(&self) -> PreloadHold {
        self.shared.holds.fetch_add(1, Ordering::AcqRel);
        PreloadHold(self.shared.clone())
    }

    /// Drops `hold` (another preload's pause) when this preload has read its file, or now
    /// if it has already ended.
    pub fn release_when_done(&self, hold: PreloadHold) {
        if let Some(r) = lock(&self.shared.releases).as_mut() {
            r.push(hold);
        }
    }

    /// Waits until the reader is done (the whole file is in, or it stopped) and says what
    /// it did; later calls return the same report.
    pub fn wait(&self) -> PreloadReport {
        let mut report = lock(&self.report);
        if let Some(r) = *report {
            return r;
        }
        let handle = lock(&self.thread).take();
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
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wait();
    }
}

/// The reader thread: `ranges` of `file` a chunk at a time (chunks aligned to `CHUNK` in
/// the mapping, so that each call brings in whole folios of its own). Its CPU time is the
/// kernel's page-cache work; it waits on the disk the rest of the time.
fn read_in(file: &ModelFile, ranges: Vec<Range<usize>>, shared: &Shared) -> PreloadReport {
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut complete = true;
    let stopped = || shared.stop.load(Ordering::Relaxed);
    'ranges: for r in ranges {
        let mut at = r.start;
        while at < r.end {
            while shared.holds.load(Ordering::Acquire) > 0 && !stopped() {
                std::thread::sleep(PAUSE_POLL);
            }
            let end = r.end.min((at / CHUNK + 1) * CHUNK);
            if stopped() || file.gguf().populate(at..end).is_err() {
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
