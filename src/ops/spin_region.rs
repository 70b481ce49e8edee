//! One parallel region of a decode step: `task(i, chunk_i)` over the chunks of an output
//! slice on the current rayon pool, the chunks claimed in runs of consecutive ones (shorter
//! as the work runs out, [`claim_run`]) by the calling thread and one claim loop per other
//! worker, and every thread spinning, not parking, until the region's last chunk is done.
//!
//! Why: a decoded token is ~100 regions of 50-400 µs. With rayon's fixed splits a thread
//! that is done first waits on a latch, and rayon parks a waiting or idle thread after a few
//! microseconds without work; waking it costs ~10-15 µs on the 2-vCPU VMs (a `futex` wake,
//! then the halted vCPU's own wake-up), often twice per region: the caller parked on its
//! latch, then the helper parked between regions. Here a thread that starts late takes
//! fewer tasks instead of holding up a fixed share; the caller's wait is for the tasks still
//! running elsewhere; and the helpers leave the region when it ends, so the next region,
//! a few microseconds of serial work later, finds them still looking for work. On the
//! 2-vCPU Xeon VM, Tiny decode at 2 threads went from 47.7-50.1 to 55.6-56.3 tok/s (Q4_0;
//! Q8_0 and Q4_K alike) with this and the session's attention loops; on a 2-vCPU Zen 4 VM
//! the two builds stayed within their runs' spread (BENCHMARKS.md, eighth session).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::region_clock::RegionTimer;

/// Spin-loop hints between yields while a thread waits for the region's last tasks: on a
/// machine with more runnable threads than cores, the task waited for may need this core.
const SPINS_PER_YIELD: u32 = 4096;

/// Runs `task(i, c)` for every chunk `c` of `out` (the `i`-th, `chunk` long, the last one
/// possibly shorter), each exactly once, on the current rayon pool; returns when all ran.
/// A panic in a task is re-raised here once the other threads are out of the region.
#[track_caller]
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, task: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let n = out.len().div_ceil(chunk);
    let threads = rayon::current_num_threads();
    let timer = RegionTimer::start(std::panic::Location::caller(), threads);
    // A task, timed when the clock is on.
    let run = |i: usize, c: &mut [T]| match &timer {
        Some(tm) => {
            let t0 = Instant::now();
            task(i, c);
            tm.task_done(t0);
        }
        None => task(i, c),
    };
    if n <= 1 || threads <= 1 {
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| run(i, c));
        if let Some(tm) = timer {
            tm.finish();
        }
        return;
    }
    let rest: Unclaimed<'_, T> = Mutex::new((0, out));
    // Chunks finished or abandoned by a panic: the wait below ends either way.
    let done = AtomicUsize::new(0);
    // `helper`: a thread the region asked in, not its caller (for the clock).
    let claim_and_wait = |helper: bool| {
        let entered = timer.as_ref().map(|_| Instant::now());
        let mut first = true;
        // The lock is held only to split the claimed run off, which cannot panic; a
        // poisoned lock still guards a sound slice.
        while let Some((i0, run_of)) = claim_run(&rest, chunk, threads) {
            if let (Some(tm), Some(at), true) = (&timer, entered, helper && first) {
                tm.arrived(at);
            }
            first = false;
            let _count = Finished(&done, run_of.len().div_ceil(chunk));
            for (j, c) in run_of.chunks_mut(chunk).enumerate() {
                run(i0 + j, c);
            }
        }
        // Every chunk is claimed; the ones still running wait on nothing, so this ends.
        let mut spins = 0u32;
        while done.load(Ordering::Acquire) < n {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(SPINS_PER_YIELD) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    };
    fan_out(threads - 1, &|| claim_and_wait(false), &|| {
        claim_and_wait(true)
    });
    if let Some(tm) = timer {
        tm.finish();
    }
}

/// A region's chunks not yet claimed: the index of the first, and their elements.
type Unclaimed<'a, T> = Mutex<(usize, &'a mut [T])>;

/// Claims the next run of chunks from `rest` (the index of its first chunk and its
/// elements), `None` once every chunk is claimed: a run of `ceil(left / (2 · threads))`
/// consecutive chunks, so runs shrink as the region's work runs out (guided
/// self-scheduling).
///
/// Why runs: the chunks are cut small (decode's products into ~[`GEMV_TASK_BYTES`] of
/// weights) so that the threads finish together, but a thread that ran every other chunk
/// would start each of them on memory nothing had prefetched, while its run's chunks lie
/// back to back and the GEMV's prefetch runs ahead from one into the next. On the Zen 4
/// VM at 2 threads (decode steps alternating the two schemes within one run), Small
/// decoded 4-13 % faster (Q4_0, Q8_0; 11 of 12 reps) than with two whole tasks per thread
/// claimed one at a time, Tiny within ±2 %; the small chunks claimed one at a time lost
/// Tiny 6-12 % (BENCHMARKS.md, seventeenth session).
///
/// [`GEMV_TASK_BYTES`]: super::GEMV_TASK_BYTES
fn claim_run<'a, T>(
    rest: &Unclaimed<'a, T>,
    chunk: usize,
    threads: usize,
) -> Option<(usize, &'a mut [T])> {
    let mut g = rest.lock().unwrap_or_else(|e| e.into_inner());
    let (next, left) = &mut *g;
    let chunks = left.len().div_ceil(chunk);
    if chunks == 0 {
        return None;
    }
    let run = chunks.div_ceil(2 * threads);
    let at = (run * chunk).min(left.len());
    let (head, tail) = std::mem::take(left).split_at_mut(at);
    *left = tail;
    let first = *next;
    *next += run;
    Some((first, head))
}

/// Counts a claimed run of chunks as done when dropped, also while unwinding from a
/// panic in one of them.
struct Finished<'a>(&'a AtomicUsize, usize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(self.1, Ordering::Release);
    }
}

/// Jobs the calling thread hands out itself at most: beyond, each job is a tree of claim
/// loops ([`claimers`]), so that the caller's stack holds at most this many `join` frames.
const FAN_OUT: usize = 64;

/// Runs `caller` on this thread after handing out `helpers` claim loops (`claim`) as jobs
/// on this thread's own deque, one `rayon::join` each (stack jobs: nothing is allocated
/// per region), where every idle worker steals one directly.
///
/// Why not one tree of joins: there a helper reaches the region only after the helpers
/// above it in the tree took their jobs and split them, ~4 steals in a row at 16 threads.
/// On the lent Xeon's 16 threads (`bench model --regions`, Tiny Q4_0) the flat hand-out
/// ran decode at 205-210 tok/s against the tree's 192-198, the threads' time waiting in
/// regions at 11-12% against 17-19% (BENCHMARKS.md, sixteenth session); at 4 and 8
/// threads the two were within their runs' spread.
fn fan_out(helpers: usize, caller: &(dyn Fn() + Sync), claim: &(dyn Fn() + Sync)) {
    /// `jobs` more jobs to hand out for `left` helpers, the first ones the bigger.
    fn hand_out(jobs: usize, left: usize, caller: &(dyn Fn() + Sync), claim: &(dyn Fn() + Sync)) {
        if jobs == 0 {
            return caller();
        }
        let size = left.div_ceil(jobs);
        // `join` pushes its second closure for a thief to take, then runs the first here.
        rayon::join(
            || hand_out(jobs - 1, left - size, caller, claim),
            || claimers(size, claim),
        );
    }
    hand_out(helpers.min(FAN_OUT), helpers, caller, claim)
}

/// `count` claim loops as a tree of `rayon::join`s, each free to be taken by an idle
/// worker; the ones no worker takes run on this thread once the tasks are all claimed,
/// and return at once.
fn claimers(count: usize, claim: &(dyn Fn() + Sync)) {
    match count {
        0 => {}
        1 => claim(),
        _ => {
            let half = count / 2;
            rayon::join(|| claimers(half, claim), || claimers(count - half, claim));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("test pool")
    }

    /// Every chunk exactly once with its own index, for lengths at, around and below whole
    /// chunks, on pools of 1 to 5 threads (more threads than tasks included) and of more
    /// helpers than the caller hands out itself (its jobs then trees of claim loops).
    #[test]
    fn every_chunk_runs_once_with_its_index() {
        for threads in (1..=5).chain([FAN_OUT + 3]) {
            pool(threads).install(|| {
                for (len, chunk) in [
                    (0usize, 4usize),
                    (1, 4),
                    (4, 4),
                    (5, 4),
                    (37, 3),
                    (1000, 16),
                ] {
                    let mut out = vec![0u32; len];
                    for_each_chunk(&mut out, chunk, |i, c| {
                        for (j, v) in c.iter_mut().enumerate() {
                            *v += (i * chunk + j) as u32 + 1;
                        }
                    });
                    let want: Vec<u32> = (1..=len as u32).collect();
                    assert_eq!(out, want, "{threads} threads, len {len}, chunk {chunk}");
                }
            });
        }
    }

    /// Runs come in order, back to back, each `ceil(left / (2 · threads))` chunks of what
    /// was left (so they never grow), and cover the slice once.
    #[test]
    fn runs_are_consecutive_and_shrink() {
        for (len, chunk, threads) in [
            (1000usize, 7usize, 2usize),
            (64, 1, 16),
            (5, 4, 3),
            (0, 4, 2),
        ] {
            let mut data: Vec<usize> = (0..len).collect();
            let rest = Mutex::new((0usize, &mut data[..]));
            let (mut next, mut seen, mut last) = (0, 0, usize::MAX);
            while let Some((i0, run)) = claim_run(&rest, chunk, threads) {
                let left = (len - seen).div_ceil(chunk);
                let chunks = run.len().div_ceil(chunk);
                assert_eq!(
                    (i0, chunks),
                    (next, left.div_ceil(2 * threads)),
                    "{len}/{chunk}"
                );
                assert!(chunks <= last, "{len}/{chunk}: a run grew");
                assert_eq!(run.first(), Some(&seen), "{len}/{chunk}: not back to back");
                (next, seen, last) = (next + chunks, seen + run.len(), chunks);
            }
            assert_eq!((seen, next), (len, len.div_ceil(chunk)), "{len}/{chunk}");
        }
    }

    /// A panicking task neither hangs the region (the others' wait counts it) nor is lost.
    #[test]
    fn a_task_panic_is_re_raised() {
        let r = std::panic::catch_unwind(|| {
            pool(3).install(|| {
                let mut out = vec![0u8; 64];
                for_each_chunk(&mut out, 4, |i, _| assert!(i != 5, "task 5 fails"));
            })
        });
        assert!(r.is_err());
    }
}
