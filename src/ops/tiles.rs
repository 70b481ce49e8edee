//! The register tile of the f32 attention products (the vision tower's and the language
//! model's): `R` rows x a few vectors of columns, broadcasting one factor per row and step
//! and loading one vector of the other per column chunk and step, so each step's loads
//! feed `R` times as many FMAs.
//!
//! Every output is one chain of f32 fused multiply-adds over the steps in ascending order
//! (from zero, or from the value already in `out`), so [`scalar_tile`] (`f32::mul_add` in
//! the same order) gives the same bits as the vector tiles: the callers' twin tests check it.
//! Left to the auto-vectoriser, such products came out as gathers at a fraction of the FMA
//! rate (`perf annotate`).

/// The broadcast operand: `(a, step, row)`, element (step `t`, row `r`) at
/// `a[t * step + r * row]`.
pub(crate) type Bcast<'a> = (&'a [f32], usize, usize);

/// The reference tile: for `r < rows`, `c < cols`,
/// `out[r * out_row + c] = Σ_t a[t * a_step + r * a_row] · b[t * b_step + c]`, fused, `t`
/// ascending over `steps`, starting from `out`'s value when `accumulate`, else from zero.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn scalar_tile(
    rows: usize,
    (a, a_step, a_row): Bcast<'_>,
    b: &[f32],
    steps: usize,
    b_step: usize,
    cols: usize,
    out: &mut [f32],
    out_row: usize,
    accumulate: bool,
) {
    for r in 0..rows {
        for c in 0..cols {
            let o = &mut out[r * out_row + c];
            let mut acc = if accumulate { *o } else { 0.0 };
            for t in 0..steps {
                acc = a[t * a_step + r * a_row].mul_add(b[t * b_step + c], acc);
            }
            *o = acc;
        }
    }
}

/// The AVX-512F tile: 16-float column chunks.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::Bcast;

    /// [`super::scalar_tile`] for `R` rows x `NC` chunks of 16 columns, chunk `u` of step
    /// `t` at `b[t * b_step + u * b_chunk..][..16]` and stored at `out[r * out_row + u * 16..]`
    /// (`R * NC` accumulators: at most 16 of the 32 zmm registers leave room for the loads).
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bcast_tile<const R: usize, const NC: usize>(
        (a, a_step, a_row): Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        b_chunk: usize,
        out: &mut [f32],
        out_row: usize,
        accumulate: bool,
    ) {
        if steps > 0 {
            assert!(
                a.len() > (steps - 1) * a_step + (R - 1) * a_row
                    && b.len() >= (steps - 1) * b_step + (NC - 1) * b_chunk + 16
            );
        }
        assert!(out.len() >= (R - 1) * out_row + NC * 16);
        let mut acc = [[_mm512_setzero_ps(); NC]; R];
        if accumulate {
            for (i, acc) in acc.iter_mut().enumerate() {
                for (u, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: 16 floats at i * out_row + u * 16, inside `out` (asserted).
                    *acc = unsafe { _mm512_loadu_ps(out.as_ptr().add(i * out_row + u * 16)) };
                }
            }
        }
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for t in 0..steps {
            // SAFETY: row i < R of step t < steps of `a` is at t * a_step + i * a_row, and
            // chunk u < NC of `b` is 16 floats at t * b_step + u * b_chunk: both inside
            // (asserted above). Unaligned loads.
            unsafe {
                let mut bv = [_mm512_setzero_ps(); NC];
                for (u, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm512_loadu_ps(bp.add(t * b_step + u * b_chunk));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ap.add(t * a_step + i * a_row));
                    for u in 0..NC {
                        acc[u] = _mm512_fmadd_ps(x, bv[u], acc[u]);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (u, &r) in acc.iter().enumerate() {
                let dst = &mut out[i * out_row + u * 16..][..16];
                // SAFETY: `dst` is 16 writable floats.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), r) };
            }
        }
    }
}

/// The AVX2+FMA tiles: 8-float column chunks (`R * NC` accumulators of the 16 ymm
/// registers).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::Bcast;

    /// [`super::scalar_tile`] for `R` rows x 8 columns, step `t` at `b[t * b_step..][..8]`.
    /// Also the AVX-512 builds' tile for a last 8 columns.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bcast_col<const R: usize>(
        a: Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        out: &mut [f32],
        out_row: usize,
        accumulate: bool,
    ) {
        bcast_tile::<R, 1>(a, b, steps, b_step, 0, out, out_row, accumulate)
    }

    /// [`super::scalar_tile`] for `R` rows x `NC` chunks of 8 columns, chunk `u` of step `t`
    /// at `b[t * b_step + u * b_chunk..][..8]` and stored at `out[r * out_row + u * 8..]`.
    /// Per step, `NC` loads and `R` broadcasts feed `R * NC` FMAs: 4 x 2 needs 6 loads for
    /// 8 FMAs where 8 x 1 needs 9. `R * NC + NC + 1` registers must stay within the 16, or
    /// the compiler keeps an accumulator on the stack (seen at 4 x 3).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bcast_tile<const R: usize, const NC: usize>(
        (a, a_step, a_row): Bcast<'_>,
        b: &[f32],
        steps: usize,
        b_step: usize,
        b_chunk: usize,
        out: &mut [f32],
        out_row: usize,
        accumulate: bool,
    ) {
        if steps > 0 {
            assert!(
                a.len() > (steps - 1) * a_step + (R - 1) * a_row
                    && b.len() >= (steps - 1) * b_step + (NC - 1) * b_chunk + 8
            );
        }
        assert!(out.len() >= (R - 1) * out_row + NC * 8);
        let mut acc = [[_mm256_setzero_ps(); NC]; R];
        if accumulate {
            for (i, acc) in acc.iter_mut().enumerate() {
                for (u, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: 8 floats at i * out_row + u * 8, inside `out` (asserted).
                    *acc = unsafe { _mm256_loadu_ps(out.as_ptr().add(i * out_row + u * 8)) };
                }
            }
        }
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for t in 0..steps {
            // SAFETY: row i < R of step t < steps of `a` is at t * a_step + i * a_row, and
            // chunk u < NC of `b` is 8 floats at t * b_step + u * b_chunk: both inside
            // (asserted above). Unaligned loads.
            unsafe {
                let mut bv = [_mm256_setzero_ps(); NC];
                for (u, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm256_loadu_ps(bp.add(t * b_step + u * b_chunk));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*ap.add(t * a_step + i * a_row));
                    for u in 0..NC {
                        acc[u] = _mm256_fmadd_ps(x, bv[u], acc[u]);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (u, &r) in acc.iter().enumerate() {
                let dst = &mut out[i * out_row + u * 8..][..8];
                // SAFETY: `dst` is 8 writable floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), r) };
            }
        }
    }
}

// The tiles under test are x86 ones; elsewhere the scalar twin is the only build.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::ops::lcg;

    /// The vector tiles against [`scalar_tile`], bit for bit: from zero and accumulating,
    /// strided operands, zero and odd step counts.
    #[test]
    fn vector_tiles_match_the_scalar_twin() {
        const R: usize = 8;
        let (a_step, a_row, b_step, out_row) = (3, 41, 37, 35);
        for steps in [0usize, 1, 7, 64] {
            for accumulate in [false, true] {
                let a = lcg(steps as u64, steps.max(1) * a_step + R * a_row, 2.0);
                let b = lcg(steps as u64 + 1, steps.max(1) * b_step + 32, 2.0);
                let init = lcg(steps as u64 + 2, R * out_row, 2.0);
                let want = |cols: usize| {
                    let mut o = init.clone();
                    scalar_tile(
                        R,
                        (&a, a_step, a_row),
                        &b,
                        steps,
                        b_step,
                        cols,
                        &mut o,
                        out_row,
                        accumulate,
                    );
                    o
                };
                let same = |got: &[f32], want: &[f32], what: &str| {
                    for (g, w) in got.iter().zip(want) {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{what} steps {steps} acc {accumulate}"
                        );
                    }
                };
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    let mut o = init.clone();
                    // SAFETY: AVX2 and FMA detected above.
                    unsafe {
                        avx2::bcast_col::<R>(
                            (&a, a_step, a_row),
                            &b,
                            steps,
                            b_step,
                            &mut o,
                            out_row,
                            accumulate,
                        )
                    };
                    same(&o, &want(8), "avx2");
                    // Rows 0..4 of the 8 (the tile's `R`), 16 columns in two chunks.
                    let mut o = init.clone();
                    // SAFETY: as above.
                    unsafe {
                        avx2::bcast_tile::<4, 2>(
                            (&a, a_step, a_row),
                            &b,
                            steps,
                            b_step,
                            8,
                            &mut o,
                            out_row,
                            accumulate,
                        )
                    };
                    let w = want(16);
                    for r in 0..4 {
                        let row = r * out_row..r * out_row + 16;
                        same(&o[row.clone()], &w[row], "avx2 4x2");
                    }
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut o = init.clone();
                    // SAFETY: AVX-512F detected above.
                    unsafe {
                        avx512::bcast_tile::<R, 2>(
                            (&a, a_step, a_row),
                            &b,
                            steps,
                            b_step,
                            16,
                            &mut o,
                            out_row,
                            accumulate,
                        )
                    };
                    same(&o, &want(32), "avx512");
                }
            }
        }
    }
}
