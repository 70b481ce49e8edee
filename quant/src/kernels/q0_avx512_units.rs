//! AVX-512 (F, BW, VL + VNNI) GEMV and GEMM for Q4_0, Q8_0 and Q5_0 weights
//! (the two 32-element formats the speed targets name, and the Q4_K recipe's
//! down experts) and Q4_1, Q5_1 (the Q5_K recipe's down experts), on
//! activations laid out once per call in *units* that match the weight's
//! nibble order.
//!
//! Q5_0 is Q4_0 plus a 5th bit: one more `vpermt2w` gathers the 4 blocks'
//! `qh` words, whose bytes `vpshufb` spreads over the quant bytes they hold
//! the bits of; `vptestmb` turns them into byte masks that add 16 to the
//! nibbles they mark (OFFSET 16). A unit is 88 bytes, read as the two whole
//! vectors at bytes 0 and 24.
//!
//! Q4_1 and Q5_1 multiply their unsigned quants directly (no offset) and add
//! `m_w·s_a` per block: their minimums gathered as the scales are, Q8_1's
//! `s = d·Σa` in the first lane of each block of the activation unit, one
//! more FMA per unit. A Q5_1 unit is 96 bytes, read at bytes 0 and 32.
//!
//! Why: the first AVX-512 kernels (block-at-a-time tiles, since removed)
//! decoded every block on its own (a 16-byte load, two nibble masks, a lane
//! insert, a scalar f16 scale, a broadcast and a join per block and row) and paid ~11 instructions per Q4_0 block and row; decode
//! was instruction-bound, not memory-bound. Here one unit covers 4 Q4_0
//! blocks (2 Q8_0 blocks), i.e. one 64-byte vector of quants:
//!
//! - weights: one 64-byte load (+ 8 or 4 bytes), one `vpermt2w` that gathers
//!   the 4 blocks' 16 quant bytes (all at even offsets, so AVX512-BW's word
//!   permute is enough, no VBMI), two nibble masks (Q4_0) or a sign flip
//!   (Q8_0), one `vpermw` + `vcvtph2ps` for all 4 scales;
//! - activations: per unit, the low-nibble partners (elements 0..16 of each
//!   block, lane block j = block j) and high-nibble partners (16..32), the
//!   `−OFFSET·Σa` start of `vpdpbusd` per i32 lane, and `d_a` per lane,
//!   built once per call and reused by every weight row;
//! - per (row, token, unit): two `vpdpbusd` (one for Q8_0), a convert, a
//!   multiply of the scales and one FMA into a 16-lane accumulator.
//!
//! That is ~13 instructions per 4 Q4_0 blocks and row in the GEMV (3.5× fewer
//! than before). A few tokens (an expert's share of a short prompt) run the
//! same GEMV with each weight unit decoded once and met by each token in
//! turn, up to 4 per pass: the weight bytes are read and decoded once, only
//! the `vpdpbusd`s and FMAs repeat (a 4-row × 4-token tile that decoded each
//! unit once per 4 tokens but read 4 rows in 4 strided streams without
//! prefetch did Q8_0 at 2 tokens no faster per token than the GEMV alone). The integer block sums equal the scalar twins' exactly;
//! every output, whatever the tile, sums the same f32 terms in the same order
//! (lanes per unit, then [`reduce16`]'s tree, then k-chunks in order), so
//! the GEMM is bit-identical to the dot of the same row and token.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::kquant_avx2::Shape;
use super::q0_x86::{even_runs, h2f, q0_shape, ActBlock, KChunk};
use crate::block::{
    as_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, ByteBlock,
};

/// One unit of prepared activations: the quants facing the weight's first
/// and second quant vector (`q1` unused for Q8_0), the `vpdpbusd` start value
/// `−OFFSET·Σa` per i32 lane, and the activation scale of each lane's block.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Unit {
    q0: __m512i,
    q1: __m512i,
    /// For the formats with minimums (Q4_1, Q5_1, no offset) instead the f32
    /// bits of Q8_1's `s` in the first lane of each block (0 in the other
    /// three), which the weights' minimums multiply: a unit stays 256 bytes.
    base: __m512i,
    d: __m512,
}

/// One weight unit decoded: its unsigned quants (one or two vectors), each
/// lane's block scale, and (Q4_1, Q5_1) its block minimum.
#[derive(Clone, Copy)]
struct Weights {
    q0: __m512i,
    q1: __m512i,
    d: __m512,
    min: __m512,
}

/// Units of prepared activations per pass (24 KB: they stay in L1 while every
/// row tile runs over them).
const UNITS: usize = 96;
/// Weight rows of the GEMV tile: 16 accumulators that [`reduce16`] turns
/// into one vector of outputs.
const RV: usize = 16;

/// A weight format served here.
trait UnitFormat {
    /// The activation block it pairs with.
    type A: ActBlock;
    /// Whether the blocks have minimums (see [`Unit::base`]).
    const HAS_MIN: bool = false;
    /// Blocks per unit and weight bytes per block.
    const BLOCKS: usize;
    /// The weight block, and its bytes.
    type W: ByteBlock;
    const BLOCK_BYTES: usize = std::mem::size_of::<Self::W>();
    /// Signed quant = unsigned quant − OFFSET.
    const OFFSET: i8;
    /// Whether a unit has two quant vectors (low and high nibbles).
    const TWO: bool;
    /// The unit's unsigned quants (one or two vectors) and each lane's block
    /// scale, from the `n` blocks (`n < BLOCKS` only for a row's last unit)
    /// at `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `p` points at `n` readable weight blocks.
    unsafe fn weight<const PART: bool>(p: *const u8, n: usize) -> Weights;
    /// The unit of `blocks` (1..=BLOCKS activation blocks; missing ones are
    /// zero); a nibble format's unless a format says otherwise.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prep(blocks: &[Self::A]) -> Unit
    where
        Self: Sized,
    {
        prep_nibble_order::<Self>(blocks)
    }
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

/// `vpermt2w` indices gathering 4 Q4_0 blocks' quant bytes (word 9j + 1 + i
/// of the 72 bytes) into 16-byte lane blocks.
static Q4_QS: [i16; 32] = {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = (9 * (i / 8) + 1 + i % 8) as i16;
        i += 1;
    }
    s
};
/// `vpermw` indices putting block i/4's f16 scale (word 9·(i/4)) in word i.
static Q4_D: [i16; 32] = {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 16 {
        s[i] = (9 * (i / 4)) as i16;
        i += 1;
    }
    s
};
/// Where word `w` of a Q5_0 unit (88 bytes) lies in the vector pair that
/// [`Q5_0::weight`] loads: words 0..32 in the first (bytes 0..64), the rest
/// in the second, which holds bytes 24..88 (words 12..44) so that both loads
/// are whole 64-byte loads inside the unit.
const fn q5_word(w: usize) -> i16 {
    (if w < 32 { w } else { w + 20 }) as i16
}
/// As `Q4_QS` for 4 Q5_0 blocks of 22 bytes (quants at word 11j + 3).
static Q5_QS: [i16; 32] = {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = q5_word(11 * (i / 8) + 3 + i % 8);
        i += 1;
    }
    s
};
/// Q5_0's scales and high bits: word i < 16 is block i/4's f16 scale (word
/// 11·(i/4)); words 16..20 the low halves of the 4 blocks' `qh` (word
/// 11j + 1), words 20..24 their high halves (word 11j + 2).
static Q5_DH: [i16; 32] = {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 24 {
        s[i] = q5_word(if i < 16 {
            11 * (i / 4)
        } else if i < 20 {
            11 * (i - 16) + 1
        } else {
            11 * (i - 20) + 2
        });
        i += 1;
    }
    s
};
/// `vpshufb` indices spreading the `qh` bytes (bytes 32..48 of [`Q5_DH`]'s
/// result, broadcast to every 128-bit block) over the quant bytes: byte i of
/// block j of the low-nibble vector takes byte i/8 of block j's low `qh`
/// half (byte 2j + i/8), of the high-nibble vector byte 2j + i/8 of the high
/// halves (8 + 2j + i/8).
static Q5_QH_LO: [i8; 64] = q5_qh_spread(0);
static Q5_QH_HI: [i8; 64] = q5_qh_spread(8);

const fn q5_qh_spread(first: usize) -> [i8; 64] {
    let mut s = [0i8; 64];
    let mut i = 0;
    while i < 64 {
        s[i] = (first + 2 * (i / 16) + (i % 16) / 8) as i8;
        i += 1;
    }
    s
}
/// Byte i of every 8 selects bit i (`vptestmb` against the spread `qh`).
const Q5_BIT: i64 = 0x8040_2010_0804_0201u64 as i64;

/// As `Q4_QS` for 2 Q8_0 blocks (quants at word 17j + 1 of 68 bytes).
static Q8_QS: [i16; 32] = {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = (17 * (i / 16) + 1 + i % 16) as i16;
        i += 1;
    }
    s
};
/// As `Q4_D`: block i/8's scale (word 17·(i/8)) in word i.
static Q8_D: [i16; 32] = {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 16 {
        s[i] = (17 * (i / 8)) as i16;
        i += 1;
    }
    s
};

/// `vpermt2w` indices of a unit of 4 blocks of `stride` words whose second
/// vector is loaded from word `second` of the unit: entry i < `n` takes word
/// `stride·(i/per) + first` of block i/per, plus `i%per` for a run of
/// consecutive words (quants), not for a repeated one (a scale per lane);
/// entries past `n` take word 0.
const fn unit_words(
    stride: usize,
    first: usize,
    per: usize,
    n: usize,
    second: usize,
    run: bool,
) -> [i16; 32] {
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < n {
        let w = stride * (i / per) + first + if run { i % per } else { 0 };
        s[i] = (if w < 32 { w } else { 32 + w - second }) as i16;
        i += 1;
    }
    s
}
/// Q4_1 (20-byte blocks: scale, minimum, 16 quant bytes; a unit of 80
/// bytes read at bytes 0 and 64): the quants, and each lane's block scale and
/// minimum in words 0..16.
static Q41_QS: [i16; 32] = unit_words(10, 2, 8, 32, 32, true);
static Q41_D: [i16; 32] = unit_words(10, 0, 4, 16, 32, false);
static Q41_M: [i16; 32] = unit_words(10, 1, 4, 16, 32, false);
/// Q5_1 (24-byte blocks: scale, minimum, 4 high-bit bytes, 16 quant bytes; a
/// unit of 96 bytes read at bytes 0 and 32): the quants, the minimums, and
/// as [`Q5_DH`] the scales in words 0..16 and the `qh` halves in 16..24.
static Q51_QS: [i16; 32] = unit_words(12, 4, 8, 32, 16, true);
static Q51_M: [i16; 32] = unit_words(12, 1, 4, 16, 16, false);
static Q51_DH: [i16; 32] = {
    let (d, lo, hi) = (
        unit_words(12, 0, 4, 16, 16, false),
        unit_words(12, 2, 1, 4, 16, false),
        unit_words(12, 3, 1, 4, 16, false),
    );
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 24 {
        s[i] = if i < 16 {
            d[i]
        } else if i < 20 {
            lo[i - 16]
        } else {
            hi[i - 20]
        };
        i += 1;
    }
    s
};

/// The 64 bytes at `p + off` of a row's last, partial unit, of which the
/// `n_bytes` at `p` are readable: the bytes past them read as zeros.
///
/// # Safety
/// AVX-512 F/BW; `p` points at `n_bytes` readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load_part(p: *const u8, n_bytes: usize, off: usize) -> __m512i {
    let n = n_bytes.saturating_sub(off);
    let mask = if n >= 64 { !0u64 } else { (1u64 << n) - 1 };
    // SAFETY: a masked load never touches the bytes past its mask, which
    // covers readable bytes only (none when n = 0; the address is then
    // only computed).
    unsafe { _mm512_maskz_loadu_epi8(mask, p.wrapping_add(off).cast()) }
}

/// Loads a 32-entry i16 index table.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn idx(t: &[i16; 32]) -> __m512i {
    // SAFETY: t is 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
}

/// The 16 f16 scales in the low words of `a` (after a `vpermw`) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn scales(a: __m512i, table: &[i16; 32]) -> __m512 {
    let w = _mm512_permutexvar_epi16(idx(table), a);
    _mm512_cvtph_ps(_mm512_castsi512_si256(w))
}

/// As [`scales`], from the unit's two vectors (`vpermt2w`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn scales2(a: __m512i, b: __m512i, table: &[i16; 32]) -> __m512 {
    let w = _mm512_permutex2var_epi16(a, idx(table), b);
    _mm512_cvtph_ps(_mm512_castsi512_si256(w))
}

/// [`Weights`] of a format without minimums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn weights(q0: __m512i, q1: __m512i, d: __m512) -> Weights {
    Weights {
        q0,
        q1,
        d,
        min: _mm512_setzero_ps(),
    }
}

/// The low and high nibbles of `qs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibbles(qs: __m512i) -> (__m512i, __m512i) {
    let m4 = _mm512_set1_epi8(0x0f);
    (
        _mm512_and_si512(qs, m4),
        _mm512_and_si512(_mm512_srli_epi16::<4>(qs), m4),
    )
}

/// The 5-bit quants of a Q5 unit: the nibbles of `qs` plus 16 where the `qh`
/// halves in words 16..24 of `dh` (as [`Q5_DH`] gathers them) set the bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn five_bit(qs: __m512i, dh: __m512i) -> (__m512i, __m512i) {
    // The `qh` bytes in every 128-bit block, each spread over the 8 quant
    // bytes it holds the 5th bits of, tested bit by bit: the byte masks stay
    // in vector registers (moving them through general registers into k
    // registers cost more than these four operations).
    let qh = _mm512_shuffle_i32x4::<0b10_10_10_10>(dh, dh);
    // SAFETY: the `Q5_QH_*` tables are 64 bytes; loadu is unaligned.
    let (t_lo, t_hi) = unsafe {
        (
            _mm512_loadu_si512(Q5_QH_LO.as_ptr().cast()),
            _mm512_loadu_si512(Q5_QH_HI.as_ptr().cast()),
        )
    };
    let bit = _mm512_set1_epi64(Q5_BIT);
    let k_lo = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, t_lo), bit);
    let k_hi = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, t_hi), bit);
    let b4 = _mm512_set1_epi8(0x10);
    let (lo, hi) = nibbles(qs);
    (
        _mm512_mask_add_epi8(lo, k_lo, lo, b4),
        _mm512_mask_add_epi8(hi, k_hi, hi, b4),
    )
}

/// `−offset·Σa` per i32 lane of `q` (the start value of `vpdpbusd`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn minus_offset_sum(acc: __m512i, offset: i8, q: __m512i) -> __m512i {
    let zero = _mm512_setzero_si512();
    _mm512_sub_epi32(acc, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(offset), q))
}

/// 16 f32: `d` of block j in lanes `per·j .. per·(j + 1)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn act_scales<A: ActBlock>(blocks: &[A], per: usize) -> __m512 {
    let mut d = [0f32; 16];
    for (j, b) in blocks.iter().enumerate() {
        d[per * j..per * (j + 1)].fill(h2f(b.d()));
    }
    // SAFETY: d is 16 f32.
    unsafe { _mm512_loadu_ps(d.as_ptr()) }
}

impl UnitFormat for Q4_0 {
    type A = BlockQ8_0;
    const BLOCKS: usize = 4;
    type W = BlockQ4_0;
    const OFFSET: i8 = 8;
    const TWO: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn weight<const PART: bool>(p: *const u8, n: usize) -> Weights {
        // SAFETY: the unit's 72 bytes (`18n` when `PART`) are readable
        // (caller); the tail is read as its 8 bytes.
        let (a, b) = unsafe {
            if PART {
                (load_part(p, 18 * n, 0), load_part(p, 18 * n, 64))
            } else {
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_zextsi128_si512(_mm_loadl_epi64(p.add(64).cast())),
                )
            }
        };
        let (lo, hi) = nibbles(_mm512_permutex2var_epi16(a, idx(&Q4_QS), b));
        weights(lo, hi, scales(a, &Q4_D))
    }
}

impl UnitFormat for Q4_1 {
    type A = BlockQ8_1;
    const HAS_MIN: bool = true;
    const BLOCKS: usize = 4;
    type W = BlockQ4_1;
    const OFFSET: i8 = 0;
    const TWO: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn weight<const PART: bool>(p: *const u8, n: usize) -> Weights {
        // SAFETY: the unit's 80 bytes (`20n` when `PART`) are readable
        // (caller); the tail is read as its 16 bytes.
        let (a, b) = unsafe {
            if PART {
                (load_part(p, 20 * n, 0), load_part(p, 20 * n, 64))
            } else {
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_zextsi128_si512(_mm_loadu_si128(p.add(64).cast())),
                )
            }
        };
        let (lo, hi) = nibbles(_mm512_permutex2var_epi16(a, idx(&Q41_QS), b));
        Weights {
            q0: lo,
            q1: hi,
            d: scales(a, &Q41_D),
            min: scales(a, &Q41_M),
        }
    }
}

/// The unit of up to 4 activation blocks facing a weight whose quants are in
/// nibble order (Q4_0, Q4_1, Q5_0, Q5_1: byte i holds elements i and i + 16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn prep_nibble_order<F: UnitFormat>(blocks: &[F::A]) -> Unit {
    let (mut lo, mut hi) = ([0i8; 64], [0i8; 64]);
    for (j, b) in blocks.iter().enumerate() {
        lo[16 * j..16 * (j + 1)].copy_from_slice(&b.qs()[..16]);
        hi[16 * j..16 * (j + 1)].copy_from_slice(&b.qs()[16..]);
    }
    // SAFETY: lo and hi are 64 bytes each.
    let (q0, q1) = unsafe {
        (
            _mm512_loadu_si512(lo.as_ptr().cast()),
            _mm512_loadu_si512(hi.as_ptr().cast()),
        )
    };
    let base = if F::HAS_MIN {
        let mut s = [0f32; 16];
        for (j, b) in blocks.iter().enumerate() {
            s[4 * j] = h2f(b.s());
        }
        // SAFETY: s is 16 f32.
        _mm512_castps_si512(unsafe { _mm512_loadu_ps(s.as_ptr()) })
    } else {
        let base = minus_offset_sum(_mm512_setzero_si512(), F::OFFSET, q0);
        minus_offset_sum(base, F::OFFSET, q1)
    };
    Unit {
        q0,
        q1,
        base,
        d: act_scales(blocks, 4),
    }
}

impl UnitFormat for Q5_0 {
    type A = BlockQ8_0;
    const BLOCKS: usize = 4;
    type W = BlockQ5_0;
    const OFFSET: i8 = 16;
    const TWO: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn weight<const PART: bool>(p: *const u8, n: usize) -> Weights {
        // Bytes 0..64 and 24..88 (see `q5_word`): two whole loads, no
        // masked tail (a masked load needs its mask in a k register, which
        // the loop then reloads from a general register every unit).
        // SAFETY: the unit's 88 bytes (`22n` when `PART`) are readable
        // (caller).
        let (a, b) = unsafe {
            if PART {
                (load_part(p, 22 * n, 0), load_part(p, 22 * n, 24))
            } else {
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(24).cast()),
                )
            }
        };
        let qs = _mm512_permutex2var_epi16(a, idx(&Q5_QS), b);
        // Words 0..16: the lanes' f16 scales; 16..24: the 4 blocks' `qh`
        // halves, the 5th bits of the low then of the high nibbles.
        let dh = _mm512_permutex2var_epi16(a, idx(&Q5_DH), b);
        let d = _mm512_cvtph_ps(_mm512_castsi512_si256(dh));
        let (lo, hi) = five_bit(qs, dh);
        weights(lo, hi, d)
    }
}

impl UnitFormat for Q5_1 {
    type A = BlockQ8_1;
    const HAS_MIN: bool = true;
    const BLOCKS: usize = 4;
    type W = BlockQ5_1;
    const OFFSET: i8 = 0;
    const TWO: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn weight<const PART: bool>(p: *const u8, n: usize) -> Weights {
        // Bytes 0..64 and 32..96: two whole loads inside the unit.
        // SAFETY: the unit's 96 bytes (`24n` when `PART`) are readable
        // (caller).
        let (a, b) = unsafe {
            if PART {
                (load_part(p, 24 * n, 0), load_part(p, 24 * n, 32))
            } else {
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(32).cast()),
                )
            }
        };
        let qs = _mm512_permutex2var_epi16(a, idx(&Q51_QS), b);
        let dh = _mm512_permutex2var_epi16(a, idx(&Q51_DH), b);
        let (lo, hi) = five_bit(qs, dh);
        Weights {
            q0: lo,
            q1: hi,
            d: _mm512_cvtph_ps(_mm512_castsi512_si256(dh)),
            min: scales2(a, b, &Q51_M),
        }
    }
}

impl UnitFormat for Q8_0 {
    type A = BlockQ8_0;
    const BLOCKS: usize = 2;
    type W = BlockQ8_0;
    /// `qs ^ 0x80` is `qs + 128` as an unsigned byte.
    const OFFSET: i8 = -128;
    const TWO: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn weight<const PART: bool>(p: *const u8, n: usize) -> Weights {
        // SAFETY: the unit's 68 bytes (`34n` when `PART`) are readable
        // (caller); the tail is read as its 4 bytes.
        let (a, b) = unsafe {
            if PART {
                (load_part(p, 34 * n, 0), load_part(p, 34 * n, 64))
            } else {
                let tail = p.add(64).cast::<i32>().read_unaligned();
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_zextsi128_si512(_mm_cvtsi32_si128(tail)),
                )
            }
        };
        let qs = _mm512_permutex2var_epi16(a, idx(&Q8_QS), b);
        let u = _mm512_xor_si512(qs, _mm512_set1_epi8(-128));
        weights(u, _mm512_setzero_si512(), scales(a, &Q8_D))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prep(blocks: &[BlockQ8_0]) -> Unit {
        let mut q = [0i8; 64];
        for (j, b) in blocks.iter().enumerate() {
            q[32 * j..32 * (j + 1)].copy_from_slice(&b.qs);
        }
        // SAFETY: q is 64 bytes.
        let q0 = unsafe { _mm512_loadu_si512(q.as_ptr().cast()) };
        Unit {
            q0,
            q1: _mm512_setzero_si512(),
            // −128 as the unsigned byte 128.
            base: minus_offset_sum(_mm512_setzero_si512(), Self::OFFSET, q0),
            d: act_scales(blocks, 8),
        }
    }
}

/// Lane i of the result is the sum of `v[i]`'s lanes, every lane summed by
/// the same tree (so a lone row and a tile row give the same bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn reduce16(v: &[__m512; 16]) -> __m512 {
    let mut s = [_mm512_setzero_ps(); 8];
    for i in 0..8 {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    let mut x = [_mm512_setzero_ps(); 4];
    for i in 0..4 {
        let (a, b) = (_mm512_castps_pd(s[2 * i]), _mm512_castps_pd(s[2 * i + 1]));
        let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        x[i] = _mm512_add_ps(lo, hi);
    }
    let pair = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    };
    pair(pair(x[0], x[1]), pair(x[2], x[3]))
}

/// `acc += d_w·d_a·(Σ u·q − OFFSET·Σq)` of one weight unit and one token's unit
/// (`+ m_w·s_a` for the formats with minimums).
#[inline(always)]
fn step<F: UnitFormat>(w: Weights, x: &Unit, acc: &mut __m512) {
    // SAFETY: only reached from functions compiled with AVX-512 F/BW/VL +
    // VNNI (the `target_feature` callers below), which this inlines into.
    unsafe {
        let start = if F::HAS_MIN {
            _mm512_setzero_si512()
        } else {
            x.base
        };
        let mut s = _mm512_dpbusd_epi32(start, w.q0, x.q0);
        if F::TWO {
            s = _mm512_dpbusd_epi32(s, w.q1, x.q1);
        }
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(w.d, x.d), *acc);
        if F::HAS_MIN {
            *acc = _mm512_fmadd_ps(w.min, _mm512_castsi512_ps(x.base), *acc);
        }
    }
}

/// Weight unit `u` (chunk-relative) of the row at `row`.
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI; `row` is a whole weight row.
#[inline(always)]
unsafe fn weight_unit<F: UnitFormat>(row: &[u8], kc: &KChunk, u: usize) -> Weights {
    let off = (kc.u0 + u) * F::BLOCKS * F::BLOCK_BYTES;
    debug_assert!(off < row.len());
    let p = row[off..].as_ptr();
    // SAFETY: a whole unit (or the `last_blocks` blocks of the last one) lies
    // in the row; the CPU features are the caller's.
    unsafe {
        if u + 1 == kc.units && kc.last_blocks < F::BLOCKS {
            F::weight::<true>(p, kc.last_blocks)
        } else {
            F::weight::<false>(p, F::BLOCKS)
        }
    }
}

/// Adds (or, in the first k-chunk, stores) `v` to `*o`.
#[inline(always)]
fn put(o: &mut f32, v: f32, first: bool) {
    *o = if first { v } else { *o + v };
}

/// `out[t·ldo + r] (+)= Σ_units` for the `nr ≤ 16` rows at `w` and the `NT`
/// tokens whose chunk units start at `x` (token t's at `x[t·stride..]`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn gemv_tile<F: UnitFormat, const NT: usize>(
    kc: &KChunk,
    w: &[u8],
    wrb: usize,
    nr: usize,
    x: &[Unit],
    stride: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); RV]; NT];
    for u in 0..kc.units {
        for r in 0..nr {
            // SAFETY: row r is whole; AVX-512 is this function's.
            let wv = unsafe { weight_unit::<F>(&w[r * wrb..][..wrb], kc, u) };
            for (t, acc) in acc.iter_mut().enumerate() {
                step::<F>(wv, &x[t * stride + u], &mut acc[r]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        let mut o = [0f32; 16];
        // SAFETY: o is 16 f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), reduce16(acc)) };
        for (d, &v) in out[t * ldo..][..nr].iter_mut().zip(&o) {
            put(d, v, kc.first);
        }
    }
}

/// How far ahead of its reads the GEMV prefetches, in bytes of the weight
/// stream (rounded up to whole rows of the k-chunk).
///
/// Decode streams every weight byte from memory once. Measured on an AMD
/// Zen 4 (one core, 512 MiB of Q8_0/Q4_0 rows of 1280, CPU time): with 16
/// row streams interleaved and each unit prefetching the next tile into L1
/// the GEMV read 9–11 GB/s beside a plain read's 24–28: the L1 has too few
/// miss buffers for DRAM latency, so the loads waited in turn. Reading the
/// tile row after row (one sequential stream) and prefetching into L2
/// (`T1`, no L1 miss buffer held) 8 KiB ahead gave 18–24 GB/s; 2–4 KiB
/// ahead was too short, 16 KiB no better.
pub(super) const PREFETCH_BYTES: usize = 8 << 10;

/// Units of a k-chunk: each output adds its chunks' sums in order, so every
/// call shape (and decode) sums the same terms in the same order.
const CHUNK_UNITS: usize = UNITS / 4;

/// Most k-chunks a row spans in one pass of the GEMV.
const MAX_KCHUNKS: usize = UNITS / CHUNK_UNITS;

/// Tokens one pass of the GEMV serves at most (fewer where their units would
/// not fit [`UNITS`]): each more adds two accumulators to the registers (not
/// measured beyond 4). The row-lane kernels of `q0_avx512_rows` take batches
/// of 5 tokens and more (Q4_0, Q4_1: 9), so longer ones run in even passes.
const GEMV_TOKENS: usize = 4;

/// Rows of a tile that [`gemv_tile16`] reads side by side, unit by unit.
///
/// Each row sums its units into one accumulator, so one row alone is a chain of
/// FMAs, each waiting for the one before; two rows at once give the core two
/// independent chains (each still summed in the same order: the same bits).
/// Measured on a Zen 4 (`gemv_stream`, k = 1,280, one thread, alternating
/// rounds): with the rows in L2, Q8_0 31.0-32.2 GB/s one row at a time
/// against 35.1-35.7 two; Q4_0 26.3-26.9 against 27.2 and Q5_0 20.3 either way
/// (their units have more work of their own to overlap); streaming from memory
/// Q8_0 0.86 -> 0.89 of a plain read, Q4_0 0.77 -> 0.78 (means of 10 rounds).
/// Four rows (rows in L3) gained nothing over two.
const RI: usize = 2;
const _: () = assert!(RV.is_multiple_of(RI), "a tile is whole pairs of rows");

/// [`gemv_tile`] of a whole tile (16 rows) over the k-chunks `kcs` (adjacent, in
/// order; `x` holds each token's units from `kcs[0].u0` on, token t's at
/// `x[t·stride..]`), read as one stream: [`RI`] adjacent rows at a time, their
/// units side by side in order, chunk by chunk, each weight unit decoded once
/// and met by every token, each (row, token) of a chunk in its own accumulator,
/// then the next rows (the rows of a tile, and the tiles of a call, are adjacent
/// in memory), each unit prefetching the same unit `ahead` bytes further
/// (`ahead` rows below: what this call reads that much later) into L2.
/// Sums exactly as [`gemv_tile`] does chunk by chunk (each row's units of a
/// chunk in order, then [`reduce16`], the chunks added to `out` in order).
///
/// Several chunks in one pass, rather than one pass over all rows per chunk:
/// with Q8_0 rows of 2,048 (two chunks) the pass per chunk read each row in two
/// strided sweeps and streamed at 0.58-0.68 of a plain read against 0.91-0.96
/// at 1,536 (one chunk) on a Zen 4 (`gemv_stream`, BENCHMARKS.md, eighteenth
/// session).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn gemv_tile16<F: UnitFormat, const NT: usize>(
    kcs: &[KChunk],
    w: &[u8],
    wrb: usize,
    x: &[Unit],
    stride: usize,
    out: &mut [f32],
    ldo: usize,
    ahead: usize,
) {
    let ub = F::BLOCKS * F::BLOCK_BYTES;
    let (first, last) = (kcs[0], kcs[kcs.len() - 1]);
    let span = last.u0 + last.units - first.u0;
    assert!(kcs.len() <= MAX_KCHUNKS, "gemv tile: chunks");
    assert!(
        w.len() >= RV * wrb
            && x.len() >= (NT - 1) * stride + span
            && out.len() >= (NT - 1) * ldo + RV,
        "gemv tile: operand sizes"
    );
    assert!((last.u0 + last.units - 1) * ub < wrb, "gemv tile: chunk");
    // Every row of each of the `kcs.len()` chunks is written below before it is
    // read; zeroing all `MAX_KCHUNKS` of them (4 KiB per token, a `memset` per
    // tile) was ~4 % of decode's GEMV time with rows of one chunk (`perf`, Tiny
    // Q8_0).
    let mut acc = [[[MaybeUninit::<__m512>::uninit(); RV]; MAX_KCHUNKS]; NT];
    for r0 in (0..RV).step_by(RI) {
        for (c, kc) in kcs.iter().enumerate() {
            let part = kc.last_blocks < F::BLOCKS;
            // The whole units of the chunk, then (maybe) its partial last one.
            let whole = kc.units - usize::from(part);
            let xc = &x[kc.u0 - first.u0..];
            let row = w.as_ptr().wrapping_add(r0 * wrb + kc.u0 * ub);
            let mut a = [[_mm512_setzero_ps(); RI]; NT];
            for u in 0..whole {
                for i in 0..RI {
                    let p = row.wrapping_add(i * wrb + u * ub);
                    // The unit's first byte and the one 64 later: along each
                    // row the points lie at most 64 apart, so they name every
                    // line (one prefetch per unit, skipping a line in 4 to 17,
                    // measured 0.45–0.6× as fast: each skipped line is a demand
                    // miss). Prefetches never fault: the address is only computed.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead).cast());
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead + 64).cast());
                    // SAFETY: unit u of the chunk lies whole in row r0 + i
                    // (u < whole units of the chunk, asserted above; the tile's
                    // RV rows are whole); AVX-512 is ours.
                    let wv = unsafe { F::weight::<false>(p, F::BLOCKS) };
                    for (t, a) in a.iter_mut().enumerate() {
                        step::<F>(wv, &xc[t * stride + u], &mut a[i]);
                    }
                }
            }
            for i in 0..RI {
                let wv = part.then(|| {
                    // SAFETY: row r0 + i is whole; AVX-512 is this function's.
                    unsafe { weight_unit::<F>(&w[(r0 + i) * wrb..][..wrb], kc, kc.units - 1) }
                });
                for (t, (a, acc)) in a.iter_mut().zip(acc.iter_mut()).enumerate() {
                    if let Some(wv) = wv {
                        step::<F>(wv, &xc[t * stride + kc.units - 1], &mut a[i]);
                    }
                    acc[c][r0 + i].write(a[i]);
                }
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        for (kc, acc) in kcs.iter().zip(acc.iter()) {
            // SAFETY: the loops above wrote rows 0..RV (r0 + i) of this chunk;
            // [MaybeUninit<__m512>; RV] has the layout of [__m512; RV].
            let acc = unsafe { &*std::ptr::from_ref(acc).cast::<[__m512; RV]>() };
            let mut o = [0f32; 16];
            // SAFETY: o is 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), reduce16(acc)) };
            for (d, &v) in out[t * ldo..][..RV].iter_mut().zip(&o) {
                put(d, v, kc.first);
            }
        }
    }
}

/// `dst[u]` = unit `u0 + u` of the token whose `nb` blocks are `blocks`,
/// prepared for the kernels (`dst.len()` units).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn prep_units<F: UnitFormat>(blocks: &[F::A], u0: usize, dst: &mut [MaybeUninit<Unit>]) {
    for (u, d) in dst.iter_mut().enumerate() {
        let b0 = (u0 + u) * F::BLOCKS;
        let b1 = (b0 + F::BLOCKS).min(blocks.len());
        // SAFETY: AVX-512 is this function's.
        d.write(unsafe { F::prep(&blocks[b0..b1]) });
    }
}

/// `out[t·ldo + r] (+)=` over the k-chunks `kcs` (adjacent, in order) for the
/// `NT` tokens whose units from `kcs[0].u0` on are `x` (token t's at
/// `x[t·stride..]`): whole 16-row tiles read as one stream ([`gemv_tile16`],
/// prefetching `PREFETCH_BYTES` of it ahead), a partial last tile chunk by
/// chunk ([`gemv_tile`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn gemv_tiles<F: UnitFormat, const NT: usize>(
    kcs: &[KChunk],
    w: &[u8],
    wrb: usize,
    n_rows: usize,
    x: &[Unit],
    stride: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let (first, last) = (kcs[0], kcs[kcs.len() - 1]);
    // The rows `PREFETCH_BYTES` of the stream ahead: each row's read is the
    // chunks' units.
    let read = (last.u0 + last.units - first.u0) * F::BLOCKS * F::BLOCK_BYTES;
    let ahead = PREFETCH_BYTES.div_ceil(read) * wrb;
    for r0 in (0..n_rows).step_by(RV) {
        let nr = RV.min(n_rows - r0);
        let (wr, o) = (&w[r0 * wrb..], &mut out[r0..]);
        if nr < RV {
            for kc in kcs {
                let xc = &x[kc.u0 - first.u0..];
                gemv_tile::<F, NT>(kc, wr, wrb, nr, xc, stride, o, ldo);
            }
            continue;
        }
        gemv_tile16::<F, NT>(kcs, wr, wrb, x, stride, o, ldo, ahead);
    }
}

/// The [`super::GemmFn`] of format `F`: GEMV passes of at most
/// [`GEMV_TOKENS`] tokens (split evenly), each reading every weight byte once
/// for its tokens. Rows of at most [`UNITS`] units run whole (their chunks in
/// one pass: decode, and a few tokens where their units fit); longer rows
/// (Tiny's dense `down`, k = 6,848) chunk by chunk.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_units<F: UnitFormat>(
    k: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let Some(Shape { nb, wrb, .. }) = q0_shape::<F::W, F::A>(k, w, n_rows, a, n_tok, out, ldo)
    else {
        return;
    };
    let nu = nb.div_ceil(F::BLOCKS);
    let ab = as_blocks::<F::A>(a).unwrap_or(&[]);
    let kg = nu.min(CHUNK_UNITS);
    let chunks = |u0: usize, n: usize| {
        let mut kcs = [KChunk::at(u0, kg, nu, nb, F::BLOCKS); MAX_KCHUNKS];
        for (kc, u) in kcs.iter_mut().zip((u0..u0 + n).step_by(kg)) {
            *kc = KChunk::at(u, kg, nu, nb, F::BLOCKS);
        }
        (kcs, n.div_ceil(kg))
    };
    // Whole rows, or one chunk at a time.
    let (span, per_pass) = if nu <= UNITS { (nu, nu) } else { (kg, kg) };
    let mut buf = [const { MaybeUninit::<Unit>::uninit() }; UNITS];
    for u0 in (0..nu).step_by(span) {
        let units = per_pass.min(nu - u0);
        let (kcs, n_kc) = chunks(u0, units);
        for (t0, nt) in even_runs(n_tok, GEMV_TOKENS.min(UNITS / units)) {
            for t in 0..nt {
                let blocks = &ab[(t0 + t) * nb..][..nb];
                prep_units::<F>(blocks, u0, &mut buf[t * units..][..units]);
            }
            // SAFETY: the first nt·units units were written just above;
            // MaybeUninit<Unit> has Unit's layout.
            let x: &[Unit] =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<Unit>(), nt * units) };
            let (kcs, o) = (&kcs[..n_kc], &mut out[t0 * ldo..]);
            match nt {
                1 => gemv_tiles::<F, 1>(kcs, w, wrb, n_rows, x, units, o, ldo),
                2 => gemv_tiles::<F, 2>(kcs, w, wrb, n_rows, x, units, o, ldo),
                3 => gemv_tiles::<F, 3>(kcs, w, wrb, n_rows, x, units, o, ldo),
                _ => gemv_tiles::<F, GEMV_TOKENS>(kcs, w, wrb, n_rows, x, units, o, ldo),
            }
        }
    }
}

/// Safe [`super::DotFn`] / [`super::GemmFn`] wrappers for the kernel table;
/// the dot is the GEMM of one row and one token (the same bits).
macro_rules! entry_points {
    ($($fmt:ident => $dot:ident, $gemm:ident;)*) => {$(
        pub(crate) fn $dot(k: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut o = [0f32];
            $gemm(k, w, 1, a, 1, &mut o, 1);
            o[0]
        }
        pub(crate) fn $gemm(
            k: usize,
            w: &[u8],
            n_rows: usize,
            a: &[u8],
            n_tok: usize,
            out: &mut [f32],
            ldo: usize,
        ) {
            // SAFETY: only installed in the kernel table after
            // `avx512::detected()` (and `avx2::detected()`).
            unsafe { gemm_units::<$fmt>(k, w, n_rows, a, n_tok, out, ldo) }
        }
    )*};
}

entry_points! {
    Q4_0 => dot_q4_0_q8_0, gemm_q4_0_q8_0;
    Q4_1 => dot_q4_1_q8_1, gemm_q4_1_q8_1;
    Q5_0 => dot_q5_0_q8_0, gemm_q5_0_q8_0;
    Q5_1 => dot_q5_1_q8_1, gemm_q5_1_q8_1;
    Q8_0 => dot_q8_0_q8_0, gemm_q8_0_q8_0;
}
