//! The AVX-VNNI tier's one new instruction: VEX-encoded `vpdpbusd` on 256-bit vectors
//! (Intel Core 12th generation on, whose laptop and desktop parts have no AVX-512, and AMD
//! Zen 5), and the driver that carries its target feature.
//!
//! The tier's kernels (`q0_avxvnni_rows`) are the AVX2 row-lane tiles of the 32-element
//! formats with each `maddubs` + `madd` sum replaced by `vpdpbusd`: unsigned weight bytes
//! times signed activation bytes, four products summed into each i32 lane without the i16
//! saturation that makes AVX2 split its sums into runs (and run Q8_0 with the sign trick).
//! The tiles are generic over [`Dpbusd`], so the same tiles also run with an exact emulation of
//! the instruction: the tier tests check their layout and arithmetic against the scalar
//! twins on every AVX2 CPU, and with the instruction itself where the CPU has it.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::row_lanes::{Call, RowLanes};

/// Whether the CPU runs this tier: AVX2 + FMA + F16C and AVX-VNNI.
pub fn detected() -> bool {
    super::avx2::detected() && is_x86_feature_detected!("avxvnni")
}

/// How a tile computes `vpdpbusd`, and the driver compiled with what that needs.
pub(super) trait Dpbusd {
    /// `acc` plus, per i32 lane, the sum of its 4 products of unsigned bytes of `u` and
    /// signed bytes of `s` (exact: no saturation).
    ///
    /// # Safety
    /// The features of [`Dpbusd::drive`].
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;

    /// The row-lane driver on kernel `K`, compiled with this implementation's target
    /// features so that `K`'s tiles, and this `dpbusd` in them, inline into it.
    ///
    /// # Safety
    /// This implementation's CPU features.
    unsafe fn drive<K: RowLanes<8>>(c: Call);
}

/// The instruction itself.
pub(super) struct AvxVnni;

impl Dpbusd for AvxVnni {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI is the caller's contract (the tiles run inside `drive`).
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn drive<K: RowLanes<8>>(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<K, 8>(c) }
    }
}

/// The instruction in AVX2: the even and the odd bytes widened to i16 and summed in pairs
/// by two `madd` (each product at most 255 · 128, each pair sum within i32), so the tiles
/// run on CPUs without AVX-VNNI in the tier tests.
#[cfg(test)]
pub(super) struct Emulated;

#[cfg(test)]
impl Dpbusd for Emulated {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX2 is the caller's contract.
        unsafe {
            let low = _mm256_set1_epi16(0xff);
            let (u_even, u_odd) = (_mm256_and_si256(u, low), _mm256_srli_epi16::<8>(u));
            let s_even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(s));
            let s_odd = _mm256_srai_epi16::<8>(s);
            let even = _mm256_madd_epi16(u_even, s_even);
            let odd = _mm256_madd_epi16(u_odd, s_odd);
            _mm256_add_epi32(acc, _mm256_add_epi32(even, odd))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn drive<K: RowLanes<8>>(c: Call) {
        // SAFETY: the features are this function's.
        unsafe { super::row_lanes::drive::<K, 8>(c) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulation against the definition, on every byte pair's extremes and random
    /// bytes; and the instruction against it where the CPU has it.
    #[test]
    fn emulated_dpbusd_is_exact() {
        if !super::super::avx2::detected() {
            println!("skipped: AVX2 missing");
            return;
        }
        let bytes = super::super::lcg(5, 4 * 32, 1.0);
        let mut cases: Vec<[u8; 64]> = vec![[0xff; 64], [0x80; 64], [0x7f; 64], [0; 64]];
        for (i, c) in bytes.chunks_exact(64).enumerate() {
            cases.push(std::array::from_fn(|j| {
                (c[j] * 127.0 + 128.0) as u8 ^ i as u8
            }));
        }
        let acc0 = [7, -1, i32::MAX - 260_000, 0, 3, -100, 12, 1 << 20];
        for (i, u) in cases.iter().enumerate() {
            let s = &cases[(i + 1) % cases.len()];
            let want: [i32; 8] = std::array::from_fn(|l| {
                acc0[l]
                    + (0..4)
                        .map(|b| i32::from(u[4 * l + b]) * i32::from(s[32 + 4 * l + b] as i8))
                        .sum::<i32>()
            });
            // SAFETY: AVX2 detected above (AVX-VNNI below); loads of 32-byte arrays.
            let (emulated, vnni) = unsafe {
                let load = |p: &[u8]| _mm256_loadu_si256(p.as_ptr().cast());
                let acc = _mm256_loadu_si256(acc0.as_ptr().cast());
                let (u, s) = (load(&u[..32]), load(&s[32..]));
                let e = Emulated::dpbusd(acc, u, s);
                let v = detected().then(|| vnni(acc, u, s));
                (lanes(e), v.map(lanes))
            };
            assert_eq!(emulated, want, "case {i}");
            if let Some(v) = vnni {
                assert_eq!(v, want, "case {i}: vpdpbusd");
            }
        }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    fn vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }

    fn lanes(v: __m256i) -> [i32; 8] {
        let mut out = [0i32; 8];
        // SAFETY: out holds 8 i32; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    }
}
