//! `out = x · Wᵀ` for a ggml-typed weight W of n rows × k columns (ggml ne
//! `[k, n]`) and float32 activations x `[n_tokens, k]`.
//!
//! Weight rows are the outer, parallel loop so that each row is read from
//! memory once per batch of tokens (prefill is then bound by compute, decode
//! by the weight bytes, as in ggml's CPU matmul). Activations are converted
//! once per call to the type the weight's dot kernel expects.

use quant::block::{dequantize_row, quantize_row};
use quant::kernels::{gemm, vec_dot_type};
use quant::GgmlType;
use rayon::prelude::*;
use thiserror::Error;

use crate::loader::Weight;

/// A matrix of `n` rows of `k` elements stored in ggml type `ty`, borrowed
/// from a mapped file or an expert store.
#[derive(Clone, Copy, Debug)]
pub struct MatView<'a> {
    pub ty: GgmlType,
    /// Elements per row (ggml ne\[0\]).
    pub k: usize,
    /// Rows (ggml ne\[1\]).
    pub n: usize,
    pub data: &'a [u8],
}

/// A byte slice that cannot be viewed as the matrix asked for.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MatViewError {
    #[error("{ty} rows of {k} elements are not a whole number of blocks")]
    RowNotBlocks { ty: &'static str, k: usize },
    #[error("matrix {n}x{k} of {ty} needs {expected} bytes, found {found}")]
    Length {
        ty: &'static str,
        k: usize,
        n: usize,
        expected: u64,
        found: usize,
    },
}

impl<'a> MatView<'a> {
    /// Checks that `data` holds exactly `n` rows of `k` elements of `ty`.
    pub fn new(ty: GgmlType, k: usize, n: usize, data: &'a [u8]) -> Result<Self, MatViewError> {
        let row = ty
            .row_bytes(k as u64)
            .ok_or(MatViewError::RowNotBlocks { ty: ty.name(), k })?;
        let expected = row * n as u64;
        if expected != data.len() as u64 {
            return Err(MatViewError::Length {
                ty: ty.name(),
                k,
                n,
                expected,
                found: data.len(),
            });
        }
        Ok(MatView { ty, k, n, data })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n.max(1)
    }

    /// Rows `r0..r0 + rows` as their own matrix (e.g. one head of a stacked
    /// per-head weight).
    pub fn rows(&self, r0: usize, rows: usize) -> MatView<'a> {
        let rb = self.row_bytes();
        MatView {
            ty: self.ty,
            k: self.k,
            n: rows,
            data: &self.data[r0 * rb..(r0 + rows) * rb],
        }
    }
}

/// `out[t, r] = Σ_i x[t, i] · w[r, i]`; `x` is `[n_tokens, k]`, `out` is
/// `[n_tokens, n]`, with `w` of ggml shape `[k, n]`.
pub fn matmul(w: &Weight, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    matmul_view(&w.view(), x, n_tokens, out)
}

/// [`matmul`] over a borrowed matrix view. The weight type must have a dot
/// kernel (`quant::kernels::has_vec_dot`, checked when weights are loaded).
pub fn matmul_view(w: &MatView<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), n_tokens * k, "matmul: activation shape");
    assert_eq!(out.len(), n_tokens * n, "matmul: output shape");
    if n_tokens == 0 || n == 0 {
        return;
    }
    let rb = w.row_bytes();
    // Activations once in the format the weight's kernel pairs with.
    let act_ty = vec_dot_type(w.ty);
    let arb = act_ty.row_bytes(k as u64).unwrap_or(0) as usize;
    let mut act = vec![0u8; n_tokens * arb];
    act.par_chunks_mut(arb.max(1))
        .zip(x.par_chunks(k))
        .for_each(|(dst, src)| {
            // Cannot fail: k is a whole number of the weight's blocks, and every
            // activation format's block divides the weight's block.
            let _ = quantize_row(act_ty, src, dst);
        });
    let rows_per_task = (n / (rayon::current_num_threads() * 8)).clamp(1, 256);
    if n_tokens == 1 {
        out.par_chunks_mut(rows_per_task)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let r0 = ci * rows_per_task;
                let rows = chunk.len();
                gemm(
                    w.ty,
                    k,
                    &w.data[r0 * rb..(r0 + rows) * rb],
                    rows,
                    &act,
                    1,
                    chunk,
                    rows,
                );
            });
        return;
    }
    // Each task owns whole weight rows and all tokens: `[n_tokens, rows]`
    // blocks, scattered into `out` afterwards.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(rows_per_task))
        .into_par_iter()
        .map(|ci| {
            let r0 = ci * rows_per_task;
            let rows = rows_per_task.min(n - r0);
            let mut blk = vec![0.0f32; n_tokens * rows];
            let wd = &w.data[r0 * rb..(r0 + rows) * rb];
            gemm(w.ty, k, wd, rows, &act, n_tokens, &mut blk, rows);
            (r0, blk)
        })
        .collect();
    for (r0, blk) in blocks {
        let rows = blk.len() / n_tokens;
        for t in 0..n_tokens {
            out[t * n + r0..][..rows].copy_from_slice(&blk[t * rows..][..rows]);
        }
    }
}

/// Row `r` of `w` widened to f32 into `out` (`w.k` values), e.g. one token
/// embedding. Types without a dequantizer leave `out` as zeros (the loader
/// only accepts types with kernels, which all have one).
pub fn row_to_f32(w: &MatView<'_>, r: usize, out: &mut [f32]) {
    let rb = w.row_bytes();
    if dequantize_row(w.ty, &w.data[r * rb..(r + 1) * rb], out).is_err() {
        out.iter_mut().for_each(|v| *v = 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight format against its dequantized rows in f64, with the
    /// activation quantization error the format implies.
    #[test]
    fn matmul_matches_dequantized_reference() {
        let (k, n, t) = (256usize, 37usize, 3usize);
        let w: Vec<f32> = (0..k * n)
            .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let x: Vec<f32> = (0..k * t)
            .map(|i| (((i * 104729) % 991) as f32 / 991.0 - 0.5) * 2.0)
            .collect();
        for (ty, tol) in [
            (GgmlType::F32, 1e-5f32),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 1e-2),
            (GgmlType::Q8_0, 2e-2),
            (GgmlType::Q4_K, 2e-2),
            (GgmlType::Q6_K, 2e-2),
        ] {
            let rb = ty.row_bytes(k as u64).unwrap() as usize;
            let mut bytes = vec![0u8; rb * n];
            for (dst, src) in bytes.chunks_mut(rb).zip(w.chunks(k)) {
                quantize_row(ty, src, dst).unwrap();
            }
            let view = MatView::new(ty, k, n, &bytes).unwrap();
            let mut deq = vec![0.0f32; k];
            let mut want = vec![0.0f32; t * n];
            for r in 0..n {
                row_to_f32(&view, r, &mut deq);
                for tt in 0..t {
                    want[tt * n + r] = deq
                        .iter()
                        .zip(&x[tt * k..][..k])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32;
                }
            }
            for nt in [1usize, t] {
                let mut got = vec![0.0f32; nt * n];
                matmul_view(&view, &x[..nt * k], nt, &mut got);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err < tol, "{}: n_tokens {nt}: max err {err}", ty.name());
            }
        }
    }
}
