//! The synthetic checkpoint as a converter input: tensors generated on demand.
//!
//! `pocketvl synth --quant` hands this [`TensorSource`] to the converter instead of safetensors
//! shards. Every read regenerates the requested elements from their counter-seeded streams
//! ([`super::rng::fill_f32`]), bf16-rounded exactly as a written checkpoint stores them, so the
//! converter produces the same bytes as from the checkpoint directory, holding nothing but its
//! own chunk buffers.

use std::collections::BTreeMap;

use convert::error::{ConvertError, Result};
use convert::safetensors::Dtype;
use convert::source::TensorSource;

use super::rng;
use super::spec::ModelSpec;
use super::tensors::{tensor_list, TensorSpec};

/// Generated tensors of one [`ModelSpec`] and seed.
pub struct SynthSource {
    seed: u64,
    tensors: BTreeMap<String, TensorSpec>,
    data_bytes: u64,
}

impl SynthSource {
    /// The checkpoint `spec` describes, with values for `seed`.
    pub fn new(spec: &ModelSpec, seed: u64) -> SynthSource {
        let list = tensor_list(spec);
        let data_bytes = list.iter().map(TensorSpec::bytes).sum();
        SynthSource {
            seed,
            tensors: list.into_iter().map(|t| (t.name.clone(), t)).collect(),
            data_bytes,
        }
    }

    fn get(&self, name: &str) -> Result<&TensorSpec> {
        self.tensors
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))
    }
}

impl TensorSource for SynthSource {
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.tensors.keys().map(String::as_str))
    }

    fn info(&self, name: &str) -> Result<(&[usize], Dtype)> {
        Ok((&self.get(name)?.shape, Dtype::Bf16))
    }

    fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
        let t = self.get(name)?;
        if start as u64 + out.len() as u64 > t.numel() {
            return Err(ConvertError::Quant {
                context: name.to_string(),
                message: format!(
                    "elements {start}..+{} out of range ({} elements)",
                    out.len(),
                    t.numel()
                ),
            });
        }
        rng::fill_f32(&t.draw(self.seed), start as u64, out);
        Ok(())
    }

    fn tensor_bytes(&self, name: &str) -> usize {
        self.tensors.get(name).map_or(0, |t| t.bytes() as usize)
    }

    fn data_bytes(&self) -> u64 {
        self.data_bytes
    }
}
