//! BF16 weights times f32 activations on AMX tiles (`tdpbf16ps`), the activations rounded
//! to bf16 (round to nearest even) and the products summed in f32: the vision tower's
//! matrices on CPUs with AMX-BF16 (Sapphire Rapids and later), where one tile instruction
//! does 16 x 16 x 32 multiply-adds, ~16x the f32 FMA rate of AVX-512.
//!
//! Layout (C = activations x weightsᵀ, so the accumulator tiles are `[token][row]` as `out`
//! is, and no result is transposed):
//! - A tiles are 16 tokens x 32 bf16 columns. Per super-block of tokens the f32 activations
//!   are rounded once into `[32-token block][k-step][32 tokens][32]` (zero-padded in k and
//!   to 32 tokens), so every tile load reads 1 KiB of contiguous lines and a token block's
//!   k-steps are one sequential stream. A super-block is sized to stay in L2
//!   (~1 MiB) while every weight block sweeps it;
//! - B tiles are 16 column pairs x 16 weight rows (AMX's "VNNI" pair layout): each block
//!   of 32 weight rows is packed into `[k-step][2 halves][16 pairs][16 rows]` (16 x 16
//!   transposes of u32 pairs, zero-padded in k and rows) once per product, before any
//!   token is touched ([`pack_block`]; a caller splitting one product over threads packs
//!   once and shares it: packing per super-block and per task repeated it ~16 times per
//!   tower matrix);
//! - k-blocking: the k-steps are taken [`KC_STEPS`] at a time (256 columns); over one
//!   k-block the packed weight block is 16 KiB and stays in L1 while the token blocks sweep
//!   it, and the 2 x 2 accumulator tiles (32 tokens x 32 rows, the most the eight tile
//!   registers allow with two A and two B tiles) are loaded and stored per k-block. Without
//!   it (the whole k per accumulator pass) both operands streamed from L2 and `tileloadd`
//!   took ~45% of the kernel's time;
//! - blocks of 32 tokens x 32 rows inside `out` accumulate in place (tile stride = `ldo`);
//!   only edge blocks go through the buffer and are copied out after the last k-block.
//!
//! The scalar twin is [`scalar::gemm_bf16_rounded`](super::scalar::gemm_bf16_rounded); `tests` compare them on random and
//! edge data at the tower's shapes and around every tile edge.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Bytes of packed activations per super-block (fits L2 beside one packed weight block).
const A_BYTES: usize = 1 << 20;

/// Fewest tokens per super-block (one A tile pair). With the weights packed once per product
/// a small super-block costs only a re-read of the packed weights, while one over L2 costs
/// every A tile load: the split `down` product (k = 4304, 60 tokens fit A_BYTES) ran at
/// ~0.7x with a floor of 128 tokens (2.2 MiB of packed activations) instead of 32.
const MIN_SUPER: usize = 32;

/// k-steps (32 columns each) per k-block: 32 rows of 256 bf16 columns = 16 KiB, in L1
/// beside the token block's 2 x 16 KiB of activations.
const KC_STEPS: usize = 8;

/// Whether the CPU has AMX-TILE, AMX-BF16 and AVX-512 BF16/BW, and Linux granted this
/// process the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, needed once per process
/// before the first tile instruction). Checked once.
pub(crate) fn detected() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16"))
        {
            return false;
        }
        // CPUID leaf 7: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE (std cannot detect these
        // on stable Rust).
        let l7 = __cpuid_count(7, 0);
        let (bf16, tile) = ((l7.edx >> 22) & 1 == 1, (l7.edx >> 24) & 1 == 1);
        bf16 && tile && request_tile_data()
    })
}

/// Asks Linux for the AMX tile data state (once per process suffices; repeating is
/// harmless): shared with the AMX-INT8 kernels (`q0_amx.rs`).
#[cfg(target_os = "linux")]
pub(super) fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only extends the XSAVE state this
    // process may use; it reads no memory of ours. `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
pub(super) fn request_tile_data() -> bool {
    false
}

/// The AMX product, same contract as the scalar twin
/// [`scalar::gemm_bf16_rounded`](super::scalar::gemm_bf16_rounded): `w` holds `n_rows`
/// BF16 rows of `k`, `a` holds `n_tok` f32 rows of `k`. Only reachable after
/// [`detected`] (the kernel table hands it out only then).
pub(crate) fn gemm_bf16_rounded(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    gemm_bf16(k, w, n_rows, a, n_tok, out, ldo, false)
}

/// The split product, same contract as the scalar twin
/// [`scalar::gemm_bf16_split`](super::scalar::gemm_bf16_split): each activation is
/// `hi + lo` with `hi = bf16(a)`, `lo = bf16(a - hi)` (16 significant bits of the f32), and
/// both halves go through the tile unit against the same weight tiles (twice the products,
/// the same weight traffic). Only reachable after [`detected`].
pub(crate) fn gemm_bf16_split(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    gemm_bf16(k, w, n_rows, a, n_tok, out, ldo, true)
}

/// [`gemm_bf16_rounded`] (`split = false`) or [`gemm_bf16_split`]: packs the weights, then
/// [`gemm_packed`].
#[allow(clippy::too_many_arguments)]
fn gemm_bf16(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
    split: bool,
) {
    assert!(w.len() >= n_rows * 2 * k, "gemm: input sizes");
    let len = n_rows.div_ceil(32) * block_bytes(k);
    let mut buf = vec![0u8; len + 64];
    let packed = aligned(&mut buf, len);
    pack_all(k, w, n_rows, packed);
    gemm_packed(k, packed, n_rows, a, n_tok, out, ldo, split)
}

/// Packs every block of the `n_rows` BF16 rows of `k` in `w` into `packed`
/// (`n_rows.div_ceil(32) * block_bytes(k)` bytes), one [`pack_block`] after another: the
/// whole product's weights on one thread.
pub(crate) fn pack_all(k: usize, w: &[u8], n_rows: usize, packed: &mut [u8]) {
    if k == 0 {
        return;
    }
    let bb = block_bytes(k);
    for (b, dst) in packed
        .chunks_exact_mut(bb)
        .take(n_rows.div_ceil(32))
        .enumerate()
    {
        pack_block(k, w, n_rows, b, dst);
    }
}

/// Bytes of one packed block of 32 weight rows of `k` columns (the B layout of
/// [`pack_weights`]).
pub(crate) fn block_bytes(k: usize) -> usize {
    k.div_ceil(32) * 2048
}

/// Packs rows `32 b..` (at most 32, fewer in the last block) of the `n_rows` BF16 rows of
/// `k` in `w` into `dst` (`block_bytes(k)` bytes) for [`gemm_packed`], and for the
/// `vdpbf16ps` kernel (`float_gemm_bf16dot.rs`), which reads the same layout: packing
/// takes AVX-512 F/BW/BF16 only, no tile instruction.
pub(crate) fn pack_block(k: usize, w: &[u8], n_rows: usize, b: usize, dst: &mut [u8]) {
    let (r0, bb) = (32 * b, block_bytes(k));
    assert!(
        r0 < n_rows && w.len() >= n_rows * 2 * k && dst.len() >= bb,
        "pack: sizes"
    );
    assert!(
        super::float_gemm_bf16dot::detected(),
        "bf16 packing called without AVX-512 BF16"
    );
    let nr = 32.min(n_rows - r0);
    // SAFETY: AVX-512 F/BW/BF16 (`float_gemm_bf16dot::detected`); `dst` holds the block's
    // bytes and the rows lie inside `w` (asserted).
    unsafe { pack_weights(&w[r0 * 2 * k..(r0 + nr) * 2 * k], nr, k, dst) }
}

/// The checks every product over [`pack_block`]'s layout makes (this one and the
/// `vdpbf16ps` one): the sizes (asserted: a short slice is a caller bug), and the empty
/// cases (`k = 0` writes zero sums). `false`: nothing left to compute.
pub(super) fn packed_work(
    k: usize,
    packed: &[u8],
    n_rows: usize,
    a_len: usize,
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) -> bool {
    assert!(
        packed.len() >= n_rows.div_ceil(32) * block_bytes(k) && a_len >= n_tok * k,
        "gemm: input sizes"
    );
    assert!(
        n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "gemm: output size"
    );
    if n_tok == 0 || n_rows == 0 {
        return false;
    }
    if k == 0 {
        for t in 0..n_tok {
            out[t * ldo..t * ldo + n_rows].fill(0.0);
        }
        return false;
    }
    true
}

/// The product over weights packed by [`pack_block`] (`packed` holds every block of
/// `n_rows`, in order; 64-byte aligned for full-speed tile loads); `split` as
/// [`gemm_bf16_split`]. Same contract as the scalar twins otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    k: usize,
    packed: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
    split: bool,
) {
    if !packed_work(k, packed, n_rows, a.len(), n_tok, out, ldo) {
        return;
    }
    assert!(detected(), "AMX kernel called without AMX");
    // SAFETY: `detected()` holds (AMX-TILE/BF16, AVX-512 F/BW/BF16, tile state granted);
    // the sizes are asserted above.
    unsafe { gemm_amx(k, packed, n_rows, a, n_tok, out, ldo, split) }
}

/// The AMX roofline: `iters` x 4 `tdpbf16ps` on four independent accumulators with
/// operands already in tile registers (no memory traffic), for benchmarks to read a kernel's
/// rate as a fraction of the tile unit's peak measured in the same run. Returns the flops
/// done (2 x 16 x 16 x 32 per instruction).
pub(crate) fn tdp_spin(iters: usize) -> u64 {
    assert!(detected(), "AMX spin called without AMX");
    let cfg = TileConfig::all_16x64();
    let zeros = [0u8; 1024];
    // SAFETY: AMX is usable (`detected`); the config is a valid palette-1 config; the
    // operand tiles are loaded from 1 KiB of zeros (stride 64); tilerelease ends the use.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        asm!(
            "tileloadd tmm4, [{z} + {s}]",
            "tileloadd tmm5, [{z} + {s}]",
            "tileloadd tmm6, [{z} + {s}]",
            "tileloadd tmm7, [{z} + {s}]",
            z = in(reg) zeros.as_ptr(),
            s = in(reg) 64usize,
            options(nostack, readonly)
        );
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
    iters as u64 * 4 * 2 * 16 * 16 * 32
}

/// Tile configuration (palette 1): all eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
pub(super) struct TileConfig(pub(super) [u8; 64]);

impl TileConfig {
    pub(super) fn all_16x64() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t] = 64; // colsb (u16 little-endian)
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemm_amx(
    k: usize,
    packed: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
    split: bool,
) {
    let steps = k.div_ceil(32);
    // Planes of packed activations: hi, and lo when split (same layout, `lo_off` bytes on).
    let planes = 1 + usize::from(split);
    // Super-blocks: as many tokens as fit A_BYTES (at least MIN_SUPER), then balanced so
    // the last one is not a sliver (each super-block packs every weight block once).
    let fit = (A_BYTES / (steps * 64 * planes)).max(MIN_SUPER);
    let n_super = n_tok.div_ceil(fit);
    let ts = n_tok.div_ceil(n_super).div_ceil(32) * 32;
    // Tile rows are 64 bytes: aligned buffers keep each in one cache line (unaligned, every
    // tile load touched 32 lines instead of 16; the `tdpbf16ps` spin with tile loads from
    // an unaligned buffer ran at ~0.7x the aligned rate).
    let mut ap_buf = vec![0u8; planes * steps * ts * 64 + 64];
    let mut c_buf = vec![0f32; ts * 32 + 16];
    // [plane][token block][step][32 tokens][32 bf16]
    let ap = aligned(&mut ap_buf, planes * steps * ts * 64);
    let lo_off = steps * ts * 64;
    let c = aligned(&mut c_buf, ts * 32); // [token][32 rows]
    let cfg = TileConfig::all_16x64();
    // SAFETY: AMX is usable (caller); the config is a valid palette-1 config.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    for t0 in (0..n_tok).step_by(ts) {
        let nt = ts.min(n_tok - t0);
        let ntp = nt.div_ceil(32) * 32;
        // SAFETY: AVX-512 F/BW/BF16 (caller); `ap` holds steps * ts * 64 ≥ steps * ntp * 64.
        unsafe {
            pack_acts(
                &a[t0 * k..(t0 + nt) * k],
                nt,
                ntp,
                k,
                ap,
                split.then_some(lo_off),
            )
        };
        let lo = split.then_some(lo_off);
        // SAFETY: AMX configured above; `ap` holds the ntp / 32 token blocks of `steps`
        // (both planes); `packed` every block of n_rows (asserted by the caller); `out`
        // from token t0 holds nt rows of n_rows ≤ ldo; `c` holds ts * 32 ≥ ntp * 32 floats.
        unsafe {
            gemm_blocks(
                steps,
                ap,
                lo,
                nt,
                packed,
                n_rows,
                &mut out[t0 * ldo..],
                ldo,
                c,
            )
        };
    }
    // SAFETY: releases the tile state this call configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// The blocked loop of the AMX products: `out` (`nt` rows of `n_rows` at stride `ldo`)
/// = the packed A token blocks `ap` (`[nt / 32 rounded up][steps][32 rows][32 bf16]`, the
/// lo plane `lo` bytes on) times the packed B blocks `packed` ([`pack_weights`]' layout,
/// `n_rows` rows). Per 32-row B block and k-block of [`KC_STEPS`] (16 KiB of B, in L1),
/// every token block's 2 x 2 tiles accumulate in place in `out` ([`block_2x2`]); blocks
/// past `nt` or `n_rows` go through `c` (32 floats per packed token) and are copied out.
///
/// # Safety
/// AVX-512 F/BW/BF16 and AMX configured with [`TileConfig::all_16x64`]; `ap`, `packed` and
/// `out` (`(nt - 1) * ldo + n_rows` floats, `ldo ≥ n_rows`) hold what is said above, and
/// `c` `32 * nt.div_ceil(32) * 32` floats where `nt` or `n_rows` is not a multiple of 32.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn gemm_blocks(
    steps: usize,
    ap: &[u8],
    lo: Option<usize>,
    nt: usize,
    packed: &[u8],
    n_rows: usize,
    out: &mut [f32],
    ldo: usize,
    c: &mut [f32],
) {
    let ntp = nt.div_ceil(32) * 32;
    for r0 in (0..n_rows).step_by(32) {
        let nr = 32.min(n_rows - r0);
        // [step][half][16 pairs][16 rows][2 bf16] of this block.
        let bp = &packed[r0 / 32 * steps * 2048..][..steps * 2048];
        for s0 in (0..steps).step_by(KC_STEPS) {
            let s1 = (s0 + KC_STEPS).min(steps);
            for tb in (0..ntp).step_by(32) {
                // A block of 32 tokens x 32 rows inside `out` accumulates there (tile stride
                // = ldo floats); edge blocks in `c` (stride 32 floats), copied out below.
                // (Copying every block out took ~18% of the tower's time.)
                let direct = nr == 32 && tb + 32 <= nt;
                let (cp, cs) = if direct {
                    (out.as_mut_ptr().add(tb * ldo + r0), ldo * 4)
                } else {
                    (c.as_mut_ptr().add(tb * 32), 128)
                };
                // SAFETY: C: direct, tokens tb..tb + 32 ≤ nt and rows r0..r0 + 32 ≤ n_rows
                // ≤ ldo lie inside `out`; else `c` rows tb..tb + 32 ≤ ntp. Each is 2 x 2
                // tiles of 16 x 16 f32 at stride cs. A: token block tb / 32 < ntp / 32,
                // step s < steps of `ap` is 2 KiB (the lo plane `lo` on); B: step s of
                // `bp` is 2 KiB (the caller's contract).
                unsafe {
                    let a = ap.as_ptr().add(tb * steps * 64);
                    block_2x2(cp, cs, s0 == 0, s0..s1, a, lo, bp.as_ptr())
                };
            }
        }
        // The edge blocks: every token when the row block is short, else the tail.
        let first = if nr == 32 { nt / 32 * 32 } else { 0 };
        for t in first..nt {
            let o = t * ldo + r0;
            out[o..o + nr].copy_from_slice(&c[t * 32..t * 32 + nr]);
        }
    }
}

/// The first `len` elements of `buf` from its first 64-byte-aligned one (`buf` holds at
/// least `len + 64` bytes' worth).
pub(super) fn aligned<T>(buf: &mut [T], len: usize) -> &mut [T] {
    let off = buf.as_ptr().align_offset(64);
    &mut buf[off..off + len]
}

/// One block of 2 x 2 accumulator tiles (32 A rows x 32 B rows of f32 at `c`, row stride
/// `cs` bytes): zeroed if `zero`, else loaded from `c`; then, for each k-step `s` of
/// `steps`, plus A step `s` (2 KiB at `a + 2048 s`: rows 0-15, then 16-31, 64 bytes each)
/// times B step `s` (2 KiB at `b + 2048 s`, [`pack_weights`]' layout), and with
/// `lo = Some(off)` plus the A plane `off` bytes on times the same B; stored back to `c`.
/// Tile registers 0-7 are used as [`dp_2x2`] says.
///
/// # Safety
/// AMX configured with [`TileConfig::all_16x64`]; 32 rows of 32 f32 at stride `cs`
/// writable at `c`; the steps' A tiles (both planes) and B tiles readable.
#[inline(always)]
unsafe fn block_2x2(
    c: *mut f32,
    cs: usize,
    zero: bool,
    steps: std::ops::Range<usize>,
    a: *const u8,
    lo: Option<usize>,
    b: *const u8,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let c2 = c.cast::<u8>().add(16 * cs);
        if zero {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        } else {
            asm!(
                "tileloadd tmm0, [{c} + {s}]",
                "tileloadd tmm1, [{c} + {s} + 64]",
                "tileloadd tmm2, [{c2} + {s}]",
                "tileloadd tmm3, [{c2} + {s} + 64]",
                c = in(reg) c,
                c2 = in(reg) c2,
                s = in(reg) cs,
                options(nostack, readonly)
            );
        }
        for s in steps {
            let (a, b) = (a.add(2048 * s), b.add(2048 * s));
            match lo {
                Some(off) => dp_2x2_split(a, a.add(off), b),
                None => dp_2x2(a, b),
            }
        }
        asm!(
            "tilestored [{c} + {s}], tmm0",
            "tilestored [{c} + {s} + 64], tmm1",
            "tilestored [{c2} + {s}], tmm2",
            "tilestored [{c2} + {s} + 64], tmm3",
            c = in(reg) c,
            c2 = in(reg) c2,
            s = in(reg) cs,
            options(nostack)
        );
    }
}

/// One k-step of 32 columns: the 2 x 2 accumulators (tmm0..3: tokens 16 i.., rows 16 j..
/// as tile 2 i + j) += A halves (tokens 0-15 at `a`, 16-31 at `a + 1024`, stride 64) times
/// B halves (rows 0-15 at `b`, 16-31 at `b + 1024`, stride 64).
///
/// # Safety
/// AMX configured as in [`gemm_amx`]; 2 KiB readable at `a` and at `b`.
#[inline(always)]
unsafe fn dp_2x2(a: *const u8, b: *const u8) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a} + {s64}]",
            "tileloadd tmm6, [{b} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b} + {s64} + 1024]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a} + {s64} + 1024]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = in(reg) a,
            b = in(reg) b,
            s64 = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

/// [`dp_2x2`] for split activations: the same B tiles against the hi tiles at `a` and the
/// lo tiles at `lo` (each accumulator gets both products; the two tdp on one accumulator
/// are four instructions apart).
///
/// # Safety
/// AMX configured as in [`gemm_amx`]; 2 KiB readable at `a`, `lo` and `b`.
#[inline(always)]
unsafe fn dp_2x2_split(a: *const u8, lo: *const u8, b: *const u8) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm6, [{b} + {s64}]",
            "tileloadd tmm4, [{a} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b} + {s64} + 1024]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a} + {s64} + 1024]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm4, [{lo} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{lo} + {s64} + 1024]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = in(reg) a,
            lo = in(reg) lo,
            b = in(reg) b,
            s64 = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

/// The `nr ≤ 32` bf16 rows of `k` in `rows` to the B layout `[steps][2][16 pairs][16 rows]`
/// (u32 = the row's two bf16 of columns 2 p, 2 p + 1 of the step; each half's tile is 1 KiB
/// of contiguous lines), zero beyond `k` and `nr`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_weights(rows: &[u8], nr: usize, k: usize, bp: &mut [u8]) {
    let steps = k.div_ceil(32);
    debug_assert!(rows.len() >= nr * 2 * k && bp.len() >= steps * 2048);
    for s in 0..steps {
        let live = (k - 32 * s).min(32);
        let m: __mmask32 = (u64::MAX >> (64 - live)) as u32;
        for half in 0..2 {
            let mut v = [_mm512_setzero_si512(); 16];
            for (i, x) in v.iter_mut().enumerate() {
                let r = 16 * half + i;
                if r >= nr {
                    break;
                }
                // SAFETY: the mask keeps bf16 columns 32 s + lane < k of row r < nr.
                *x = unsafe {
                    _mm512_maskz_loadu_epi16(m, rows.as_ptr().add(r * 2 * k + 64 * s).cast())
                };
            }
            let tr = transpose16(v.as_ptr().cast());
            let dst = bp.as_mut_ptr().add(s * 2048 + half * 1024);
            for (p, x) in tr.iter().enumerate() {
                // SAFETY: pair row p of this step's half, inside `bp`.
                unsafe { _mm512_storeu_ps(dst.add(64 * p).cast(), *x) };
            }
        }
    }
}

/// `nt` f32 rows of `k` rounded to bf16 in the A layout `[ntp / 32][steps][32][32]` (a
/// token block's k-steps are one contiguous stream for the prefetchers), zero beyond `k`
/// and for tokens `nt..ntp`. With `lo = Some(off)` the residuals `bf16(a - hi)` go to the
/// same layout `off` bytes on.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_acts(a: &[f32], nt: usize, ntp: usize, k: usize, ap: &mut [u8], lo: Option<usize>) {
    let steps = k.div_ceil(32);
    debug_assert!(ap.len() >= lo.unwrap_or(0) + steps * ntp * 64 && a.len() >= nt * k);
    for t in 0..ntp {
        for s in 0..steps {
            let dst = ap
                .as_mut_ptr()
                .add(((t / 32 * steps + s) * 32 + t % 32) * 64);
            if t >= nt {
                // SAFETY: token t < ntp of step s, inside `ap` (in both planes).
                unsafe {
                    _mm512_storeu_si512(dst.cast(), _mm512_setzero_si512());
                    if let Some(off) = lo {
                        _mm512_storeu_si512(dst.add(off).cast(), _mm512_setzero_si512());
                    }
                }
                continue;
            }
            let load = |c: usize| {
                let live = k.saturating_sub(c).min(16);
                let m: __mmask16 = ((1u32 << live) - 1) as u16;
                // SAFETY: the mask keeps columns c + lane < k of row t < nt.
                unsafe { _mm512_maskz_loadu_ps(m, a.as_ptr().add(t * k + c)) }
            };
            // 32 bf16 in column order: the low half from the first 16 columns.
            let ((h0, l0), (h1, l1)) = (split16(load(32 * s)), split16(load(32 * s + 16)));
            let join =
                |x0: __m256i, x1: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(x0), x1);
            // SAFETY: token t of step s, 64 bytes inside `ap` (and in the lo plane, `off`
            // bytes on: the caller's size); the bits are stored as they are.
            unsafe {
                _mm512_storeu_si512(dst.cast(), join(h0, h1));
                if let Some(off) = lo {
                    _mm512_storeu_si512(dst.add(off).cast(), join(l0, l1));
                }
            }
        }
    }
}

/// 16 f32 as two vectors of 16 bf16: `hi = bf16(x)` (round to nearest even) and
/// `lo = bf16(x - hi)` (`x - hi` is exact in f32), so `hi + lo` keeps 16 significant bits
/// of `x`. The one split of every AMX product that splits its operands.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
pub(super) fn split16(x: __m512) -> (__m256i, __m256i) {
    // SAFETY: the bf16 vectors' bits are reinterpreted as they are.
    let bits = |v: __m256bh| unsafe { std::mem::transmute::<__m256bh, __m256i>(v) };
    let hi = bits(_mm512_cvtneps_pbh(x));
    // hi back to f32: the bf16 bits in the upper half of each f32.
    let wide = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)));
    (hi, bits(_mm512_cvtneps_pbh(_mm512_sub_ps(x, wide))))
}

/// The 16 x 16 transpose of the 32-bit values at `p` (row-major, 256 values), as 16
/// vectors (bit patterns are moved, never converted).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(p: *const f32) -> [__m512; 16] {
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        // SAFETY: the caller's 256 values.
        *v = unsafe { _mm512_loadu_ps(p.add(16 * i)) };
    }
    // Per 128-bit lane L: interleave row pairs, then row quads -> r[4q + c] lane L holds
    // column 4L + c of rows 4q..4q + 4.
    let mut t = [_mm512_setzero_ps(); 16];
    for q in 0..8 {
        t[2 * q] = _mm512_unpacklo_ps(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm512_unpackhi_ps(r[2 * q], r[2 * q + 1]);
    }
    for q in 0..4 {
        let (a0, a1, b0, b1) = (
            _mm512_castps_pd(t[4 * q]),
            _mm512_castps_pd(t[4 * q + 1]),
            _mm512_castps_pd(t[4 * q + 2]),
            _mm512_castps_pd(t[4 * q + 3]),
        );
        r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
        r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
        r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
        r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
    }
    // Gather lanes: t[c] = columns c (lanes 0, 2 of rows 0-3, 4-7), t[4 + c] = column 4 + c
    // (lanes 1, 3); the same for rows 8-15 in t[8..].
    for c in 0..4 {
        t[c] = _mm512_shuffle_f32x4::<0x88>(r[c], r[4 + c]);
        t[4 + c] = _mm512_shuffle_f32x4::<0xdd>(r[c], r[4 + c]);
        t[8 + c] = _mm512_shuffle_f32x4::<0x88>(r[8 + c], r[12 + c]);
        t[12 + c] = _mm512_shuffle_f32x4::<0xdd>(r[8 + c], r[12 + c]);
    }
    let mut o = [_mm512_setzero_ps(); 16];
    for c in 0..8 {
        o[c] = _mm512_shuffle_f32x4::<0x88>(t[c], t[8 + c]);
        o[8 + c] = _mm512_shuffle_f32x4::<0xdd>(t[c], t[8 + c]);
    }
    o
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::lcg;
    use super::super::scalar;
    use super::*;

    pub(in super::super) type Gemm = fn(usize, &[u8], usize, &[f32], usize, &mut [f32], usize);

    fn bf16_bytes(x: &[f32]) -> Vec<u8> {
        x.iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect()
    }

    #[test]
    fn transpose16_moves_every_value() {
        if !is_x86_feature_detected!("avx512f") {
            println!("skipped: CPU lacks AVX-512F");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: AVX-512F detected; `m` holds 256 values.
        let t = unsafe { transpose16(m.as_ptr()) };
        let mut got = [0f32; 256];
        for (c, v) in t.iter().enumerate() {
            // SAFETY: 16 floats at 16 c of `got`.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr().add(16 * c), *v) };
        }
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(got[c * 16 + r], m[r * 16 + c]);
            }
        }
    }

    /// Both products (rounded and split) against their scalar twins on random, zero, ±large
    /// and tiny data; sizes around the
    /// 16/32 tile edges, k-tails, super-block edges and the tower's shapes (k = 588, 1152,
    /// 4304). Same bound as the f32 kernels: the sums differ only in f32 rounding order.
    #[test]
    fn amx_matches_scalar_twin() {
        if !detected() {
            println!("skipped: CPU lacks AMX-BF16 (or the OS did not grant tile data)");
            return;
        }
        check_against_twins(
            &[
                (1, 1, 1),
                (2, 3, 5),
                (31, 17, 15),
                (32, 16, 16),
                (33, 33, 33),
                (64, 32, 32),
                (100, 47, 70),
                (588, 40, 29),
                (1152, 72, 47),
                (4304, 33, 18),
                (1024, 32, 600),
            ],
            [gemm_bf16_rounded, gemm_bf16_split],
        );
    }

    /// `rounded` and `split` (BF16 weights times f32 activations, the [`Gemm`] shape) against
    /// [`scalar::gemm_bf16_rounded`] and [`scalar::gemm_bf16_split`] for each `(k, rows,
    /// tokens)` on five data sets: random, zero weights, zero activations, ±1e30 weights
    /// with ±1e-3 activations, tiny weights with huge activations. Bound: 1e-5 of the sum of
    /// the products' magnitudes (f32 rounding in another order); padding columns untouched.
    /// Shared with the `vdpbf16ps` kernel's test (`float_gemm_bf16dot.rs`).
    pub(in super::super) fn check_against_twins(
        sizes: &[(usize, usize, usize)],
        [rounded, split]: [Gemm; 2],
    ) {
        for &(k, n_rows, n_tok) in sizes {
            for case in 0..5 {
                let (wf, a) = match case {
                    0 => (lcg(k as u64, n_rows * k, 1.0), lcg(7, n_tok * k, 3.0)),
                    1 => (vec![0.0; n_rows * k], lcg(9, n_tok * k, 1.0)),
                    2 => (lcg(3, n_rows * k, 1.0), vec![0.0; n_tok * k]),
                    3 => (
                        (0..n_rows * k)
                            .map(|i| if i % 3 == 0 { -1e30 } else { 1e30 })
                            .collect(),
                        (0..n_tok * k)
                            .map(|i| if i % 2 == 0 { 1e-3 } else { -1e-3 })
                            .collect(),
                    ),
                    _ => (lcg(5, n_rows * k, 1e-3), lcg(11, n_tok * k, 1e5)),
                };
                let w = bf16_bytes(&wf);
                let ldo = n_rows + 3;
                let twins: [(Gemm, Gemm); 2] = [
                    (rounded, scalar::gemm_bf16_rounded),
                    (split, scalar::gemm_bf16_split),
                ];
                for (kernel, twin) in twins {
                    let mut got = vec![f32::NAN; n_tok * ldo];
                    let mut want = vec![f32::NAN; n_tok * ldo];
                    kernel(k, &w, n_rows, &a, n_tok, &mut got, ldo);
                    twin(k, &w, n_rows, &a, n_tok, &mut want, ldo);
                    for t in 0..n_tok {
                        for r in 0..ldo {
                            let (g, x) = (got[t * ldo + r], want[t * ldo + r]);
                            if r >= n_rows {
                                assert!(g.is_nan(), "wrote padding column {r}");
                                continue;
                            }
                            let mag: f64 = (0..k)
                                .map(|i| {
                                    let wv = half::bf16::from_f32(wf[r * k + i]).to_f32();
                                    (f64::from(wv) * f64::from(a[t * k + i])).abs() * 1.01
                                })
                                .sum();
                            assert!(
                                ((g - x) as f64).abs() <= 1e-5 * mag + 1e-30,
                                "k={k} rows={n_rows} tok={n_tok} case {case} (t {t}, r {r}): \
                             {g} vs {x}"
                            );
                        }
                    }
                }
            }
        }
    }
}
