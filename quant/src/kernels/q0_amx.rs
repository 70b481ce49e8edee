//! AMX-INT8 (`tdpbssd`) GEMM for the Q0 weight formats the recipes store (Q4_0, Q8_0, and
//! Q5_0 for the Q4_K recipe's down experts) on Q8_0 activations: prefill and the MoE
//! experts' batches on CPUs with AMX (Sapphire Rapids and later). One tile instruction
//! does 16 x 16 x 32 int8 multiply-adds, ~8x what `vpdpbusd` does in the same time.
//!
//! Layout (C = activations x weightsᵀ, so a C row is one token's 16 weight rows, as `out`):
//! - A tiles (16 tokens x 32 bytes) are read straight from the Q8_0 activation rows (one
//!   block's quants, stride = the activation row): nothing is packed; a last partial tile
//!   of tokens is copied once into a zero-padded buffer so no tile row reads past `a`;
//! - B tiles (8 rows of 4-column groups x 16 weight rows, AMX's "VNNI" layout) are decoded
//!   per 16-row group into a small per-thread scratch (512 bytes per block, never a second
//!   copy of the weights): each row's block becomes 32 signed bytes with the same decoder
//!   the AVX2/AVX-512 tiers use (`q0_x86`), and 16 rows x 8 dwords are transposed to
//!   8 x 16 dwords with three levels of `vpermt2d`;
//! - the scales are per block of 32, so K per tile product is one block: each block's
//!   16 x 16 integer sums are stored (1 KiB) and summed in f32 as
//!   `acc[t] += f32(C[t]) · (d_w · d_a[t])` on 16 registers of 16 rows, in block order.
//!   Two blocks are in flight (two C tiles) so the tile unit runs while the vector units
//!   scale the previous pair.
//!
//! Fewer than [`MIN_TOKENS`] tokens (decode, small expert batches) go to the AVX-512 VNNI
//! kernels, whose cost grows with the token count while a tile's does not.
//!
//! The scalar twin is the scalar dot of each format ([`super::gemm_by_dots`]); tier tests
//! compare them within the rounding bound on random, edge and odd-sized data.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::kquant_avx2::Shape;
use super::q0_rows16::{gather_scales, pack_weights, strides, B_BYTES};
use super::q0_x86::{aligned, group_rows, q0_shape, Q0Format, Q4_0, Q5_0, Q8_0};
use crate::block::BlockQ8_0;

/// Fewest tokens the tiles serve; fewer run the VNNI kernels (measured with
/// `examples/gemm_bench.rs`).
const MIN_TOKENS: usize = 10;

/// Whether the CPU has AMX-TILE and AMX-INT8 (besides the AVX-512 F/BW/VL + VNNI the
/// decoders and the small-batch fallback use) and Linux granted the tile data state (the
/// permission request the AMX-BF16 kernel uses). Checked once.
pub(crate) fn detected() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !(super::avx2::detected() && super::avx512::detected()) {
            return false;
        }
        // CPUID leaf 7: EDX bit 24 = AMX-TILE, bit 25 = AMX-INT8 (std cannot detect these
        // on stable Rust).
        let l7 = __cpuid_count(7, 0);
        let (tile, int8) = ((l7.edx >> 24) & 1 == 1, (l7.edx >> 25) & 1 == 1);
        tile && int8 && super::float_gemm_amx::request_tile_data()
    })
}

/// Tile configuration (palette 1): tmm0..3 the C tiles (16 x 16 i32; two pairs, see
/// [`issue`]), tmm4/5 the A tiles (16 tokens x 32 bytes), tmm6/7 the B tiles (8 x 64 bytes).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

fn tile_config() -> TileConfig {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    for (t, (colsb, rows)) in [
        (64, 16),
        (64, 16),
        (64, 16),
        (64, 16),
        (32, 16),
        (32, 16),
        (64, 8),
        (64, 8),
    ]
    .into_iter()
    .enumerate()
    {
        c[16 + 2 * t] = colsb; // u16 little-endian
        c[48 + t] = rows;
    }
    TileConfig(c)
}

/// 64-byte-aligned storage.
#[repr(C, align(64))]
struct Align64<T>(T);

/// Per-thread scratch, reused between calls: decoded B tiles of one 16-row group (64-byte
/// aligned within), their weight scales, the padded last tokens.
#[derive(Default)]
struct Scratch {
    b: Vec<u8>,
    dw: Vec<f32>,
    tail: Vec<u8>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// `acc[t] += f32(c[t]) · (dw · da[t])` for the 16 tokens of one block's stored C tile.
#[inline(always)]
fn scale_add(acc: &mut [__m512; 16], c: *const i32, dw: __m512, da: &[f32]) {
    assert!(da.len() >= 16);
    for (t, acc) in acc.iter_mut().enumerate() {
        // SAFETY: only reached from the AVX-512 `target_feature` function below (inlined
        // there); `c` is a 1 KiB, 64-byte-aligned tile of 16 x 16 i32.
        unsafe {
            let v = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(16 * t).cast()));
            *acc = _mm512_fmadd_ps(v, _mm512_mul_ps(dw, _mm512_set1_ps(da[t])), *acc);
        }
    }
}

/// Issues the tile products of block pair `j` (blocks 2j and, when there is one, 2j + 1)
/// of one token tile: into tmm0/1 and the C tiles at `cp` (even j) or tmm2/3 and `cp +
/// 2 KiB` (odd j), each C tile 16 x 16 i32 stored at stride 64 bytes.
///
/// # Safety
/// AMX configured by [`tile_config`]; `j < nb.div_ceil(2)`; 16 token rows at `ap` (stride
/// `arb`) hold the Q8_0 blocks 0..nb; `bp` holds nb B tiles (512 bytes each, 64-byte
/// aligned); `cp` is 4 KiB, 64-byte aligned.
#[inline(always)]
unsafe fn issue(ap: *const u8, arb: usize, bp: *const u8, cp: *mut i32, j: usize, nb: usize) {
    let b = 2 * j;
    // SAFETY: block b's quants are at byte 34b + 2 of each token row, 32 bytes; B tile b
    // at 512b; C tiles of this pair at 2 KiB · (j % 2); all inside the caller's buffers.
    unsafe {
        let a0 = ap.add(34 * b + 2);
        let b0 = bp.add(B_BYTES * b);
        let c = cp.add(512 * (j % 2));
        macro_rules! pair {
            ($c0:literal, $c1:literal) => {
                asm!(
                    concat!("tilezero ", $c0),
                    concat!("tilezero ", $c1),
                    "tileloadd tmm4, [{a0} + {sa}]",
                    "tileloadd tmm6, [{b0} + {s64}]",
                    concat!("tdpbssd ", $c0, ", tmm4, tmm6"),
                    "tileloadd tmm5, [{a0} + {sa} + 34]",
                    "tileloadd tmm7, [{b0} + {s64} + 512]",
                    concat!("tdpbssd ", $c1, ", tmm5, tmm7"),
                    concat!("tilestored [{c} + {s64}], ", $c0),
                    concat!("tilestored [{c} + {s64} + 1024], ", $c1),
                    a0 = in(reg) a0,
                    b0 = in(reg) b0,
                    c = in(reg) c,
                    sa = in(reg) arb,
                    s64 = in(reg) 64usize,
                    options(nostack)
                )
            };
        }
        macro_rules! single {
            ($c0:literal) => {
                asm!(
                    concat!("tilezero ", $c0),
                    "tileloadd tmm4, [{a0} + {sa}]",
                    "tileloadd tmm6, [{b0} + {s64}]",
                    concat!("tdpbssd ", $c0, ", tmm4, tmm6"),
                    concat!("tilestored [{c} + {s64}], ", $c0),
                    a0 = in(reg) a0,
                    b0 = in(reg) b0,
                    c = in(reg) c,
                    sa = in(reg) arb,
                    s64 = in(reg) 64usize,
                    options(nostack)
                )
            };
        }
        match (b + 1 < nb, j.is_multiple_of(2)) {
            (true, true) => pair!("tmm0", "tmm1"),
            (true, false) => pair!("tmm2", "tmm3"),
            (false, true) => single!("tmm0"),
            (false, false) => single!("tmm2"),
        }
    }
}

/// The AMX product for `n_tok ≥ MIN_TOKENS` (see the module comment).
///
/// # Safety
/// [`detected`] holds.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_amx<F: Q0Format<A = BlockQ8_0>>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let Some(Shape { nb, wrb, arb }) = q0_shape::<F::W, F::A>(k, w, n_rows, a, n_tok, out, ldo)
    else {
        return;
    };
    let mut s = SCRATCH.with(Cell::take);
    let tiles = n_tok.div_ceil(16);
    let a_idx = strides(arb);
    // The last partial tile of tokens, zero-padded to 16 rows.
    let full = n_tok / 16;
    s.tail.clear();
    s.tail.resize(16 * arb, 0);
    s.tail[..(n_tok - 16 * full) * arb].copy_from_slice(&a[16 * full * arb..n_tok * arb]);
    s.dw.resize(nb * 16, 0.0);
    let mut c_buf = [0i32; 4 * 256 + 16];
    let c_off = c_buf.as_ptr().align_offset(64);
    let cp = c_buf[c_off..].as_mut_ptr();
    let Scratch { b, dw, tail } = &mut s;
    let bp = aligned(b, nb * B_BYTES);
    let cfg = tile_config();
    // SAFETY: AMX is usable (caller); the config is a valid palette-1 config.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    for r0 in (0..n_rows).step_by(16) {
        let nr = 16.min(n_rows - r0);
        let rows = group_rows::<F::W, 16>(w, r0, nr, wrb);
        pack_weights::<F, true>(&rows, nr, nb, bp, dw);
        for tile in 0..tiles {
            let (ap, nt) = if tile < full {
                (a[16 * tile * arb..].as_ptr(), 16)
            } else {
                (tail.as_ptr(), n_tok - 16 * full)
            };
            let mut acc = [_mm512_setzero_ps(); 16];
            // The 16 tokens' scales of a pair's blocks, from one gather each.
            let mut das = Align64([0f32; 32]);
            // Software pipeline over pairs of blocks: the tile products of pair j + 1 are
            // issued (into the other C tiles and the other half of `cp`) before pair j is
            // scaled, so the tile unit's latency (load, product, store) overlaps the
            // vector work instead of preceding it.
            let pairs = nb.div_ceil(2);
            // SAFETY: pair 0 < pairs (nb ≥ 1); AMX is configured; see `issue`.
            unsafe { issue(ap, arb, bp.as_ptr(), cp, 0, nb) };
            for j in 0..pairs {
                if j + 1 < pairs {
                    // SAFETY: as above, pair j + 1 < pairs.
                    unsafe { issue(ap, arb, bp.as_ptr(), cp, j + 1, nb) };
                }
                let b = 2 * j;
                let two = b + 1 < nb;
                let dwv = |b: usize| {
                    // SAFETY: dw holds nb · 16 f32.
                    unsafe { _mm512_loadu_ps(dw.as_ptr().add(16 * b)) }
                };
                for (i, d) in das
                    .0
                    .chunks_exact_mut(16)
                    .enumerate()
                    .take(1 + usize::from(two))
                {
                    // SAFETY: the 16 token rows at `ap` (stride arb) hold block b + i,
                    // whose first 4 bytes are its f16 scale and 2 quants; d is 16 f32.
                    unsafe {
                        let v = gather_scales(ap.add(34 * (b + i)), a_idx, 0xffff);
                        _mm512_storeu_ps(d.as_mut_ptr(), v);
                    }
                }
                // SAFETY: pair j's C tiles are at 512 (j % 2) i32 of `cp` (2 x 2 KiB).
                let c = unsafe { cp.add(512 * (j % 2)) };
                scale_add(&mut acc, c, dwv(b), &das.0[..16]);
                if two {
                    // SAFETY: the second C tile is the 1 KiB after the first.
                    scale_add(&mut acc, unsafe { c.add(256) }, dwv(b + 1), &das.0[16..]);
                }
            }
            let m: __mmask16 = if nr == 16 { 0xffff } else { (1u16 << nr) - 1 };
            for (t, v) in acc.iter().enumerate().take(nt) {
                let o = (16 * tile + t) * ldo + r0;
                // SAFETY: rows r0..r0 + nr ≤ n_rows of token 16·tile + t < n_tok lie in
                // `out` (asserted above); the mask keeps lanes past nr untouched.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(o), m, *v) };
            }
        }
    }
    // SAFETY: releases the tile state this call configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    SCRATCH.with(|c| c.set(s));
}

/// Safe [`super::GemmFn`] entry points: the tiles from [`MIN_TOKENS`] tokens, the
/// AVX-512 VNNI kernels (`q0_avx512_rows`, which hands its own small batches on to
/// `q0_avx512_units`) below.
macro_rules! entry_points {
    ($($fmt:ident => $gemm:ident, $vnni:path;)*) => {$(
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            if n_tok < MIN_TOKENS {
                return $vnni(k, w, n_rows, a, n_tok, out, ldo);
            }
            // SAFETY: only installed in the kernel table after `detected()`.
            unsafe { gemm_amx::<$fmt>(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

entry_points! {
    Q4_0 => gemm_q4_0_q8_0, super::q0_avx512_rows::gemm_q4_0_q8_0;
    Q5_0 => gemm_q5_0_q8_0, super::q0_avx512_rows::gemm_q5_0_q8_0;
    Q8_0 => gemm_q8_0_q8_0, super::q0_avx512_rows::gemm_q8_0_q8_0;
}
