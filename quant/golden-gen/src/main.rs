//! Golden-byte generator: runs ggml's own reference quantizers (the C code in
//! llama.cpp, linked through `llama-cpp-sys-2`) on the committed input rows and
//! writes `ggml_<type>.bin` next to them. pocketvl's Rust quantizers must
//! reproduce these bytes exactly (`quant/tests/golden.rs`).
//!
//! Usage: `pocketvl-golden-gen <golden-dir>`; reads `<golden-dir>/input.f32`
//! (little-endian f32, rows of 256 elements).

use std::ffi::c_void;
use std::path::PathBuf;

// Keep the -sys crate linked: its build script compiles and links ggml.
use llama_cpp_sys_2 as _;

/// Elements per input row (a multiple of every block size, 256 = QK_K).
const ROW: usize = 256;

extern "C" {
    // ggml.h
    fn ggml_quantize_chunk(
        ty: i32,
        src: *const f32,
        dst: *mut c_void,
        start: i64,
        nrows: i64,
        n_per_row: i64,
        imatrix: *const f32,
    ) -> usize;
    fn ggml_row_size(ty: i32, ne: i64) -> usize;
    // ggml-quants.h: the activation-only formats have no ggml_quantize_chunk path.
    fn quantize_row_q8_1_ref(x: *const f32, y: *mut c_void, k: i64);
    fn quantize_row_q8_K_ref(x: *const f32, y: *mut c_void, k: i64);
}

/// (ggml type id, file name) for every format pocketvl implements.
const TYPES: &[(i32, &str)] = &[
    (1, "f16"),
    (30, "bf16"),
    (2, "q4_0"),
    (3, "q4_1"),
    (6, "q5_0"),
    (7, "q5_1"),
    (8, "q8_0"),
    (9, "q8_1"),
    (12, "q4_K"),
    (13, "q5_K"),
    (14, "q6_K"),
    (15, "q8_K"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: pocketvl-golden-gen <golden-dir>")?);
    let raw = std::fs::read(dir.join("input.f32"))?;
    if raw.len() % (4 * ROW) != 0 {
        return Err(format!("input.f32 has {} bytes, not whole rows of {ROW} f32", raw.len()).into());
    }
    let input: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let nrows = input.len() / ROW;
    for &(ty, name) in TYPES {
        // SAFETY: ggml_row_size only reads its static type table.
        let row_bytes = unsafe { ggml_row_size(ty, ROW as i64) };
        let mut out = vec![0u8; row_bytes * nrows];
        match ty {
            9 | 15 => {
                for r in 0..nrows {
                    let src = input[r * ROW..].as_ptr();
                    let dst = out[r * row_bytes..].as_mut_ptr().cast::<c_void>();
                    // SAFETY: src holds ROW floats and dst row_bytes bytes, the sizes
                    // ggml computes for one row of ROW elements.
                    unsafe {
                        if ty == 9 {
                            quantize_row_q8_1_ref(src, dst, ROW as i64)
                        } else {
                            quantize_row_q8_K_ref(src, dst, ROW as i64)
                        }
                    }
                }
            }
            _ => {
                // SAFETY: input holds nrows*ROW floats and out nrows*row_bytes bytes.
                let written = unsafe {
                    ggml_quantize_chunk(
                        ty,
                        input.as_ptr(),
                        out.as_mut_ptr().cast(),
                        0,
                        nrows as i64,
                        ROW as i64,
                        std::ptr::null(),
                    )
                };
                if written != out.len() {
                    return Err(format!("{name}: ggml wrote {written} bytes, expected {}", out.len()).into());
                }
            }
        }
        std::fs::write(dir.join(format!("ggml_{name}.bin")), &out)?;
        println!("{name}: {nrows} rows, {} bytes", out.len());
    }
    Ok(())
}
