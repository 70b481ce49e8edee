//! Peak memory of the current process, to show that conversion runs in bounded memory.
//!
//! Three views, because an mmap-based converter's resident set mixes two kinds of pages:
//! * `getrusage(RUSAGE_SELF).ru_maxrss`: the process-lifetime peak the brief asks for;
//! * `VmHWM` from /proc/self/status, reset through /proc/self/clear_refs before a phase, so the
//!   peak belongs to that phase alone;
//! * the peak of `RssAnon` (heap and stacks only) sampled by a background thread: file-backed
//!   pages of a mapped checkpoint count in RSS but are page cache the kernel can drop at will,
//!   while anonymous memory is what a converter really holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `ru_maxrss` in bytes (Linux reports KiB); `None` if getrusage fails.
pub fn max_rss_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `ru` is a valid, writable rusage; getrusage only writes it.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: getrusage returned 0, so it initialised the struct (zeroed before anyway).
        let ru = unsafe { ru.assume_init() };
        let kib = u64::try_from(ru.ru_maxrss).ok()?;
        if cfg!(target_os = "macos") {
            Some(kib) // macOS reports bytes.
        } else {
            Some(kib * 1024)
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// A `kB` field of /proc/self/status, in bytes.
pub fn status_field(name: &str) -> Option<u64> {
    kb_field("/proc/self/status", name)
}

/// A `kB` field of /proc/self/smaps_rollup (the process's mappings summed), in bytes.
pub fn smaps_field(name: &str) -> Option<u64> {
    kb_field("/proc/self/smaps_rollup", name)
}

fn kb_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0). Returns whether it worked.
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples `RssAnon` every few milliseconds until stopped, keeping the maximum.
pub struct AnonSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl AnonSampler {
    /// Starts sampling (a no-op sampler where /proc is unavailable).
    pub fn start(period: Duration) -> AnonSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(status_field("RssAnon").unwrap_or(0)));
        let handle = status_field("RssAnon").map(|_| {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(v) = status_field("RssAnon") {
                        peak.fetch_max(v, Ordering::Relaxed);
                    }
                    std::thread::sleep(period);
                }
            })
        });
        AnonSampler { stop, peak, handle }
    }

    /// Stops sampling and returns the peak `RssAnon` in bytes (`None` if never measured).
    pub fn finish(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take()?;
        let _ = h.join();
        if let Some(v) = status_field("RssAnon") {
            self.peak.fetch_max(v, Ordering::Relaxed);
        }
        Some(self.peak.load(Ordering::Relaxed))
    }
}

impl Drop for AnonSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn sampler_sees_a_large_allocation() {
        let s = AnonSampler::start(Duration::from_millis(1));
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        // Without it an optimised build drops the unread buffer altogether.
        std::hint::black_box(&mut v);
        // finish() takes a last sample itself, so no waiting on the sampler thread is needed.
        let peak = s.finish().unwrap();
        drop(v);
        // The baseline is read right after the buffer is gone (microseconds after the last
        // sample), not before it was filled: the other tests of this binary run in parallel and
        // free their own memory meanwhile, which made a baseline from before fill time as much
        // as 14 MB too high.
        let after = status_field("RssAnon").unwrap();
        assert!(peak >= after + (60 << 20), "peak {peak} after {after}");
        assert!(max_rss_bytes().unwrap() >= peak);
    }

    /// The rollup's fields are read as the status file's are: a resident set, and the
    /// file-THP field `bench model` reports.
    #[test]
    #[cfg(target_os = "linux")]
    fn smaps_rollup_fields_read() {
        let rss = smaps_field("Rss").unwrap();
        assert!(rss > 0);
        // Kernels without file THP accounting have no such line.
        if let Some(huge) = smaps_field("FilePmdMapped") {
            assert!(huge <= rss, "{huge} > {rss}");
        }
        assert_eq!(smaps_field("NoSuchField"), None);
    }
}
