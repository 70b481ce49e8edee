//! `out = x · Wᵀ` for a ggml-typed weight W of n rows × k columns (ggml ne
//! `[k, n]`) and float32 activations x `[n_tokens, k]`.
//!
//! Weight rows are the outer, parallel loop so that each row is read from
//! memory once per batch of tokens (prefill is then bound by compute, decode
//! by the weight bytes, as in ggml's CPU matmul). Activations are converted
//! once per call to the type the weight's dot kernel expects.

use half::{bf16, f16};
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
    Length { ty: &'static str, k: usize, n: usize, expected: u64, found: usize },
}

impl<'a> MatView<'a> {
    /// Checks that `data` holds exactly `n` rows of `k` elements of `ty`.
    pub fn new(ty: GgmlType, k: usize, n: usize, data: &'a [u8]) -> Result<Self, MatViewError> {
        let row = ty
            .row_bytes(k as u64)
            .ok_or(MatViewError::RowNotBlocks { ty: ty.name(), k })?;
        let expected = row * n as u64;
        if expected != data.len() as u64 {
            return Err(MatViewError::Length { ty: ty.name(), k, n, expected, found: data.len() });
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
        MatView { ty: self.ty, k: self.k, n: rows, data: &self.data[r0 * rb..(r0 + rows) * rb] }
    }
}

/// `out[t, r] = Σ_i x[t, i] · w[r, i]`; `x` is `[n_tokens, k]`, `out` is
/// `[n_tokens, n]`, with `w` of ggml shape `[k, n]`.
pub fn matmul(w: &Weight, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    matmul_view(&w.view(), x, n_tokens, out)
}

/// [`matmul`] over a borrowed matrix view.
pub fn matmul_view(w: &MatView<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), n_tokens * k, "matmul: activation shape");
    assert_eq!(out.len(), n_tokens * n, "matmul: output shape");
    if n_tokens == 0 || n == 0 {
        return;
    }
    let rb = w.row_bytes();
    let dot = row_dot_fn(w.ty);
    let rows_per_task = (n / (rayon::current_num_threads() * 8)).clamp(1, 256);
    if n_tokens == 1 {
        out.par_chunks_mut(rows_per_task).enumerate().for_each_init(
            || vec![0.0f32; k],
            |scratch, (ci, chunk)| {
                let r0 = ci * rows_per_task;
                for (j, o) in chunk.iter_mut().enumerate() {
                    let row = &w.data[(r0 + j) * rb..][..rb];
                    *o = dot(row, x, scratch);
                }
            },
        );
        return;
    }
    // Transposed result [n, n_tokens]: each task owns whole weight rows.
    let mut tr = vec![0.0f32; n * n_tokens];
    tr.par_chunks_mut(rows_per_task * n_tokens).enumerate().for_each_init(
        || vec![0.0f32; k],
        |scratch, (ci, chunk)| {
            let r0 = ci * rows_per_task;
            for (j, orow) in chunk.chunks_exact_mut(n_tokens).enumerate() {
                let row = &w.data[(r0 + j) * rb..][..rb];
                for (t, o) in orow.iter_mut().enumerate() {
                    *o = dot(row, &x[t * k..][..k], scratch);
                }
            }
        },
    );
    for r in 0..n {
        for t in 0..n_tokens {
            out[t * n + r] = tr[r * n_tokens + t];
        }
    }
}

/// Dot product of one stored weight row with one f32 activation row;
/// `scratch` (k floats) may be used to widen the row.
type RowDot = fn(&[u8], &[f32], &mut [f32]) -> f32;

fn row_dot_fn(ty: GgmlType) -> RowDot {
    match ty {
        GgmlType::F32 => dot_f32,
        GgmlType::F16 => dot_f16,
        GgmlType::BF16 => dot_bf16,
        other => panic!("matmul: weight type {} has no dot kernel", other.name()),
    }
}

fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators: lets the compiler vectorise and keeps
    // the f32 rounding error of long rows small.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

fn dot_f32(row: &[u8], x: &[f32], scratch: &mut [f32]) -> f32 {
    for (o, b) in scratch.iter_mut().zip(row.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    dot_plain(scratch, x)
}

fn dot_f16(row: &[u8], x: &[f32], scratch: &mut [f32]) -> f32 {
    for (o, b) in scratch.iter_mut().zip(row.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
    dot_plain(scratch, x)
}

fn dot_bf16(row: &[u8], x: &[f32], scratch: &mut [f32]) -> f32 {
    for (o, b) in scratch.iter_mut().zip(row.chunks_exact(2)) {
        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
    dot_plain(scratch, x)
}

/// Row `r` of `w` widened to f32 into `out` (`w.k` values), e.g. one token
/// embedding.
pub fn row_to_f32(w: &MatView<'_>, r: usize, out: &mut [f32]) {
    let rb = w.row_bytes();
    let row = &w.data[r * rb..(r + 1) * rb];
    match w.ty {
        GgmlType::F32 => out
            .iter_mut()
            .zip(row.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => out.iter_mut().zip(row.chunks_exact(2)).for_each(|(o, b)| *o = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::BF16 => out.iter_mut().zip(row.chunks_exact(2)).for_each(|(o, b)| *o = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => panic!("row_to_f32: no dequantizer for {}", other.name()),
    }
}
