//! The bottom room of the runtime: a borrowed view of a ggml-typed matrix.
//!
//! Both the loader (a mapped weight viewed as a matrix) and the numerics (matmul over such a
//! view) need it; living here, below both, it lets data flow one way (tensor -> loader -> ops).

use quant::GgmlType;
use thiserror::Error;

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
