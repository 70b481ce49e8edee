//! Golden-byte generator: runs ggml's own reference quantizers (the C code in
//! llama.cpp, linked through `llama-cpp-sys-2`) on the committed input rows and
//! writes `ggml_<type>.bin` next to them. pocketvl's Rust quantizers must
//! reproduce these bytes exactly (`quant/tests/it/golden.rs`).
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
    // ggml-cpu.h
    fn ggml_cpu_init();
    fn ggml_get_type_traits_cpu(ty: i32) -> *const TypeTraitsCpu;
}

/// `struct ggml_type_traits_cpu` of ggml-cpu.h.
#[repr(C)]
struct TypeTraitsCpu {
    from_float: Option<unsafe extern "C" fn(*const f32, *mut c_void, i64)>,
    vec_dot: Option<
        unsafe extern "C" fn(i32, *mut f32, usize, *const c_void, usize, *const c_void, usize, i32),
    >,
    vec_dot_type: i32,
    nrows: i64,
}

/// Input rows used for the dot-product goldens: the ordinary (random normal)
/// rows at the end of input.f32; weight row i is paired with activation row
/// (i + 3) mod 8 of this range.
const DOT_FIRST_ROW: usize = 13;
const DOT_ROWS: usize = 8;

/// (weight type id, name, activation type id) for the dot-product goldens.
const DOT_TYPES: &[(i32, &str, i32)] = &[
    (2, "q4_0", 8),
    (3, "q4_1", 9),
    (6, "q5_0", 8),
    (7, "q5_1", 9),
    (8, "q8_0", 8),
    (12, "q4_K", 15),
    (13, "q5_K", 15),
    (14, "q6_K", 15),
    (11, "q3_K", 15),
    (10, "q2_K", 15),
];

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
    (11, "q3_K"),
    (10, "q2_K"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: pocketvl-golden-gen <golden-dir>")?,
    );
    let raw = std::fs::read(dir.join("input.f32"))?;
    if raw.len() % (4 * ROW) != 0 {
        return Err(format!(
            "input.f32 has {} bytes, not whole rows of {ROW} f32",
            raw.len()
        )
        .into());
    }
    let input: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let nrows = input.len() / ROW;
    let mut written: Vec<(i32, Vec<u8>)> = Vec::new();
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
                    return Err(format!(
                        "{name}: ggml wrote {written} bytes, expected {}",
                        out.len()
                    )
                    .into());
                }
            }
        }
        std::fs::write(dir.join(format!("ggml_{name}.bin")), &out)?;
        println!("{name}: {nrows} rows, {} bytes", out.len());
        written.push((ty, out));
    }
    if nrows < DOT_FIRST_ROW + DOT_ROWS {
        return Err("input.f32 has too few rows for the dot goldens".into());
    }
    // SAFETY: initialises ggml-cpu's static tables; no arguments.
    unsafe { ggml_cpu_init() };
    let bytes_of = |ty: i32| {
        written
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, b)| b.as_slice())
            .ok_or(format!("type {ty} not quantized"))
    };
    for &(wty, name, aty) in DOT_TYPES {
        // SAFETY: returns a pointer into ggml-cpu's static type table.
        let traits = unsafe { ggml_get_type_traits_cpu(wty).as_ref() }.ok_or("no cpu traits")?;
        if traits.vec_dot_type != aty {
            return Err(format!(
                "{name}: ggml pairs it with type {}, expected {aty}",
                traits.vec_dot_type
            )
            .into());
        }
        let vec_dot = traits.vec_dot.ok_or("no vec_dot")?;
        let (w, a) = (bytes_of(wty)?, bytes_of(aty)?);
        // SAFETY: as above, for a type id ggml knows.
        let (wrow, arow) = unsafe {
            (
                ggml_row_size(wty, ROW as i64),
                ggml_row_size(aty, ROW as i64),
            )
        };
        let mut dots = Vec::new();
        for i in 0..DOT_ROWS {
            let wr = &w[(DOT_FIRST_ROW + i) * wrow..][..wrow];
            let ar = &a[(DOT_FIRST_ROW + (i + 3) % DOT_ROWS) * arow..][..arow];
            let mut s = 0f32;
            // SAFETY: both rows hold exactly ROW elements of their types; nrc = 1.
            unsafe {
                vec_dot(
                    ROW as i32,
                    &mut s,
                    0,
                    wr.as_ptr().cast(),
                    0,
                    ar.as_ptr().cast(),
                    0,
                    1,
                )
            };
            dots.extend_from_slice(&s.to_le_bytes());
        }
        std::fs::write(dir.join(format!("ggml_dot_{name}.f32")), &dots)?;
    }
    println!("dot goldens: {} types x {DOT_ROWS} rows", DOT_TYPES.len());
    Ok(())
}
