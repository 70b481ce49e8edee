//! The low-bit copy of the routed experts (`--cold-experts`): the sidecar
//! `cold-<model file name>` that `pocketvl convert --cold-experts TYPE` writes
//! beside the model, opened and checked against the model's expert stacks
//! (the paging store reads its experts from the file; `only` maps it).

use std::path::PathBuf;

use quant::schema::{cold, general};

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
