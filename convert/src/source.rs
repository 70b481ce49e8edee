//! Where the converter's input tensors come from.
//!
//! The converter (mapping, recipe, quantization, GGUF writing) only needs, per Hugging Face
//! tensor name, its shape and dtype and a way to read any run of its elements as f32. A
//! [`TensorSource`] provides exactly that: [`Checkpoint`] reads safetensors shards; `pocketvl
//! synth --quant` generates random weights on the fly, so a full-size GGUF pair is written
//! without its (tens of gigabytes) bf16 checkpoint ever touching the disk — through the same
//! conversion code, so both routes give the same bytes.

use std::path::Path;

use crate::error::Result;
use crate::safetensors::{Checkpoint, Dtype};

/// Named tensors the converter reads (PyTorch shapes, slowest dimension first).
///
/// `Sync`: converters read disjoint row ranges of one source from many threads at once.
pub trait TensorSource: Sync {
    /// Every tensor name, sorted.
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_>;

    /// Shape and element type of `name` (`ConvertError::MissingTensor` if absent).
    fn info(&self, name: &str) -> Result<(&[usize], Dtype)>;

    /// Elements `start .. start + out.len()` of `name` (row-major), widened to f32.
    fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()>;

    /// Elements `start .. start + count` of `name` as stored (little-endian values of the
    /// returned dtype), where they lie in memory: the converter then converts them straight to
    /// the output type (`quant::block::convert_row`). `None` (the default) when they do not,
    /// or are out of range: [`read_f32`](Self::read_f32) then gives them.
    fn stored(&self, _name: &str, _start: usize, _count: usize) -> Option<(Dtype, &[u8])> {
        None
    }

    /// Bytes of `name`'s data as stored (0 if absent): the converter's measure of input read.
    fn tensor_bytes(&self, name: &str) -> usize;

    /// Total bytes of tensor data.
    fn data_bytes(&self) -> u64;

    /// The file holding `name`'s bytes as stored, and their byte offset in it: the converter
    /// then reads them ahead with direct I/O (`readahead.rs`). `None` (the default) for a
    /// source not backed by files, read through [`read_f32`](Self::read_f32) alone.
    fn file_span(&self, _name: &str) -> Option<(&Path, u64)> {
        None
    }
}

impl TensorSource for Checkpoint {
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(Checkpoint::names(self))
    }

    fn info(&self, name: &str) -> Result<(&[usize], Dtype)> {
        let view = self.tensor(name)?;
        Ok((view.shape, view.dtype))
    }

    fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
        self.tensor(name)?.read_f32(start, out)
    }

    fn stored(&self, name: &str, start: usize, count: usize) -> Option<(Dtype, &[u8])> {
        self.tensor(name).ok()?.stored(start, count)
    }

    fn tensor_bytes(&self, name: &str) -> usize {
        Checkpoint::tensor_bytes(self, name)
    }

    fn data_bytes(&self) -> u64 {
        Checkpoint::data_bytes(self)
    }

    fn file_span(&self, name: &str) -> Option<(&Path, u64)> {
        Checkpoint::file_span(self, name)
    }
}
