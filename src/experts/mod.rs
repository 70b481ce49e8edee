//! The expert store: where the routed experts' weights live.
//!
//! The MoE layer tells the store which experts its router picked
//! ([`ExpertStore::prefetch`]), then asks for expert `e` of layer `il` and
//! gets the three matrices as [`MatView`]s. Two stores, chosen at load time
//! by [`open`]:
//! - [`MmapExperts`] (no budget): zero-copy slices of the mapped 3-D
//!   `ffn_*_exps` tensors; the OS pages them in on demand.
//! - [`PagedExperts`] (`--mem-budget`): the expert bytes are never touched
//!   through the mapping; a cache of owned copies read with `pread`
//!   (`O_DIRECT` by default) holds what the budget leaves after the pinned
//!   dense and attention weights, evicting by policy and prefetching on
//!   reader threads. It returns [`ExpertBytes::Resident`] buffers; the model
//!   does not change and its output bits do not either. With
//!   `--cold-experts lowbit` it also holds the low-bit copy ([`cold`]) and
//!   serves a fetch it would have to wait for from that copy instead.
//!
//! `--cold-experts only` is the mmap store over the low-bit copy.

mod cold;
mod madvise;
mod options;
mod paged;
mod policy;
mod slab;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quant::GgmlType;
use thiserror::Error;

use crate::loader::{ModelFile, Weight};
use crate::ops::MatView;

pub use cold::sidecar_path;
pub use options::{
    human, parse_size, CachePolicy, ColdExperts, ExpertIo, ExpertOptions, Prefetch, DEFAULT_READERS,
};
pub use paged::PagedExperts;
pub use slab::Slab;
pub use stats::ExpertStats;

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
    #[error("cannot read expert {expert} of layer {layer}: {why}")]
    Read {
        layer: usize,
        expert: usize,
        why: String,
    },
    #[error("cannot open {path} for expert reads: {why}")]
    Open { path: String, why: String },
    #[error(
        "--mem-budget {} is too small for this model: the minimum is {} ({minimum} bytes: \
         {} of dense, attention, embedding and output weights pinned, plus the {n_used} \
         routed experts one token uses in one layer)",
        human(*budget), human(*minimum), human(*pinned)
    )]
    BudgetTooSmall {
        budget: u64,
        minimum: u64,
        pinned: u64,
        n_used: usize,
    },
    #[error("cold-expert copy {path}: {why}")]
    Cold { path: String, why: String },
    #[error("--cold-experts {mode}: {why}")]
    ColdMode {
        mode: ColdExperts,
        why: &'static str,
    },
    #[error("cannot start the expert reader threads: {0}")]
    Threads(String),
}

/// Bytes of one expert matrix: borrowed from the mapping or owned by a cache
/// (the `Arc` keeps an expert in use safe from eviction).
#[derive(Clone, Debug)]
pub enum ExpertBytes<'a> {
    Borrowed(&'a [u8]),
    Resident(Arc<Slab>),
}

impl ExpertBytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            ExpertBytes::Borrowed(b) => b,
            ExpertBytes::Resident(b) => b.as_slice(),
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
    /// The experts of `layer` the router just picked, ascending (the order
    /// the layer fetches them in): a store may start loading them.
    fn prefetch(&self, _layer: usize, _experts: &[usize]) {}
    /// How many experts of one layer a batch (prefill) may hold at once: it fetches that
    /// many, runs them together and drops them before fetching more. Unbounded for a
    /// mapping; a paging store keeps it inside its budget.
    fn batch_experts(&self) -> usize {
        usize::MAX
    }
    /// What the store did so far (`--stats`).
    fn stats(&self) -> ExpertStats;
}

/// The store for `stacks` (indexed by layer, `None` for dense layers) that
/// `opts` asks for: plain mmap without a budget, else the paging store,
/// which fails with the minimum if the budget cannot hold the pinned weights
/// and one token's experts of a layer (`n_used`); with `--cold-experts
/// lowbit` it pages the low-bit copy too. `--cold-experts only` maps the
/// low-bit copy instead of `stacks`.
pub fn open(
    file: &ModelFile,
    stacks: Vec<Option<LayerExperts>>,
    n_used: usize,
    opts: &ExpertOptions,
) -> Result<Box<dyn ExpertStore>, ExpertError> {
    let mode_err = |why| ExpertError::ColdMode {
        mode: opts.cold,
        why,
    };
    Ok(match (opts.budget, opts.cold) {
        (None, ColdExperts::Off) => Box::new(MmapExperts::new(stacks)),
        (None, ColdExperts::Lowbit) => {
            return Err(mode_err(
                "serves the paging store's misses: it needs --mem-budget",
            ))
        }
        (None, ColdExperts::Only) => {
            let mut store = MmapExperts::new(cold::open(file, &stacks)?);
            store.name = "mmap (low-bit copy)";
            Box::new(store)
        }
        (Some(_), ColdExperts::Only) => {
            return Err(mode_err(
                "maps the low-bit copy alone: it takes no --mem-budget",
            ))
        }
        (Some(_), ColdExperts::Off) => {
            Box::new(PagedExperts::open(file, stacks, n_used, opts, None)?)
        }
        (Some(_), ColdExperts::Lowbit) => {
            let copy = cold::open(file, &stacks)?;
            Box::new(PagedExperts::open(file, stacks, n_used, opts, Some(copy))?)
        }
    })
}

/// Fetches per expert, `[layer][expert]`, counted by every store.
#[derive(Debug)]
struct Usage(Vec<Vec<AtomicU64>>);

impl Usage {
    fn new(layers: &[Option<LayerExperts>]) -> Usage {
        Usage(
            layers
                .iter()
                .map(|l| {
                    let n = l.as_ref().map_or(0, LayerExperts::n_expert);
                    (0..n).map(|_| AtomicU64::new(0)).collect()
                })
                .collect(),
        )
    }

    fn count(&self, layer: usize, expert: usize) {
        if let Some(c) = self.0.get(layer).and_then(|c| c.get(expert)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Vec<Vec<u64>> {
        self.0
            .iter()
            .map(|l| l.iter().map(|c| c.load(Ordering::Relaxed)).collect())
            .collect()
    }
}

/// The stacked expert tensors of one MoE layer: ggml ne `[D, F, E]` for gate
/// and up, `[F, D, E]` for down (shapes checked by the loader).
#[derive(Clone, Debug)]
pub struct LayerExperts {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

impl LayerExperts {
    /// `(n_embd, n_ff, n_expert)` from the gate stack.
    fn dims(&self) -> (usize, usize, usize) {
        let dim = |i: usize| self.gate.ne().get(i).copied().unwrap_or(0) as usize;
        (dim(0), dim(1), dim(2))
    }

    fn n_expert(&self) -> usize {
        self.dims().2
    }

    /// Types of gate, up, down.
    fn types(&self) -> [GgmlType; 3] {
        [self.gate.ty(), self.up.ty(), self.down.ty()]
    }

    /// The layer's stack or the error for `(layer, expert)`.
    fn checked(
        layers: &[Option<LayerExperts>],
        layer: usize,
        expert: usize,
    ) -> Result<&LayerExperts, ExpertError> {
        let l = layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or(ExpertError::NoLayer { layer })?;
        let n_expert = l.n_expert();
        if expert >= n_expert {
            return Err(ExpertError::NoExpert {
                layer,
                expert,
                n_expert,
            });
        }
        Ok(l)
    }
}

/// Zero-copy store over the mapped file.
#[derive(Debug)]
pub struct MmapExperts {
    /// Indexed by layer; `None` for dense layers.
    layers: Vec<Option<LayerExperts>>,
    usage: Usage,
    /// What `--stats` calls it.
    name: &'static str,
}

impl MmapExperts {
    /// A store over the given per-layer stacks.
    pub fn new(layers: Vec<Option<LayerExperts>>) -> MmapExperts {
        let usage = Usage::new(&layers);
        MmapExperts {
            layers,
            usage,
            name: "mmap",
        }
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
        let l = LayerExperts::checked(&self.layers, layer, expert)?;
        let (n_embd, n_ff, _) = l.dims();
        self.usage.count(layer, expert);
        Ok(Expert {
            n_embd,
            n_ff,
            types: l.types(),
            gate: ExpertBytes::Borrowed(slice(&l.gate, expert)),
            up: ExpertBytes::Borrowed(slice(&l.up, expert)),
            down: ExpertBytes::Borrowed(slice(&l.down, expert)),
        })
    }

    fn stats(&self) -> ExpertStats {
        let popularity = self.usage.snapshot();
        ExpertStats {
            store: self.name,
            requests: popularity.iter().flatten().sum(),
            popularity,
            ..ExpertStats::default()
        }
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
        assert_eq!(store.stats().popularity[1][2], 1);
    }
}
