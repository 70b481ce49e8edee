//! A weight tensor: cheap to clone, its bytes borrowed from the mapped file.

use std::sync::Arc;

use quant::block::dequantize_row;
use quant::GgmlType;

use super::ModelFile;
use crate::tensor::MatView;

#[derive(Debug)]
enum Storage {
    /// Tensor `index` of a mapped GGUF file (zero-copy).
    Mapped { file: ModelFile, index: usize },
    /// Bytes owned in memory (weights built in code, e.g. tests comparing
    /// two formulations on random weights).
    Owned {
        ty: GgmlType,
        ne: Vec<u64>,
        bytes: Vec<u8>,
    },
}

/// A named tensor with its ggml type and shape (`ne`, fastest first).
#[derive(Clone, Debug)]
pub struct Weight {
    inner: Arc<Storage>,
}

impl Weight {
    pub(super) fn mapped(file: ModelFile, index: usize) -> Weight {
        Weight {
            inner: Arc::new(Storage::Mapped { file, index }),
        }
    }

    /// An in-memory float32 tensor of shape `ne` (ggml order). The length of
    /// `values` must be the product of `ne`.
    pub fn from_f32(ne: &[u64], values: &[f32]) -> Weight {
        assert_eq!(
            ne.iter().product::<u64>() as usize,
            values.len(),
            "Weight::from_f32 shape"
        );
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Weight {
            inner: Arc::new(Storage::Owned {
                ty: GgmlType::F32,
                ne: ne.to_vec(),
                bytes,
            }),
        }
    }

    /// An in-memory tensor of type `ty` and shape `ne` (ggml order), each row
    /// of `values` quantized with the format's reference quantizer (tests of
    /// paths that mix weight types).
    #[cfg(test)]
    pub(crate) fn quantized(ty: GgmlType, ne: &[u64], values: &[f32]) -> Weight {
        let k = ne[0] as usize;
        let rb = ty.row_bytes(ne[0]).expect("whole blocks") as usize;
        let mut bytes = vec![0u8; values.len() / k * rb];
        for (dst, row) in bytes.chunks_mut(rb).zip(values.chunks(k)) {
            quant::block::quantize_row(ty, row, dst).expect("quantizable row");
        }
        Weight {
            inner: Arc::new(Storage::Owned {
                ty,
                ne: ne.to_vec(),
                bytes,
            }),
        }
    }

    /// The tensor's name in its file (`None` for in-memory weights).
    pub fn name(&self) -> Option<&str> {
        match &*self.inner {
            Storage::Mapped { file, index } => Some(&file.gguf().tensors()[*index].name),
            Storage::Owned { .. } => None,
        }
    }

    /// ggml type.
    pub fn ty(&self) -> GgmlType {
        match &*self.inner {
            Storage::Mapped { file, index } => file.gguf().tensors()[*index].ty,
            Storage::Owned { ty, .. } => *ty,
        }
    }

    /// Shape, ggml order (fastest-varying first).
    pub fn ne(&self) -> &[u64] {
        match &*self.inner {
            Storage::Mapped { file, index } => &file.gguf().tensors()[*index].ne,
            Storage::Owned { ne, .. } => ne,
        }
    }

    /// Raw bytes, in the mmap for file tensors.
    pub fn data(&self) -> &[u8] {
        match &*self.inner {
            Storage::Mapped { file, index } => {
                let g = file.gguf();
                g.tensor_data(&g.tensors()[*index])
            }
            Storage::Owned { bytes, .. } => bytes,
        }
    }

    /// Where the bytes start in the model file (`None` for in-memory weights):
    /// what a store that reads instead of mapping needs.
    pub fn file_offset(&self) -> Option<u64> {
        match &*self.inner {
            Storage::Mapped { file, index } => {
                let g = file.gguf();
                Some(g.data_offset() + g.tensors()[*index].offset)
            }
            Storage::Owned { .. } => None,
        }
    }

    /// The tensor as a matrix of `ne[0]`-element rows (all higher dims
    /// flattened into rows).
    pub fn view(&self) -> MatView<'_> {
        let ne = self.ne();
        let k = ne.first().copied().unwrap_or(1) as usize;
        let n = ne.iter().skip(1).product::<u64>() as usize;
        MatView {
            ty: self.ty(),
            k,
            n,
            data: self.data(),
        }
    }

    /// Every element widened to f32 (small tensors only: norms, biases,
    /// router weights; big matrices are read as matrices through [`Weight::view`]).
    pub fn to_f32(&self) -> Vec<f32> {
        let n = self.ne().iter().product::<u64>() as usize;
        let mut out = vec![0.0f32; n];
        // The loader accepts only types with a dequantizer; on any other the
        // result stays zeros rather than panicking.
        let _ = dequantize_row(self.ty(), self.data(), &mut out);
        out
    }
}
