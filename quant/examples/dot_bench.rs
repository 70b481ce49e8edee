//! Rough throughput of `vec_dot` per weight type (not a test; numbers depend on
//! the machine). Run: `cargo run --release -p pocketvl-quant --example dot_bench`
//! (set `POCKETVL_FORCE_SCALAR=1` for the scalar kernels).

use std::time::Instant;

use quant::block::quantize_row;
use quant::kernels::{table, vec_dot, vec_dot_type};
use quant::GgmlType;

fn main() {
    let n = 4096;
    let rows = 256;
    let x: Vec<f32> = (0..n * rows)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let a: Vec<f32> = (0..n)
        .map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 100.0)
        .collect();
    println!("kernels: {}", table().isa);
    use GgmlType::*;
    for ty in [
        F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
    ] {
        let row_bytes = ty.row_bytes(n as u64).unwrap_or(0) as usize;
        let mut w = vec![0u8; row_bytes * rows];
        for (src, dst) in x.chunks_exact(n).zip(w.chunks_exact_mut(row_bytes)) {
            quantize_row(ty, src, dst).expect("quantize");
        }
        let at = vec_dot_type(ty);
        let mut aq = vec![0u8; at.row_bytes(n as u64).unwrap_or(0) as usize];
        quantize_row(at, &a, &mut aq).expect("quantize activation");
        let reps = 20;
        let t = Instant::now();
        let mut acc = 0f32;
        for _ in 0..reps {
            for r in w.chunks_exact(row_bytes) {
                acc += vec_dot(ty, n, r, &aq);
            }
        }
        let s = t.elapsed().as_secs_f64();
        let gelem = (n * rows * reps) as f64 / s / 1e9;
        let gbytes = (w.len() * reps) as f64 / s / 1e9;
        println!("{ty:>5}: {gelem:6.2} Gelem/s  {gbytes:6.2} GB/s of weights  (checksum {acc:.3})");
    }
}
