//! BF16 weights times f32 activations rounded to bf16 (or split into two bf16) with
//! AVX-512 BF16's `vdpbf16ps`, for CPUs that have AVX512_BF16 but no AMX (AMD Zen 4 and
//! later, Intel Cooper Lake): the vision tower's products when the caller asks for bf16
//! arithmetic (`--vision-precision bf16`).
//!
//! Why: one `vdpbf16ps` on a zmm does 16 x 2 multiply-adds, twice the f32 FMA's 16, at
//! the same issue rate on a Zen 4 core (a scratch probe of twelve independent chains each:
//! 230 against 115 GFLOP/s, BENCHMARKS.md "twentieth session"). With the activations split
//! (`hi + lo`, [`gemm_packed`]'s `split`) it does twice the instructions for the same
//! products, so it is no faster than the exact FMA panels: only the rounded form gains.
//!
//! Layout: the weights are packed by the AMX kernel's [`pack_block`](super::float_gemm_amx::pack_block)
//! (`[k-step of 32 columns][2 halves of 16 rows][16 column pairs][16 rows]`, u32 = a row's
//! two bf16 of one pair), so a half's pair is one zmm of 16 rows. The activations of a group
//! of tokens are rounded once into `[token][k]` bf16 rows (zero beyond `k`); the microkernel
//! holds `MT` tokens x 32 rows of accumulators (24 zmm) and per column pair loads the two
//! weight vectors and broadcasts each token's pair. A group's packed weight block (72 KiB
//! at k = 1,152) stays in L2 while the group's token tiles sweep it.
//!
//! Every output sums its pairs in k order, one `vdpbf16ps` each (two with `split`: hi,
//! then lo), so it differs from the scalar twins' f64 sums
//! ([`scalar::gemm_bf16_rounded`](super::scalar::gemm_bf16_rounded),
//! [`scalar::gemm_bf16_split`](super::scalar::gemm_bf16_split)) only in f32 rounding; `tests`
//! compare them as the AMX kernel's tests do.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::float_gemm_amx::{block_bytes, packed_work, split16};

/// Tokens per microkernel tile: 12 x 2 accumulators + 2 weight vectors + 1 broadcast of 32
/// zmm registers.
const MT: usize = 12;

/// Bytes of rounded activations per token group, whose tiles all sweep one packed weight
/// block before the next: a tower task's 729-912 tokens are one group at k = 1,152 and two
/// at 4,304. Groups of 512 KiB (in L2) ran slower, each packed block then coming back from L3
/// once per group: one thread at the tower's shapes (`amx_bench`, BENCHMARKS.md twentieth
/// session) 129-141 GFLOP/s for `down` at 256-512 KiB against 165-186 at 1-4 MiB, and the
/// tower 2,325-2,370 ms per tile against 2,469-2,487 at 512 KiB.
const GROUP_BYTES: usize = 4 << 20;

thread_local! {
    /// One group's rounded activation rows (up to GROUP_BYTES per half), kept by the thread
    /// between products: the tower calls this per task per product, and a fresh zeroed
    /// 4-8 MiB each time cost page faults on the hot path.
    static ROWS: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Whether the CPU has AVX-512 F, BW and BF16 (checked once).
pub(crate) fn detected() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// The product over weights packed by `pack_block` (`packed` holds every 32-row block of
/// `n_rows`, in order): `out[t * ldo + r] = Σ_i w[r, i] · a'[t, i]`, `a'` the activations
/// rounded to bf16, or split into `hi + lo` with `split`. The scalar twins' contract
/// otherwise. Only reachable after [`detected`] (the kernel table hands it out only then).
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
    assert!(
        detected(),
        "AVX-512 BF16 kernel called without AVX-512 BF16"
    );
    let kp = k.div_ceil(32) * 32;
    // Tokens per group: whole tiles, as many as GROUP_BYTES of rounded rows hold (at least one tile).
    let halves = if split { 2 } else { 1 };
    let group = (GROUP_BYTES / (2 * kp * halves)).max(MT) / MT * MT;
    // Every column of the rows a group reads is written by `round_rows` first, so the
    // reused buffer needs no zeroing.
    let mut rows = ROWS.take();
    rows.resize(group * kp * halves, 0);
    for g0 in (0..n_tok).step_by(group) {
        let nt = group.min(n_tok - g0);
        let (hi, lo) = rows.split_at_mut(group * kp);
        // SAFETY: AVX-512 F/BW/BF16 (`detected`); `a` holds the group's rows (asserted).
        unsafe {
            round_rows(
                &a[g0 * k..(g0 + nt) * k],
                nt,
                k,
                kp,
                hi,
                split.then_some(lo),
            )
        };
        for b in 0..n_rows.div_ceil(32) {
            let blk = &packed[b * block_bytes(k)..][..block_bytes(k)];
            let live = 32.min(n_rows - 32 * b);
            for t0 in (0..nt).step_by(MT) {
                let mt = MT.min(nt - t0);
                let o = &mut out[(g0 + t0) * ldo + 32 * b..];
                let (h, l) = (&hi[t0 * kp..], split.then(|| &lo[t0 * kp..]));
                // SAFETY: as above; the tile reads `mt` rows of `kp` bf16 of `h` (and `l`),
                // the block's `kp / 2` pairs, and writes `live` columns of `mt` rows of `o`
                // (inside `out`: asserted above).
                unsafe { tile(mt, kp, h, l, blk, live, o, ldo) };
            }
        }
    }
    ROWS.set(rows);
}

/// `nt` f32 rows of `k` rounded to bf16 rows of `kp` (zero beyond `k`) in `hi`; with `lo`
/// the residuals `bf16(a - hi)` there.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_rows(
    a: &[f32],
    nt: usize,
    k: usize,
    kp: usize,
    hi: &mut [u16],
    lo: Option<&mut [u16]>,
) {
    let mut lo = lo;
    for t in 0..nt {
        for c in (0..kp).step_by(16) {
            let live = k.saturating_sub(c).min(16);
            let m: __mmask16 = ((1u32 << live) - 1) as u16;
            // SAFETY: the mask keeps columns c + lane < k of row t of `a`.
            let x = unsafe { _mm512_maskz_loadu_ps(m, a.as_ptr().add(t * k + c)) };
            let (h, l) = split16(x);
            // SAFETY: 16 bf16 at column c of row t of `hi` / `lo` (`kp` per row, c + 16 ≤ kp).
            unsafe { _mm256_storeu_si256(hi.as_mut_ptr().add(t * kp + c).cast(), h) };
            if let Some(lo) = lo.as_deref_mut() {
                // SAFETY: as above.
                unsafe { _mm256_storeu_si256(lo.as_mut_ptr().add(t * kp + c).cast(), l) };
            }
        }
    }
}

/// `mt ≤ MT` tokens against one packed 32-row block: the const-sized tile for `mt`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile(
    mt: usize,
    kp: usize,
    hi: &[u16],
    lo: Option<&[u16]>,
    blk: &[u8],
    live: usize,
    out: &mut [f32],
    ldo: usize,
) {
    macro_rules! run {
        ($($n:literal)*) => {
            match mt {
                // SAFETY: the caller's bounds, for `mt` tokens.
                $($n => unsafe { tile_n::<$n>(kp, hi, lo, blk, live, out, ldo) },)*
                _ => unreachable!("tile of {mt} tokens"),
            }
        };
    }
    run!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// `NT` tokens (rows of `kp` bf16 in `hi`, and `lo`) against one packed block: per column
/// pair one `vdpbf16ps` per token and half (two with `lo`), into `NT x 2` accumulators;
/// the `live` first columns of each token's output row `out[t * ldo..]` are written.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn tile_n<const NT: usize>(
    kp: usize,
    hi: &[u16],
    lo: Option<&[u16]>,
    blk: &[u8],
    live: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; NT];
    let pairs = kp / 2;
    let (w, h) = (blk.as_ptr(), hi.as_ptr().cast::<i32>());
    let l = lo.map(|l| l.as_ptr().cast::<i32>());
    // The bits of a bf16 vector, as they are (no conversion).
    macro_rules! bh {
        ($v:expr) => {
            // SAFETY: both types are 64 bytes of plain bits.
            unsafe { std::mem::transmute::<__m512i, __m512bh>($v) }
        };
    }
    for i in 0..pairs {
        let (s, p) = (i / 16, i % 16);
        // SAFETY: step s's two halves, pair p: inside the block (`kp / 32` steps of 2 KiB).
        let (w0, w1) = unsafe {
            let q = w.add(s * 2048 + p * 64);
            (
                _mm512_loadu_si512(q.cast()),
                _mm512_loadu_si512(q.add(1024).cast()),
            )
        };
        let (w0, w1) = (bh!(w0), bh!(w1));
        // The rounded rows, then (split) the residuals' rows against the same weights.
        for x in [Some(h), l].into_iter().flatten() {
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: pair i of token t's row (`kp / 2` pairs per row, NT rows present).
                let v = unsafe { x.add(t * pairs + i).read_unaligned() };
                let x = bh!(_mm512_set1_epi32(v));
                a[0] = _mm512_dpbf16_ps(a[0], w0, x);
                a[1] = _mm512_dpbf16_ps(a[1], w1, x);
            }
        }
    }
    let m0: __mmask16 = ((1u32 << live.min(16)) - 1) as u16;
    let m1: __mmask16 = ((1u32 << live.saturating_sub(16)) - 1) as u16;
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: the live columns of token t's output row, inside `out` (the caller's bound).
        unsafe {
            let o = out.as_mut_ptr().add(t * ldo);
            _mm512_mask_storeu_ps(o, m0, a[0]);
            _mm512_mask_storeu_ps(o.add(16), m1, a[1]);
        }
    }
}

/// `iters` x 48 `vdpbf16ps` on twelve independent accumulators with the operands in
/// registers, returning the flops done: the instruction's peak on this core, for benchmarks
/// to time beside the product. Only reachable after [`detected`].
pub(crate) fn dp_spin(iters: usize) -> u64 {
    assert!(detected(), "vdpbf16ps spin without AVX-512 BF16");
    // SAFETY: AVX-512 F/BW/BF16 (`detected`).
    unsafe { dp_spin_avx512(iters) };
    (iters * 48 * 64) as u64
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dp_spin_avx512(iters: usize) {
    // 1.0 and 1.0078125 as bf16 pairs: the sums grow without overflow for any sane `iters`.
    // SAFETY: both types are 64 bytes of plain bits.
    let (x, y) = unsafe {
        (
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f81_3f81)),
        )
    };
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        let x = std::hint::black_box(x);
        // Four rounds per opaque operand: the loop's own cost stays out of the peak.
        for _ in 0..4 {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, y);
            }
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
    std::hint::black_box(_mm512_reduce_add_ps(s));
}

#[cfg(test)]
mod tests {
    use super::super::float_gemm_amx::pack_all;
    use super::super::float_gemm_amx::tests::check_against_twins;
    use super::*;

    /// The product the [`Gemm`](super::super::float_gemm_amx::tests::Gemm) way: pack every
    /// block, then multiply.
    #[allow(clippy::too_many_arguments)]
    fn packed_product(
        k: usize,
        w: &[u8],
        n_rows: usize,
        a: &[f32],
        n_tok: usize,
        out: &mut [f32],
        ldo: usize,
        split: bool,
    ) {
        let mut packed = vec![0u8; n_rows.div_ceil(32) * block_bytes(k)];
        pack_all(k, w, n_rows, &mut packed);
        gemm_packed(k, &packed, n_rows, a, n_tok, out, ldo, split);
    }

    fn rounded(k: usize, w: &[u8], n: usize, a: &[f32], t: usize, o: &mut [f32], ldo: usize) {
        packed_product(k, w, n, a, t, o, ldo, false)
    }

    fn split(k: usize, w: &[u8], n: usize, a: &[f32], t: usize, o: &mut [f32], ldo: usize) {
        packed_product(k, w, n, a, t, o, ldo, true)
    }

    /// Both forms (rounded and split) against their scalar twins, as the AMX kernel's test
    /// checks it, at sizes around the 16/32-row and 12-token tile edges, k tails, token
    /// groups and the tower's shapes (k = 1,152, 4,304).
    #[test]
    fn bf16_dot_matches_scalar_twin() {
        if !detected() {
            println!("skipped: CPU lacks AVX-512 BF16");
            return;
        }
        check_against_twins(
            &[
                (1, 1, 1),
                (2, 3, 5),
                (31, 17, 13),
                (32, 16, 12),
                (33, 33, 25),
                (100, 47, 70),
                (1152, 72, 47),
                (4304, 33, 130),
                (1152, 40, 1900),
            ],
            [rounded, split],
        );
    }
}
