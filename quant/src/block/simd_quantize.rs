//! SIMD twins of the row quantizers that convert and the runtime call most: f32 → F16 / BF16,
//! bf16 → f32 widening, Q4_0, Q5_0, Q8_0 and the K-quants Q2_K-Q6_K (what convert writes; the
//! K-quants' fits run one sub-block per vector lane, `kfit_lanes.rs`), Q8_0 / Q8_1 / Q8_K (the
//! activation formats quantized before every matmul); on aarch64 the activation formats and
//! the K-quant fits (`simd_neon.rs`). The converter's bf16 rows go straight to F16 / BF16 /
//! Q8_0 / Q4_0 bytes ([`FromBf16`]): each block is widened in registers and quantized at once,
//! so no f32 row exists in memory; their scalar twins are the definition, the widening
//! followed by the scalar quantizer, a group of [`GROUP`] elements at a time ([`widened`]).
//!
//! Every twin produces the very bytes of the scalar reference next to its format (itself
//! byte-identical to ggml's): the same f32 operations on the same values, exact integer
//! reductions (a max of non-negative floats compared as integers, sums of small integers) and
//! the reference's rounding reproduced exactly (`roundf` as trunc + |fraction| ≥ ½, ggml's
//! `nearest_int` as round-to-nearest-even, Q4_0's truncating cast as `cvtt`). A block the SIMD
//! path cannot reproduce cheaply (NaN or ±inf inside, or a scale whose inverse overflows)
//! goes through the scalar block quantizer instead. The tier is chosen once, at first use,
//! from run-time feature detection, capped like the kernels' (`POCKETVL_MAX_TIER`);
//! `POCKETVL_FORCE_SCALAR=1` keeps the scalar twins.

use std::sync::OnceLock;

use super::{bf16, each_block, f16, q2_k, q3_k, q4_0, q4_k, q5_0, q5_k, q6_k, q8_0, q8_1, q8_k};
use crate::types::GgmlType;

/// Quantizes a row whose sizes `check_row` validated (whole blocks, exact byte count).
pub(super) type QuantizeFn = fn(&[f32], &mut [u8]);
/// Widens `dst.len()` little-endian 16-bit floats of `src` to f32.
pub(super) type WidenFn = fn(&[u8], &mut [f32]);

/// Converts a row of little-endian 16-bit floats (`src`) to a format's bytes (`dst`), sizes
/// validated by the caller (whole blocks, exact byte counts).
pub(super) type ConvertFn = fn(&[u8], &mut [u8]);

/// One tier's row quantizers.
#[derive(Clone, Copy)]
pub(super) struct RowQuantizers {
    pub f16: QuantizeFn,
    pub bf16: QuantizeFn,
    pub bf16_to_f32: WidenFn,
    pub q4_0: QuantizeFn,
    pub q5_0: QuantizeFn,
    pub q8_0: QuantizeFn,
    pub q8_1: QuantizeFn,
    pub q8_k: QuantizeFn,
    pub q2_k: QuantizeFn,
    pub q3_k: QuantizeFn,
    pub q4_k: QuantizeFn,
    pub q5_k: QuantizeFn,
    pub q6_k: QuantizeFn,
    pub from_bf16: FromBf16,
}

/// One tier's fused bf16 → format row converters: the formats convert writes from bf16
/// checkpoints. Each is byte-identical to widening the row to f32 and quantizing it.
#[derive(Clone, Copy)]
pub(super) struct FromBf16 {
    pub f16: ConvertFn,
    pub bf16: ConvertFn,
    pub q8_0: ConvertFn,
    pub q4_0: ConvertFn,
}

impl FromBf16 {
    /// The converter for output `ty`, if this table has one.
    pub fn get(&self, ty: GgmlType) -> Option<ConvertFn> {
        match ty {
            GgmlType::F16 => Some(self.f16),
            GgmlType::BF16 => Some(self.bf16),
            GgmlType::Q8_0 => Some(self.q8_0),
            GgmlType::Q4_0 => Some(self.q4_0),
            _ => None,
        }
    }

    /// The scalar twins: the definition (exact widening, then the scalar reference quantizer).
    pub fn scalar() -> FromBf16 {
        FromBf16 {
            f16: |s, d| widened(s, 2, d, GgmlType::F16, bf16::dequantize, f16::quantize),
            bf16: |s, d| widened(s, 2, d, GgmlType::BF16, bf16::dequantize, bf16::quantize),
            q8_0: |s, d| {
                let q: QuantizeFn = |s, d| each_block(s, d, q8_0::quantize_block);
                widened(s, 2, d, GgmlType::Q8_0, bf16::dequantize, q)
            },
            q4_0: |s, d| {
                let q: QuantizeFn = |s, d| each_block(s, d, q4_0::quantize_block);
                widened(s, 2, d, GgmlType::Q4_0, bf16::dequantize, q)
            },
        }
    }
}

/// Elements [`widened`] takes at a time: a whole number of blocks of every format (blocks are
/// 1, 32 or 256 elements), two K-quant super-blocks (what the AVX-512 K-quant fits take at
/// once, `kfit_lanes.rs`), and 2 KiB of f32, which stays in L1.
pub(super) const GROUP: usize = 512;

/// Converts a row of `in_size`-byte values to `ty` by widening [`GROUP`] elements at a time
/// into a stack buffer and quantizing each group into its place in `dst` (every quantizer
/// works block by block, so the groups give the bytes of the whole row). Sizes validated by
/// the caller; `ty`'s block divides [`GROUP`].
pub(super) fn widened(
    src: &[u8],
    in_size: usize,
    dst: &mut [u8],
    ty: GgmlType,
    widen: WidenFn,
    quantize: QuantizeFn,
) {
    let mut buf = [0f32; GROUP];
    let out_per_group = GROUP / ty.block_size() * ty.type_size();
    for (s, d) in src
        .chunks(GROUP * in_size)
        .zip(dst.chunks_mut(out_per_group.max(1)))
    {
        let x = &mut buf[..s.len() / in_size];
        widen(s, x);
        quantize(x, d);
    }
}

impl RowQuantizers {
    /// The scalar references.
    pub fn scalar() -> RowQuantizers {
        RowQuantizers {
            f16: f16::quantize,
            bf16: bf16::quantize,
            bf16_to_f32: bf16::dequantize,
            q4_0: |s, d| each_block(s, d, q4_0::quantize_block),
            q5_0: |s, d| each_block(s, d, q5_0::quantize_block),
            q8_0: |s, d| each_block(s, d, q8_0::quantize_block),
            q8_1: |s, d| each_block(s, d, q8_1::quantize_block),
            q8_k: |s, d| each_block(s, d, q8_k::quantize_block),
            q2_k: |s, d| each_block(s, d, q2_k::quantize_block),
            q3_k: |s, d| each_block(s, d, q3_k::quantize_block),
            q4_k: |s, d| each_block(s, d, q4_k::quantize_block),
            q5_k: |s, d| each_block(s, d, q5_k::quantize_block),
            q6_k: |s, d| each_block(s, d, q6_k::quantize_block),
            from_bf16: FromBf16::scalar(),
        }
    }

    /// Every SIMD tier this CPU can run, named (for the twin tests).
    #[cfg(test)]
    // Built by pushes: which tiers exist depends on the target and the CPU.
    #[allow(clippy::vec_init_then_push)]
    pub fn simd_tiers() -> Vec<(&'static str, RowQuantizers)> {
        let mut tiers = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if super::simd_avx2::detected() {
                tiers.push(("avx2", super::simd_avx2::quantizers()));
            }
            if super::simd_avx512::detected() {
                tiers.push(("avx512", super::simd_avx512::quantizers()));
            }
        }
        #[cfg(target_arch = "aarch64")]
        tiers.push(("neon", super::simd_neon::quantizers()));
        tiers
    }
}

/// The best tier this CPU runs, capped as the kernels are (`POCKETVL_MAX_TIER`: the AVX-512
/// quantizers belong to the `avx512-vnni` kernel tier, the AVX2 ones to `avx2`).
fn select() -> RowQuantizers {
    if crate::kernels::force_scalar() {
        return RowQuantizers::scalar();
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::tier_allowed;
        if super::simd_avx512::detected() && tier_allowed("avx512-vnni") {
            return super::simd_avx512::quantizers();
        }
        if super::simd_avx2::detected() && tier_allowed("avx2") {
            return super::simd_avx2::quantizers();
        }
    }
    baseline()
}

/// The tier every CPU of the architecture runs: NEON on aarch64, scalar elsewhere.
#[cfg(target_arch = "aarch64")]
fn baseline() -> RowQuantizers {
    super::simd_neon::quantizers()
}

#[cfg(not(target_arch = "aarch64"))]
fn baseline() -> RowQuantizers {
    RowQuantizers::scalar()
}

static TABLE: OnceLock<RowQuantizers> = OnceLock::new();

/// Checks a SIMD `roundf` of `W` lanes (`round`) against `f32::round`: on the floats where it
/// could most easily differ (every float within 64 steps of each integer and half-integer up
/// to 256 and near 2²⁰, 2²² and 2²³, the ties and their neighbours, and a stride through all
/// floats below 128, the quantizers' range), or with `everywhere` on every float below 2²³ in
/// magnitude, both signs (~2·10⁹ of them: a few seconds in a release build).
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn check_round_away<const W: usize>(
    everywhere: bool,
    round: impl Fn([f32; W]) -> [i32; W],
) {
    let check = |x: [f32; W]| {
        for (v, got) in x.iter().zip(round(x)) {
            assert_eq!(got, v.round() as i32, "{v:e}");
        }
    };
    const BELOW_2_23: u32 = 0x4b00_0000;
    if everywhere {
        for sign in [0, 0x8000_0000u32] {
            for b in (0..BELOW_2_23).step_by(W) {
                check(std::array::from_fn(|l| {
                    f32::from_bits((b + l as u32) | sign)
                }));
            }
        }
        return;
    }
    let mut v: Vec<f32> = Vec::new();
    for n in (0..=256).chain([1 << 20, (1 << 22) - 1, (1 << 23) - 1]) {
        for base in [n as f32, n as f32 + 0.5] {
            for step in -64i32..=64 {
                v.push(f32::from_bits(base.to_bits().wrapping_add_signed(step)));
            }
        }
    }
    v.extend((0..0x4300_0000u32).step_by(1009).map(f32::from_bits));
    v.retain(|x| x.to_bits() < BELOW_2_23);
    let mut all: Vec<f32> = v.iter().flat_map(|&x| [x, -x]).collect();
    all.resize(all.len().next_multiple_of(W), 0.0);
    for chunk in all.chunks_exact(W) {
        check(std::array::from_fn(|l| chunk[l]));
    }
}

/// The process-wide row quantizers, chosen at first use.
#[inline]
pub(super) fn table() -> &'static RowQuantizers {
    TABLE.get_or_init(select)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::GgmlType;
    use rand::{Rng, SeedableRng};

    /// Rows of `n` values (n a multiple of 256) covering the cases where a SIMD twin could
    /// drift from the reference: random data at several scales, zeros, ±max, subnormals,
    /// NaN/inf, exact .5 ties after scaling, and equal magnitudes of opposite sign.
    fn edge_rows(n: usize) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut rows = Vec::new();
        for scale in [1e-30f32, 1e-3, 1.0, 37.0, 1e30] {
            rows.push(
                (0..n)
                    .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
                    .collect(),
            );
        }
        rows.push(vec![0.0; n]);
        rows.push(vec![-0.0; n]);
        rows.push(
            (0..n)
                .map(|i| if i % 3 == 0 { f32::MAX } else { -f32::MAX })
                .collect(),
        );
        // Subnormals alone (scales whose inverse overflows) and mixed with normals.
        rows.push(
            (0..n)
                .map(|i| f32::from_bits(1 + (i as u32 * 7919) % 0x007f_ffff))
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|i| f32::from_bits(1 + i as u32) * if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|i| {
                    if i % 5 == 0 {
                        f32::MIN_POSITIVE * 0.5
                    } else {
                        i as f32 * 1e-3
                    }
                })
                .collect(),
        );
        // Non-finite values at different places in a block.
        for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            for every in [1, 7, 31, 256] {
                rows.push(
                    (0..n)
                        .map(|i| {
                            if i % every == every - 1 {
                                special
                            } else {
                                rng.gen_range(-2.0f32..2.0)
                            }
                        })
                        .collect(),
                );
            }
        }
        rows.push(
            (0..n)
                .map(|i| f32::from_bits(0x7f80_0001 + i as u32))
                .collect(),
        );
        // Ties: with a block max of 127 (Q8_0: d = 1; Q8_K: iscale = −1) every k + ½ is
        // an exact tie; with max −8 (Q4_0: d = 1) likewise.
        for max in [127.0f32, -127.0, -8.0, 8.0] {
            rows.push(
                (0..n)
                    .map(|i| {
                        if i % 32 == 3 {
                            max
                        } else {
                            ((i % 255) as f32 - 127.0) + 0.5
                        }
                        .clamp(-max.abs(), max.abs())
                    })
                    .collect(),
            );
        }
        // Equal magnitudes with opposite signs: the first one sets the sign.
        rows.push(
            (0..n)
                .map(|i| match i % 64 {
                    5 => -3.0,
                    9 => 3.0,
                    40 => 3.0,
                    50 => -3.0,
                    _ => (i % 7) as f32 * 0.25,
                })
                .collect(),
        );
        // bf16/f16 rounding ties and overflow.
        rows.push(
            (0..n)
                .map(|i| f32::from_bits(0x3f80_8000 + ((i as u32) << 16)))
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|i| 65504.0 + 16.0 * i as f32 * if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|i| f32::from_bits(0x3380_0000 + i as u32 * 0x1000))
                .collect(),
        );
        rows
    }

    fn quantize_with(t: &RowQuantizers, ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let f = match ty {
            GgmlType::F16 => t.f16,
            GgmlType::BF16 => t.bf16,
            GgmlType::Q4_0 => t.q4_0,
            GgmlType::Q5_0 => t.q5_0,
            GgmlType::Q8_0 => t.q8_0,
            GgmlType::Q8_1 => t.q8_1,
            GgmlType::Q8_K => t.q8_k,
            GgmlType::Q2_K => t.q2_k,
            GgmlType::Q3_K => t.q3_k,
            GgmlType::Q4_K => t.q4_k,
            GgmlType::Q5_K => t.q5_k,
            GgmlType::Q6_K => t.q6_k,
            _ => unreachable!("no twin for {ty}"),
        };
        let mut out = vec![0u8; ty.row_bytes(x.len() as u64).unwrap_or(0) as usize];
        f(x, &mut out);
        out
    }

    #[test]
    fn quantizer_twins_match_scalar_bytes() {
        let scalar = RowQuantizers::scalar();
        let tiers = RowQuantizers::simd_tiers();
        assert!(!tiers.is_empty() || !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")));
        for n in [256, 512, 2304] {
            for (ri, x) in edge_rows(n).iter().enumerate() {
                for ty in [
                    GgmlType::F16,
                    GgmlType::BF16,
                    GgmlType::Q4_0,
                    GgmlType::Q5_0,
                    GgmlType::Q8_0,
                    GgmlType::Q8_1,
                    GgmlType::Q8_K,
                    GgmlType::Q2_K,
                    GgmlType::Q3_K,
                    GgmlType::Q4_K,
                    GgmlType::Q5_K,
                    GgmlType::Q6_K,
                ] {
                    let want = quantize_with(&scalar, ty, x);
                    for (name, t) in &tiers {
                        let got = quantize_with(t, ty, x);
                        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                            panic!(
                                "{name} {ty}: row {ri} (n {n}) differs at byte {i}: {} vs {}",
                                got[i], want[i]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Block counts that leave the SIMD quantizers' groups of blocks partly filled (the
    /// sizes above are whole groups but for 2,304), for the formats of 32-value blocks.
    #[test]
    fn quantizer_twins_match_scalar_bytes_in_partial_groups() {
        let scalar = RowQuantizers::scalar();
        for blocks in [1usize, 3, 7, 9, 15, 17, 23, 33] {
            for (ri, x) in edge_rows(32 * blocks).iter().enumerate() {
                for ty in [
                    GgmlType::Q4_0,
                    GgmlType::Q5_0,
                    GgmlType::Q8_0,
                    GgmlType::Q8_1,
                ] {
                    let want = quantize_with(&scalar, ty, x);
                    for (name, t) in &RowQuantizers::simd_tiers() {
                        assert_eq!(
                            quantize_with(t, ty, x),
                            want,
                            "{name} {ty}: row {ri}, {blocks} blocks"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn float_twins_handle_odd_lengths() {
        let scalar = RowQuantizers::scalar();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in (0..70).chain([255, 1001, 4099]) {
            let x: Vec<f32> = (0..n)
                .map(|i| match i % 11 {
                    0 => f32::NAN,
                    1 => f32::from_bits(0x0000_1234),
                    _ => rng.gen_range(-1e5f32..1e5),
                })
                .collect();
            let raw: Vec<u8> = (0..2 * n).map(|_| rng.gen()).collect();
            for (name, t) in &RowQuantizers::simd_tiers() {
                for ty in [GgmlType::F16, GgmlType::BF16] {
                    assert_eq!(
                        quantize_with(t, ty, &x),
                        quantize_with(&scalar, ty, &x),
                        "{name} {ty} n {n}"
                    );
                }
                let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
                (t.bf16_to_f32)(&raw, &mut got);
                (scalar.bf16_to_f32)(&raw, &mut want);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{name} bf16 → f32 n {n}");
            }
        }
    }

    /// bf16 rows for the fused converters: the edge rows rounded and truncated to bf16, every
    /// bit pattern's neighbourhood (random u16, so NaN payloads, ±inf, subnormals, ±0), and
    /// bf16 signalling NaNs.
    fn bf16_rows(n: usize) -> Vec<Vec<u8>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut rows: Vec<Vec<u8>> = Vec::new();
        for x in edge_rows(n) {
            rows.push(
                x.iter()
                    .flat_map(|&v| bf16::f32_to_bf16(v).to_le_bytes())
                    .collect(),
            );
            rows.push(
                x.iter()
                    .flat_map(|&v| v.to_bits().to_le_bytes()[2..].to_vec())
                    .collect(),
            );
        }
        for _ in 0..8 {
            rows.push((0..2 * n).map(|_| rng.gen()).collect());
        }
        rows.push(
            (0..n)
                .flat_map(|i| (0x7f81u16 + (i % 63) as u16).to_le_bytes())
                .collect(),
        );
        rows.push(
            (0..n)
                .flat_map(|i| [0x8000u16, 0, 0xff80, 0x7f80][i % 4].to_le_bytes())
                .collect(),
        );
        rows
    }

    /// What the fused converters must equal: the row widened to f32, then the scalar reference.
    fn widened_then_quantized(ty: GgmlType, raw: &[u8]) -> Vec<u8> {
        let mut x = vec![0f32; raw.len() / 2];
        bf16::dequantize(raw, &mut x);
        quantize_with(&RowQuantizers::scalar(), ty, &x)
    }

    #[test]
    fn fused_bf16_converters_match_widen_then_quantize() {
        let tiers = std::iter::once(("scalar", RowQuantizers::scalar()))
            .chain(RowQuantizers::simd_tiers())
            .collect::<Vec<_>>();
        let rows_at = |n: usize| bf16_rows(n).into_iter().map(move |r| (n, r));
        // Whole blocks (the quantized formats) at several sizes, including odd block counts.
        let sizes = [32usize, 96, 256, 1056, 4096 + 32];
        for (n, raw) in sizes.into_iter().flat_map(rows_at) {
            for ty in [
                GgmlType::F16,
                GgmlType::BF16,
                GgmlType::Q8_0,
                GgmlType::Q4_0,
            ] {
                let want = widened_then_quantized(ty, &raw);
                for (name, t) in &tiers {
                    let mut got = vec![0u8; want.len()];
                    (t.from_bf16.get(ty).unwrap())(&raw, &mut got);
                    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                        panic!(
                            "{name} bf16 → {ty}, n {n}: byte {i}: {} vs {}",
                            got[i], want[i]
                        );
                    }
                }
            }
        }
        // Any length for the float outputs (the vector loops' tails).
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in (0..70).chain([255, 1001, 4099]) {
            let raw: Vec<u8> = (0..2 * n).map(|_| rng.gen()).collect();
            for ty in [GgmlType::F16, GgmlType::BF16] {
                let want = widened_then_quantized(ty, &raw);
                for (name, t) in &tiers {
                    let mut got = vec![0u8; want.len()];
                    (t.from_bf16.get(ty).unwrap())(&raw, &mut got);
                    assert_eq!(got, want, "{name} bf16 → {ty} n {n}");
                }
            }
        }
    }
}
