//! Throughput of the AMX-BF16 product (`gemm_bf16_rounded`) at the vision tower's shapes
//! (not a test; numbers depend on the machine and its load); on CPUs with AVX512_BF16 but
//! no AMX, of the `vdpbf16ps` product instead (`bf16_dot_tiles`, what `--vision-precision
//! bf16` runs there: weights packed per call as the tower packs them per product; the
//! tower's four products only, its attention stays f32 there). GFLOP/s = 2·k·rows·tokens per
//! second of this thread's own CPU time (`/proc/thread-self/schedstat`, wall time where
//! that is missing), so other processes on a busy machine count less. One thread; the
//! token counts are what one of the tower's tasks gets (4 tiles of 729 tokens over 4 tasks
//! on 2 threads), and the attention products are one (tile, head) job.
//! Run: `[POCKETVL_AMX_SPLIT=1] cargo run --release -p pocketvl-quant --example amx_bench [names…]`
//! (names from the list below; default: all). Last line: the tile unit's peak in the same
//! run (`tdpbf16ps` with operands in registers) and the shapes' rate as a share of it.
//! Prints nothing useful without AMX or AVX512_BF16.

use std::time::Instant;

use quant::kernels::{
    amx_bf16_spin, bf16_dot_spin, bf16_dot_tiles, gemm_bf16_rounded, gemm_bf16_split,
    Bf16RoundedGemmFn,
};

/// The `vdpbf16ps` product, packing included (as the tower packs once per product).
#[allow(clippy::too_many_arguments)]
fn dot_product(
    k: usize,
    w: &[u8],
    rows: usize,
    a: &[f32],
    toks: usize,
    out: &mut [f32],
    ldo: usize,
    split: bool,
) {
    let Some(tiles) = bf16_dot_tiles() else {
        return;
    };
    let mut packed = tiles.buffer(k, rows);
    let bb = packed.block_bytes();
    for (b, dst) in packed.blocks_mut().chunks_mut(bb).enumerate() {
        tiles.pack_block(k, w, rows, b, dst);
    }
    tiles.gemm(&packed, a, toks, out, ldo, split);
}

fn dot_rounded(k: usize, w: &[u8], rows: usize, a: &[f32], t: usize, o: &mut [f32], ldo: usize) {
    dot_product(k, w, rows, a, t, o, ldo, false)
}

fn dot_split(k: usize, w: &[u8], rows: usize, a: &[f32], t: usize, o: &mut [f32], ldo: usize) {
    dot_product(k, w, rows, a, t, o, ldo, true)
}

/// (name, k, weight rows, tokens).
const SHAPES: [(&str, usize, usize, usize); 6] = [
    ("qkv", 1152, 3456, 736),
    ("out", 1152, 1152, 736),
    ("up", 1152, 4304, 736),
    ("down", 4304, 1152, 736),
    ("scores", 72, 729, 729),
    ("pv", 729, 72, 729),
];

fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + 31 * seed) * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect()
}

/// Seconds this thread has run on a CPU (wall seconds since `start` where the
/// scheduler statistics are not readable).
fn cpu_seconds(start: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| start.elapsed().as_secs_f64(), |ns| ns as f64 * 1e-9)
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    // `POCKETVL_AMX_SPLIT=1`: the split-activation product (what the tower runs; twice the
    // tile products per flop counted here).
    let split = std::env::var("POCKETVL_AMX_SPLIT").is_ok_and(|v| v == "1");
    let pick = if split {
        gemm_bf16_split()
    } else {
        gemm_bf16_rounded()
    };
    let amx = pick.is_some();
    let g: Bf16RoundedGemmFn = match (pick, bf16_dot_tiles(), split) {
        (Some(g), _, _) => g,
        (None, Some(_), false) => dot_rounded,
        (None, Some(_), true) => dot_split,
        (None, None, _) => {
            println!(
                "no AMX-BF16 or AVX512_BF16 product on this CPU (or POCKETVL_FORCE_SCALAR is set)"
            );
            return;
        }
    };
    println!("{}", if amx { "AMX tiles" } else { "vdpbf16ps" });
    let mut total = (0.0f64, 0.0f64); // (flops, seconds)
    for (name, k, rows, toks) in SHAPES {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        // The attention's products (`scores`, `pv`) run on AMX only.
        if !amx && k * rows < 1 << 20 {
            continue;
        }
        let w: Vec<u8> = values(1, k * rows)
            .into_iter()
            .flat_map(|v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let a = values(2, k * toks);
        let mut out = vec![0f32; rows * toks];
        g(k, &w, rows, &a, toks, &mut out, rows); // warm the caches and the pages
        let start = Instant::now();
        let c0 = cpu_seconds(start);
        let mut calls = 0;
        while calls == 0 || cpu_seconds(start) - c0 < 1.0 {
            g(k, &w, rows, &a, toks, &mut out, rows);
            calls += 1;
        }
        let s = cpu_seconds(start) - c0;
        std::hint::black_box(&out);
        let flops = 2.0 * (k * rows * toks) as f64 * calls as f64;
        total = (total.0 + flops, total.1 + s);
        println!(
            "{name:>6} k={k:<5} rows={rows:<5} tok={toks:<4} {:8.1} GFLOP/s",
            flops / s / 1e9
        );
    }
    let all = total.0 / total.1 / 1e9;
    // The unit's peak in the same run: tdpbf16ps (or vdpbf16ps) with its operands in registers.
    let start = Instant::now();
    let c0 = cpu_seconds(start);
    let mut flops = 0u64;
    while flops == 0 || cpu_seconds(start) - c0 < 1.0 {
        flops += if amx {
            amx_bf16_spin(1 << 20).unwrap_or(0)
        } else {
            bf16_dot_spin(1 << 20).unwrap_or(0)
        };
    }
    let peak = flops as f64 / (cpu_seconds(start) - c0) / 1e9;
    println!("{:>6} {all:>40.1} GFLOP/s", "all");
    println!(
        "{:>6} {peak:>40.1} GFLOP/s (all = {:.1}% of it)",
        "peak",
        100.0 * all / peak
    );
}
