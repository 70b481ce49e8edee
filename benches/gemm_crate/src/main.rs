//! The `gemm` crate (f32 and f16, one thread) against pocketvl's float kernels (the
//! kernel table's F32/F16/BF16 `gemm`, and the AMX bf16-activation product where the CPU has
//! it), one thread each, alternating, on the SigLIP tower's matrix shapes for one tile
//! (729 tokens). Prints GFLOP/s per kernel and round, then the best of each.

use std::time::Instant;

use quant::kernels::{gemm as ours, gemm_bf16_rounded};
use quant::GgmlType;

fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.05
        })
        .collect()
}

/// `out[t, r] = Σ_i w[r, i] a[t, i]` through the crate: dst `[m = tokens, n = rows]`,
/// lhs = a `[m, k]`, rhs = wᵀ (`w` row-major `[n, k]` read with column stride k).
fn crate_gemm<T: 'static + Copy>(k: usize, w: &[T], n: usize, a: &[T], m: usize, dst: &mut [T], zero: T, one: T) {
    assert!(w.len() >= n * k && a.len() >= m * k && dst.len() >= m * n);
    // SAFETY: the strides above address exactly the asserted lengths.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, false,
            a.as_ptr(), 1, k as isize,
            w.as_ptr(), k as isize, 1,
            zero, one, false, false, false,
            gemm::Parallelism::None,
        )
    }
}

fn main() {
    let m = 729; // tokens of one tile
    let shapes = [("qkv", 1152usize, 3456usize), ("fc1", 1152, 4304), ("fc2", 4304, 1152)];
    let rounds = 3;
    println!("kernel, shape, round: GFLOP/s (1 thread, {m} tokens)");
    let mut best: Vec<(String, f64)> = Vec::new();
    for (name, k, n) in shapes {
        let wf = lcg(1, n * k);
        let af = lcg(2, m * k);
        let wb: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ab: Vec<u8> = af.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w16: Vec<u8> = wf.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect();
        let wbf: Vec<u8> = wf.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect();
        let wh: Vec<gemm::f16> = wf.iter().map(|&v| gemm::f16::from_f32(v)).collect();
        let ah: Vec<gemm::f16> = af.iter().map(|&v| gemm::f16::from_f32(v)).collect();
        let mut out = vec![0f32; m * n];
        let mut outh = vec![gemm::f16::from_f32(0.0); m * n];
        let flop = 2.0 * (m * n * k) as f64;
        for round in 0..rounds {
            let mut run = |label: &str, f: &mut dyn FnMut()| {
                let t = Instant::now();
                f();
                let g = flop / t.elapsed().as_secs_f64() / 1e9;
                println!("{label:<28} {name} {round}: {g:8.1}");
                let key = format!("{label} {name}");
                match best.iter_mut().find(|(kk, _)| *kk == key) {
                    Some((_, b)) => *b = b.max(g),
                    None => best.push((key, g)),
                }
            };
            run("gemm crate f32", &mut || crate_gemm(k, &wf, n, &af, m, &mut out, 0.0, 1.0));
            run("pocketvl f32 (FMA)", &mut || ours(GgmlType::F32, k, &wb, n, &ab, m, &mut out, n));
            run("gemm crate f16 (f16 acts)", &mut || {
                crate_gemm(k, &wh, n, &ah, m, &mut outh, gemm::f16::from_f32(0.0), gemm::f16::from_f32(1.0))
            });
            run("pocketvl f16 (FMA)", &mut || ours(GgmlType::F16, k, &w16, n, &ab, m, &mut out, n));
            run("pocketvl bf16 (FMA)", &mut || ours(GgmlType::BF16, k, &wbf, n, &ab, m, &mut out, n));
            if let Some(g) = gemm_bf16_rounded() {
                run("pocketvl bf16 (AMX)", &mut || g(k, &wbf, n, &af, m, &mut out, n));
            }
        }
    }
    println!("best of {rounds}:");
    for (k, g) in best {
        println!("{k:<34} {g:8.1} GFLOP/s");
    }
}
