//! Decode's GEMV as decode sees it: one token against weight matrices that do
//! not fit in any cache, read once per pass, beside a plain read of the same
//! buffer (the memory roofline of this thread at that moment). Prints, per
//! weight type, k and tier, the GEMV's weight bytes per second and its ratio
//! to the plain read measured in the same minute (alternating, best of
//! several passes each, so a shared machine's load cancels out).
//! One thread. Not a test; numbers depend on the machine.
//! Run: `cargo run --release -p pocketvl-quant --example gemv_stream [types…]`
//! (types like `q4_0 q8_0 q4_K q5_K q5_0`; `GS_MB=512` sets the buffer size, fractions
//! too: `GS_MB=0.25` keeps it in L2 and measures the kernel's own speed,
//! `GS_TIER=avx512-vnni` one tier, `GS_PASSES=20` more passes of each (the
//! best counts) where other work shares the machine, `GS_ROWS=N` rows per
//! kernel call (default 128), `GS_SHUFFLE=1` calls in a scattered order, so
//! that each call starts on memory the previous one did not lead into, as
//! decode's calls do when they go from one expert or matrix to the next);
//! with it, `GS_RUN=N` keeps runs of N consecutive calls together (a decode
//! thread claims runs of adjacent tasks, then jumps); `GS_K=2048` one row
//! width instead of Tiny's 1,280 and 896 (Small's rows are 2,048).

use std::hint::black_box;
use std::time::Instant;

use quant::block::quantize_row;
use quant::kernels::{gemm_by_dots, tiers, vec_dot_type, KernelTable};
use quant::GgmlType;

/// Deterministic pseudo-random values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn quantize(ty: GgmlType, x: &[f32], k: usize) -> Vec<u8> {
    let rb = ty.row_bytes(k as u64).expect("row bytes") as usize;
    let mut q = vec![0u8; rb * (x.len() / k)];
    for (src, dst) in x.chunks_exact(k).zip(q.chunks_exact_mut(rb)) {
        quantize_row(ty, src, dst).expect("quantize");
    }
    q
}

/// Seconds of one plain read of `buf` (sum of its u64 words).
fn read_pass(buf: &[u8]) -> f64 {
    let t = Instant::now();
    let s = buf.chunks_exact(64).fold([0u64; 8], |mut acc, line| {
        for (a, w) in acc.iter_mut().zip(line.chunks_exact(8)) {
            *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
        }
        acc
    });
    black_box(s);
    t.elapsed().as_secs_f64()
}

/// Seconds of one GEMV pass over every matrix of `rows` rows in `buf`, in
/// calls of `rows_per_call` rows (as decode's tasks are).
#[allow(clippy::too_many_arguments)]
fn gemv_pass(
    t: &KernelTable,
    ty: GgmlType,
    k: usize,
    buf: &[u8],
    rows_per_call: usize,
    scattered: bool,
    run: usize,
    a: &[u8],
    out: &mut [f32],
) -> f64 {
    let wrb = ty.row_bytes(k as u64).expect("row bytes") as usize;
    let arb = a.len();
    let calls = buf.len() / (wrb * rows_per_call);
    // Runs of `run` calls; 7919 is prime, so `r · 7919 mod runs` visits every
    // run once unless `runs` is a multiple of it.
    let runs = calls / run;
    let stride = if scattered && !runs.is_multiple_of(7919) {
        7919
    } else {
        1
    };
    let start = Instant::now();
    for c in 0..runs * run {
        let at = ((c / run * stride) % runs * run + c % run) * wrb * rows_per_call;
        let chunk = &buf[at..at + wrb * rows_per_call];
        match t.gemm(ty) {
            Some(g) => g(k, chunk, rows_per_call, a, 1, out, rows_per_call),
            None => {
                let dot = t.get(ty).expect("a dot kernel");
                gemm_by_dots(
                    dot,
                    wrb,
                    arb,
                    k,
                    chunk,
                    rows_per_call,
                    a,
                    1,
                    out,
                    rows_per_call,
                )
            }
        }
        black_box(&*out);
    }
    start.elapsed().as_secs_f64()
}

/// The value of environment variable `name`, or `default` when it is unset; a value that
/// does not parse (or is not positive) ends the program with a message naming it, rather
/// than measuring something other than what was asked for.
fn env_or<T: std::str::FromStr + PartialOrd + Default>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.parse::<T>() {
            Ok(x) if x > T::default() => x,
            _ => {
                eprintln!("gemv_stream: {name}={v:?} is not a positive number");
                std::process::exit(2);
            }
        },
    }
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let mb: f64 = env_or("GS_MB", 320.0);
    let only_tier = std::env::var("GS_TIER").ok();
    let passes: usize = env_or("GS_PASSES", 4);
    // `GS_SHUFFLE=1`: calls in a scattered order.
    let scattered = std::env::var("GS_SHUFFLE").is_ok_and(|v| v == "1");
    let run: usize = env_or("GS_RUN", 1);
    use GgmlType::*;
    let types: Vec<GgmlType> = [Q4_0, Q8_0, Q4_K, Q5_K, Q5_0, Q6_K]
        .into_iter()
        .filter(|ty| {
            wanted.is_empty()
                || wanted
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(&ty.to_string()))
        })
        .collect();
    // Rows per call: decode's usual task size at k = 1280 unless set.
    let rows_per_call: usize = env_or("GS_ROWS", 128);
    for ty in types {
        let widths = match std::env::var("GS_K") {
            Ok(_) => vec![env_or("GS_K", 1280usize)],
            Err(_) => vec![1280, 896],
        };
        for k in widths {
            // K-quants take k in whole 256-element super-blocks.
            let Some(wrb) = ty.row_bytes(k as u64).map(|b| b as usize) else {
                println!("{ty:>5} k={k:<5} skipped: not a whole number of {ty} blocks");
                continue;
            };
            // One quantized block of rows, copied until the buffer is full
            // (the caches cannot tell copies apart).
            let seed = quantize(ty, &values(1, k * rows_per_call * 4), k);
            // Whole runs of calls.
            let calls =
                ((mb * (1 << 20) as f64) as usize / (wrb * rows_per_call * run)).max(1) * run;
            let mut buf = Vec::with_capacity(calls * wrb * rows_per_call);
            while buf.len() < calls * wrb * rows_per_call {
                let n = seed.len().min(calls * wrb * rows_per_call - buf.len());
                buf.extend_from_slice(&seed[..n]);
            }
            let a = quantize(vec_dot_type(ty), &values(2, k), k);
            let mut out = vec![0f32; rows_per_call];
            for t in tiers() {
                if t.isa == "scalar" || only_tier.as_deref().is_some_and(|o| o != t.isa) {
                    continue;
                }
                let (mut best_g, mut best_r) = (f64::MAX, f64::MAX);
                for _ in 0..passes {
                    best_g = best_g.min(gemv_pass(
                        &t,
                        ty,
                        k,
                        &buf,
                        rows_per_call,
                        scattered,
                        run,
                        &a,
                        &mut out,
                    ));
                    best_r = best_r.min(read_pass(&buf));
                }
                let gb = buf.len() as f64 / 1e9;
                println!(
                    "{ty:>5} k={k:<5} {:>12}: gemv {:6.2} GB/s  read {:6.2} GB/s  ratio {:.2}",
                    t.isa,
                    gb / best_g,
                    gb / best_r,
                    best_r / best_g
                );
            }
        }
    }
}
