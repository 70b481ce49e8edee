//! K-quant GEMM / GEMV throughput per weight type and kernel tier at the
//! DeepSeek-VL2-Tiny projection shape (k = 1280 inputs, 896 weight rows), one
//! thread. Not a test; numbers depend on the machine. Time is this thread's
//! CPU time (Linux `/proc/thread-self/schedstat`, else wall time), so a busy
//! shared machine slows the measurement but not the numbers. Run:
//! `cargo run --release -p pocketvl-quant --example kquant_bench [n_tok...]`
//! (`KQ_TIER=avx2`, `KQ_TYPE=q4_K` pick one tier / type; `KQ_DOTS=1` times
//! `gemm_by_dots` over the tier's dot instead of its GEMM).

use std::time::Instant;

use quant::block::quantize_row;
use quant::kernels::{gemm_by_dots, tiers, vec_dot_type};
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

/// Seconds this thread has run on a CPU (wall seconds where Linux's
/// schedstat is missing).
fn cpu_seconds(start: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(start.elapsed().as_secs_f64(), |ns| ns as f64 / 1e9)
}

fn quantize(ty: GgmlType, x: &[f32], k: usize) -> Vec<u8> {
    let rb = ty.row_bytes(k as u64).expect("row bytes") as usize;
    let mut q = vec![0u8; rb * (x.len() / k)];
    for (src, dst) in x.chunks_exact(k).zip(q.chunks_exact_mut(rb)) {
        quantize_row(ty, src, dst).expect("quantize");
    }
    q
}

fn main() {
    let (k, n) = (1280, 896);
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let toks = if args.is_empty() {
        vec![1, 8, 64, 512]
    } else {
        args
    };
    let a_f32 = values(2, k * toks.iter().max().copied().unwrap_or(1));
    let only_ty = std::env::var("KQ_TYPE").ok();
    // The reference path (one dot per row and token) instead of the tier's GEMM.
    let by_dots = std::env::var("KQ_DOTS").is_ok_and(|v| v == "1");
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        if only_ty.as_deref().is_some_and(|o| o != ty.to_string()) {
            continue;
        }
        let w = quantize(ty, &values(1, k * n), k);
        let at = vec_dot_type(ty);
        let a = quantize(at, &a_f32, k);
        let (wrb, arb) = (
            w.len() / n,
            at.row_bytes(k as u64).expect("row bytes") as usize,
        );
        let only = std::env::var("KQ_TIER").ok();
        for table in tiers() {
            if only.as_deref().is_some_and(|o| o != table.isa) {
                continue;
            }
            let mut line = format!("{ty:>5} {:>12}:", table.isa);
            for &nt in &toks {
                if table.isa == "scalar" && nt > 8 {
                    continue; // seconds per run; the reference, not a contender
                }
                let mut out = vec![0f32; nt * n];
                let gemm = if by_dots { None } else { table.gemm(ty) };
                let run = |out: &mut [f32]| match (gemm, table.get(ty)) {
                    (Some(g), _) => g(k, &w, n, &a, nt, out, n),
                    (None, Some(d)) => gemm_by_dots(d, wrb, arb, k, &w, n, &a, nt, out, n),
                    (None, None) => unreachable!("every K-quant has a dot"),
                };
                // Best of 5 timed runs of ≥ 50 ms each (the machine is shared).
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let wall = Instant::now();
                    let (t0, mut reps) = (cpu_seconds(wall), 0);
                    while reps == 0 || cpu_seconds(wall) - t0 < 0.05 {
                        run(&mut out);
                        reps += 1;
                    }
                    best = best.min((cpu_seconds(wall) - t0) / reps as f64);
                }
                let gops = 2.0 * (k * n * nt) as f64 / best / 1e9;
                line += &format!("  n_tok {nt:>3}: {gops:7.1} GOP/s");
                if nt == 1 {
                    line += &format!(" ({:5.1} GB/s)", w.len() as f64 / best / 1e9);
                }
            }
            println!("{line}");
        }
    }
}
