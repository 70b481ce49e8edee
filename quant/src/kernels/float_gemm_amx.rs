//! BF16 weights times f32 activations on AMX tiles (`tdpbf16ps`), the activations rounded
//! to bf16 (round to nearest even) and the products summed in f32: the vision tower's
//! matrices on CPUs with AMX-BF16 (Sapphire Rapids and later), where one tile instruction
//! does 16 x 16 x 32 multiply-adds, ~16x the f32 FMA rate of AVX-512.
//!
//! Layout (C = weights x activationsᵀ, so the weights need no packing):
//! - A tiles are 16 weight rows x 32 bf16 columns. Each block of 32 weight rows is copied
//!   once per super-block of tokens into `[k-step][32 rows][32 columns]` (zero-padded in k
//!   and rows), so every tile load reads 1 KiB of contiguous lines: loaded straight from
//!   the mapping (stride = row bytes) the tile loads took ~45% of the kernel's time;
//! - B tiles are 16 column pairs x 16 tokens (AMX's "VNNI" pair layout): per call the f32
//!   activations of a super-block of tokens are rounded to bf16 and transposed by 16 x 16
//!   blocks of pairs into `[token block][pair][16 tokens]`, zero-padded in k and tokens. A
//!   super-block is sized to stay in L2 (~1 MiB) while every 32-row weight block sweeps it;
//! - the microkernel holds 2 x 2 accumulator tiles (32 rows x 32 tokens, the most the eight
//!   tile registers allow with two A and two B tiles) over the whole k range, then stores
//!   them and writes them transposed (AVX-512, 16 x 16 at a time) into `out[t * ldo + r]`.
//!
//! The scalar twin is [`scalar::gemm_bf16_rounded`](super::scalar::gemm_bf16_rounded); `tests` compare them on random and
//! edge data at the tower's shapes and around every tile edge.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Bytes of packed activations per super-block (fits L2 beside one weight block).
const B_BYTES: usize = 1 << 20;

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

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
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
fn request_tile_data() -> bool {
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
    assert!(
        w.len() >= n_rows * 2 * k && a.len() >= n_tok * k,
        "gemm: input sizes"
    );
    assert!(
        n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "gemm: output size"
    );
    if n_tok == 0 || n_rows == 0 {
        return;
    }
    if k == 0 {
        for t in 0..n_tok {
            out[t * ldo..t * ldo + n_rows].fill(0.0);
        }
        return;
    }
    assert!(detected(), "AMX kernel called without AMX");
    // SAFETY: `detected()` holds (AMX-TILE/BF16, AVX-512 F/BW/BF16, tile state granted);
    // the sizes are asserted above.
    unsafe { gemm_amx(k, w, n_rows, a, n_tok, out, ldo) }
}

/// Tile configuration (palette 1): all eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16x64() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t] = 64; // colsb (u16 little-endian)
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemm_amx(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[f32],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let kp = k.div_ceil(32) * 16; // u32 column pairs per padded row
    let steps = kp / 16; // k-steps of 32 columns
    let ts = ((B_BYTES / (kp * 4)) / 32 * 32).clamp(32, n_tok.div_ceil(32) * 32);
    let mut b = vec![0u32; ts * kp]; // [ts / 16 token blocks][kp][16]
    let mut ap = vec![0u8; steps * 2048]; // one row block, [step][32 rows][32 bf16]
    let mut c = [0f32; 4 * 256];
    let cfg = TileConfig::all_16x64();
    // SAFETY: AMX is usable (caller); the config is a valid palette-1 config.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    for t0 in (0..n_tok).step_by(ts) {
        let nt = ts.min(n_tok - t0);
        // SAFETY: AVX-512 F/BW/BF16 (caller); `b` holds ts * kp ≥ nt.div_ceil(32) * 32 * kp.
        unsafe { pack_acts(&a[t0 * k..(t0 + nt) * k], nt, k, kp, &mut b) };
        for r0 in (0..n_rows).step_by(32) {
            let nr = 32.min(n_rows - r0);
            pack_weights(&w[r0 * 2 * k..(r0 + nr) * 2 * k], k, steps, &mut ap);
            for tb0 in (0..nt).step_by(32) {
                let bp = b.as_ptr().add(tb0 / 16 * kp * 16);
                // SAFETY: A: step s < steps of `ap` is 32 rows of 64 bytes; B: blocks
                // tb0 / 16 and + 1 of `b` (zero-padded to 32 tokens), pairs 16 s..16 s + 16
                // < kp. `c` is 4 tiles of 16 x 16 f32.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    for s in 0..steps {
                        dp_2x2(ap.as_ptr().add(2048 * s), bp.add(256 * s), kp * 64);
                    }
                    let cp = c.as_mut_ptr();
                    asm!(
                        "tilestored [{c} + {s}], tmm0",
                        "tilestored [{c} + {s} + 1024], tmm1",
                        "tilestored [{c} + {s} + 2048], tmm2",
                        "tilestored [{c} + {s} + 3072], tmm3",
                        c = in(reg) cp,
                        s = in(reg) 64usize,
                        options(nostack)
                    );
                }
                let ntt = 32.min(nt - tb0);
                // c tile 2 i + j: rows 16 i.., tokens 16 j.. as [row][token].
                for i in 0..2 {
                    let live_r = nr.saturating_sub(16 * i).min(16);
                    if live_r == 0 {
                        break;
                    }
                    let m: __mmask16 = ((1u32 << live_r) - 1) as u16;
                    for j in 0..2 {
                        let live_t = ntt.saturating_sub(16 * j).min(16);
                        if live_t == 0 {
                            break;
                        }
                        let tr = transpose16(c.as_ptr().add((2 * i + j) * 256));
                        for (tt, v) in tr.iter().enumerate().take(live_t) {
                            let t = t0 + tb0 + 16 * j + tt;
                            // SAFETY: t < n_tok and the mask keeps r0 + 16 i + lane <
                            // n_rows, so the row lies inside `out` (asserted by the caller).
                            unsafe {
                                _mm512_mask_storeu_ps(
                                    out.as_mut_ptr().add(t * ldo + r0 + 16 * i),
                                    m,
                                    *v,
                                )
                            };
                        }
                    }
                }
            }
        }
    }
    // SAFETY: releases the tile state this call configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One k-step of 32 columns: the 2 x 2 accumulators (tmm0..3) += A halves (rows 0-15 at
/// `a`, 16-31 at `a + 1024`, stride 64) times B halves (`b` and the next token block, `sb`
/// bytes apart, stride 64).
///
/// # Safety
/// AMX configured as in [`gemm_amx`]; 2 KiB readable at `a`, 1 KiB at `b` and `b + sb`.
#[inline(always)]
unsafe fn dp_2x2(a: *const u8, b: *const u32, sb: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a} + {s64}]",
            "tileloadd tmm5, [{a1} + {s64}]",
            "tileloadd tmm6, [{b} + {s64}]",
            "tileloadd tmm7, [{b1} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = in(reg) a,
            a1 = in(reg) a.add(1024),
            b = in(reg) b,
            b1 = in(reg) b.cast::<u8>().add(sb),
            s64 = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

/// The `nr ≤ 32` bf16 rows of `k` in `rows` to the A layout `[steps][32][32]` (each k-step's
/// two 16-row tiles back to back, 1 KiB each, so tile loads read contiguous lines), zero
/// beyond `k` and `nr`.
fn pack_weights(rows: &[u8], k: usize, steps: usize, ap: &mut [u8]) {
    let nr = rows.len() / (2 * k);
    for s in 0..steps {
        let (c0, c1) = (32 * s, (32 * s + 32).min(k));
        let dst = &mut ap[s * 2048..(s + 1) * 2048];
        for (r, d) in dst.chunks_exact_mut(64).enumerate() {
            if r >= nr {
                d.fill(0);
                continue;
            }
            let n = 2 * (c1 - c0);
            d[..n].copy_from_slice(&rows[r * 2 * k + 2 * c0..][..n]);
            d[n..].fill(0);
        }
    }
}

/// `nt` f32 rows of `k` to bf16 column pairs in the B layout `[nt / 16][kp][16]` (u32 =
/// two bf16, the lower column in the low half), zero beyond `k` and `nt` up to 32 tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_acts(a: &[f32], nt: usize, k: usize, kp: usize, b: &mut [u32]) {
    let blocks = nt.div_ceil(32) * 2;
    debug_assert!(b.len() >= blocks * kp * 16 && a.len() >= nt * k);
    for tb in 0..blocks {
        for s in 0..kp / 16 {
            let mut rows = [_mm512_setzero_ps(); 16];
            for (tt, row) in rows.iter_mut().enumerate() {
                let t = tb * 16 + tt;
                if t >= nt {
                    break;
                }
                let c0 = 32 * s;
                let load = |c: usize| {
                    let live = k.saturating_sub(c).min(16);
                    let m: __mmask16 = ((1u32 << live) - 1) as u16;
                    // SAFETY: the mask keeps columns c + lane < k of row t < nt.
                    unsafe { _mm512_maskz_loadu_ps(m, a.as_ptr().add(t * k + c)) }
                };
                let (lo, hi) = (load(c0), load(c0 + 16));
                // 32 bf16 in column order: `lo` fills the low half.
                let bh: __m512bh = _mm512_cvtne2ps_pbh(hi, lo);
                // SAFETY: both are 512-bit vectors; the bits are kept as they are.
                *row = unsafe { std::mem::transmute::<__m512bh, __m512>(bh) };
            }
            let tr = transpose16(rows.as_ptr().cast());
            let dst = b.as_mut_ptr().add((tb * kp + 16 * s) * 16);
            for (p, v) in tr.iter().enumerate() {
                // SAFETY: pair 16 s + p < kp of token block tb < blocks, inside `b`.
                unsafe { _mm512_storeu_ps(dst.add(16 * p).cast(), *v) };
            }
        }
    }
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
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

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

    /// Against the scalar twin on random, zero, ±large and tiny data; sizes around the
    /// 16/32 tile edges, k-tails, super-block edges and the tower's shapes (k = 588, 1152,
    /// 4304). Same bound as the f32 kernels: the sums differ only in f32 rounding order.
    #[test]
    fn amx_matches_scalar_twin() {
        if !detected() {
            println!("skipped: CPU lacks AMX-BF16 (or the OS did not grant tile data)");
            return;
        }
        for &(k, n_rows, n_tok) in &[
            (1usize, 1usize, 1usize),
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
        ] {
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
                let mut got = vec![f32::NAN; n_tok * ldo];
                let mut want = vec![f32::NAN; n_tok * ldo];
                gemm_bf16_rounded(k, &w, n_rows, &a, n_tok, &mut got, ldo);
                super::super::scalar::gemm_bf16_rounded(k, &w, n_rows, &a, n_tok, &mut want, ldo);
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
                                let av = half::bf16::from_f32(a[t * k + i]).to_f32();
                                (f64::from(wv) * f64::from(av)).abs()
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
