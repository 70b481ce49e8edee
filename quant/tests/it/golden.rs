//! Golden tests of the block formats against independent truth:
//! - bytes written by ggml's own C reference quantizers (`ggml_<t>.bin`, made by
//!   `quant/golden-gen` through llama-cpp-sys-2) and by the PyPI `gguf` package
//!   (`gguf_<t>.bin`, made by `scripts/golden_simple.py`) from the same
//!   `input.f32` rows: our quantizers must reproduce every byte;
//! - the `gguf` package's dequantized values (`gguf_<t>.deq.f32`): ours must match
//!   bit for bit;
//! - round-trip error budgets and dot-product error budgets per format.

use std::path::{Path, PathBuf};

use quant::block::{dequantize_row, quantize_row};
use quant::kernels::{vec_dot, vec_dot_type, KernelTable};
use quant::GgmlType;

const ROW: usize = 256;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn input() -> Vec<f32> {
    let x = read_f32(&golden_dir().join("input.f32"));
    assert_eq!(x.len() % ROW, 0);
    x
}

fn quantize_all(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let row_bytes = ty.row_bytes(ROW as u64).unwrap() as usize;
    let mut out = vec![0u8; x.len() / ROW * row_bytes];
    for (src, dst) in x.chunks_exact(ROW).zip(out.chunks_exact_mut(row_bytes)) {
        quantize_row(ty, src, dst).unwrap();
    }
    out
}

fn dequantize_all(ty: GgmlType, q: &[u8]) -> Vec<f32> {
    let row_bytes = ty.row_bytes(ROW as u64).unwrap() as usize;
    let mut out = vec![0f32; q.len() / row_bytes * ROW];
    for (src, dst) in q.chunks_exact(row_bytes).zip(out.chunks_exact_mut(ROW)) {
        dequantize_row(ty, src, dst).unwrap();
    }
    out
}

/// Asserts byte equality, naming the first differing row and block.
fn assert_same_bytes(ty: GgmlType, what: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{ty} vs {what}: lengths");
    let row_bytes = ty.row_bytes(ROW as u64).unwrap() as usize;
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        let (row, in_row) = (i / row_bytes, i % row_bytes);
        let block = in_row / ty.type_size();
        let b0 = row * row_bytes + block * ty.type_size();
        panic!(
            "{ty} vs {what}: first difference at row {row}, block {block}, byte {}\n ours  {:?}\n theirs {:?}",
            in_row % ty.type_size(),
            &ours[b0..b0 + ty.type_size()],
            &theirs[b0..b0 + ty.type_size()]
        );
    }
}

const SIMPLE: [GgmlType; 7] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

const ALL: [GgmlType; 14] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

#[test]
fn quantizers_match_gguf_package_bytes() {
    let x = input();
    for ty in SIMPLE {
        let theirs = std::fs::read(golden_dir().join(format!("gguf_{}.bin", ty.name()))).unwrap();
        assert_same_bytes(ty, "gguf", &quantize_all(ty, &x), &theirs);
    }
}

#[test]
fn quantizers_match_ggml_c_bytes() {
    let x = input();
    for ty in ALL {
        let path = golden_dir().join(format!("ggml_{}.bin", ty.name()));
        let theirs = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_same_bytes(ty, "ggml", &quantize_all(ty, &x), &theirs);
    }
}

#[test]
fn dequantizers_match_gguf_package_bit_for_bit() {
    for ty in SIMPLE.into_iter().chain([
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ]) {
        let src = if ty.is_quantized() && ty.block_size() == ROW {
            format!("ggml_{}.bin", ty.name())
        } else {
            format!("gguf_{}.bin", ty.name())
        };
        let q = std::fs::read(golden_dir().join(&src)).unwrap();
        let theirs = read_f32(&golden_dir().join(format!("gguf_{}.deq.f32", ty.name())));
        let ours = dequantize_all(ty, &q);
        assert_eq!(ours.len(), theirs.len(), "{ty}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(
                same,
                "{ty} dequantized from {src}: element {i}: ours {a:e}, gguf {b:e}"
            );
        }
    }
}

/// Max relative RMS round-trip error, sqrt(Σ(x − x̂)²/Σx²) per row, over the
/// ordinary (normally distributed) rows of input.f32. Measured values in the
/// comment; bounds leave ~25% headroom.
///
/// | type | measured | bound |
/// | --- | --- | --- |
/// | f16 | 2.37e-4 | 3.0e-4 |
/// | bf16 | 1.67e-3 | 2.1e-3 |
/// | q8_0 | 6.27e-3 | 8.0e-3 |
/// | q8_1 | 6.27e-3 | 8.0e-3 |
/// | q8_K | 9.96e-3 | 1.25e-2 |
/// | q4_0 | 1.02e-1 | 1.3e-1 |
/// | q4_1 | 8.42e-2 | 1.05e-1 |
/// | q5_0 | 4.79e-2 | 6.0e-2 |
/// | q5_1 | 4.04e-2 | 5.0e-2 |
/// | q2_K | 3.27e-1 | 4.1e-1 |
/// | q3_K | 1.73e-1 | 2.2e-1 |
/// | q4_K | 7.71e-2 | 9.7e-2 |
/// | q5_K | 3.84e-2 | 4.8e-2 |
/// | q6_K | 2.03e-2 | 2.5e-2 |
#[test]
fn round_trip_error_within_budget() {
    let x = input();
    let normal_rows = &x[13 * ROW..];
    let mut report = String::new();
    for (ty, bound) in ROUND_TRIP_BOUNDS {
        let deq = dequantize_all(ty, &quantize_all(ty, normal_rows));
        let mut worst = 0f64;
        for (xr, yr) in normal_rows.chunks_exact(ROW).zip(deq.chunks_exact(ROW)) {
            let num: f64 = xr
                .iter()
                .zip(yr)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = xr.iter().map(|&a| (a as f64).powi(2)).sum();
            worst = worst.max((num / den).sqrt());
        }
        report += &format!("| {ty} | {worst:.2e} | {bound:.1e} |\n");
        assert!(
            worst <= bound,
            "{ty}: relative RMS error {worst:e} > {bound:e}"
        );
    }
    println!("{report}");
}

const ROUND_TRIP_BOUNDS: [(GgmlType, f64); 14] = [
    (GgmlType::F16, 3.0e-4),
    (GgmlType::BF16, 2.1e-3),
    (GgmlType::Q8_0, 8.0e-3),
    (GgmlType::Q8_1, 8.0e-3),
    (GgmlType::Q8_K, 1.25e-2),
    (GgmlType::Q4_0, 1.3e-1),
    (GgmlType::Q4_1, 1.05e-1),
    (GgmlType::Q5_0, 6.0e-2),
    (GgmlType::Q5_1, 5.0e-2),
    (GgmlType::Q2_K, 4.1e-1),
    (GgmlType::Q3_K, 2.2e-1),
    (GgmlType::Q4_K, 9.7e-2),
    (GgmlType::Q5_K, 4.8e-2),
    (GgmlType::Q6_K, 2.5e-2),
];

/// Deterministic pseudo-normal values (xorshift + Box–Muller), no extra crates.
fn normal_row(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 * scale
        })
        .collect()
}

fn quantize_row_vec(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn dequantize_row_vec(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

/// Dot products: (1) against the f64 dot of the dequantized weight and the
/// dequantized activation — the kernel sees exactly those values, so only f32
/// summation (and, for Q4_1/Q5_1, the f16-rounded `s` of Q8_1) may differ;
/// (2) against the unquantized f32 dot, within the per-format budget below
/// (relative to Σ|w·a|).
#[test]
fn dot_products_match_dequantized_reference() {
    // (type, bound vs the exact f32 dot, relative to Σ|w·a|)
    let cases: [(GgmlType, f64); 13] = [
        (GgmlType::F32, 1e-6),
        (GgmlType::F16, 2e-3),
        (GgmlType::BF16, 1e-2),
        (GgmlType::Q8_0, 2e-2),
        (GgmlType::Q4_0, 0.15),
        (GgmlType::Q4_1, 0.15),
        (GgmlType::Q5_0, 0.08),
        (GgmlType::Q5_1, 0.08),
        (GgmlType::Q2_K, 0.4),
        (GgmlType::Q3_K, 0.25),
        (GgmlType::Q4_K, 0.15),
        (GgmlType::Q5_K, 0.08),
        (GgmlType::Q6_K, 4e-2),
    ];
    for (ty, bound) in cases {
        for (k, blocks) in [1usize, 3, 7].into_iter().enumerate() {
            let n = blocks * 256;
            let w = normal_row(11 + k as u64, n, 0.05);
            let a = normal_row(1000 + k as u64, n, 2.0);
            let at = vec_dot_type(ty);
            let wq = quantize_row_vec(ty, &w);
            let aq = quantize_row_vec(at, &a);
            let got = vec_dot(ty, n, &wq, &aq) as f64;
            let wd = dequantize_row_vec(ty, &wq, n);
            let ad = dequantize_row_vec(at, &aq, n);
            let deq_dot: f64 = wd.iter().zip(&ad).map(|(&x, &y)| x as f64 * y as f64).sum();
            let mag: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            let tight = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                2e-3
            } else {
                1e-5
            };
            assert!(
                (got - deq_dot).abs() <= tight * mag,
                "{ty} n={n}: kernel {got} vs dequantized dot {deq_dot} (Σ|w·a| {mag})"
            );
            let exact: f64 = w.iter().zip(&a).map(|(&x, &y)| x as f64 * y as f64).sum();
            let mag: f64 = w
                .iter()
                .zip(&a)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            assert!(
                (got - exact).abs() <= bound * mag,
                "{ty} n={n}: kernel {got} vs f32 dot {exact}: error {:e} > {bound} of Σ|w·a| {mag}",
                (got - exact).abs() / mag
            );
        }
    }
}

/// ggml's own CPU dot kernels (`ggml_get_type_traits_cpu(t)->vec_dot`, whatever
/// instruction set that build chose) on input rows 13+i (weights) and
/// 13+(i+3)%8 (activations), written by `quant/golden-gen` as
/// `ggml_dot_<t>.f32`. Only the f32 summation order may differ.
#[test]
fn dot_products_match_ggml_cpu_kernels() {
    let x = input();
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for ty in types {
        let at = vec_dot_type(ty);
        let w = quantize_all(ty, &x);
        let a = quantize_all(at, &x);
        let theirs = read_f32(&golden_dir().join(format!("ggml_dot_{}.f32", ty.name())));
        assert_eq!(theirs.len(), 8, "{ty}");
        let wrow = ty.row_bytes(ROW as u64).unwrap() as usize;
        let arow = at.row_bytes(ROW as u64).unwrap() as usize;
        for (i, &want) in theirs.iter().enumerate() {
            let (wi, ai) = (13 + i, 13 + (i + 3) % 8);
            let wr = &w[wi * wrow..(wi + 1) * wrow];
            let ar = &a[ai * arow..(ai + 1) * arow];
            let wd = dequantize_row_vec(ty, wr, ROW);
            let ad = dequantize_row_vec(at, ar, ROW);
            let mag: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            let dispatched = vec_dot(ty, ROW, wr, ar);
            let scalar = KernelTable::scalar().get(ty).expect("scalar kernel")(ROW, wr, ar);
            for (which, got) in [("dispatched", dispatched), ("scalar", scalar)] {
                assert!(
                    ((got - want) as f64).abs() <= 1e-5 * mag,
                    "{ty} row {i}: ours ({which}) {got} vs ggml {want} (Σ|w·a| {mag})"
                );
            }
        }
    }
}

/// Re-runs `scripts/golden_simple.py` (the `gguf` package) into a temporary
/// directory and requires every file it writes to equal the committed copy.
#[test]
fn gguf_script_reproduces_committed_golden_files() {
    let Some(python) = crate::prereq::python() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(&python)
        .arg(root.join("scripts/golden_simple.py"))
        .arg(tmp.path())
        .arg(golden_dir())
        .status()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(status.success(), "golden_simple.py failed: {status}");
    let mut n = 0;
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let fresh = std::fs::read(entry.path()).unwrap();
        let committed = std::fs::read(golden_dir().join(&name))
            .unwrap_or_else(|e| panic!("{name:?} is not committed: {e}"));
        assert!(
            fresh == committed,
            "{name:?} differs from the committed copy"
        );
        n += 1;
    }
    let expected = 1 + 2 * SIMPLE.len();
    assert!(
        n >= expected,
        "only {n} files produced, expected {expected}"
    );
}
