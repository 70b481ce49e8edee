//! The machine's two rooflines, measured in the same run as the model so that a model figure
//! can be read as a fraction of what the hardware did a moment earlier on a shared machine:
//! * memory read bandwidth: threads summing disjoint parts of a buffer much larger than any
//!   cache (decode is bound by it: every weight byte is read once per token). Each thread reads
//!   its part as several interleaved streams in the widest registers, prefetching ahead, as the
//!   decode GEMV does (16 weight rows in flight): a plain one-stream sum leaves the hardware
//!   prefetchers short of misses in flight and under-reads by a third on a Xeon, which made
//!   decode look faster than the roofline;
//! * f32 FMA peak: independent fused multiply-add chains in the widest registers the CPU has
//!   (prefill and the vision tower are bound by it).
//!
//! Both run on the caller's rayon pool, so `--threads` applies to them as to the model.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

/// Bytes of the bandwidth buffer: far beyond the last-level cache of current CPUs.
const BANDWIDTH_BYTES: usize = 512 << 20;
/// Passes over the buffer; the fastest one counts (the others were disturbed by something).
const BANDWIDTH_PASSES: usize = 4;
/// Independent accumulators per FMA chain: enough to cover FMA latency × ports (4 × 2).
const FMA_ACCS: usize = 10;
/// Loop trips of the FMA kernel per measurement and thread.
const FMA_ITERS: usize = 20_000_000;
/// Multiplier and addend of `x = x * A + B`: converges to B / (1 - A) = 0.1, so values stay
/// normal (no denormal slow path) and never overflow.
const FMA_A: f32 = 0.999_999;
const FMA_B: f32 = 1e-7;

/// Sustained read bandwidth in GB/s (1e9 bytes/s) with the current pool's threads.
pub fn read_bandwidth_gb_s() -> f64 {
    read_bandwidth_with(BANDWIDTH_BYTES)
}

fn read_bandwidth_with(bytes: usize) -> f64 {
    let words = (bytes / 8).max(1);
    let Some(mut map) = huge_page_buffer(words * 8) else {
        // No anonymous mapping to be had: the allocator's pages, whatever their size.
        return read_words(&(0..words as u64).collect::<Vec<_>>());
    };
    // SAFETY: the map is page-aligned (so `pre` is empty) and every bit pattern is a valid
    // u64; the slice borrows the map mutably and lives inside this block.
    let (pre, buf, _) = unsafe { map.align_to_mut::<u64>() };
    debug_assert!(pre.is_empty());
    // Written once so every page is really backed (a zero page would be read from cache).
    buf.iter_mut().enumerate().for_each(|(i, w)| *w = i as u64);
    read_words(buf)
}

/// An anonymous mapping of `bytes`, asking for transparent huge pages where the kernel offers
/// them. The weights are a file mapping, which recent kernels map largely with 2 MiB folios
/// unasked (Linux 6.18 on ext4: `FilePmdMapped` 1.06 of 1.72 GB resident during a `bench
/// model` run); on one thread of an AMD Zen 4 VM this probe read 20.4-23.4 GB/s on 4 KiB pages
/// and 24.8-27.8 GB/s on huge pages in alternating `bench model` runs, so a probe on small
/// pages under-read the memory the weights sit in.
fn huge_page_buffer(bytes: usize) -> Option<memmap2::MmapMut> {
    let map = memmap2::MmapMut::map_anon(bytes).ok()?;
    // Best effort: without THP (or outside Linux) the probe reads normal pages, as the weights
    // are read then too.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Some(map)
}

/// The best of [`BANDWIDTH_PASSES`] reads of `buf`, in GB/s.
fn read_words(buf: &[u64]) -> f64 {
    let words = buf.len();
    let chunk = words.div_ceil(rayon::current_num_threads().max(1));
    let (kernel, _) = read_kernel();
    let mut best = f64::INFINITY;
    for _ in 0..BANDWIDTH_PASSES {
        let t0 = Instant::now();
        let sum: u64 = buf
            .par_chunks(chunk)
            .map(kernel)
            .reduce(|| 0, u64::wrapping_add);
        black_box(sum);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

/// Interleaved read streams per thread. Measured on an idle Xeon pinned to 1 and 2 cores
/// (GB/s, 512 MiB): one stream 8.7 / 17.4, four 64-byte streams with prefetch 13.5 / 26.8,
/// eight 13.4 / 25.5, sixteen 12.3 / 23.8.
const READ_STREAMS: usize = 4;
/// Words (u64) per stream and step: one 64-byte cache line.
const READ_STEP: usize = 8;

/// A read kernel: the wrapping sum of every word of its slice (so nothing is optimised away,
/// and twins can be compared exactly).
type ReadKernel = fn(&[u64]) -> u64;

/// The widest read kernel this CPU runs, and its name.
fn read_kernel() -> (ReadKernel, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return (x86::read_avx512, "avx512f");
        }
        if is_x86_feature_detected!("avx2") {
            return (x86::read_avx2, "avx2");
        }
    }
    (read_scalar, "scalar")
}

/// Splits `words` into `READ_STREAMS` equal streams of whole steps; the words past them are
/// the tail, summed separately.
fn stream_len(words: usize) -> usize {
    words / (READ_STREAMS * READ_STEP) * READ_STEP
}

/// The scalar twin (and fallback): the same streams, one word at a time.
fn read_scalar(c: &[u64]) -> u64 {
    let n = stream_len(c.len());
    let mut acc = [0u64; READ_STREAMS];
    for i in 0..n {
        for (s, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(c[s * n + i]);
        }
    }
    let tail = c[READ_STREAMS * n..]
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

/// Peak f32 FMA throughput in GFLOP/s (2 flops per lane per FMA) with the current pool's
/// threads, using the widest FMA the CPU reports at run time that the kernel tier cap allows
/// ([`fma_kernel`]); and the instruction set used.
pub fn fma_gflops() -> (f64, &'static str) {
    fma_gflops_with(FMA_ITERS)
}

fn fma_gflops_with(iters: usize) -> (f64, &'static str) {
    let (kernel, lanes, name) = fma_kernel();
    let threads = rayon::current_num_threads().max(1);
    let t0 = Instant::now();
    let r: f32 = (0..threads)
        .into_par_iter()
        .map(|t| kernel(iters, t as f32 * 1e-3))
        .sum();
    black_box(r);
    let secs = t0.elapsed().as_secs_f64();
    let flops = 2.0 * (lanes * FMA_ACCS * iters * threads) as f64;
    (flops / secs / 1e9, name)
}

/// An FMA kernel: `iters` rounds over all accumulators, starting at `seed`; returns the mean
/// of every lane (so nothing is optimised away, and twins can be compared).
type FmaKernel = fn(usize, f32) -> f32;

/// The widest kernel this CPU runs under the kernel tier cap, its f32 lanes and its name: the
/// peak of the registers the model's float loops use (`POCKETVL_MAX_TIER=avx2` measures what
/// an AVX2-only CPU reaches, `POCKETVL_FORCE_SCALAR=1` the scalar peak), so a capped run's
/// figures read against its own roofline.
fn fma_kernel() -> (FmaKernel, usize, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::ops::use_avx512f() {
            return (x86::fma_avx512, 16, "avx512f");
        }
        if crate::ops::use_avx2_fma() {
            return (x86::fma_avx2, 8, "avx2+fma");
        }
    }
    (fma_scalar, 1, "scalar")
}

/// The scalar twin (and fallback): the same recurrence, one lane per accumulator.
fn fma_scalar(iters: usize, seed: f32) -> f32 {
    let mut acc = [seed; FMA_ACCS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(FMA_A, FMA_B);
        }
    }
    acc.iter().sum::<f32>() / FMA_ACCS as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{stream_len, FMA_A, FMA_ACCS, FMA_B, READ_STEP, READ_STREAMS};

    /// How far ahead of each stream's reads the prefetch runs: 8 cache lines.
    const PREFETCH_WORDS: usize = 8 * READ_STEP;

    pub fn read_avx512(c: &[u64]) -> u64 {
        // SAFETY: chosen by `read_kernel` only after `is_x86_feature_detected!("avx512f")`.
        unsafe { read_avx512_impl(c) }
    }

    pub fn read_avx2(c: &[u64]) -> u64 {
        // SAFETY: chosen by `read_kernel` only after `is_x86_feature_detected!("avx2")`.
        unsafe { read_avx2_impl(c) }
    }

    #[target_feature(enable = "avx512f")]
    fn read_avx512_impl(c: &[u64]) -> u64 {
        let n = stream_len(c.len());
        let p = c.as_ptr();
        let mut acc = [_mm512_setzero_si512(); READ_STREAMS];
        let mut i = 0;
        while i < n {
            for (s, a) in acc.iter_mut().enumerate() {
                let at = s * n + i;
                // SAFETY: `at + READ_STEP <= READ_STREAMS * n <= c.len()` (stream s covers
                // words s*n .. (s+1)*n in whole steps); loadu has no alignment requirement. The
                // prefetch address is clamped into the stream and a prefetch never faults.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(
                        p.add(s * n + (i + PREFETCH_WORDS).min(n - READ_STEP))
                            .cast(),
                    );
                    *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(at).cast()));
                }
            }
            i += READ_STEP;
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_si512(), |t, &a| _mm512_add_epi64(t, a));
        let tail = c[READ_STREAMS * n..]
            .iter()
            .fold(0u64, |a, &b| a.wrapping_add(b));
        (_mm512_reduce_add_epi64(sum) as u64).wrapping_add(tail)
    }

    #[target_feature(enable = "avx2")]
    fn read_avx2_impl(c: &[u64]) -> u64 {
        let n = stream_len(c.len());
        let p = c.as_ptr();
        let mut acc = [_mm256_setzero_si256(); READ_STREAMS];
        let mut i = 0;
        while i < n {
            for (s, a) in acc.iter_mut().enumerate() {
                let at = s * n + i;
                // SAFETY: as in `read_avx512_impl`: both 32-byte loads lie inside the stream's
                // step, `at + READ_STEP <= c.len()`; the prefetch is clamped and never faults.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(
                        p.add(s * n + (i + PREFETCH_WORDS).min(n - READ_STEP))
                            .cast(),
                    );
                    let lo = _mm256_loadu_si256(p.add(at).cast());
                    let hi = _mm256_loadu_si256(p.add(at + 4).cast());
                    *a = _mm256_add_epi64(*a, _mm256_add_epi64(lo, hi));
                }
            }
            i += READ_STEP;
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_si256(), |t, &a| _mm256_add_epi64(t, a));
        let mut lanes = [0u64; 4];
        // SAFETY: `lanes` is 4 writable u64s; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum) };
        let tail = c[READ_STREAMS * n..]
            .iter()
            .fold(0u64, |a, &b| a.wrapping_add(b));
        lanes.iter().fold(tail, |a, &b| a.wrapping_add(b))
    }

    pub fn fma_avx512(iters: usize, seed: f32) -> f32 {
        // SAFETY: chosen by `fma_kernel` only after `ops::use_avx512f()` detected avx512f.
        unsafe { fma_avx512_impl(iters, seed) }
    }

    pub fn fma_avx2(iters: usize, seed: f32) -> f32 {
        // SAFETY: chosen by `fma_kernel` only after `ops::use_avx2_fma()` detected avx2 and fma.
        unsafe { fma_avx2_impl(iters, seed) }
    }

    #[target_feature(enable = "avx512f")]
    fn fma_avx512_impl(iters: usize, seed: f32) -> f32 {
        let (a, b) = (_mm512_set1_ps(FMA_A), _mm512_set1_ps(FMA_B));
        let mut acc = [_mm512_set1_ps(seed); FMA_ACCS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(sum) / (16 * FMA_ACCS) as f32
    }

    #[target_feature(enable = "avx2,fma")]
    fn fma_avx2_impl(iters: usize, seed: f32) -> f32 {
        let (a, b) = (_mm256_set1_ps(FMA_A), _mm256_set1_ps(FMA_B));
        let mut acc = [_mm256_set1_ps(seed); FMA_ACCS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 writable f32s; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum::<f32>() / (8 * FMA_ACCS) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1e-3)
    }

    #[test]
    fn fma_kernels_match_the_scalar_twin() {
        // Odd trip counts, zero, negative and large seeds (the recurrence pulls all to 0.1).
        for &(iters, seed) in &[(0, 0.0), (1, 1.0), (7, -3.5), (1001, 1e30), (33, -1e30)] {
            let want = fma_scalar(iters, seed);
            let (kernel, _, name) = fma_kernel();
            let got = kernel(iters, seed);
            assert!(
                close(got, want),
                "{name} iters {iters} seed {seed}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn read_kernels_match_the_scalar_twin_and_a_plain_sum() {
        // Lengths below one step per stream, at and around whole steps, with a tail; values
        // near u64::MAX so the sums wrap.
        for len in [0usize, 1, 7, 31, 32, 33, 64, 95, 1000, 4096 + 13] {
            let words: Vec<u64> = (0..len as u64)
                .map(|i| u64::MAX - i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect();
            let plain = words.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            assert_eq!(read_scalar(&words), plain, "scalar, len {len}");
            let (kernel, name) = read_kernel();
            assert_eq!(kernel(&words), plain, "{name}, len {len}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                assert_eq!(x86::read_avx2(&words), plain, "avx2, len {len}");
            }
        }
    }

    #[test]
    fn rooflines_are_positive_and_finite() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let bw = pool.install(|| read_bandwidth_with(8 << 20));
        assert!(bw.is_finite() && bw > 0.1, "{bw}");
        let (g, _) = pool.install(|| fma_gflops_with(100_000));
        assert!(g.is_finite() && g > 0.1, "{g}");
    }
}
