//! Dot-product and matrix kernels and their dispatch. Which kernel serves
//! which type in which tier is said once, in [`crate::formats::FORMATS`].
//!
//! The runtime calls [`vec_dot`] in its matmul inner loop, so the kernel table is
//! chosen once, at first use (`OnceLock`), from runtime CPU feature detection;
//! a call costs one table read and an indirect call, nothing more.
//! `POCKETVL_FORCE_SCALAR=1` forces the scalar reference kernels;
//! `POCKETVL_MAX_TIER=NAME` caps the tier ([`TIER_NAMES`], e.g. `avx2`).

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx_vnni;
mod float_gemm;
#[cfg(target_arch = "x86_64")]
mod float_gemm_amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod float_gemm_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod float_gemm_avx512;
#[cfg(target_arch = "x86_64")]
mod float_gemm_bf16dot;
#[cfg(target_arch = "x86_64")]
pub(crate) mod kquant_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod kquant_avx2_rows;
#[cfg(target_arch = "x86_64")]
pub(crate) mod kquant_avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod kquant_avx512_rows;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_float_gemm;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_kquant;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_kquant_gemm;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_kquant_i8mm;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_sdot_gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q0_amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q0_avx2_groups;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q0_avx2_rows;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q0_avx512_rows;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q0_avx512_units;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q0_avxvnni_rows;
#[cfg(target_arch = "x86_64")]
mod q0_rows16;
#[cfg(target_arch = "x86_64")]
mod q0_x86;
#[cfg(target_arch = "x86_64")]
mod row_lanes;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod split_amx;
#[cfg(test)]
mod tier_tests;

/// Deterministic pseudo-random data for the twin tests (every kernel module's tests share
/// it): `n` values in `[-scale, scale)` from a 64-bit LCG seeded with `seed`.
#[cfg(test)]
pub(crate) fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
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

use std::sync::OnceLock;

pub use float_gemm::{FloatPanels, PackedFloat};

use crate::formats::{Format, Kernels, FORMATS};
use crate::types::GgmlType;

/// A dot-product kernel: (element count, weight row, activation row) → f32.
pub type DotFn = fn(usize, &[u8], &[u8]) -> f32;

/// A matrix-product kernel over rows of `k` elements:
/// `out[t * ldo + r] = dot(w row r, a row t)` for `r < n_rows`, `t < n_tok`.
/// `w` holds `n_rows` weight rows back to back in the weight type, `a` holds
/// `n_tok` activation rows back to back in `vec_dot_type(weight type)`.
/// Threads are the caller's business: it hands each worker a range of weight
/// rows (and its own `out` block, or a column offset of a shared one).
pub type GemmFn =
    fn(k: usize, w: &[u8], n_rows: usize, a: &[u8], n_tok: usize, out: &mut [f32], ldo: usize);

/// Number of slots in the table: one per ggml type id up to BF16 (30).
const SLOTS: usize = 31;

/// The chosen kernels, indexed by weight type id.
pub struct KernelTable {
    /// Human-readable name of the instruction set ("scalar", ...).
    pub isa: &'static str,
    dots: [Option<DotFn>; SLOTS],
    /// Tiled matrix kernels; a type without one runs [`gemm_by_dots`].
    gemms: [Option<GemmFn>; SLOTS],
}

impl KernelTable {
    /// A table from the tiers of [`FORMATS`] picked by `tiers`, lowest first:
    /// each later tier overrides the slots it fills.
    fn build(isa: &'static str, tiers: &[fn(&Format) -> Kernels]) -> KernelTable {
        let mut t = KernelTable {
            isa,
            dots: [None; SLOTS],
            gemms: [None; SLOTS],
        };
        for f in &FORMATS {
            let slot = f.ty.id() as usize;
            for tier in tiers {
                let k = tier(f);
                t.dots[slot] = k.dot.or(t.dots[slot]);
                t.gemms[slot] = k.gemm.or(t.gemms[slot]);
            }
        }
        t
    }

    /// The scalar reference table.
    pub fn scalar() -> KernelTable {
        KernelTable::build("scalar", &[|f| f.scalar])
    }

    /// The scalar table with the AVX2 kernels swapped in. Only call after
    /// `avx2::detected()`.
    #[cfg(target_arch = "x86_64")]
    fn avx2() -> KernelTable {
        KernelTable::build("avx2", &[|f| f.scalar, |f| f.avx2])
    }

    /// The AVX2 table with the AVX-VNNI GEMMs swapped in (CPUs without AVX-512: the
    /// AVX-512 tiers have their own). Only call after `avx_vnni::detected()`.
    #[cfg(target_arch = "x86_64")]
    fn avx_vnni() -> KernelTable {
        KernelTable::build("avx2-vnni", &[|f| f.scalar, |f| f.avx2, |f| f.avx_vnni])
    }

    /// The AVX2 table with the AVX-512 (F, BW, VL, VNNI) kernels swapped in.
    /// Only call after `avx2::detected()` and `avx512::detected()`.
    #[cfg(target_arch = "x86_64")]
    fn avx512() -> KernelTable {
        KernelTable::build("avx512-vnni", &[|f| f.scalar, |f| f.avx2, |f| f.avx512])
    }

    /// The AVX-512 table with the AMX-INT8 GEMMs swapped in. Only call after
    /// `q0_amx::detected()` (which implies the AVX2 and AVX-512 tiers).
    #[cfg(target_arch = "x86_64")]
    fn amx() -> KernelTable {
        KernelTable::build(
            "avx512-amx",
            &[|f| f.scalar, |f| f.avx2, |f| f.avx512, |f| f.amx],
        )
    }

    /// The scalar table with the plain NEON kernels swapped in (every aarch64 CPU).
    #[cfg(target_arch = "aarch64")]
    fn neon() -> KernelTable {
        KernelTable::build("neon", &[|f| f.scalar, |f| f.neon.plain])
    }

    /// The NEON table with the `sdot` kernels swapped in. Only call after
    /// `neon::has_dotprod()`.
    #[cfg(target_arch = "aarch64")]
    fn neon_dotprod() -> KernelTable {
        KernelTable::build(
            "neon-dotprod",
            &[|f| f.scalar, |f| f.neon.plain, |f| f.neon.dotprod],
        )
    }

    /// The `sdot` table with the `smmla` GEMMs swapped in. Only call after
    /// `neon::has_dotprod()` and `neon::has_i8mm()`.
    #[cfg(target_arch = "aarch64")]
    fn neon_i8mm() -> KernelTable {
        KernelTable::build(
            "neon-i8mm",
            &[
                |f| f.scalar,
                |f| f.neon.plain,
                |f| f.neon.dotprod,
                |f| f.neon.i8mm,
            ],
        )
    }

    /// The kernel for weight type `ty`, if there is one.
    #[inline]
    pub fn get(&self, ty: GgmlType) -> Option<DotFn> {
        self.dots.get(ty.id() as usize).copied().flatten()
    }

    /// The tiled matrix kernel for weight type `ty`, if there is one.
    #[inline]
    pub fn gemm(&self, ty: GgmlType) -> Option<GemmFn> {
        self.gemms.get(ty.id() as usize).copied().flatten()
    }
}

static TABLE: OnceLock<KernelTable> = OnceLock::new();

/// Whether `POCKETVL_FORCE_SCALAR=1` asks for the portable code everywhere (kernels outside
/// this crate, like the vision tower's element-wise loops, follow it too).
pub fn force_scalar() -> bool {
    std::env::var("POCKETVL_FORCE_SCALAR").is_ok_and(|v| v == "1")
}

/// The tiers of this architecture, lowest first, by [`KernelTable::isa`] name: the values
/// `POCKETVL_MAX_TIER` takes.
#[cfg(target_arch = "x86_64")]
pub const TIER_NAMES: [&str; 5] = ["scalar", "avx2", "avx2-vnni", "avx512-vnni", "avx512-amx"];
#[cfg(target_arch = "aarch64")]
pub const TIER_NAMES: [&str; 4] = ["scalar", "neon", "neon-dotprod", "neon-i8mm"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const TIER_NAMES: [&str; 1] = ["scalar"];

/// The highest tier `POCKETVL_MAX_TIER` allows (an index into [`TIER_NAMES`]); `None` when
/// it is unset. It lets one machine run what a CPU with fewer features would (e.g.
/// `POCKETVL_MAX_TIER=avx2` measures the AVX2 kernels on an AVX-512 CPU). An unknown value
/// is reported once on stderr and ignored (the best tier runs), so a typo never stops a run.
fn max_tier_rank() -> Option<usize> {
    static RANK: OnceLock<Option<usize>> = OnceLock::new();
    *RANK.get_or_init(|| {
        let v = std::env::var("POCKETVL_MAX_TIER").ok()?;
        let rank = TIER_NAMES.iter().position(|&n| n == v.trim());
        if let Some(e) = max_tier_error() {
            eprintln!("pocketvl: {e}; ignoring it");
        }
        rank
    })
}

/// What is wrong with `POCKETVL_MAX_TIER`, if anything: an unknown tier name. The CLI refuses
/// such a run up front (it would measure other kernels than asked for); inside a library the
/// table falls back to the best tier with the warning of [`max_tier_rank`].
pub fn max_tier_error() -> Option<String> {
    let v = std::env::var("POCKETVL_MAX_TIER").ok()?;
    (!TIER_NAMES.contains(&v.trim())).then(|| {
        format!(
            "POCKETVL_MAX_TIER={v:?} is not one of {}",
            TIER_NAMES.join(", ")
        )
    })
}

/// Whether the tier called `isa` (a [`TIER_NAMES`] entry) may run: not above
/// `POCKETVL_MAX_TIER`, and only `scalar` with `POCKETVL_FORCE_SCALAR=1`. Code outside the
/// kernel table that picks an instruction set itself (the AVX-512 f32 loops, the AMX float
/// GEMM) asks this too. Whether the CPU has the features is the caller's check.
pub fn tier_allowed(isa: &str) -> bool {
    if force_scalar() {
        return isa == "scalar";
    }
    let rank = TIER_NAMES.iter().position(|&n| n == isa);
    match (rank, max_tier_rank()) {
        (Some(r), Some(cap)) => r <= cap,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Picks the best table for this CPU: the scalar reference table, with the
/// AVX2 (+ AVX-VNNI or AVX-512, + AMX) kernels swapped in where the CPU has them; on aarch64 the
/// NEON table, with `sdot` (+ `smmla`) where the CPU has them; never above
/// `POCKETVL_MAX_TIER` ([`tier_allowed`]).
fn select() -> KernelTable {
    tiers()
        .into_iter()
        .rfind(|t| tier_allowed(t.isa))
        .unwrap_or_else(KernelTable::scalar)
}

/// Every tier this CPU runs, scalar first and the one [`table`] would pick
/// (without `POCKETVL_FORCE_SCALAR` or `POCKETVL_MAX_TIER`) last: for benchmarks and tests that
/// compare tiers in one process.
pub fn tiers() -> Vec<KernelTable> {
    #[allow(unused_mut)]
    let mut tiers = vec![KernelTable::scalar()];
    #[cfg(target_arch = "x86_64")]
    if avx2::detected() {
        tiers.push(KernelTable::avx2());
        if avx_vnni::detected() {
            tiers.push(KernelTable::avx_vnni());
        }
        if avx512::detected() {
            tiers.push(KernelTable::avx512());
            if q0_amx::detected() {
                tiers.push(KernelTable::amx());
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        tiers.push(KernelTable::neon());
        if neon::has_dotprod() {
            tiers.push(KernelTable::neon_dotprod());
            if neon::has_i8mm() {
                tiers.push(KernelTable::neon_i8mm());
            }
        }
    }
    tiers
}

/// The process-wide kernel table, chosen at first use.
#[inline]
pub fn table() -> &'static KernelTable {
    TABLE.get_or_init(select)
}

/// The activation format ggml's CPU backend pairs with weight type `ty`
/// (F32 for F32/F16/BF16 here, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1,
/// Q8_K for K-quants; see [`crate::formats`]). Types without an entry map to F32.
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    crate::formats::format(ty).map_or(GgmlType::F32, |f| f.vec_dot_type)
}

/// Whether [`vec_dot`] has a kernel for weight type `ty` (check at load time).
pub fn has_vec_dot(ty: GgmlType) -> bool {
    table().get(ty).is_some()
}

/// The reference matrix product: one [`vec_dot`] per (row, token) through the
/// given dot kernel. Tiled SIMD kernels are tested against this.
#[allow(clippy::too_many_arguments)]
pub fn gemm_by_dots(
    dot: DotFn,
    wrb: usize,
    arb: usize,
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for r in 0..n_rows {
        let row = &w[r * wrb..][..wrb];
        for t in 0..n_tok {
            out[t * ldo + r] = dot(k, row, &a[t * arb..][..arb]);
        }
    }
}

/// `out[t * ldo + r] = Σ_i w[r, i] · a[t, i]` for a weight block of `n_rows`
/// rows of type `ty` and `n_tok` activation rows in `vec_dot_type(ty)` (see
/// [`GemmFn`]). Uses the table's tiled kernel where there is one, otherwise
/// one dot per (row, token).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ty: GgmlType,
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let wrb = ty.row_bytes(k as u64).unwrap_or(0) as usize;
    let arb = vec_dot_type(ty).row_bytes(k as u64).unwrap_or(0) as usize;
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(n_tok == 0 || out.len() >= (n_tok - 1) * ldo + n_rows);
    let t = table();
    if let Some(g) = t.gemm(ty) {
        return g(k, w, n_rows, a, n_tok, out, ldo);
    }
    match t.get(ty) {
        Some(dot) => gemm_by_dots(dot, wrb, arb, k, w, n_rows, a, n_tok, out, ldo),
        None => {
            debug_assert!(false, "gemm: no kernel for {ty}");
            out.iter_mut().for_each(|v| *v = f32::NAN);
        }
    }
}

/// [`FloatPanels`] for F32, F16 and BF16 weights: the same microkernel and arithmetic as the
/// table's [`GemmFn`] for them (AVX-512F, AVX2+FMA or NEON), split in packing and token
/// ranges. `None` for other types, under `POCKETVL_FORCE_SCALAR=1` and on CPUs without
/// those tiers (callers then use [`gemm`]); never above `POCKETVL_MAX_TIER`.
pub fn float_panels(ty: GgmlType) -> Option<FloatPanels> {
    use float_gemm::Float;
    let f = match ty {
        GgmlType::F32 => Float::F32,
        GgmlType::F16 => Float::F16,
        GgmlType::BF16 => Float::BF16,
        _ => return None,
    };
    #[cfg(target_arch = "x86_64")]
    if avx2::detected() && tier_allowed("avx2") {
        let isa = if avx512::detected() && tier_allowed("avx512-vnni") {
            &float_gemm_avx512::ISA
        } else {
            &float_gemm_avx2::ISA
        };
        return Some(FloatPanels::new(isa, f));
    }
    #[cfg(target_arch = "aarch64")]
    if tier_allowed("neon") {
        return Some(FloatPanels::new(&neon_float_gemm::ISA, f));
    }
    #[allow(unreachable_code)]
    {
        let _ = f;
        None
    }
}

/// A matrix product of BF16 weight rows and f32 activations (as floats) that rounds the
/// activations to bf16: the [`GemmFn`] contract otherwise.
pub type Bf16RoundedGemmFn =
    fn(k: usize, w: &[u8], n_rows: usize, a: &[f32], n_tok: usize, out: &mut [f32], ldo: usize);

/// The AMX-BF16 product (`float_gemm_amx.rs`; scalar twin [`scalar::gemm_bf16_rounded`])
/// where the CPU has AMX-BF16 and `POCKETVL_FORCE_SCALAR` is unset; `None` elsewhere, and
/// callers then use [`gemm`], whose f32 activations are exact. It trades the activations'
/// rounding to bf16 (relative 2^-9 per value) for ~16x the f32 FMA rate: only callers that
/// chose bf16 arithmetic (the vision tower of a bf16 mmproj) take it.
pub fn gemm_bf16_rounded() -> Option<Bf16RoundedGemmFn> {
    static PICK: OnceLock<Option<Bf16RoundedGemmFn>> = OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if tier_allowed("avx512-amx") && float_gemm_amx::detected() {
            return Some(float_gemm_amx::gemm_bf16_rounded as Bf16RoundedGemmFn);
        }
        None
    })
}

/// The AMX-BF16 product with split activations (`float_gemm_amx.rs`; scalar twin
/// [`scalar::gemm_bf16_split`]): each f32 activation is taken as two bf16, `hi + lo`, so it
/// keeps 16 significant bits (relative error ≤ 2^-17) and only the weights' own bf16
/// rounding stays, at twice the tile products of [`gemm_bf16_rounded`]. Same availability.
pub fn gemm_bf16_split() -> Option<Bf16RoundedGemmFn> {
    #[cfg(target_arch = "x86_64")]
    if gemm_bf16_rounded().is_some() {
        return Some(float_gemm_amx::gemm_bf16_split as Bf16RoundedGemmFn);
    }
    None
}

/// The AMX-BF16 product in two steps, for callers that split one product over threads:
/// pack the weights once ([`Bf16Tiles::pack_block`], one 32-row block at a time, so blocks
/// can be packed in parallel), then run any number of token ranges against them
/// ([`Bf16Tiles::gemm`]). Same arithmetic as [`gemm_bf16_rounded`] / [`gemm_bf16_split`].
#[derive(Clone, Copy)]
pub struct Bf16Tiles {
    pack_block: fn(usize, &[u8], usize, usize, &mut [u8]),
    #[allow(clippy::type_complexity)]
    gemm: fn(usize, &[u8], usize, &[f32], usize, &mut [f32], usize, bool),
}

/// BF16 weights packed for [`Bf16Tiles::gemm`]: every 32-row block in order, 64-byte
/// aligned.
pub struct PackedBf16 {
    buf: Vec<u8>,
    off: usize,
    k: usize,
    n_rows: usize,
}

impl PackedBf16 {
    /// The packed blocks (`block_bytes` each), for [`Bf16Tiles::pack_block`] to fill.
    pub fn blocks_mut(&mut self) -> &mut [u8] {
        let len = self.n_rows.div_ceil(32) * self.block_bytes();
        &mut self.buf[self.off..self.off + len]
    }

    /// Bytes of one packed block of 32 rows.
    pub fn block_bytes(&self) -> usize {
        self.k.div_ceil(32) * 2048
    }
}

/// [`Bf16Tiles`] where [`gemm_bf16_rounded`] is available (AMX-BF16), else `None`.
pub fn bf16_tiles() -> Option<Bf16Tiles> {
    #[cfg(target_arch = "x86_64")]
    if gemm_bf16_rounded().is_some() {
        return Some(Bf16Tiles {
            pack_block: float_gemm_amx::pack_block,
            gemm: float_gemm_amx::gemm_packed,
        });
    }
    None
}

/// [`Bf16Tiles`] on AVX-512 BF16's `vdpbf16ps` (`float_gemm_bf16dot.rs`; the scalar twins
/// of [`gemm_bf16_rounded`] / [`gemm_bf16_split`]) where the CPU has AVX512_BF16 (AMD Zen 4
/// and later, Intel Cooper Lake and later) within the `avx512-vnni` tier cap, else `None`:
/// twice the f32 FMA's multiply-adds per instruction with the activations rounded to bf16,
/// none gained with them split. For callers that chose bf16 arithmetic where
/// [`bf16_tiles`] (AMX) is not there.
pub fn bf16_dot_tiles() -> Option<Bf16Tiles> {
    #[cfg(target_arch = "x86_64")]
    if tier_allowed("avx512-vnni") && float_gemm_bf16dot::detected() {
        return Some(Bf16Tiles {
            pack_block: float_gemm_amx::pack_block,
            gemm: float_gemm_bf16dot::gemm_packed,
        });
    }
    None
}

impl Bf16Tiles {
    /// A zeroed buffer for `n_rows` BF16 rows of `k`.
    pub fn buffer(self, k: usize, n_rows: usize) -> PackedBf16 {
        let len = n_rows.div_ceil(32) * k.div_ceil(32) * 2048;
        let buf = vec![0u8; len + 64];
        let off = buf.as_ptr().align_offset(64);
        PackedBf16 {
            buf,
            off,
            k,
            n_rows,
        }
    }

    /// Packs block `b` (rows `32 b..`) of the `n_rows` BF16 rows of `k` in `w` into `dst`,
    /// block `b` of [`PackedBf16::blocks_mut`] of a buffer of the same shape.
    pub fn pack_block(self, k: usize, w: &[u8], n_rows: usize, b: usize, dst: &mut [u8]) {
        (self.pack_block)(k, w, n_rows, b, dst)
    }

    /// `out[t * ldo + r] = Σ_i w[r, i] · a'[t, i]` over the packed weights, `a'` the
    /// activations rounded to bf16, or split into two bf16 with `split` (see
    /// [`gemm_bf16_split`]).
    pub fn gemm(
        self,
        w: &PackedBf16,
        a: &[f32],
        n_tok: usize,
        out: &mut [f32],
        ldo: usize,
        split: bool,
    ) {
        let data = &w.buf[w.off..];
        (self.gemm)(w.k, data, w.n_rows, a, n_tok, out, ldo, split)
    }
}

/// Products of two f32 matrices with both operands split into two bf16 on AMX-BF16 tiles
/// (`split_amx.rs`; scalar twin [`scalar::split_product`]): `hi·hi + hi·lo + lo·hi` in
/// f32 accumulators, so each operand keeps 16 significant bits, for products of two
/// activations (the vision tower's attention). Both operands are packed once
/// ([`SplitTiles::pack_a`], [`SplitTiles::pack_b`]) into 64-byte aligned bytes
/// ([`AlignedBytes`]), then multiplied in whole blocks of 32 rows.
#[derive(Clone, Copy)]
pub struct SplitTiles {
    packed_bytes: fn(usize, usize) -> usize,
    pack_a: fn(&[f32], usize, usize, usize, &mut [u8]),
    pack_b: fn(&[f32], usize, usize, usize, &mut [u8]),
    #[allow(clippy::type_complexity)]
    product: fn(usize, &[u8], usize, &[u8], usize, &mut [f32], usize),
}

/// [`SplitTiles`] where [`gemm_bf16_rounded`] is available (AMX-BF16), else `None`.
pub fn split_tiles() -> Option<SplitTiles> {
    #[cfg(target_arch = "x86_64")]
    if gemm_bf16_rounded().is_some() {
        return Some(SplitTiles {
            packed_bytes: split_amx::packed_bytes,
            pack_a: split_amx::pack_a,
            pack_b: split_amx::pack_b,
            product: split_amx::product,
        });
    }
    None
}

impl SplitTiles {
    /// Bytes of `n_rows` rows of `k` packed as either operand (a multiple of 2 KiB).
    pub fn packed_bytes(self, k: usize, n_rows: usize) -> usize {
        (self.packed_bytes)(k, n_rows)
    }

    /// Packs `n_rows` rows of `k` (row `r` at `x[r * ld..]`) into `dst`
    /// (`packed_bytes(k, n_rows)`, 64-byte aligned) as the left operand.
    pub fn pack_a(self, x: &[f32], ld: usize, n_rows: usize, k: usize, dst: &mut [u8]) {
        (self.pack_a)(x, ld, n_rows, k, dst)
    }

    /// Packs `n_rows` rows of `k` (row `r` at `x[r * ld..]`) into `dst`
    /// (`packed_bytes(k, n_rows)`, 64-byte aligned) as the right operand.
    pub fn pack_b(self, x: &[f32], ld: usize, n_rows: usize, k: usize, dst: &mut [u8]) {
        (self.pack_b)(x, ld, n_rows, k, dst)
    }

    /// `c[i * ldc + j] = a row i · b row j` for the `n_a` rows of packed `a` and the `n_b`
    /// rows of packed `b`, each rounded up to 32 (padding rows are zero, and so are their
    /// products), both packed for `k`; `ldc` is at least the columns written.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        self,
        k: usize,
        a: &[u8],
        n_a: usize,
        b: &[u8],
        n_b: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        (self.product)(k, a, n_a, b, n_b, c, ldc)
    }
}

/// A byte buffer whose slice starts on 64 bytes (tile rows are one cache line each),
/// resized in place and kept by callers across calls.
#[derive(Default)]
pub struct AlignedBytes {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBytes {
    /// `len` aligned bytes (contents unspecified: every user packs over them).
    pub fn resize(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < len + 64 {
            self.buf = vec![0u8; len + 64];
            self.off = self.buf.as_ptr().align_offset(64);
        }
        self.len = len;
        &mut self.buf[self.off..self.off + len]
    }

    /// The bytes of the last [`AlignedBytes::resize`].
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

/// `iters` x 48 `vdpbf16ps` with the operands in registers, returning the flops done
/// (`None` without [`bf16_dot_tiles`]): the instruction's peak for benchmarks to time beside
/// its product.
pub fn bf16_dot_spin(iters: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    if bf16_dot_tiles().is_some() {
        return Some(float_gemm_bf16dot::dp_spin(iters));
    }
    let _ = iters;
    None
}

/// `iters` x 4 AMX-BF16 tile products with the operands in registers, returning the flops
/// done (`None` without AMX): the tile unit's peak for benchmarks to time beside
/// [`gemm_bf16_rounded`].
pub fn amx_bf16_spin(iters: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    if float_gemm_amx::detected() {
        return Some(float_gemm_amx::tdp_spin(iters));
    }
    let _ = iters;
    None
}

/// Dot product of one weight row (`n` elements in `ty`) with one activation row
/// in `vec_dot_type(ty)`. Dispatches once through a table chosen at first use.
///
/// Callers guarantee the lengths (checked by debug assertions) and that
/// [`has_vec_dot`] holds for `ty`; otherwise the result is NaN.
#[inline]
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    match table().get(ty) {
        Some(f) => f(n, w, a),
        None => {
            debug_assert!(false, "vec_dot: no kernel for {ty}");
            f32::NAN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_type_with_a_quantizer_has_a_kernel_and_pairing() {
        use GgmlType::*;
        for ty in [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
        ] {
            assert!(has_vec_dot(ty), "{ty}");
            assert!(KernelTable::scalar().get(ty).is_some(), "{ty}");
        }
        assert_eq!(vec_dot_type(Q4_1), Q8_1);
        assert_eq!(vec_dot_type(Q6_K), Q8_K);
        assert_eq!(vec_dot_type(BF16), F32);
        assert!(!has_vec_dot(Q8_K));
    }
}
