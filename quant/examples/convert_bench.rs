//! The converter's row kernels (`convert_row`: bf16 checkpoint rows to the written formats)
//! in input GB/s on one thread, rows small enough to stay in L2, so the figure is the
//! kernel's own rate rather than the memory's. Not a test; numbers depend on the machine.
//! Run: `taskset -c 1 cargo run --release -p pocketvl-quant --example convert_bench
//! [q8_0 q4_0 f16 bf16]` (`CB_ROWS`, `CB_K`, `CB_PASSES` set the shape; `POCKETVL_FORCE_SCALAR=1`
//! times the scalar twins).

use std::time::Instant;

use quant::block::convert_row;
use quant::GgmlType;

/// A positive count from the environment, `default` where unset; anything else stops the
/// run with a message (a typo must not time another shape than asked for).
fn env(name: &str, default: usize) -> usize {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("{name}={v:?} is not a positive whole number");
            std::process::exit(2);
        }
    }
}

fn main() {
    let (rows, k, passes) = (
        env("CB_ROWS", 128),
        env("CB_K", 1280),
        env("CB_PASSES", 400),
    );
    // bf16 bits of values in about [-1, 1): a linear congruential sequence.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let src: Vec<u8> = (0..rows * k)
        .flat_map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let v = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            ((v.to_bits() >> 16) as u16).to_le_bytes()
        })
        .collect();
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() {
        vec!["q8_0".into(), "q4_0".into(), "f16".into(), "bf16".into()]
    } else {
        names
    };
    for name in names {
        let Some(ty) = GgmlType::from_name(&name) else {
            eprintln!("unknown type {name}");
            std::process::exit(2);
        };
        let Some(row_out) = ty.row_bytes(k as u64).map(|n| n as usize) else {
            eprintln!("{name}: CB_K={k} is not a whole number of {name} blocks");
            std::process::exit(2);
        };
        let mut dst = vec![0u8; rows * row_out];
        let mut run = || {
            for (r, d) in dst.chunks_exact_mut(row_out).enumerate() {
                let row = &src[2 * k * r..2 * k * (r + 1)];
                if let Err(e) = convert_row(ty, GgmlType::BF16, row, d) {
                    eprintln!("{name}: {e}");
                    std::process::exit(1);
                }
            }
        };
        run();
        let t = Instant::now();
        for _ in 0..passes {
            run();
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = (passes * src.len()) as f64;
        println!(
            "bf16 -> {name}: {:.2} GB/s of input, {:.2} ns per 32 values ({rows} rows x {k})",
            bytes / secs / 1e9,
            secs * 1e9 / (passes * rows * k / 32) as f64
        );
    }
}
