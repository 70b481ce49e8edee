//! The expert store: where the routed experts' weights live.
//!
//! The MoE layer asks the store for expert `e` of layer `il` and gets the
//! three matrices as [`MatView`]s. Today's [`MmapExperts`] hands out
//! zero-copy slices of the mapped 3-D `ffn_*_exps` tensors (the OS pages them
//! in on demand). A store that keeps only a memory budget of experts resident
//! (reading, prefetching, evicting) implements the same [`ExpertStore`] trait
//! and returns [`ExpertBytes::Resident`] buffers instead; the model does not
//! change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quant::GgmlType;
use thiserror::Error;

use crate::loader::Weight;
use crate::ops::MatView;

/// A request the store cannot serve.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExpertError {
    #[error("layer {layer} has no routed experts in this store")]
    NoLayer { layer: usize },
    #[error("expert {expert} of layer {layer} out of range (layer has {n_expert})")]
    NoExpert {
        layer: usize,
        expert: usize,
        n_expert: usize,
    },
}

/// Bytes of one expert matrix: borrowed from the mapping or owned by a cache.
#[derive(Clone, Debug)]
pub enum ExpertBytes<'a> {
    Mapped(&'a [u8]),
    Resident(Arc<[u8]>),
}

impl ExpertBytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            ExpertBytes::Mapped(b) => b,
            ExpertBytes::Resident(b) => b,
        }
    }
}

/// One routed expert's three matrices: gate and up `[n_embd -> n_ff]`,
/// down `[n_ff -> n_embd]`.
#[derive(Clone, Debug)]
pub struct Expert<'a> {
    pub n_embd: usize,
    pub n_ff: usize,
    /// Types of gate, up, down.
    pub types: [GgmlType; 3],
    pub gate: ExpertBytes<'a>,
    pub up: ExpertBytes<'a>,
    pub down: ExpertBytes<'a>,
}

impl Expert<'_> {
    pub fn gate(&self) -> MatView<'_> {
        MatView {
            ty: self.types[0],
            k: self.n_embd,
            n: self.n_ff,
            data: self.gate.as_slice(),
        }
    }
    pub fn up(&self) -> MatView<'_> {
        MatView {
            ty: self.types[1],
            k: self.n_embd,
            n: self.n_ff,
            data: self.up.as_slice(),
        }
    }
    pub fn down(&self) -> MatView<'_> {
        MatView {
            ty: self.types[2],
            k: self.n_ff,
            n: self.n_embd,
            data: self.down.as_slice(),
        }
    }
}

/// Where routed experts come from.
pub trait ExpertStore: Send + Sync {
    /// Expert `expert` of layer `layer`.
    fn expert(&self, layer: usize, expert: usize) -> Result<Expert<'_>, ExpertError>;
    /// How often each expert of each layer was fetched (`[layer][expert]`),
    /// for residency policies and `--stats`.
    fn usage(&self) -> Vec<Vec<u64>>;
}

/// The stacked expert tensors of one MoE layer: ggml ne `[D, F, E]` for gate
/// and up, `[F, D, E]` for down (shapes checked by the loader).
#[derive(Clone, Debug)]
pub struct LayerExperts {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// Zero-copy store over the mapped file.
#[derive(Debug)]
pub struct MmapExperts {
    /// Indexed by layer; `None` for dense layers.
    layers: Vec<Option<LayerExperts>>,
    counts: Vec<Vec<AtomicU64>>,
}

impl MmapExperts {
    /// A store over the given per-layer stacks.
    pub fn new(layers: Vec<Option<LayerExperts>>) -> MmapExperts {
        let counts = layers
            .iter()
            .map(|l| {
                let n = l
                    .as_ref()
                    .map(|l| l.gate.ne().get(2).copied().unwrap_or(0) as usize)
                    .unwrap_or(0);
                (0..n).map(|_| AtomicU64::new(0)).collect()
            })
            .collect();
        MmapExperts { layers, counts }
    }
}

/// Bytes of expert `e` inside a stacked weight of `n_expert` equal slices.
fn slice(w: &Weight, e: usize) -> &[u8] {
    let n_expert = w.ne().get(2).copied().unwrap_or(1) as usize;
    let per = w.data().len() / n_expert.max(1);
    &w.data()[e * per..(e + 1) * per]
}

impl ExpertStore for MmapExperts {
    fn expert(&self, layer: usize, expert: usize) -> Result<Expert<'_>, ExpertError> {
        let l = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or(ExpertError::NoLayer { layer })?;
        let dim = |i: usize| l.gate.ne().get(i).copied().unwrap_or(0) as usize;
        let (n_embd, n_ff, n_expert) = (dim(0), dim(1), dim(2));
        if expert >= n_expert {
            return Err(ExpertError::NoExpert {
                layer,
                expert,
                n_expert,
            });
        }
        if let Some(c) = self.counts.get(layer).and_then(|c| c.get(expert)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Expert {
            n_embd,
            n_ff,
            types: [l.gate.ty(), l.up.ty(), l.down.ty()],
            gate: ExpertBytes::Mapped(slice(&l.gate, expert)),
            up: ExpertBytes::Mapped(slice(&l.up, expert)),
            down: ExpertBytes::Mapped(slice(&l.down, expert)),
        })
    }

    fn usage(&self) -> Vec<Vec<u64>> {
        self.counts
            .iter()
            .map(|l| l.iter().map(|c| c.load(Ordering::Relaxed)).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_select_one_expert() {
        let (d, f, e) = (4usize, 3usize, 5usize);
        let vals: Vec<f32> = (0..d * f * e).map(|i| i as f32).collect();
        let down_vals: Vec<f32> = (0..d * f * e).map(|i| -(i as f32)).collect();
        let gate = Weight::from_f32(&[d as u64, f as u64, e as u64], &vals);
        let down = Weight::from_f32(&[f as u64, d as u64, e as u64], &down_vals);
        let store = MmapExperts::new(vec![
            None,
            Some(LayerExperts {
                gate: gate.clone(),
                up: gate,
                down,
            }),
        ]);
        let x = store.expert(1, 2).unwrap();
        let g = x.gate();
        assert_eq!((g.k, g.n), (d, f));
        let first = f32::from_le_bytes(g.data[0..4].try_into().unwrap());
        assert_eq!(first, (2 * d * f) as f32);
        assert_eq!(x.down().n, d);
        assert_eq!(
            store.expert(0, 0).unwrap_err(),
            ExpertError::NoLayer { layer: 0 }
        );
        assert!(matches!(
            store.expert(1, 5),
            Err(ExpertError::NoExpert { .. })
        ));
        assert_eq!(store.usage()[1][2], 1);
    }
}
