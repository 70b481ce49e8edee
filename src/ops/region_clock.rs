//! Opt-in clock of the decode's parallel regions ([`for_each_chunk`]): where the threads'
//! time goes while a stretch of work runs. `pocketvl bench model --regions` turns it on
//! around its decode measurement.
//!
//! Why: a decoded token is ~100 regions of a few to a few hundred µs, and on a many-core
//! machine both engines decode far below the memory's rate (BENCHMARKS.md: 16 threads of
//! the lent Xeon read a third of its probe) where no profiler runs. This splits the threads'
//! time (the stretch's wall time x the pool's threads) into four parts that add up to it:
//! - `busy`: inside a task;
//! - `absent`: a helper thread not yet in a region it was asked into (waking, or still
//!   busy elsewhere), or never in it before its end;
//! - `waiting`: in a region with no task left to claim (load imbalance, the claim lock,
//!   the wait for the last task);
//! - `outside`: between regions, where one thread runs the serial work (norms, routing,
//!   residuals) and the others idle.
//!
//! Each region counts under its *site*, the source line that opened it
//! ([`for_each_chunk`] is `#[track_caller]`), so the parts can be read per kind of region.
//!
//! Off, a region pays one relaxed load. On, it pays two clock reads per task and one
//! locked update of its site's totals per region (well under a µs); the totals are
//! process-wide, so the clock is for one measurement at a time (the benchmark's own
//! process).
//!
//! [`for_each_chunk`]: super::spin_region::for_each_chunk

use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ON: AtomicBool = AtomicBool::new(false);
/// The totals of each region site (the code that opened the region), in first-seen order.
static SITES: Mutex<Vec<(&'static Location<'static>, RegionTotals)>> = Mutex::new(Vec::new());

/// What the regions of one recording added up to (nanoseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionTotals {
    pub regions: u64,
    /// The regions' wall time, entry to exit on the calling thread.
    pub wall_ns: u64,
    /// Each region's wall time times the threads of its pool.
    pub thread_ns: u64,
    /// Time inside tasks, all threads.
    pub busy_ns: u64,
    /// Helper time before a helper entered its region (all of it for one that never did).
    pub absent_ns: u64,
}

impl RegionTotals {
    /// The regions' thread time spent neither in a task nor absent.
    pub fn waiting_ns(&self) -> u64 {
        self.thread_ns
            .saturating_sub(self.busy_ns)
            .saturating_sub(self.absent_ns)
    }

    pub fn add(&mut self, o: &RegionTotals) {
        self.regions += o.regions;
        self.wall_ns += o.wall_ns;
        self.thread_ns += o.thread_ns;
        self.busy_ns += o.busy_ns;
        self.absent_ns += o.absent_ns;
    }
}

/// One region site's totals: `site` is the source location that opened its regions
/// (`file:line`; a product through `ops::matmul` is one site whatever its matrix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTotals {
    pub site: String,
    pub totals: RegionTotals,
}

/// The clock, running while this lives: [`Recording::stop`] returns what it counted.
pub struct Recording(());

fn sites() -> std::sync::MutexGuard<'static, Vec<(&'static Location<'static>, RegionTotals)>> {
    // Nothing panics while the lock is held; a poisoned table is still whole.
    SITES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts counting from zero. Only one recording at a time is meaningful (the totals are
/// process-wide).
pub fn record() -> Recording {
    sites().clear();
    ON.store(true, Ordering::Release);
    Recording(())
}

impl Recording {
    /// Stops the clock and returns the totals of the regions that ended while it ran, per
    /// site in the order the sites first ran.
    pub fn stop(self) -> Vec<SiteTotals> {
        ON.store(false, Ordering::Release);
        sites()
            .iter()
            .map(|(l, t)| SiteTotals {
                site: format!("{}:{}", l.file(), l.line()),
                totals: *t,
            })
            .collect()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        ON.store(false, Ordering::Release);
    }
}

/// One region's timer, made by the region's calling thread as it enters.
pub(crate) struct RegionTimer {
    site: &'static Location<'static>,
    start: Instant,
    threads: usize,
    /// Helpers that entered the region while it still had a task to claim.
    arrived: AtomicUsize,
    busy_ns: AtomicU64,
    absent_ns: AtomicU64,
}

impl RegionTimer {
    /// A timer for a region opened at `site` on a pool of `threads`, if the clock is on.
    pub(crate) fn start(site: &'static Location<'static>, threads: usize) -> Option<RegionTimer> {
        ON.load(Ordering::Relaxed).then(|| RegionTimer {
            site,
            start: Instant::now(),
            threads,
            arrived: AtomicUsize::new(0),
            busy_ns: AtomicU64::new(0),
            absent_ns: AtomicU64::new(0),
        })
    }

    /// A helper entered the region at `at` and claimed its first task.
    pub(crate) fn arrived(&self, at: Instant) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        self.absent_ns
            .fetch_add(nanos(at - self.start), Ordering::Relaxed);
    }

    /// A task that started at `t0` has ended.
    pub(crate) fn task_done(&self, t0: Instant) {
        self.busy_ns
            .fetch_add(nanos(t0.elapsed()), Ordering::Relaxed);
    }

    /// The region ended (every task done, the helpers out or never in).
    pub(crate) fn finish(self) {
        let wall = nanos(self.start.elapsed());
        let helpers = self.threads.saturating_sub(1) as u64;
        let never = helpers.saturating_sub(self.arrived.load(Ordering::Relaxed) as u64);
        let t = RegionTotals {
            regions: 1,
            wall_ns: wall,
            thread_ns: wall * self.threads as u64,
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            absent_ns: self.absent_ns.load(Ordering::Relaxed) + never * wall,
        };
        let mut sites = sites();
        match sites.iter_mut().find(|(l, _)| *l == self.site) {
            Some((_, s)) => s.add(&t),
            None => sites.push((self.site, t)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
