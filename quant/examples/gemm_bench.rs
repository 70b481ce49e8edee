//! Throughput of the matrix kernels per weight type and tier at the language
//! model's shapes (not a test; numbers depend on the machine and its load).
//! GEMM in GOP/s (2·k·rows·tokens per second), GEMV (1 token) also in GB/s of
//! weight bytes streamed. One thread. Times are the thread's own CPU time
//! (`/proc/thread-self/schedstat`, wall time where that is missing) so that
//! other processes on a busy machine do not count.
//! Run: `cargo run --release -p pocketvl-quant --example gemm_bench [types…] [tower]`
//! (types like `q4_0 q8_0`; default: the five 32-element block formats; `tower`: the
//! shapes one vision-tower task sees instead, e.g. `bf16 tower`; for float types it then also
//! times the two-step product the tower runs, `FloatPanels`: whole tower matrices packed once,
//! one task's 729 tokens against every row). `GEMM_BENCH_TOKENS="2 3 4 5"` replaces the
//! token counts (e.g. to find where a batch kernel overtakes its fallback).

use std::time::Instant;

use quant::block::quantize_row;
use quant::kernels::{float_panels, gemm_by_dots, tiers, vec_dot_type, KernelTable, PackedFloat};
use quant::GgmlType;

/// (k, weight rows): attention/expert input projection, and the dense MLP.
const SHAPES: [(usize, usize); 2] = [(1280, 896), (1280, 6848)];
const TOKENS: [usize; 4] = [1, 8, 64, 512];
/// (k, weight rows) of row-split tasks over the tokens of four tiles, as the vision tower ran
/// them through `ops::matmul_view` before `FloatPanels`: a qkv task (`ops::rows_per_task`
/// gives 224 rows) and a `down` task of whole 32-row panels.
const TOWER_SHAPES: [(usize, usize); 2] = [(1152, 224), (4304, 96)];
const TOWER_TOKENS: [usize; 1] = [4 * 729];
/// (k, weight rows) of whole vision-tower products (qkv, up, down) and the tokens of one of
/// their tasks (two per thread over four tiles on two threads: one tile's).
const TOWER_PRODUCTS: [(usize, usize); 3] = [(1152, 3456), (1152, 4304), (4304, 1152)];
const TOWER_TASK_TOKENS: usize = 729;

fn row_of(seed: usize, k: usize) -> Vec<f32> {
    (0..k)
        .map(|i| (((i + 31 * seed) * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect()
}

fn quantize_rows(ty: GgmlType, k: usize, n: usize) -> Vec<u8> {
    let rb = ty.row_bytes(k as u64).expect("row bytes") as usize;
    let mut q = vec![0u8; rb * n];
    for (r, dst) in q.chunks_exact_mut(rb).enumerate() {
        quantize_row(ty, &row_of(r, k), dst).expect("quantize");
    }
    q
}

/// Seconds this thread has run on a CPU (wall seconds since `start` where the
/// scheduler statistics are not readable).
fn cpu_seconds(start: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| start.elapsed().as_secs_f64(), |ns| ns as f64 * 1e-9)
}

/// CPU seconds per call of the tier's GEMM (or dots).
fn time(
    t: &KernelTable,
    ty: GgmlType,
    k: usize,
    w: &[u8],
    rows: usize,
    a: &[u8],
    toks: usize,
) -> f64 {
    let mut out = vec![0f32; rows * toks];
    let run = |out: &mut [f32]| match t.gemm(ty) {
        Some(g) => g(k, w, rows, a, toks, out, rows),
        None => {
            let dot = t.get(ty).expect("a dot kernel");
            let wrb = w.len() / rows;
            let arb = a.len() / toks;
            gemm_by_dots(dot, wrb, arb, k, w, rows, a, toks, out, rows)
        }
    };
    // The CPU-time counter advances in scheduler steps: time many calls.
    let start = Instant::now();
    let c0 = cpu_seconds(start);
    let mut calls = 0;
    while calls == 0 || cpu_seconds(start) - c0 < 0.3 {
        run(&mut out);
        calls += 1;
    }
    let per_call = (cpu_seconds(start) - c0) / calls as f64;
    std::hint::black_box(&out);
    per_call
}

/// The tower's two-step product at its shapes: CPU seconds of packing a whole matrix, and
/// GFLOP/s of one task's tokens against it (packing excluded).
fn time_panels(ty: GgmlType) {
    let Some(panels) = float_panels(ty) else {
        return println!("{ty:>5} panels: no FMA tier");
    };
    for (k, rows) in TOWER_PRODUCTS {
        let w = quantize_rows(ty, k, rows);
        let a = quantize_rows(GgmlType::F32, k, TOWER_TASK_TOKENS);
        let mut packed = PackedFloat::default();
        panels.shape(k, rows, &mut packed);
        let len = packed.panel_len();
        // The tower reuses its buffer: time packings into memory already faulted in, many of
        // them (the CPU-time counter advances in scheduler steps of a few ms).
        let start = Instant::now();
        let mut pack = || {
            for (c, dst) in packed.panels_mut().chunks_exact_mut(len).enumerate() {
                panels.pack_panel(k, &w, rows, c, dst);
            }
        };
        pack();
        let (c0, mut packs) = (cpu_seconds(start), 0);
        while packs == 0 || cpu_seconds(start) - c0 < 0.5 {
            pack();
            packs += 1;
        }
        let pack_s = (cpu_seconds(start) - c0) / packs as f64;
        let mut out = vec![0f32; TOWER_TASK_TOKENS * rows];
        let c0 = cpu_seconds(start);
        let mut calls = 0;
        while calls == 0 || cpu_seconds(start) - c0 < 1.0 {
            panels.gemm(&packed, &a, TOWER_TASK_TOKENS, &mut out, rows);
            calls += 1;
        }
        let s = (cpu_seconds(start) - c0) / calls as f64;
        std::hint::black_box(&out);
        let gflops = 2.0 * (k * rows * TOWER_TASK_TOKENS) as f64 / s / 1e9;
        println!(
            "{ty:>5} k={k:<5} rows={rows:<5} tok={TOWER_TASK_TOKENS}  panels {gflops:7.1}  \
             (packing {:.1} ms = {:.1}% of the product over 4 tiles)",
            pack_s * 1e3,
            100.0 * pack_s / (pack_s + 4.0 * s)
        );
    }
}

fn main() {
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    let tower = wanted.iter().any(|w| w == "tower");
    wanted.retain(|w| w != "tower");
    let (shapes, default_tokens): (&[(usize, usize)], &[usize]) = if tower {
        (&TOWER_SHAPES, &TOWER_TOKENS)
    } else {
        (&SHAPES, &TOKENS)
    };
    let tokens: Vec<usize> = match std::env::var("GEMM_BENCH_TOKENS") {
        Ok(v) => v
            .split_whitespace()
            .map(|n| match n.parse() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("error: GEMM_BENCH_TOKENS: {n:?} is not a positive token count");
                    std::process::exit(2);
                }
            })
            .collect(),
        Err(_) => default_tokens.to_vec(),
    };
    let tokens = &tokens;
    use GgmlType::*;
    let types: Vec<GgmlType> = [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16, F32,
    ]
    .into_iter()
    .filter(|ty| {
        if wanted.is_empty() {
            matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0)
        } else {
            wanted
                .iter()
                .any(|w| w.eq_ignore_ascii_case(&ty.to_string()))
        }
    })
    .collect();
    let tiers = tiers();
    for ty in types {
        for &(k, rows) in shapes {
            let w = quantize_rows(ty, k, rows);
            let a = quantize_rows(vec_dot_type(ty), k, *tokens.last().unwrap_or(&1));
            let arb = a.len() / tokens.last().unwrap_or(&1);
            for &toks in tokens {
                let mut line = format!("{ty:>5} k={k:<5} rows={rows:<5} tok={toks:<4}");
                for t in &tiers {
                    // The scalar tier is too slow for the big prefill shapes.
                    if t.isa == "scalar" && toks * rows > 64 * 896 {
                        line += &format!("  {:>11} {:>7}", t.isa, "-");
                        continue;
                    }
                    let s = time(t, ty, k, &w, rows, &a[..arb * toks], toks);
                    let gops = 2.0 * (k * rows * toks) as f64 / s / 1e9;
                    line += &format!("  {:>11} {gops:7.1}", t.isa);
                    if toks == 1 {
                        line += &format!(" ({:5.1} GB/s)", w.len() as f64 / s / 1e9);
                    }
                }
                println!("{line}");
            }
        }
        if tower && matches!(ty, GgmlType::F16 | GgmlType::BF16 | GgmlType::F32) {
            time_panels(ty);
        }
    }
}
