//! The low-bit copy of the routed experts (`--cold-experts`): the sidecar
//! `cold-<model file name>` that `pocketvl convert --cold-experts TYPE` writes
//! beside the model, opened and checked against the model's expert stacks,
//! and (for the paging store) read whole into memory the store owns.

use std::path::PathBuf;

use quant::schema::{cold, general};
use quant::GgmlType;

use super::slab::{ExpertFile, Slab};
use super::{ExpertError, LayerExperts};
use crate::loader::{matmul_types, ModelFile};

/// The sidecar of `model`: the converter's name for it.
pub fn sidecar_path(model: &ModelFile) -> PathBuf {
    convert::write::cold_path(model.path())
}

/// The sidecar's expert stacks matching the model's `stacks`: the same
/// layers, tensor names and shapes (types may differ: that is the point).
/// A missing sidecar, one made for another model (architecture, layer
/// count) or with other tensors is a [`ExpertError::Cold`] naming it.
pub fn open(
    model: &ModelFile,
    stacks: &[Option<LayerExperts>],
) -> Result<Vec<Option<LayerExperts>>, ExpertError> {
    let path = sidecar_path(model);
    let err = |why: String| ExpertError::Cold {
        path: path.display().to_string(),
        why,
    };
    if !path.is_file() {
        return Err(err(
            "not found (write it with `pocketvl convert --cold-experts TYPE`, e.g. q3_K)".into(),
        ));
    }
    let file = ModelFile::open(&path).map_err(|e| err(e.to_string()))?;
    let g = file.gguf();
    if g.get(cold::TYPE).is_none() {
        return Err(err(format!(
            "not a cold-expert copy (no `{}` key)",
            cold::TYPE
        )));
    }
    let arch = |f: &ModelFile| {
        f.gguf()
            .get(general::ARCHITECTURE)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    if arch(&file) != arch(model) {
        return Err(err(format!(
            "made for architecture {:?}, the model is {:?}",
            arch(&file),
            arch(model)
        )));
    }
    let blocks = g.get(cold::BLOCK_COUNT).and_then(|v| v.as_u64());
    if blocks != Some(stacks.len() as u64) {
        return Err(err(format!(
            "made for {} layers, the model has {}",
            blocks.map_or("an unknown number of".into(), |b| b.to_string()),
            stacks.len()
        )));
    }
    let types = matmul_types();
    let copy = stacks
        .iter()
        .map(|s| {
            s.as_ref()
                .map(|s| {
                    let take = |w: &crate::loader::Weight| {
                        let name = w
                            .name()
                            .ok_or_else(|| err("the model's experts are not in a file".into()))?;
                        file.weight_of(name, w.ne(), &types)
                            .map_err(|e| err(e.to_string()))
                    };
                    Ok(LayerExperts {
                        gate: take(&s.gate)?,
                        up: take(&s.up)?,
                        down: take(&s.down)?,
                    })
                })
                .transpose()
        })
        .collect::<Result<Vec<_>, ExpertError>>()?;
    // Expert tensors of layers the model has none in, or of other names.
    file.check_all_used().map_err(|e| err(e.to_string()))?;
    Ok(copy)
}

/// One layer of the copy in memory: each stack read whole.
#[derive(Debug)]
struct ResidentLayer {
    types: [GgmlType; 3],
    /// Bytes of one expert in each stack.
    per: [usize; 3],
    mats: [Slab; 3],
}

/// The whole low-bit copy, owned (the paging store's fallback).
#[derive(Debug)]
pub struct ResidentCopy {
    layers: Vec<Option<ResidentLayer>>,
    bytes: u64,
}

impl ResidentCopy {
    /// Reads every stack of `copy` (from [`open`]) from `model`'s sidecar,
    /// with `O_DIRECT` when `direct` (no page-cache copy left behind).
    pub fn read(
        model: &ModelFile,
        copy: &[Option<LayerExperts>],
        direct: bool,
    ) -> Result<ResidentCopy, ExpertError> {
        let path = sidecar_path(model);
        let err = |why: String| ExpertError::Cold {
            path: path.display().to_string(),
            why,
        };
        let file = ExpertFile::open(&path, direct).map_err(|e| err(e.to_string()))?;
        let mut bytes = 0;
        let layers = copy
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| {
                        let n_expert = s.n_expert().max(1);
                        let stacks = [&s.gate, &s.up, &s.down];
                        let read = |i: usize| {
                            let w = stacks[i];
                            let offset = w.file_offset().ok_or_else(|| {
                                err("the copy's experts are not in a file".into())
                            })?;
                            file.read(offset, w.data().len())
                                .map_err(|e| err(e.to_string()))
                        };
                        let mats = [read(0)?, read(1)?, read(2)?];
                        bytes += mats.iter().map(Slab::footprint).sum::<u64>();
                        Ok(ResidentLayer {
                            types: s.types(),
                            per: stacks.map(|w| w.data().len() / n_expert),
                            mats,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, ExpertError>>()?;
        Ok(ResidentCopy { layers, bytes })
    }

    /// Memory the copy holds (counted in the budget like pinned weights).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Types and bytes of gate, up and down of expert `expert` of `layer`.
    pub fn expert(&self, layer: usize, expert: usize) -> Option<([GgmlType; 3], [&[u8]; 3])> {
        let l = self.layers.get(layer)?.as_ref()?;
        let part = |i: usize| {
            let m = l.mats[i].as_slice();
            m.get(expert * l.per[i]..(expert + 1) * l.per[i])
        };
        Some((l.types, [part(0)?, part(1)?, part(2)?]))
    }
}
