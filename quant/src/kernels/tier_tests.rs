//! Every SIMD slot of every tier this CPU runs, checked against the scalar
//! tier: dots against the scalar dot, GEMMs against `gemm_by_dots` over the
//! scalar dot, on random and edge data, odd row/token counts and many `k`.
//! A tier the CPU lacks is skipped (and says so).
//!
//! Bounds: the kernels compute the same integer block sums as the scalar
//! twins and differ only in the order (and fusing) of the f32 additions, so
//! the difference is bounded by a few ulps of Σ|w·a| per block summed:
//! `2·(blocks + 8)·ε·Σ|w·a|`.

use super::*;
use crate::block::{dequantize_row, f32_to_f16, quantize_row};

/// The AVX-VNNI tier with the emulated `vpdpbusd` (`avx_vnni::Emulated`): its tiles'
/// layout and arithmetic checked on CPUs without the instruction.
#[cfg(target_arch = "x86_64")]
fn avx_vnni_emulated() -> KernelTable {
    KernelTable::build(
        "avx2-vnni (emulated)",
        &[
            |f| f.scalar,
            |f| f.avx2,
            |f| {
                use q0_avxvnni_rows::emulated as q;
                use GgmlType::*;
                // The emulation stands in for exactly the real tier's GEMMs.
                let gemm = f.avx_vnni.gemm.map(|_| -> GemmFn {
                    match f.ty {
                        Q4_0 => q::gemm_q4_0_q8_0,
                        Q4_1 => q::gemm_q4_1_q8_1,
                        Q5_0 => q::gemm_q5_0_q8_0,
                        Q5_1 => q::gemm_q5_1_q8_1,
                        Q8_0 => q::gemm_q8_0_q8_0,
                        ty => panic!("{ty}: an avx2-vnni GEMM without its emulated twin"),
                    }
                });
                crate::formats::Kernels { dot: None, gemm }
            },
        ],
    )
}

/// The SIMD tiers this CPU runs (with their names); prints the skipped ones.
fn simd_tiers() -> Vec<KernelTable> {
    let mut tiers = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::detected() {
            tiers.push(KernelTable::avx2());
            if avx_vnni::detected() {
                tiers.push(KernelTable::avx_vnni());
            } else {
                println!(
                    "avx2-vnni tier: CPU lacks AVX-VNNI, its tiles run with vpdpbusd emulated"
                );
                tiers.push(avx_vnni_emulated());
            }
            if avx512::detected() {
                tiers.push(KernelTable::avx512());
                if q0_amx::detected() {
                    tiers.push(KernelTable::amx());
                } else {
                    println!("skipped: avx512-amx tier (CPU lacks AMX-TILE/AMX-INT8)");
                }
            } else {
                println!("skipped: avx512 tier (CPU lacks AVX-512 F/BW/VL/VNNI)");
            }
        } else {
            println!("skipped: avx2 and avx512 tiers (CPU lacks AVX2/FMA/F16C)");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        tiers.push(KernelTable::neon());
        if neon::has_dotprod() {
            tiers.push(KernelTable::neon_dotprod());
            if neon::has_i8mm() {
                tiers.push(KernelTable::neon_i8mm());
            } else {
                println!("skipped: neon-i8mm tier (CPU lacks FEAT_I8MM)");
            }
        } else {
            println!("skipped: neon-dotprod and neon-i8mm tiers (CPU lacks FEAT_DotProd)");
        }
    }
    if tiers.is_empty() {
        println!("skipped: no SIMD tier on this CPU");
    }
    tiers
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// Uniform in [−scale, scale).
    fn f32(&mut self, scale: f32) -> f32 {
        ((self.next() & 0xff_ffff) as f32 / (1u32 << 23) as f32 - 1.0) * scale
    }
}

/// Activation data: the weight type's `vec_dot_type`, from floats.
fn quant(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap_or(0) as usize];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

/// Edge and random float rows of `n` elements, one per case.
fn cases(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut g = Lcg(seed);
    let random: Vec<f32> = (0..n).map(|_| g.f32(2.0)).collect();
    // Every other 32-block zero: a block with d = 0 between normal ones.
    let holes: Vec<f32> = (0..n)
        .map(|i| if (i / 32) % 2 == 0 { 0.0 } else { g.f32(1.0) })
        .collect();
    vec![
        random,
        vec![0.0; n],
        // ±max quants (the scale stays small enough for Q8_1's f16 `s`).
        (0..n)
            .map(|i| if i % 3 == 0 { -10.0 } else { 10.0 })
            .collect(),
        vec![0.75; n],
        holes,
    ]
}

/// `n` weight rows of `ty` for the GEMM tests: the rows `random_row` picks hold random bytes
/// when `random` (the format takes any bytes), the others are `wcases` (cycled) scaled by
/// `1 + step·r` and quantized.
#[allow(clippy::too_many_arguments)]
fn weight_rows(
    ty: GgmlType,
    k: usize,
    n: usize,
    g: &mut Lcg,
    wcases: &[Vec<f32>],
    random: bool,
    random_row: impl Fn(usize) -> bool,
    step: f32,
) -> Vec<Vec<u8>> {
    (0..n)
        .map(|r| {
            if random && random_row(r) {
                random_bytes_row(ty, k, g)
            } else {
                let x: Vec<f32> = wcases[r % wcases.len()]
                    .iter()
                    .map(|v| v * (1.0 + step * r as f32))
                    .collect();
                quant(ty, &x)
            }
        })
        .collect()
}

/// Weight rows whose bytes are random (every quant pattern, −128 included for
/// Q8_0), with finite random scales/minimums.
fn random_bytes_row(ty: GgmlType, k: usize, g: &mut Lcg) -> Vec<u8> {
    let mut row: Vec<u8> = (0..ty.row_bytes(k as u64).unwrap_or(0))
        .map(|_| g.next() as u8)
        .collect();
    // The f16 fields lead every block of the 32-element formats and of
    // Q4_K/Q5_K: d, then m (Q4_1/Q5_1) or dmin (Q4_K/Q5_K); Q3_K and Q6_K store
    // their d last, Q2_K its d and dmin.
    let halves = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => 2,
        _ => 1,
    };
    let size = ty.type_size();
    for b in row.chunks_exact_mut(size) {
        if matches!(ty, GgmlType::Q3_K | GgmlType::Q6_K) {
            b[size - 2..].copy_from_slice(&f32_to_f16(g.f32(0.1)));
            continue;
        }
        if ty == GgmlType::Q2_K {
            b[size - 4..size - 2].copy_from_slice(&f32_to_f16(g.f32(0.1)));
            b[size - 2..].copy_from_slice(&f32_to_f16(g.f32(0.1)));
            continue;
        }
        for h in 0..halves {
            b[2 * h..2 * h + 2].copy_from_slice(&f32_to_f16(g.f32(0.1)));
        }
    }
    row
}

/// Σ|w·a| of one row pair, the scale of the allowed rounding difference.
fn magnitude(ty: GgmlType, k: usize, w: &[u8], a: &[u8]) -> f64 {
    let (mut wd, mut ad) = (vec![0f32; k], vec![0f32; k]);
    dequantize_row(ty, w, &mut wd).unwrap();
    dequantize_row(vec_dot_type(ty), a, &mut ad).unwrap();
    wd.iter()
        .zip(&ad)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum()
}

fn tolerance(k: usize, mag: f64) -> f64 {
    2.0 * ((k / 32) as f64 + 8.0) * f32::EPSILON as f64 * mag + 1e-30
}

const BLOCK_FORMATS: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// The types whose weight rows are also tested as random bytes (every quant,
/// scale and minimum pattern; finite f16 fields).
const RANDOM_BYTE_FORMATS: [GgmlType; 10] = [
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

#[test]
fn simd_dots_match_scalar_twins() {
    let scalar = KernelTable::scalar();
    for tier in simd_tiers() {
        for id in 0..SLOTS {
            let (Some(simd), Some(reference)) = (tier.dots[id], scalar.dots[id]) else {
                continue;
            };
            let ty = GgmlType::from_id(id as u32).unwrap();
            let unit = ty.block_size().max(32);
            let at = vec_dot_type(ty);
            for k in [unit, 2 * unit, 3 * unit, 5 * unit, 4096.max(unit)] {
                let mut g = Lcg(k as u64);
                let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                for w in cases(k, 1) {
                    for a in cases(k, 2) {
                        rows.push((quant(ty, &w), quant(at, &a)));
                    }
                }
                if RANDOM_BYTE_FORMATS.contains(&ty) {
                    let a = quant(at, &cases(k, 3)[0]);
                    rows.push((random_bytes_row(ty, k, &mut g), a));
                }
                for (w, a) in rows {
                    let got = simd(k, &w, &a) as f64;
                    let want = reference(k, &w, &a) as f64;
                    let mag = magnitude(ty, k, &w, &a);
                    assert!(
                        got == want || (got - want).abs() <= tolerance(k, mag),
                        "{} {ty} k={k}: {got} vs scalar {want} (Σ|w·a| {mag})",
                        tier.isa
                    );
                }
            }
        }
    }
}

/// One GEMM slot of a SIMD tier, with what its tests compare it against.
struct GemmSlot {
    gemm: GemmFn,
    ty: GgmlType,
    /// The scalar table's dot (the reference).
    dot: DotFn,
    /// The tier's own dot (the 32-element block formats' GEMMs sum as it does).
    own_dot: DotFn,
    /// The activation type and the k granule of the format.
    at: GgmlType,
    unit: usize,
}

/// Every format `tier` has a GEMM kernel for.
fn gemm_slots(tier: &KernelTable, scalar: &KernelTable) -> Vec<GemmSlot> {
    (0..SLOTS)
        .filter_map(|id| {
            let gemm = tier.gemms[id]?;
            let ty = GgmlType::from_id(id as u32).unwrap();
            Some(GemmSlot {
                gemm,
                ty,
                dot: scalar.dots[id].expect("a GEMM slot without a scalar dot"),
                own_dot: tier.dots[id].expect("a GEMM slot without a dot"),
                at: vec_dot_type(ty),
                unit: ty.block_size().max(32),
            })
        })
        .collect()
}

/// Whether the tier's GEMM of `n_tok` tokens of `ty` sums each output's terms as its dot
/// does (bit-identical): every tile shape of the units and groups kernels does; the batch
/// kernels with the rows in the lanes (`q0_avx512_rows`, `q0_avx2_rows`, `kquant_avx2_rows`,
/// `kquant_avx512_rows`, `q0_avxvnni_rows`) and AMX's tiles (from 10 tokens) sum whole blocks
/// in block order instead, within the rounding bound.
fn sums_as_dot(isa: &str, ty: GgmlType, n_tok: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlType::*;
        // The fewest tokens the tier's row-lane kernel for `ty` serves.
        let from = if isa.starts_with("avx512") {
            match ty {
                Q6_K => kquant_avx512_rows::MIN_TOKENS_Q6_K,
                Q3_K => kquant_avx512_rows::MIN_TOKENS_Q3_K,
                Q2_K => kquant_avx512_rows::MIN_TOKENS_Q2_K,
                Q4_0 | Q4_1 => q0_avx512_rows::MIN_TOKENS_Q4,
                Q4_K | Q5_K => kquant_avx512_rows::MIN_TOKENS,
                _ => q0_avx512_rows::MIN_TOKENS,
            }
        } else if isa.starts_with("avx2-vnni") {
            match ty {
                Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => q0_avxvnni_rows::MIN_TOKENS,
                // The AVX2 tier's K-quant kernels.
                _ => return sums_as_dot("avx2", ty, n_tok),
            }
        } else if isa == "avx2" {
            match ty {
                Q4_0 => q0_avx2_rows::MIN_TOKENS_Q4_0,
                Q4_1 => q0_avx2_rows::MIN_TOKENS_Q4_1,
                Q5_0 => q0_avx2_rows::MIN_TOKENS_Q5_0,
                Q5_1 => q0_avx2_rows::MIN_TOKENS_Q5_1,
                Q8_0 => q0_avx2_rows::MIN_TOKENS_Q8_0,
                Q4_K | Q5_K => kquant_avx2_rows::MIN_TOKENS,
                Q2_K | Q3_K | Q6_K => kquant_avx2_rows::MIN_TOKENS_16,
                _ => return true,
            }
        } else {
            return true;
        };
        n_tok < from
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, ty, n_tok);
        true
    }
}

#[test]
fn simd_gemms_match_gemm_by_dots() {
    let scalar = KernelTable::scalar();
    for tier in simd_tiers() {
        for GemmSlot {
            gemm,
            ty,
            dot,
            own_dot,
            at,
            unit,
        } in gemm_slots(&tier, &scalar)
        {
            for k in [unit, 2 * unit, 3 * unit, 4096.max(unit)] {
                let (wrb, arb) = (
                    ty.row_bytes(k as u64).unwrap() as usize,
                    at.row_bytes(k as u64).unwrap() as usize,
                );
                let mut g = Lcg(7 + k as u64);
                let max_n = if k > 1024 { 5 } else { 9 };
                let (wcases, acases) = (cases(k, 11), cases(k, 12));
                let random = RANDOM_BYTE_FORMATS.contains(&ty);
                let wrows = weight_rows(ty, k, max_n, &mut g, &wcases, random, |r| r % 4 == 3, 1.0);
                let arows: Vec<Vec<u8>> = (0..max_n)
                    .map(|t| {
                        let x: Vec<f32> = acases[(t + 2) % acases.len()]
                            .iter()
                            .map(|v| v * (1.0 - 0.1 * t as f32))
                            .collect();
                        quant(at, &x)
                    })
                    .collect();
                // Σ|w·a| of each (row, token): the same for every shape below.
                let mags: Vec<Vec<f64>> = wrows
                    .iter()
                    .map(|w| arows.iter().map(|a| magnitude(ty, k, w, a)).collect())
                    .collect();
                for n_rows in 1..=max_n {
                    for n_tok in 1..=max_n {
                        let w = wrows[..n_rows].concat();
                        let a = arows[..n_tok].concat();
                        let ldo = n_rows + 3;
                        let mut got = vec![f32::MAX; n_tok * ldo];
                        let mut want = vec![f32::MAX; n_tok * ldo];
                        let mut own = vec![f32::MAX; n_tok * ldo];
                        gemm(k, &w, n_rows, &a, n_tok, &mut got, ldo);
                        gemm_by_dots(dot, wrb, arb, k, &w, n_rows, &a, n_tok, &mut want, ldo);
                        gemm_by_dots(own_dot, wrb, arb, k, &w, n_rows, &a, n_tok, &mut own, ldo);
                        let shape = Outputs {
                            isa: tier.isa,
                            ty,
                            k,
                            n_rows,
                            n_tok,
                            ldo,
                        };
                        shape.check(&got, |r, t| {
                            (want[t * ldo + r], mags[r][t], own[t * ldo + r])
                        });
                    }
                }
            }
        }
    }
}

/// One GEMM call's shape, for checking its outputs.
struct Outputs<'a> {
    isa: &'a str,
    ty: GgmlType,
    k: usize,
    n_rows: usize,
    n_tok: usize,
    ldo: usize,
}

impl Outputs<'_> {
    /// Every output of `got` against `want(r, t)` = (the scalar dot, its Σ|w·a|, the
    /// tier's own dot): within the rounding bound of the scalar dot, bit-identical to the
    /// tier's dot where the tile sums as the dot does (the 32-element block formats), and
    /// nothing written past `n_rows`.
    fn check(&self, got: &[f32], want: impl Fn(usize, usize) -> (f32, f64, f32)) {
        let Outputs {
            isa,
            ty,
            k,
            n_rows,
            n_tok,
            ldo,
        } = *self;
        for t in 0..n_tok {
            for r in 0..ldo {
                let g = got[t * ldo + r];
                // Built only for a failure message.
                let at = || format!("{isa} {ty} k={k} rows={n_rows} toks={n_tok} r={r} t={t}");
                if r >= n_rows {
                    assert_eq!(g, f32::MAX, "{}: wrote past n_rows", at());
                    continue;
                }
                let (e, mag, own) = want(r, t);
                assert!(
                    g == e || ((g - e) as f64).abs() <= tolerance(k, mag),
                    "{}: {g} vs scalar {e} (Σ|w·a| {mag})",
                    at()
                );
                if BLOCK_FORMATS.contains(&ty) && sums_as_dot(isa, ty, n_tok) {
                    // Same per-pair operations whatever the tile shape:
                    // bit-identical to the dot.
                    assert_eq!(g, own, "{}: tile vs own dot", at());
                }
            }
        }
    }
}

/// One to four tokens against many rows, as decode and the experts of a short
/// prompt run them: whole 16-row GEMV tiles (read row after row, prefetching
/// the rows ahead, each weight unit met by every token), a partial last tile,
/// k with a partial last unit, k spanning several k-chunks and k longer than
/// the units one pass holds (Q8_0 at 12,800 runs chunk by chunk), on
/// random-byte and edge rows. Every output equals the scalar dot within the
/// rounding bound and, for the 32-element block formats, the tier's own dot
/// bit for bit.
#[test]
fn simd_gemv_tiles_match_scalar_twins() {
    let scalar = KernelTable::scalar();
    for tier in simd_tiers() {
        for GemmSlot {
            gemm,
            ty,
            dot,
            own_dot,
            at,
            unit,
        } in gemm_slots(&tier, &scalar)
        {
            // 1 unit; 13 blocks (a partial last unit of the 4-block units);
            // 1280 (decode's width); 4192 (several k-chunks, partial tail);
            // 17 super-blocks (the K-quant GEMV's second pass); 12,800 (more
            // units than a pass holds, 50 super-blocks).
            let ks: Vec<usize> = [unit, 13 * unit, 1280, 4192, 17 * 256, 12_800]
                .into_iter()
                .filter(|k| k % unit == 0)
                .collect();
            for k in ks {
                let wrb = ty.row_bytes(k as u64).unwrap() as usize;
                let arb = at.row_bytes(k as u64).unwrap() as usize;
                let mut g = Lcg(99 + k as u64);
                let wcases = cases(k, 21);
                let n_max = 50;
                let random = BLOCK_FORMATS.contains(&ty);
                let w = weight_rows(ty, k, n_max, &mut g, &wcases, random, |r| r % 3 == 1, 0.25)
                    .concat();
                let acases = cases(k, 22);
                let a: Vec<u8> = (0..4)
                    .flat_map(|t| quant(at, &acases[t % acases.len()]))
                    .collect();
                // The scalar dot, its magnitude and the tier's own dot of each (row, token).
                let want: Vec<[(f32, f64, f32); 4]> = (0..n_max)
                    .map(|r| {
                        let row = &w[r * wrb..][..wrb];
                        std::array::from_fn(|t| {
                            let at = &a[t * arb..][..arb];
                            (
                                dot(k, row, at),
                                magnitude(ty, k, row, at),
                                own_dot(k, row, at),
                            )
                        })
                    })
                    .collect();
                for n_tok in 1..=4 {
                    for n_rows in [16usize, 17, 32, 47, 50] {
                        let ldo = n_rows + 3;
                        let mut got = vec![f32::MAX; n_tok * ldo];
                        gemm(
                            k,
                            &w[..n_rows * wrb],
                            n_rows,
                            &a[..n_tok * arb],
                            n_tok,
                            &mut got,
                            ldo,
                        );
                        let shape = Outputs {
                            isa: tier.isa,
                            ty,
                            k,
                            n_rows,
                            n_tok,
                            ldo,
                        };
                        shape.check(&got, |r, t| want[r][t]);
                    }
                }
            }
        }
    }
}

/// Batches of many tokens, as prefill and the MoE experts run them (the AMX tiles serve
/// 10 tokens and more, the VNNI row-lane kernel 5 and more): partial 16-token, 8-token
/// and 16-row tiles, one block, an odd block count
/// and decode's width, random-byte and edge rows, every output against the scalar dot
/// within the rounding bound and nothing written past `n_rows`.
#[test]
fn simd_batch_gemms_match_scalar_twins() {
    let scalar = KernelTable::scalar();
    for tier in simd_tiers() {
        for GemmSlot {
            gemm,
            ty,
            dot,
            at,
            unit,
            ..
        } in gemm_slots(&tier, &scalar)
        {
            let ks: Vec<usize> = [unit, 13 * unit, 1280]
                .into_iter()
                .filter(|k| k % unit == 0)
                .collect();
            for k in ks {
                let (wrb, arb) = (
                    ty.row_bytes(k as u64).unwrap() as usize,
                    at.row_bytes(k as u64).unwrap() as usize,
                );
                let mut g = Lcg(31 + k as u64);
                let (wcases, acases) = (cases(k, 41), cases(k, 42));
                let n_max = 33;
                let random = RANDOM_BYTE_FORMATS.contains(&ty);
                let w = weight_rows(ty, k, n_max, &mut g, &wcases, random, |r| r % 3 == 1, 0.25)
                    .concat();
                let t_max = 35;
                let a: Vec<u8> = (0..t_max)
                    .flat_map(|t| {
                        let x: Vec<f32> = acases[t % acases.len()]
                            .iter()
                            .map(|v| v * (1.0 - 0.02 * t as f32))
                            .collect();
                        quant(at, &x)
                    })
                    .collect();
                for n_rows in [1usize, 16, 17, 33] {
                    for n_tok in [10usize, 16, 35] {
                        let ldo = n_rows + 3;
                        let mut got = vec![f32::MAX; n_tok * ldo];
                        let mut want = vec![f32::MAX; n_tok * ldo];
                        let (w, a) = (&w[..n_rows * wrb], &a[..n_tok * arb]);
                        gemm(k, w, n_rows, a, n_tok, &mut got, ldo);
                        gemm_by_dots(dot, wrb, arb, k, w, n_rows, a, n_tok, &mut want, ldo);
                        for t in 0..n_tok {
                            for r in 0..ldo {
                                let (g, e) = (got[t * ldo + r], want[t * ldo + r]);
                                let at = || {
                                    format!(
                                        "{} {ty} k={k} rows={n_rows} toks={n_tok} r={r} t={t}",
                                        tier.isa
                                    )
                                };
                                if r >= n_rows {
                                    assert_eq!(g, f32::MAX, "{}: wrote past n_rows", at());
                                    continue;
                                }
                                let mag =
                                    magnitude(ty, k, &w[r * wrb..][..wrb], &a[t * arb..][..arb]);
                                assert!(
                                    g == e || ((g - e) as f64).abs() <= tolerance(k, mag),
                                    "{}: {g} vs scalar {e} (Σ|w·a| {mag})",
                                    at()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
