//! AVX2 (+FMA) dot products and GEMMs for the K-quants (Q2_K to Q6_K
//! weights against Q8_K activations), read straight from the GGUF block layout,
//! plus the layout helpers the AVX-512 twins (`kquant_avx512.rs`, the row-lane
//! kernels) share.
//!
//! [`tile`] computes 2 weight rows × 4 tokens in registers: per
//! super-block, each row's quants are unpacked to unsigned bytes (0..3, 0..7,
//! 0..15, 0..31 or 0..63) and its scales spread to one i16 per lane once, then
//! reused for the tile's tokens: `maddubs` (unsigned quant × signed activation,
//! pairs of at most 63·128·2 < 2¹⁵, never saturating) and `madd` with the
//! scales give exact i32 sums. The offsets (Q2_K/Q4_K/Q5_K mins, Q6_K's −32,
//! Q3_K's −4) come from the activation's per-16 `bsums`. The integer block sums
//! equal the scalar twins' (`scalar.rs`); only the order of the f32 additions
//! differs. [`gemv_tile`] (1-3 tokens: decode, and the tokens after a batch's
//! groups of 4) decodes 8 rows one after the other and uses each super-block at
//! once for every token, reading them as one stream.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::q0_avx512_units::PREFETCH_BYTES;
use super::q0_x86::hsum_ps;

/// Which K-quant a kernel reads (a const generic, so each format's decode is
/// compiled into its own kernel).
pub(super) const Q4K: u8 = 0;
pub(super) const Q5K: u8 = 1;
pub(super) const Q6K: u8 = 2;
/// The low-bit formats of the cold experts' fallback copies.
pub(super) const Q3K: u8 = 3;
pub(super) const Q2K: u8 = 4;

/// Bytes of one Q8_K block: d (f32), 256 qs, 16 i16 bsums.
pub(super) const Q8K_BYTES: usize = 292;
/// Offsets of the Q8_K fields.
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;

/// Bytes of one super-block of format `f`.
pub(super) const fn block_bytes(f: u8) -> usize {
    match f {
        Q4K => 144,
        Q5K => 176,
        Q6K => 210,
        Q3K => 110,
        Q2K => 84,
        _ => panic!("not a K-quant format"),
    }
}

/// Whether format `f` stores signed quants with an offset (Q6_K's 32, Q3_K's 4), taken back
/// inside the integer sum as `offset·scale` per 16-element group; the others (Q4_K, Q5_K,
/// Q2_K) have minimums, a second integer sum scaled by `dmin`.
pub(super) const fn folds_offset(f: u8) -> bool {
    f == Q6K || f == Q3K
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K super-block from
/// its 12 scale bytes `q` (ggml's `get_scale_min_k4`), one per byte of the two
/// u64: groups 0..4 sit in the low 6 bits of bytes 0..4 (scales) and 4..8
/// (mins); groups 4..8 take their low 4 bits from the nibbles of bytes 8..12
/// and their top 2 bits from the top bits of bytes 0..8.
#[inline]
pub(super) fn k4_scales_mins(q: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let (low6, low4, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let sc_hi = (w2 & low4) | (((w0 >> 6) & top2) << 4);
    let mn_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & top2) << 4);
    (
        (w0 & low6) as u64 | (sc_hi as u64) << 32,
        (w1 & low6) as u64 | (mn_hi as u64) << 32,
    )
}

/// The 8 scales (bytes 0..8) and 8 mins (bytes 8..16) of a Q4_K/Q5_K
/// super-block from its 12 scale bytes (the low 12 of each 128-bit half of
/// `q`: two rows' blocks at once, or one in the low half), as
/// [`k4_scales_mins`] unpacks them, in 8 vector instructions: bytes 0..4 of
/// each 8 are the low 6 bits of q[0..4] / q[4..8]; bytes 4..8 the low / high
/// nibbles of q[8..12] with the top 2 bits of q[0..4] / q[4..8] above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_scale_bytes(q: __m256i) -> __m256i {
    let twice = |v: __m128i| _mm256_set_m128i(v, v);
    let low = _mm256_shuffle_epi8(
        q,
        twice(_mm_setr_epi8(
            0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11,
        )),
    );
    // Dword 3 (the mins' high nibbles) down by 4.
    let low = _mm256_srlv_epi32(low, twice(_mm_setr_epi32(0, 0, 0, 4)));
    let low = _mm256_and_si256(
        low,
        twice(_mm_setr_epi8(
            63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15,
        )),
    );
    let z = -128;
    let top = _mm256_shuffle_epi8(
        q,
        twice(_mm_setr_epi8(
            z, z, z, z, 0, 1, 2, 3, z, z, z, z, 4, 5, 6, 7,
        )),
    );
    // Bits 6-7 to 4-5.
    let top = _mm256_and_si256(_mm256_srli_epi16::<2>(top), _mm256_set1_epi8(0x30));
    _mm256_or_si256(low, top)
}

/// The 16 six-bit scales of the 110-byte Q3_K block `b`, still + 32, as the bytes of the
/// result in sub-block order (`block::q3k_scale` in vector instructions): sub-block j takes
/// its low 4 bits from scale byte j (j < 8) or the high nibble of byte j − 8, and its top 2
/// bits from bits 2·(j/4) of byte 8 + j % 4.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q3k_scales(b: &[u8]) -> __m128i {
    assert_eq!(b.len(), 110);
    // SAFETY: bytes 94..110 lie in the block (the 12 scale bytes are 2..14 of them);
    // loadu has no alignment requirement.
    let raw = unsafe { _mm_loadu_si128(b.as_ptr().add(94).cast()) };
    // u32 lanes [w0, w1, w0, w1] (scale bytes 0..4, 4..8), their low nibbles or (>> 4) high
    // ones, and w2 (bytes 8..12) in every lane, its bit pairs 0, 2, 4, 6 as bits 4-5.
    let words = _mm_shuffle_epi8(
        raw,
        _mm_setr_epi8(2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9),
    );
    let low = _mm_and_si128(
        _mm_srlv_epi32(words, _mm_setr_epi32(0, 0, 4, 4)),
        _mm_set1_epi8(0x0f),
    );
    let top = _mm_shuffle_epi8(
        raw,
        _mm_setr_epi8(
            10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13,
        ),
    );
    let top = _mm_and_si128(
        _mm_srlv_epi32(top, _mm_setr_epi32(0, 2, 4, 6)),
        _mm_set1_epi8(3),
    );
    _mm_or_si128(low, _mm_slli_epi32::<4>(top))
}

/// A K-quant super-block the row-lane kernels (`kquant_avx2_rows`, `kquant_avx512_rows`)
/// decode: Q4_K, or Q5_K (Q4_K's nibbles and scales plus a 5th bit per element).
pub(super) trait RowBlock: crate::block::ByteBlock {
    /// How many `maddubs` results one i16 lane sums without overflow (AVX2): 8 · 2 · 15 ·
    /// 128 = 30,720 for 4-bit quants, 4 · 2 · 31 · 128 = 31,744 for 5-bit ones.
    const RUN: usize;
    /// The format ([`Q4K`], [`Q5K`]) [`check`] takes.
    const FORMAT: u8;
    fn d(&self) -> [u8; 2];
    fn dmin(&self) -> [u8; 2];
    fn scales(&self) -> &[u8; 12];
    /// Element 64c + i's low 4 bits in the low nibble of byte 32c + i, element 64c + 32 + i's
    /// in the high one.
    fn qs(&self) -> &[u8; 128];
    /// Whether the format has 5th bits ([`RowBlock::qh`] is `Some`; both from one
    /// `row_block!` argument).
    const HIGH_BIT: bool;
    /// The 5th bits, if the format has them: element i of sub-block j is bit j of byte i.
    fn qh(&self) -> Option<&[u8; 32]>;
}

/// [`RowBlock`] for a block type with fields `d`, `dmin`, `scales`, `qs` (and `qh` for the
/// 5-bit format), checked as format `$f`.
macro_rules! row_block {
    ($block:ty, $f:ident, run: $run:literal, $($qh:ident)?) => {
        impl RowBlock for $block {
            const RUN: usize = $run;
            const HIGH_BIT: bool = row_block!(@has $($qh)?);
            const FORMAT: u8 = $f;
            fn d(&self) -> [u8; 2] {
                self.d
            }
            fn dmin(&self) -> [u8; 2] {
                self.dmin
            }
            fn scales(&self) -> &[u8; 12] {
                &self.scales
            }
            fn qs(&self) -> &[u8; 128] {
                &self.qs
            }
            fn qh(&self) -> Option<&[u8; 32]> {
                row_block!(@qh self $($qh)?)
            }
        }
    };
    (@has) => { false };
    (@has $qh:ident) => { true };
    (@qh $s:ident) => { None };
    (@qh $s:ident $qh:ident) => { Some(&$s.$qh) };
}

row_block!(crate::block::BlockQ4K, Q4K, run: 8,);
row_block!(crate::block::BlockQ5K, Q5K, run: 4, qh);

/// A K-quant super-block of 16 sub-blocks of 16 elements (Q6_K, Q3_K, Q2_K) as the row-lane
/// kernels decode it: chunk c of 32 elements holds unsigned quants, byte l of the chunk being
/// `(low[l] >> ls) & lm | ((high[l] >> hs) & hm) << hp` with [`SixteenBlock::low`] and
/// [`SixteenBlock::high`] (where the format has high bits) and their bit positions.
pub(super) trait SixteenBlock: crate::block::ByteBlock {
    /// The format ([`Q6K`], [`Q3K`], [`Q2K`]) [`check`] takes.
    const FORMAT: u8;
    /// Signed formats ([`folds_offset`]): log2 of the offset the quants are stored with.
    const OFFSET_SHIFT: i32;
    /// How many `maddubs` results one i16 lane sums without overflow (AVX2), at most a
    /// sub-block's 4: 2 · 2 · 63 · 128 = 32,256 for 6-bit quants, 4 · 2 · 7 · 128 = 7,168
    /// for 3-bit ones.
    const RUN: usize;
    /// Chunk c's low bits: their bytes (32), shift and mask.
    fn low(&self, c: usize) -> &[u8];
    fn low_bits(c: usize) -> (i32, i8);
    /// Whether chunks have high bits, and chunk c's: their bytes (32), shift, mask and
    /// position in the quant.
    const HIGH: bool = false;
    fn high(&self, _c: usize) -> &[u8] {
        &[]
    }
    fn high_bits(_c: usize) -> (i32, i8, i32) {
        (0, 0, 0)
    }
    /// The sub-blocks' integer scales, and minimums (the signed formats have none).
    fn scales(&self) -> [i32; 16];
    fn mins(&self) -> [i32; 16] {
        [0; 16]
    }
    fn d(&self) -> [u8; 2];
    fn dmin(&self) -> [u8; 2] {
        [0; 2]
    }
}

impl SixteenBlock for crate::block::BlockQ6K {
    const FORMAT: u8 = Q6K;
    const OFFSET_SHIFT: i32 = 5;
    const RUN: usize = 2;
    const HIGH: bool = true;
    /// Chunk 4n + m: the low (m < 2) or high nibbles of ql[64n + 32(m % 2)..].
    fn low(&self, c: usize) -> &[u8] {
        &self.ql[64 * (c / 4) + 32 * (c % 2)..][..32]
    }
    fn low_bits(c: usize) -> (i32, i8) {
        (4 * (c % 4 / 2) as i32, 0x0f)
    }
    /// Chunk 4n + m: bits 2m, 2m + 1 of qh[32n..].
    fn high(&self, c: usize) -> &[u8] {
        &self.qh[32 * (c / 4)..][..32]
    }
    fn high_bits(c: usize) -> (i32, i8, i32) {
        (2 * (c % 4) as i32, 3, 4)
    }
    fn scales(&self) -> [i32; 16] {
        self.scales.map(i32::from)
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
}

impl SixteenBlock for crate::block::BlockQ3K {
    const FORMAT: u8 = Q3K;
    const OFFSET_SHIFT: i32 = 2;
    const RUN: usize = 4;
    const HIGH: bool = true;
    /// Chunk 4n + m: bits 2m, 2m + 1 of qs[32n..].
    fn low(&self, c: usize) -> &[u8] {
        &self.qs[32 * (c / 4)..][..32]
    }
    fn low_bits(c: usize) -> (i32, i8) {
        (2 * (c % 4) as i32, 3)
    }
    /// Chunk c: bit c of hmask.
    fn high(&self, _: usize) -> &[u8] {
        &self.hmask
    }
    fn high_bits(c: usize) -> (i32, i8, i32) {
        (c as i32, 1, 2)
    }
    fn scales(&self) -> [i32; 16] {
        std::array::from_fn(|j| i32::from(crate::block::q3k_scale(j, &self.scales)))
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
}

impl SixteenBlock for crate::block::BlockQ2K {
    const FORMAT: u8 = Q2K;
    /// Unsigned quants with minimums: no offset.
    const OFFSET_SHIFT: i32 = 0;
    const RUN: usize = 4;
    /// Chunk 4n + m: bits 2m, 2m + 1 of qs[32n..].
    fn low(&self, c: usize) -> &[u8] {
        &self.qs[32 * (c / 4)..][..32]
    }
    fn low_bits(c: usize) -> (i32, i8) {
        (2 * (c % 4) as i32, 3)
    }
    fn scales(&self) -> [i32; 16] {
        self.scales.map(|v| i32::from(v & 0x0f))
    }
    fn mins(&self) -> [i32; 16] {
        self.scales.map(|v| i32::from(v >> 4))
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn dmin(&self) -> [u8; 2] {
        self.dmin
    }
}

/// What the row-lane K-quant kernels (`kquant_avx2_rows`, `kquant_avx512_rows`) need of
/// one token's Q8_K super-block besides its quants.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(super) struct ActSuper {
    /// Pair i: the sums of sub-blocks 2i (low i16) and 2i + 1 (high i16) of the quants
    /// (each at most 32 · 128 in magnitude, so an i16 holds it).
    pub sums: [i32; 4],
    pub d: f32,
}

/// What the Q6_K row-lane kernels need of one token's Q8_K super-block besides its quants:
/// pair i holds the sums of its 16-element groups 2i (low i16) and 2i + 1 (high i16), as
/// Q8_K's `bsums` (each at most 16 · 128 in magnitude).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(super) struct ActSums16 {
    pub sums: [i32; 8],
    pub d: f32,
}

/// The [`ActSums16`] of each block of `blocks`, into `out` (cleared first).
pub(super) fn act_sums16(blocks: &[crate::block::BlockQ8K], out: &mut Vec<ActSums16>) {
    out.clear();
    out.extend(blocks.iter().map(|blk| {
        let sum = |j: usize| i32::from(blk.bsum(j));
        ActSums16 {
            sums: std::array::from_fn(|i| (sum(2 * i) & 0xffff) | (sum(2 * i + 1) << 16)),
            d: blk.d(),
        }
    }));
}

/// The [`ActSuper`] of each block of `blocks`, into `out` (cleared first).
pub(super) fn act_supers(blocks: &[crate::block::BlockQ8K], out: &mut Vec<ActSuper>) {
    out.clear();
    out.extend(blocks.iter().map(|blk| {
        let sub = |j: usize| i32::from(blk.bsum(2 * j)) + i32::from(blk.bsum(2 * j + 1));
        ActSuper {
            sums: std::array::from_fn(|i| (sub(2 * i) & 0xffff) | (sub(2 * i + 1) << 16)),
            d: blk.d(),
        }
    }));
}

/// The shapes a quantized GEMM call was given (K-quant here, the 32-element formats in
/// `q0_x86::q0_shape`), checked against the slices once per call so the kernels can read
/// through raw pointers.
pub(super) struct Shape {
    /// Blocks (K-quants: super-blocks) per row.
    pub nb: usize,
    /// Bytes per weight row and per activation row.
    pub wrb: usize,
    pub arb: usize,
}

/// Checks the GEMM contract ([`super::GemmFn`]) of a call on K-quant format `f`; a
/// violation is a caller bug, and reading past a slice would be unsound, so it panics with
/// the reason.
#[allow(clippy::too_many_arguments)]
pub(super) fn check(
    f: u8,
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &[f32],
    ldo: usize,
) -> Shape {
    assert!(
        k.is_multiple_of(256),
        "K-quant gemm: k = {k} is not a multiple of 256"
    );
    let nb = k / 256;
    let (wrb, arb) = (nb * block_bytes(f), nb * Q8K_BYTES);
    assert!(
        w.len() >= n_rows * wrb,
        "K-quant gemm: weight slice too short"
    );
    assert!(
        a.len() >= n_tok * arb,
        "K-quant gemm: activation slice too short"
    );
    assert!(
        n_tok == 0 || n_rows == 0 || out.len() >= (n_tok - 1) * ldo + n_rows,
        "K-quant gemm: output slice too short"
    );
    Shape { nb, wrb, arb }
}

/// One weight row's super-block, decoded for reuse by the tile's tokens.
struct RowDec {
    /// Unsigned quants in element order, 32 per vector.
    u: [__m256i; 8],
    /// The group scale of each i16 lane of `maddubs(u[c], ·)`.
    s: [__m256i; 8],
    /// Q6_K: −32·scale per 16-group; Q4_K/Q5_K: each 32-group's min twice;
    /// the factors of the activation's 16 bsums.
    off: __m256i,
    d: f32,
    dmin: f32,
}

/// Decodes the super-block `b` (exactly one block of format `F`) into `row`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode<const F: u8>(b: &[u8], row: &mut RowDec) {
    debug_assert_eq!(b.len(), block_bytes(F));
    let p = b.as_ptr();
    let h2f = |o: usize| {
        let h = u16::from_le_bytes([b[o], b[o + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    };
    let m4 = _mm256_set1_epi8(0x0f);
    let top2 = _mm256_set1_epi8(0x30);
    // The 16-element formats: chunk c covers 16-groups 2c (i16 lanes 0..8) and 2c + 1
    // (8..16). The pair lies in one 128-bit half of the 16 i16 scales `g` (the low one for
    // c < 4); with that half in both lanes, one in-lane byte shuffle per chunk puts scale
    // 2c in the low lane and 2c + 1 in the high one.
    let spread16 = |g: __m256i, row: &mut RowDec| {
        let halves = [
            _mm256_permute2x128_si256::<0x00>(g, g),
            _mm256_permute2x128_si256::<0x11>(g, g),
        ];
        for c in 0..8 {
            // Bytes b, b + 1 of each i16 lane: scale b / 2 of the lane's half.
            let pair = |b: i16| _mm_set1_epi16(((b + 1) << 8) | b);
            let b = 4 * (c % 4) as i16;
            let pick = _mm256_set_m128i(pair(b + 2), pair(b));
            row.s[c] = _mm256_shuffle_epi8(halves[c / 4], pick);
        }
    };
    if F == Q3K || F == Q2K {
        // Chunk c = 4h + m: bits 2m, 2m + 1 of qs[32h..32h + 32] (Q3_K's at byte 32, Q2_K's
        // at 16); Q3_K's third bit of element 32c + l is bit c of hmask[l] (bytes 0..32).
        let qs = if F == Q3K { 32 } else { 16 };
        let (three, bit2) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
        let hm = if F == Q3K {
            // SAFETY: hmask = bytes 0..32 of the 110-byte block; loadu is unaligned.
            unsafe { _mm256_loadu_si256(p.cast()) }
        } else {
            _mm256_setzero_si256()
        };
        for h in 0..2 {
            // SAFETY: qs[32h..32h + 32] lies in the block.
            let q = unsafe { _mm256_loadu_si256(p.add(qs + 32 * h).cast()) };
            for m in 0..4 {
                let c = 4 * h + m;
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * m as i32)), three);
                row.u[c] = if F == Q3K {
                    let moved = if c <= 2 {
                        _mm256_sll_epi16(hm, _mm_cvtsi32_si128(2 - c as i32))
                    } else {
                        _mm256_srl_epi16(hm, _mm_cvtsi32_si128(c as i32 - 2))
                    };
                    _mm256_or_si256(low, _mm256_and_si256(moved, bit2))
                } else {
                    low
                };
            }
        }
        if F == Q3K {
            row.d = h2f(108);
            let g = _mm256_cvtepu8_epi16(q3k_scales(b));
            let g = _mm256_sub_epi16(g, _mm256_set1_epi16(32));
            spread16(g, row);
            // (u − 4)·a: −4·scale per 16-group times the activation's bsum.
            row.off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<2>(g));
        } else {
            (row.d, row.dmin) = (h2f(80), h2f(82));
            // SAFETY: the 16 scale bytes lie at 0..16 of the 84-byte block.
            let sm = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(p.cast()) });
            spread16(_mm256_and_si256(sm, _mm256_set1_epi16(0x0f)), row);
            row.off = _mm256_srli_epi16::<4>(sm);
        }
        return;
    }
    if F == Q6K {
        row.d = h2f(208);
        // SAFETY: the 16 scale bytes lie at 192..208 of the 210-byte block.
        let g = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p.add(192).cast()) });
        spread16(g, row);
        row.off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(g));
        for h in 0..2 {
            // SAFETY: ql[64h..64h+64] and qh[32h..32h+32] (offset 128) lie in
            // the block; loadu has no alignment requirement.
            let (l0, l1, qh) = unsafe {
                (
                    _mm256_loadu_si256(p.add(64 * h).cast()),
                    _mm256_loadu_si256(p.add(64 * h + 32).cast()),
                    _mm256_loadu_si256(p.add(128 + 32 * h).cast()),
                )
            };
            // Element 128h + 32q + l: a nibble of ql (low for q < 2) and
            // bits 2q, 2q + 1 of qh[32h + l] as bits 4, 5.
            let lo = |x: __m256i| _mm256_and_si256(x, m4);
            let hi = |x: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(x), m4);
            let top = [
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), top2),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), top2),
                _mm256_and_si256(qh, top2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), top2),
            ];
            let nib = [lo(l0), lo(l1), hi(l0), hi(l1)];
            for q in 0..4 {
                row.u[4 * h + q] = _mm256_or_si256(nib[q], top[q]);
            }
        }
        return;
    }
    // SAFETY: bytes 0..16 (d, dmin and the 12 scale bytes) and 4..20 lie in the
    // block (144 or 176 bytes); loadu has no alignment requirement.
    let (head, q) = unsafe { (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(4).cast())) };
    // d and dmin, both f16, widened by one conversion.
    let dd = _mm_cvtph_ps(head);
    (row.d, row.dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
    let sm = _mm256_castsi256_si128(k4_scale_bytes(_mm256_castsi128_si256(q)));
    // Chunk c is 32-group c: every i16 lane gets scale c, picked by one in-lane byte
    // shuffle from the 8 scales as i16 in both halves.
    let g = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    for c in 0..8 {
        let pick = _mm256_set1_epi16((((2 * c + 1) << 8) | (2 * c)) as i16);
        row.s[c] = _mm256_shuffle_epi8(g, pick);
    }
    // Each 32-group's min twice, against the 16 bsums.
    let m = _mm_unpackhi_epi8(sm, _mm_setzero_si128());
    row.off = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
    // Chunks 2c, 2c + 1: the low, then the high nibbles of qs[32c..32c+32].
    let qs = if F == Q5K { 48 } else { 16 };
    for c in 0..4 {
        // SAFETY: qs[32c..32c+32] lies in the block; loadu is unaligned.
        let q = unsafe { _mm256_loadu_si256(p.add(qs + 32 * c).cast()) };
        row.u[2 * c] = _mm256_and_si256(q, m4);
        row.u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
    }
    if F == Q5K {
        // The fifth bit of element 32c + l is bit c of qh[l]: move it to bit 4.
        // SAFETY: qh = bytes 16..48 of the 176-byte block.
        let qh = unsafe { _mm256_loadu_si256(p.add(16).cast()) };
        let bit4 = _mm256_set1_epi8(0x10);
        for c in 0..8 {
            let moved = if c <= 4 {
                _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - c as i32))
            } else {
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(c as i32 - 4))
            };
            row.u[c] = _mm256_or_si256(row.u[c], _mm256_and_si256(moved, bit4));
        }
    }
}

/// Sums of 8 vectors of i32: lane i of the result is the sum of `v[i]`'s lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce8(v: &[__m256i; 8]) -> __m256i {
    let mut s = [_mm256_setzero_si256(); 4];
    for i in 0..4 {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        s[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    }
    let mut x = [_mm256_setzero_si256(); 2];
    for i in 0..2 {
        let (a, b) = (s[2 * i], s[2 * i + 1]);
        x[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    }
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(x[0], x[1]),
        _mm256_permute2x128_si256::<0x31>(x[0], x[1]),
    )
}

/// Super-block `ib` of activation row `t`: (block pointer, bsums, d).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn act(sh: &Shape, a: &[u8], t: usize, ib: usize) -> (*const u8, __m256i, f32) {
    let blk = &a[t * sh.arb + ib * Q8K_BYTES..][..Q8K_BYTES];
    // SAFETY: the 32 bsum bytes lie in the block.
    let bsums = unsafe { _mm256_loadu_si256(blk.as_ptr().add(Q8K_BSUMS).cast()) };
    let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
    (blk.as_ptr(), bsums, d)
}

/// Chunk c (32 quants) of the activation block at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn act_chunk(p: *const u8, c: usize) -> __m256i {
    debug_assert!(c < 8);
    // SAFETY: p is a whole Q8_K block (from `act`); qs[32c..32c+32] lies in it.
    unsafe { _mm256_loadu_si256(p.add(Q8K_QS + 32 * c).cast()) }
}

/// Scatters the tile's 8 lanes (p = r·T + t) to `out[t * ldo + r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_tile(facc: __m256, nr: usize, out: &mut [f32], ldo: usize) {
    let mut o = [0f32; 8];
    // SAFETY: o is 8 f32.
    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), facc) };
    for r in 0..nr {
        for t in 0..T {
            out[t * ldo + r] = o[r * T + t];
        }
    }
}

/// Super-blocks per group of the GEMV: each row reads this many in a row.
const GEMV_GROUP: usize = 8;

/// `out[t * ldo + r] = dot(w row r, a row t)` for `r < nr ≤ 8`, `t < NT`: each
/// row's super-blocks are decoded once and consumed at once by every token.
/// Per group of super-blocks the rows are read one after the other (a tile's
/// rows are adjacent: one sequential stream, where 8 rows read side by side
/// were 8 streams whose misses waited in turn); each (row, token) adds its
/// super-blocks' scaled sums to its own f32 vector, whose lanes are summed at
/// the end, so a token's outputs are the same whatever its batch. (The rows'
/// integer sums used to be kept per super-block and reduced across the tile's
/// rows afterwards: with the arithmetic taken out, that bookkeeping alone ran
/// at 41 GB/s of Q4_K rows in L2, where the whole kernel ran at 17.5.)
///
/// Each super-block prefetches what the group reads `PREFETCH_BYTES` later
/// into L2, as the Q4_0/Q8_0 GEMV does, except Q4_K's: from memory, one
/// thread, AMD Zen 4 (`gemv_stream`), Q4_K streamed 0.63-0.70 of a plain read
/// without and 0.60-0.63 with them; Q5_K 0.52-0.57 without, 0.62-0.64 with.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_tile<const F: u8, const NT: usize>(
    sh: &Shape,
    w: &[u8],
    nr: usize,
    a: &[u8],
    out: &mut [f32],
    ldo: usize,
) {
    debug_assert!(nr <= 8);
    let bb = block_bytes(F);
    let mut facc = [[_mm256_setzero_ps(); NT]; 8];
    // SAFETY: all-zero bits are valid vectors and f32.
    let mut row: RowDec = unsafe { std::mem::zeroed() };
    for g0 in (0..sh.nb).step_by(GEMV_GROUP) {
        let gn = GEMV_GROUP.min(sh.nb - g0);
        let ahead = PREFETCH_BYTES.div_ceil(gn * bb) * sh.wrb;
        // Each token's super-blocks of the group (the first stands in for the rest
        // of a short last group, never read).
        let mut xs = [[act(sh, a, 0, g0); NT]; GEMV_GROUP];
        for (j, x) in xs.iter_mut().enumerate().take(gn) {
            for (t, x) in x.iter_mut().enumerate() {
                *x = act(sh, a, t, g0 + j);
            }
        }
        for (r, facc) in facc.iter_mut().enumerate().take(nr) {
            // Each token's sums of the row over the group in registers, main and
            // mins apart.
            let mut fmain = *facc;
            let mut fmin = [_mm256_setzero_ps(); NT];
            for (j, x) in xs.iter().enumerate().take(gn) {
                let off = r * sh.wrb + (g0 + j) * bb;
                if F != Q4K {
                    let pf = w.as_ptr().wrapping_add(off + ahead);
                    // Points at most 64 apart, the last byte included: every line of
                    // the super-block. Prefetches never fault; the addresses are only
                    // computed, never dereferenced. A plain counted loop over the
                    // constant `bb` unrolls to its few prefetches (a
                    // `step_by(..).chain(..)` iterator compiled to a state machine of
                    // ~20 instructions per super-block).
                    let mut o = 0;
                    while o < bb {
                        _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(o).cast());
                        o += 64;
                    }
                    _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(bb - 1).cast());
                }
                decode::<F>(&w[off..][..bb], &mut row);
                for t in 0..NT {
                    let (p, bsums, da) = x[t];
                    // The integer sum in units of d·d_a and the min sum (Q4_K, Q5_K,
                    // Q2_K) in units of dmin·d_a.
                    let mut main = _mm256_madd_epi16(row.off, bsums);
                    let mut mins = _mm256_setzero_si256();
                    if !folds_offset(F) {
                        (mins, main) = (main, _mm256_setzero_si256());
                    }
                    for c in 0..8 {
                        let q = _mm256_maddubs_epi16(row.u[c], act_chunk(p, c));
                        main = _mm256_add_epi32(main, _mm256_madd_epi16(q, row.s[c]));
                    }
                    let dw = _mm256_set1_ps(row.d * da);
                    fmain[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(main), dw, fmain[t]);
                    if !folds_offset(F) {
                        let dm = _mm256_set1_ps(row.dmin * da);
                        fmin[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), dm, fmin[t]);
                    }
                }
            }
            for t in 0..NT {
                facc[t] = _mm256_sub_ps(fmain[t], fmin[t]);
            }
        }
    }
    for (r, facc) in facc.iter().enumerate().take(nr) {
        for (t, &f) in facc.iter().enumerate() {
            out[t * ldo + r] = hsum_ps(f);
        }
    }
}

/// Weight rows × tokens of [`tile`]: its 8 lanes.
const R: usize = 2;
const T: usize = 4;

/// `out[t * ldo + r] = dot(w row r, a row t)` for `r < nr ≤ R`, `t < T`: each super-block
/// of the R rows is decoded once and used by the T tokens. `w` starts at row 0 of the
/// tile, `a` at token 0, `out` at (token 0, row 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const F: u8>(sh: &Shape, w: &[u8], nr: usize, a: &[u8], out: &mut [f32], ldo: usize) {
    let bb = block_bytes(F);
    let mut facc = _mm256_setzero_ps();
    // SAFETY: all-zero bits are valid vectors and f32; a padding row (r ≥ nr)
    // stays zero, so it adds nothing.
    let mut rows: [RowDec; R] = unsafe { std::mem::zeroed() };
    for ib in 0..sh.nb {
        for (r, row) in rows.iter_mut().enumerate().take(nr) {
            decode::<F>(&w[r * sh.wrb + ib * bb..][..bb], row);
        }
        let x: [(*const u8, __m256i, f32); T] = std::array::from_fn(|t| act(sh, a, t, ib));
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        for c in 0..8 {
            for t in 0..T {
                let av = act_chunk(x[t].0, c);
                for r in 0..R {
                    let p = _mm256_maddubs_epi16(rows[r].u[c], av);
                    let p = _mm256_madd_epi16(p, rows[r].s[c]);
                    acc[r][t] = _mm256_add_epi32(acc[r][t], p);
                }
            }
        }
        let mut main = [_mm256_setzero_si256(); 8];
        let mut mins = [_mm256_setzero_si256(); 8];
        for r in 0..R {
            for t in 0..T {
                let o = _mm256_madd_epi16(rows[r].off, x[t].1);
                if folds_offset(F) {
                    main[T * r + t] = _mm256_add_epi32(acc[r][t], o);
                } else {
                    (main[T * r + t], mins[T * r + t]) = (acc[r][t], o);
                }
            }
        }
        // Lane p = T·r + t: d·d_a and dmin·d_a of the super-block, multiplied as
        // vectors built in registers (eight scalar stores read back as one vector
        // waited for the stores to leave the store buffer).
        let lanes = |f: &dyn Fn(usize) -> f32| {
            _mm256_setr_ps(f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7))
        };
        let da = lanes(&|p| x[p % T].2);
        let dwv = _mm256_mul_ps(lanes(&|p| rows[p / T].d), da);
        let dmv = _mm256_mul_ps(lanes(&|p| rows[p / T].dmin), da);
        facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&main)), dwv, facc);
        if !folds_offset(F) {
            facc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(reduce8(&mins)), dmv, facc);
        }
    }
    store_tile(facc, nr, out, ldo);
}

/// Tokens per pass over the weight rows: their activations (≤ 64 × 5 blocks at
/// k = 1280) stay in L2 while each row tile runs over them.
const TOKEN_BLOCK: usize = 64;

/// The tiled GEMM: 2 × 4 tiles over each token block's whole 4-token groups, its last 1-3
/// tokens in the 8-row GEMV tiles, which decode each super-block once for all of them
/// (measured with `examples/gemm_bench.rs`, one thread, 6,848 rows of 1,280, against a
/// 4 × 2 tile for 2 tokens and a 2 × 4 tile with a padding token for 3: Q4_K at 2 tokens
/// 81.0-82.4 against 73.3-74.3 GOP/s, at 3 87.3-90.0 against 77.1-77.7; Q6_K at 3 80.0-82.9
/// against 46.0-58.0; at 4 tokens the 2 × 4 tile stays ahead: Q4_K 95.1-102.9 against
/// 90.5-92.5, Q5_K 88.8-93.7 against 80.3).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn gemm_tiles<const F: u8>(
    sh: &Shape,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let mut t0 = 0;
    while t0 < n_tok {
        let tb = TOKEN_BLOCK.min(n_tok - t0);
        let tail = tb % T;
        let multi = tb - tail;
        for r0 in (0..n_rows).step_by(R) {
            let nr = R.min(n_rows - r0);
            for t in (t0..t0 + multi).step_by(T) {
                let o = &mut out[t * ldo + r0..];
                tile::<F>(sh, &w[r0 * sh.wrb..], nr, &a[t * sh.arb..], o, ldo);
            }
        }
        if tail > 0 {
            let t = t0 + multi;
            let (a, o) = (&a[t * sh.arb..], &mut out[t * ldo..]);
            for r0 in (0..n_rows).step_by(8) {
                let nr = 8.min(n_rows - r0);
                let (w, o) = (&w[r0 * sh.wrb..], &mut o[r0..]);
                match tail {
                    1 => gemv_tile::<F, 1>(sh, w, nr, a, o, ldo),
                    2 => gemv_tile::<F, 2>(sh, w, nr, a, o, ldo),
                    _ => gemv_tile::<F, 3>(sh, w, nr, a, o, ldo),
                }
            }
        }
        t0 += tb;
    }
}

/// Safe [`super::GemmFn`] (and [`super::DotFn`]) entry points of the K-quant tiles,
/// `FORMAT => gemm[, dot];`: each calls `gemm_k::<FORMAT>` (the contract check, then the
/// invoking module's `gemm_tiles`, defined here once for both x86 tiers) and the module's
/// `dot_k::<FORMAT>`.
macro_rules! kquant_entry_points {
    ($($f:ident => $gemm:ident $(, $dot:ident)?;)*) => {
        /// Safe entry of the GEMMs: checks the contract, then runs the module's tiles.
        fn gemm_k<const F: u8>(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            let sh = check(F, k, w, n_rows, a, n_tok, out, ldo);
            if n_rows == 0 || n_tok == 0 {
                return;
            }
            // SAFETY: the entry points are only installed in the kernel table after the
            // invoking module's tier was detected.
            unsafe { gemm_tiles::<F>(&sh, w, n_rows, a, n_tok, out, ldo) }
        }
        $(kquant_entry_points!(@entry $f => $gemm $(, $dot)?);)*
    };
    (@entry $f:ident => $gemm:ident $(, $dot:ident)?) => {
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            gemm_k::<$f>(k, w, n_rows, a, n_tok, out, ldo)
        }
        $(
            pub(crate) fn $dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                dot_k::<$f>(n, w, a)
            }
        )?
    };
}
pub(super) use kquant_entry_points;

kquant_entry_points! {
    Q4K => gemm_q4_k_q8_k, dot_q4_k_q8_k;
    Q5K => gemm_q5_k_q8_k, dot_q5_k_q8_k;
    Q6K => gemm_q6_k_q8_k, dot_q6_k_q8_k;
    Q3K => gemm_q3_k_q8_k, dot_q3_k_q8_k;
    Q2K => gemm_q2_k_q8_k, dot_q2_k_q8_k;
}

/// One 1 × 1 tile of format `F`: the dots.
fn dot_k<const F: u8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut o = [0f32];
    let sh = check(F, n, w, 1, a, 1, &o, 1);
    // SAFETY: only installed in the kernel table after `avx2::detected()`.
    unsafe { gemv_tile::<F, 1>(&sh, w, 1, a, &mut o, 1) };
    o[0]
}

#[cfg(test)]
mod tests {
    use super::testkit::{check_dot, check_gemm};
    use super::*;

    #[test]
    fn k4_scale_bytes_unpack_like_k4_scales_mins() {
        if !super::super::avx2::detected() {
            println!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut cases = vec![[0u8; 16], [0xff; 16]];
        for _ in 0..500 {
            cases.push(std::array::from_fn(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (s >> 56) as u8
            }));
        }
        // Each case in the low half, the next one in the high half.
        for (q, q1) in cases.iter().zip(cases.iter().cycle().skip(1)) {
            let mut got = [0u8; 32];
            // SAFETY: AVX2 detected above; q, q1 are 16 bytes, got 32.
            unsafe {
                let (lo, hi) = (
                    _mm_loadu_si128(q.as_ptr().cast()),
                    _mm_loadu_si128(q1.as_ptr().cast()),
                );
                let v = k4_scale_bytes(_mm256_set_m128i(hi, lo));
                _mm256_storeu_si256(got.as_mut_ptr().cast(), v);
            }
            for (q, got) in [q, q1].into_iter().zip(got.chunks_exact(16)) {
                let (sc, mn) = k4_scales_mins(&q[..12]);
                let want = (sc as u128) | (mn as u128) << 64;
                let got = u128::from_le_bytes(got.try_into().expect("16 bytes"));
                assert_eq!(got, want, "scale bytes {q:?}");
            }
        }
    }

    #[test]
    fn avx2_k_dot_and_gemms_match_scalar() {
        if !super::super::avx2::detected() {
            println!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        check_dot::<Q4K>("avx2 q4_k", dot_q4_k_q8_k);
        check_dot::<Q5K>("avx2 q5_k", dot_q5_k_q8_k);
        check_dot::<Q6K>("avx2 q6_k", dot_q6_k_q8_k);
        check_dot::<Q3K>("avx2 q3_k", dot_q3_k_q8_k);
        check_dot::<Q2K>("avx2 q2_k", dot_q2_k_q8_k);
        check_gemm::<Q4K>("avx2 q4_k", gemm_q4_k_q8_k);
        check_gemm::<Q5K>("avx2 q5_k", gemm_q5_k_q8_k);
        check_gemm::<Q6K>("avx2 q6_k", gemm_q6_k_q8_k);
        check_gemm::<Q3K>("avx2 q3_k", gemm_q3_k_q8_k);
        check_gemm::<Q2K>("avx2 q2_k", gemm_q2_k_q8_k);
    }
}

/// Random and edge K-quant rows and the checks every K-quant kernel (AVX2 and
/// AVX-512) must pass against its scalar twin and `gemm_by_dots`.
#[cfg(test)]
pub(super) mod testkit {
    use super::{
        block_bytes, folds_offset, k4_scales_mins, q3k_scales, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K_BYTES,
    };
    use crate::block::{
        as_blocks, f32_to_f16, q3k_scale, unpack_q2k, unpack_q3k, unpack_q6k, BlockQ2K, BlockQ3K,
        BlockQ6K,
    };
    use crate::kernels::{gemm_by_dots, scalar, DotFn, GemmFn};
    use std::arch::x86_64::*;

    /// The scale, offset factor and block scales of one weight super-block in the
    /// form every kernel consumes.
    pub struct Scales {
        /// Per 16-element group: the integer scale (Q4_K/Q5_K: its 32-group's
        /// 6-bit scale; Q6_K: the signed 8-bit scale; Q3_K: the signed 6-bit one;
        /// Q2_K: the 4-bit one).
        pub groups: [i16; 16],
        /// Per 16-element group: the factor of the activation's bsum (Q4_K/Q5_K/Q2_K:
        /// the min, subtracted times `dmin`; Q6_K: −32·scale, Q3_K: −4·scale, added to
        /// the integer sum, whose unit is `d`).
        pub offsets: [i16; 16],
        pub d: f32,
        pub dmin: f32,
    }

    /// Decodes the f16 scale(s) and the scale bytes of the super-block at `b`.
    #[inline]
    pub fn block_scales<const F: u8>(b: &[u8]) -> Scales {
        let h = |o: usize| crate::block::f16_to_f32([b[o], b[o + 1]]);
        let mut s = Scales {
            groups: [0; 16],
            offsets: [0; 16],
            d: 0.0,
            dmin: 0.0,
        };
        if F == Q3K {
            s.d = h(108);
            let q: &[u8; 12] = b[96..108].try_into().expect("12 scale bytes");
            for j in 0..16 {
                let sc = q3k_scale(j, q) as i16;
                s.groups[j] = sc;
                s.offsets[j] = -4 * sc;
            }
        } else if F == Q2K {
            (s.d, s.dmin) = (h(80), h(82));
            for (j, &v) in b[..16].iter().enumerate() {
                (s.groups[j], s.offsets[j]) = ((v & 0x0f) as i16, (v >> 4) as i16);
            }
        } else if F == Q6K {
            s.d = h(208);
            for j in 0..16 {
                let sc = b[192 + j] as i8 as i16;
                s.groups[j] = sc;
                s.offsets[j] = -32 * sc;
            }
        } else {
            s.d = h(0);
            s.dmin = h(2);
            // The 12 bytes hold 8 six-bit scales and mins (ggml's
            // get_scale_min_k4): groups 0..4 in the low 6 bits of bytes 0..8,
            // groups 4..8 split over the nibbles of bytes 8..12 and the top 2
            // bits of bytes 0..8.
            let q = &b[4..16];
            for j in 0..8 {
                let (sc, m) = if j < 4 {
                    (q[j] & 63, q[j + 4] & 63)
                } else {
                    (
                        (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
                        (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                    )
                };
                s.groups[2 * j] = sc as i16;
                s.groups[2 * j + 1] = sc as i16;
                s.offsets[2 * j] = m as i16;
                s.offsets[2 * j + 1] = m as i16;
            }
        }
        s
    }

    #[test]
    fn k4_scales_mins_unpacks_like_get_scale_min_k4() {
        let mut rng = Rng::new(9);
        for _ in 0..200 {
            let q: Vec<u8> = (0..12).map(|_| rng.byte()).collect();
            let (sc, mn) = k4_scales_mins(&q);
            for j in 0..8 {
                let want = crate::block::get_scale_min_k4(j, q[..].try_into().expect("12 bytes"));
                assert_eq!(((sc >> (8 * j)) as u8, (mn >> (8 * j)) as u8), want);
            }
        }
    }

    /// A small deterministic generator (tests must be reproducible).
    pub struct Rng(u64);
    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 24
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        fn unit(&mut self) -> f32 {
            (self.next() % 2001) as f32 / 1000.0 - 1.0
        }
    }

    /// How a block is filled.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Fill {
        Random,
        Zero,
        ZeroD,
        ZeroDmin,
        MaxScales,
        MaxQuants,
        /// d = dmin = 1, |scales|, |mins|, |activations| ≤ 7: every f32
        /// partial sum is an integer below 2²⁴, so results must be exact.
        Exact,
    }
    const FILLS: [Fill; 6] = [
        Fill::Random,
        Fill::Zero,
        Fill::ZeroD,
        Fill::ZeroDmin,
        Fill::MaxScales,
        Fill::MaxQuants,
    ];

    fn weight_block<const F: u8>(rng: &mut Rng, fill: Fill) -> Vec<u8> {
        let mut b: Vec<u8> = (0..block_bytes(F)).map(|_| rng.byte()).collect();
        if fill == Fill::Zero {
            return vec![0; b.len()];
        }
        let (d_at, dmin_at, sc) = match F {
            Q6K => (208, None, 192..208),
            Q3K => (108, None, 96..108),
            Q2K => (80, Some(82), 0..16),
            _ => (0, Some(2), 4..16),
        };
        let mut d = f32_to_f16(rng.unit() * 0.1);
        let mut dmin = f32_to_f16(rng.unit() * 0.1);
        match fill {
            Fill::ZeroD => d = [0, 0],
            Fill::ZeroDmin => dmin = [0, 0],
            Fill::MaxScales if F == Q6K => {
                for (i, j) in sc.enumerate() {
                    b[j] = if i % 2 == 0 { 127 } else { 0x80 };
                }
            }
            // Q3_K: every scale −32 (stored 0), its largest magnitude.
            Fill::MaxScales if F == Q3K => b[sc].fill(0),
            Fill::MaxScales => b[sc].fill(0xff),
            Fill::MaxQuants => {
                let q = match F {
                    Q6K => 0..192,
                    Q5K => 16..176,
                    Q4K => 16..144,
                    Q3K => 0..96,
                    _ => 16..80,
                };
                b[q].fill(0xff);
            }
            Fill::Exact => {
                (d, dmin) = (f32_to_f16(1.0), f32_to_f16(1.0));
                if F == Q3K {
                    // Scales −7..=7: stored values 25..=39, packed as the format packs them.
                    let v: [u8; 16] = std::array::from_fn(|_| 25 + rng.byte() % 15);
                    let mut packed = [0u8; 12];
                    for (j, &v) in v.iter().enumerate() {
                        packed[j % 8] |= (v & 0x0f) << (4 * (j / 8));
                        packed[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
                    }
                    b[sc.clone()].copy_from_slice(&packed);
                }
                for (i, j) in sc.enumerate() {
                    b[j] = match F {
                        Q6K => ((rng.byte() % 15) as i8 - 7) as u8,
                        Q3K => b[j],
                        Q2K => b[j] & 0x77,
                        _ if i < 8 => b[j] & 0x07,
                        _ => b[j] & 0x77,
                    };
                }
            }
            _ => {}
        }
        b[d_at..d_at + 2].copy_from_slice(&d);
        if let Some(at) = dmin_at {
            b[at..at + 2].copy_from_slice(&dmin);
        }
        b
    }

    #[test]
    fn q3k_scales_unpack_like_q3k_scale() {
        if !super::super::avx2::detected() {
            println!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut rng = Rng::new(11);
        for _ in 0..200 {
            let block: Vec<u8> = (0..110).map(|_| rng.byte()).collect();
            let mut got = [0u8; 16];
            // SAFETY: AVX2 was detected; `got` is 16 writable bytes.
            unsafe { _mm_storeu_si128(got.as_mut_ptr().cast(), q3k_scales(&block)) };
            let q: &[u8; 12] = block[96..108].try_into().expect("12 scale bytes");
            for (j, &g) in got.iter().enumerate() {
                assert_eq!(g as i8 - 32, q3k_scale(j, q), "sub-block {j} of {q:?}");
            }
        }
    }

    fn act_block(rng: &mut Rng, fill: Fill) -> Vec<u8> {
        let mut b = vec![0u8; Q8K_BYTES];
        let (d, qs): (f32, Vec<i8>) = match fill {
            Fill::Zero => return b,
            Fill::MaxQuants | Fill::MaxScales => (
                rng.unit(),
                (0..256)
                    .map(|i| if i % 3 == 0 { -128 } else { 127 })
                    .collect(),
            ),
            Fill::Exact => (1.0, (0..256).map(|_| (rng.byte() % 15) as i8 - 7).collect()),
            _ => (rng.unit(), (0..256).map(|_| rng.byte() as i8).collect()),
        };
        b[..4].copy_from_slice(&d.to_le_bytes());
        for (o, &q) in b[4..260].iter_mut().zip(&qs) {
            *o = q as u8;
        }
        for j in 0..16 {
            let s: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&(s as i16).to_le_bytes());
        }
        b
    }

    /// A row of `nb` blocks; `fill` None mixes the edge fills block by block.
    fn row(
        rng: &mut Rng,
        nb: usize,
        fill: Option<Fill>,
        block: impl Fn(&mut Rng, Fill) -> Vec<u8>,
    ) -> Vec<u8> {
        (0..nb)
            .flat_map(|_| {
                let f = fill.unwrap_or_else(|| FILLS[rng.next() as usize % FILLS.len()]);
                block(rng, f)
            })
            .collect()
    }

    /// The unsigned quants of one weight block in element order.
    fn quants<const F: u8>(b: &[u8]) -> [i32; 256] {
        let mut u = [0i32; 256];
        if F == Q3K {
            let q = unpack_q3k(&as_blocks::<BlockQ3K>(b).expect("one block")[0]);
            return q.map(|v| v as i32 + 4);
        }
        if F == Q2K {
            return unpack_q2k(&as_blocks::<BlockQ2K>(b).expect("one block")[0]).map(i32::from);
        }
        if F == Q6K {
            let q = unpack_q6k(&as_blocks::<BlockQ6K>(b).expect("one block")[0]);
            for (o, &v) in u.iter_mut().zip(&q) {
                *o = v as i32 + 32;
            }
            return u;
        }
        let qs = if F == Q5K { &b[48..176] } else { &b[16..144] };
        for c in 0..4 {
            for l in 0..32 {
                u[64 * c + l] = (qs[32 * c + l] & 15) as i32;
                u[64 * c + 32 + l] = (qs[32 * c + l] >> 4) as i32;
                if F == Q5K {
                    u[64 * c + l] += 16 * ((b[16 + l] >> (2 * c)) & 1) as i32;
                    u[64 * c + 32 + l] += 16 * ((b[16 + l] >> (2 * c + 1)) & 1) as i32;
                }
            }
        }
        u
    }

    /// Σ of the magnitudes of every term the kernels add, which bounds the
    /// difference that summation order alone can make.
    fn magnitude<const F: u8>(w: &[u8], a: &[u8]) -> f64 {
        let bb = block_bytes(F);
        let mut m = 0f64;
        for (wb, ab) in w.chunks_exact(bb).zip(a.chunks_exact(Q8K_BYTES)) {
            let s = block_scales::<F>(wb);
            let u = quants::<F>(wb);
            let da = f32::from_le_bytes([ab[0], ab[1], ab[2], ab[3]]) as f64;
            let (mut main, mut off) = (0f64, 0f64);
            for e in 0..256 {
                main += (s.groups[e / 16] as f64 * u[e] as f64 * (ab[4 + e] as i8) as f64).abs();
            }
            for j in 0..16 {
                let bsum = i16::from_le_bytes([ab[260 + 2 * j], ab[261 + 2 * j]]) as f64;
                off += (s.offsets[j] as f64 * bsum).abs();
            }
            let dm = if folds_offset(F) { s.d } else { s.dmin } as f64;
            m += (s.d as f64 * da).abs() * main + (dm * da).abs() * off;
        }
        m
    }

    fn scalar_dot<const F: u8>() -> DotFn {
        match F {
            Q4K => scalar::dot_q4_k_q8_k,
            Q5K => scalar::dot_q5_k_q8_k,
            Q6K => scalar::dot_q6_k_q8_k,
            Q3K => scalar::dot_q3_k_q8_k,
            _ => scalar::dot_q2_k_q8_k,
        }
    }

    fn close(got: f32, want: f32, mag: f64, exact: bool) -> bool {
        if exact {
            got == want
        } else {
            ((got - want) as f64).abs() <= 1e-6 * mag
        }
    }

    /// `dot` against the scalar twin on random, edge and exact rows.
    pub fn check_dot<const F: u8>(name: &str, dot: DotFn) {
        let mut rng = Rng::new(F as u64 + 1);
        for nb in [1usize, 2, 3, 5, 8] {
            let fills = FILLS
                .iter()
                .map(|&f| Some(f))
                .chain([None, Some(Fill::Exact)]);
            for fill in fills {
                for _ in 0..3 {
                    let w = row(&mut rng, nb, fill, weight_block::<F>);
                    let a = row(&mut rng, nb, fill, act_block);
                    let (got, want) = (dot(256 * nb, &w, &a), scalar_dot::<F>()(256 * nb, &w, &a));
                    let mag = magnitude::<F>(&w, &a);
                    assert!(
                        close(got, want, mag, fill == Some(Fill::Exact)),
                        "{name} k={} {fill:?}: {got} vs scalar {want} (Σ|terms| {mag})",
                        256 * nb
                    );
                }
            }
        }
    }

    /// `gemm` against `gemm_by_dots` over the scalar twin: every tile shape
    /// and tail, output stride > n_rows (the gaps must stay untouched).
    pub fn check_gemm<const F: u8>(name: &str, gemm: GemmFn) {
        let mut rng = Rng::new(100 + F as u64);
        let mut shapes = vec![];
        for nb in [1usize, 2, 3, 5] {
            for n_rows in 1..=9 {
                for n_tok in 1..=9 {
                    shapes.push((nb, n_rows, n_tok));
                }
            }
        }
        // nb > 16: the AVX-512 GEMV lays out each pass of 16 super-blocks on its own.
        shapes.extend([
            (2, 21, 131),
            (5, 17, 65),
            (1, 33, 1),
            (2, 4, 64),
            (17, 19, 4),
            (18, 3, 7),
        ]);
        for (i, &(nb, n_rows, n_tok)) in shapes.iter().enumerate() {
            let fill = match i % 3 {
                0 => None,
                1 => Some(Fill::Random),
                _ => Some(Fill::Exact),
            };
            let k = 256 * nb;
            let w: Vec<u8> = (0..n_rows)
                .flat_map(|_| row(&mut rng, nb, fill, weight_block::<F>))
                .collect();
            let a: Vec<u8> = (0..n_tok)
                .flat_map(|_| row(&mut rng, nb, fill, act_block))
                .collect();
            let ldo = n_rows + 2;
            let mut got = vec![-7.5f32; n_tok * ldo];
            let mut want = got.clone();
            gemm(k, &w, n_rows, &a, n_tok, &mut got, ldo);
            let (wrb, arb) = (nb * block_bytes(F), nb * Q8K_BYTES);
            gemm_by_dots(
                scalar_dot::<F>(),
                wrb,
                arb,
                k,
                &w,
                n_rows,
                &a,
                n_tok,
                &mut want,
                ldo,
            );
            for t in 0..n_tok {
                for r in 0..ldo {
                    let (g, x) = (got[t * ldo + r], want[t * ldo + r]);
                    let mag = if r < n_rows {
                        magnitude::<F>(&w[r * wrb..][..wrb], &a[t * arb..][..arb])
                    } else {
                        0.0
                    };
                    assert!(
                        close(g, x, mag, r >= n_rows || fill == Some(Fill::Exact)),
                        "{name} k={k} rows={n_rows} toks={n_tok} {fill:?} (r {r}, t {t}): {g} vs {x} (Σ|terms| {mag})"
                    );
                }
            }
        }
    }
}
