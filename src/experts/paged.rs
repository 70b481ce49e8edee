//! The paging expert store: a memory budget of experts resident, the rest
//! read on demand.
//!
//! Every weight byte that is resident counts against the budget: the dense,
//! attention, embedding and output tensors stay in the mapping and are
//! *pinned* (always needed); what is left holds owned copies of experts. The
//! expert ranges of the mapping are never touched, so the kernel never pages
//! them in; with `O_DIRECT` reads no page-cache copy exists either, and the
//! process's memory is the pinned pages plus this cache.
//!
//! Flow of one MoE layer: the router runs; [`ExpertStore::prefetch`] queues
//! the picked experts that are not resident for the reader threads (a window
//! of them, topped up as the layer consumes them, so a prefill that touches
//! every expert streams them through a small budget); the layer then fetches
//! them in ascending order, taking resident ones at once, waiting for those
//! being read, and reading any other itself, so several reads are in flight
//! at once. With [`Prefetch::Ahead`] the next MoE layer's recently popular
//! experts are queued behind, to be read while this layer computes.
//!
//! Space is reserved before a read starts, so the cache never holds more than
//! its capacity, except when every resident expert is in use (a demand read
//! then overshoots by one expert; a prefetch is dropped instead).
//!
//! With the low-bit copy (`--cold-experts lowbit`, the sidecar [`super::cold`]
//! checks) the cache holds entries of both precisions under the one budget
//! and policy. A fetch takes the full expert if it is resident, else its
//! low-bit copy if that is resident; if neither is resident or being read it
//! reads the low-bit copy (2-2.5x fewer bytes with a 16- or 8-bit primary,
//! ~1.4x with a 4-bit one whose down rows fit no K-quant). A low-bit copy
//! served again (hot) queues its full read for the reader threads, behind
//! the routed reads (at most half the readers), where the next layer's
//! routing drops it if it has not started: hot full experts come back when
//! the disk has time for them. (Queuing the full read at every low-bit serve
//! read more bytes in all than the copy saved: BENCHMARKS.md.) Routed
//! prefetch reads the low-bit copies of the picked experts that are not
//! resident. A full read that lands frees its expert's low-bit entry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use quant::GgmlType;

use super::madvise;
use super::options::{ColdExperts, ExpertIo, ExpertOptions, Prefetch};
use super::policy::{Key, Residency};
use super::slab::{self, ExpertFile, Slab};
use super::stats::{ratio, ExpertStats};
use super::{slice, Expert, ExpertBytes, ExpertError, ExpertStore, LayerExperts, Usage};
use crate::loader::ModelFile;

/// Which copy of an expert a cache entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Precision {
    /// The model file's.
    Full,
    /// The low-bit sidecar's (`--cold-experts lowbit`).
    Low,
}

/// What the cache holds: an expert at one precision.
type Entry = (Key, Precision);

/// Where one MoE layer's experts are in the file.
#[derive(Clone, Debug)]
struct Layout {
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    types: [GgmlType; 3],
    /// File offsets of the gate, up and down stacks.
    base: [u64; 3],
    /// Bytes of one expert in each stack.
    per: [usize; 3],
    /// Most memory one resident expert can take: an owned read over-allocates
    /// at most three alignment units per matrix ([`ExpertFile::read`]), a
    /// mapped one at most a page at each end.
    bound: u64,
}

/// Why an expert is being read ahead of its use; the order is the reader
/// threads' priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The router picked it: the layer will fetch it next.
    Routed,
    /// The full expert of one just served from the low-bit copy.
    Upgrade,
    /// Guessed from the recent tokens.
    Ahead,
}

enum Slot {
    /// Being read; `reserved` bytes are counted as cached meanwhile.
    Loading { reserved: u64 },
    Ready {
        /// Owned copies; `None` when the mapping's pages are resident.
        mats: Option<[Arc<Slab>; 3]>,
        bytes: u64,
        /// Read by a prefetch and not fetched since.
        pending: Option<Kind>,
        /// Fetches served from it.
        uses: u32,
    },
}

#[derive(Default)]
struct Counters {
    hits: u64,
    in_flight: u64,
    misses: u64,
    bytes_read: u64,
    evictions: u64,
    prefetch_loaded: u64,
    prefetch_used: u64,
    /// Fetches served from the low-bit copy.
    lowbit: u64,
    /// Of those, fetches that read the copy themselves.
    lowbit_misses: u64,
    /// Bytes read from the low-bit copy (part of `bytes_read`).
    lowbit_bytes_read: u64,
}

impl Counters {
    /// Counts one read of an expert at `precision` laid out as `l`.
    fn count_read(&mut self, precision: Precision, l: &Layout) {
        let bytes = l.per.iter().sum::<usize>() as u64;
        self.bytes_read += bytes;
        if precision == Precision::Low {
            self.lowbit_bytes_read += bytes;
        }
    }
}

struct State {
    slots: HashMap<Entry, Slot>,
    residency: Residency<Entry>,
    /// Bytes of ready and reserved slots.
    cached: u64,
    capacity: u64,
    peak: u64,
    /// Reads for the reader threads, by [`Kind`].
    queue: VecDeque<(Entry, Kind)>,
    /// Routed experts of the current layer not yet queued (the window).
    plan: VecDeque<Key>,
    /// Routed experts of the current layer queued and not yet fetched: at
    /// most the window, so that prefetched experts waiting for their turn
    /// never crowd out the ones in use.
    issued: HashSet<Key>,
    /// The layer whose routed experts are being fetched.
    current: usize,
    /// Full reads behind low-bit serves ([`Kind::Upgrade`]) under way.
    upgrading: usize,
    /// Exponentially decayed routing counts, `[layer][expert]` (for `Ahead`).
    recent: Vec<Vec<f32>>,
    stop: bool,
    c: Counters,
}

impl State {
    /// Frees room for `need` more bytes by evicting ready experts nobody
    /// uses and no routed prefetch is waiting to hand out; the evicted keys
    /// are pushed on `evicted`. Returns whether the room is there.
    fn make_room(&mut self, need: u64, evicted: &mut Vec<Entry>) -> bool {
        while self.cached + need > self.capacity {
            let evictable = self.slots.iter().filter_map(|(k, s)| match s {
                // Routed prefetches of the current layer are about to be used.
                Slot::Ready { mats, pending, .. }
                    if mats.as_ref().is_none_or(unused)
                        && !(*pending == Some(Kind::Routed) && k.0 .0 == self.current) =>
                {
                    Some(*k)
                }
                _ => None,
            });
            let Some(victim) = self.residency.victim(evictable) else {
                return false;
            };
            if let Some(Slot::Ready { bytes, .. }) = self.slots.remove(&victim) {
                self.cached -= bytes;
                self.c.evictions += 1;
                evicted.push(victim);
            }
        }
        true
    }

    /// Marks `key` as being read, reserving `bound` bytes.
    fn reserve(&mut self, key: Entry, bound: u64) {
        self.cached += bound;
        self.peak = self.peak.max(self.cached);
        self.slots.insert(key, Slot::Loading { reserved: bound });
    }

    /// Drops the reservation of `key`.
    fn release(&mut self, key: Entry) {
        if let Some(Slot::Loading { reserved }) = self.slots.remove(&key) {
            self.cached -= reserved;
        }
    }

    /// Replaces the reservation of `key` (`bound` bytes) by the read expert;
    /// a full expert frees its low-bit entry unless that is in use (then it
    /// ages out: fetches prefer the full one).
    fn fill(
        &mut self,
        key: Entry,
        mats: Option<[Arc<Slab>; 3]>,
        bound: u64,
        pending: Option<Kind>,
    ) {
        self.release(key);
        let low = (key.0, Precision::Low);
        if key.1 == Precision::Full
            && matches!(self.slots.get(&low), Some(Slot::Ready { mats: Some(m), .. }) if unused(m))
        {
            if let Some(Slot::Ready { bytes, .. }) = self.slots.remove(&low) {
                self.cached -= bytes;
                self.c.evictions += 1;
            }
        }
        let bytes = match &mats {
            Some(m) => m.iter().map(|m| m.footprint()).sum(),
            None => bound,
        };
        self.cached += bytes;
        self.peak = self.peak.max(self.cached);
        self.residency.admit(key);
        self.slots.insert(
            key,
            Slot::Ready {
                mats,
                bytes,
                pending,
                // Without a prefetch, the fetch that read it uses it.
                uses: u32::from(pending.is_none()),
            },
        );
    }

    /// The matrices of `key` if it is ready (`None` inside: mapped pages)
    /// and how many fetches it served before this one, counting a prefetched
    /// one as used.
    fn ready(&mut self, key: Entry) -> Option<(Option<[Arc<Slab>; 3]>, u32)> {
        match self.slots.get_mut(&key) {
            Some(Slot::Ready {
                mats,
                pending,
                uses,
                ..
            }) => {
                if pending.take().is_some() {
                    self.c.prefetch_used += 1;
                }
                *uses += 1;
                Some((mats.clone(), *uses - 1))
            }
            _ => None,
        }
    }

    fn loading(&self, key: Entry) -> bool {
        matches!(self.slots.get(&key), Some(Slot::Loading { .. }))
    }

    /// Whether `key` is resident or being read at either precision.
    fn present(&self, key: Key) -> bool {
        [Precision::Full, Precision::Low]
            .iter()
            .any(|&p| self.slots.contains_key(&(key, p)))
    }

    /// Queues `entry` for the reader threads unless it is there, being read
    /// or queued; the queue stays in [`Kind`] order (stable within a kind).
    fn enqueue(&mut self, entry: Entry, kind: Kind) {
        if self.slots.contains_key(&entry) || self.queue.iter().any(|(e, _)| *e == entry) {
            return;
        }
        self.queue.push_back((entry, kind));
        self.queue.make_contiguous().sort_by_key(|(_, k)| *k);
    }
}

/// Whether nobody but the cache holds these matrices.
fn unused(m: &[Arc<Slab>; 3]) -> bool {
    Arc::strong_count(&m[0]) == 1
}

/// Where resident experts live.
enum Backing {
    /// Owned copies read from this file.
    Read(ExpertFile),
    /// The mapping of these stacks, paged with `madvise`.
    Mapped(Vec<Option<LayerExperts>>),
}

/// The low-bit copy's file and where its experts are in it.
struct LowCopy {
    file: ExpertFile,
    layers: Vec<Option<Layout>>,
}

struct Shared {
    backing: Backing,
    /// Most [`Kind::Upgrade`] reads at once: half the reader threads.
    max_upgrades: usize,
    /// The low-bit copy, paged like the full experts.
    lowbit: Option<LowCopy>,
    layers: Vec<Option<Layout>>,
    state: Mutex<State>,
    /// A read finished or failed.
    ready: Condvar,
    /// A read was queued, or the store is closing.
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking reader cannot leave the map half-updated (every
        // change is one call); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn layout(&self, (key, precision): Entry) -> Option<&Layout> {
        let layers = match (precision, &self.lowbit) {
            (Precision::Full, _) => &self.layers,
            (Precision::Low, Some(low)) => &low.layers,
            (Precision::Low, None) => return None,
        };
        layers.get(key.0).and_then(Option::as_ref)
    }

    /// The mapped matrices of `key` (madvise backing only).
    fn mapped(&self, key: Key) -> Option<[&[u8]; 3]> {
        let Backing::Mapped(stacks) = &self.backing else {
            return None;
        };
        let s = stacks.get(key.0)?.as_ref()?;
        Some([
            slice(&s.gate, key.1),
            slice(&s.up, key.1),
            slice(&s.down, key.1),
        ])
    }

    /// Makes `entry` resident: reads owned copies of its three matrices, or
    /// pages their mapping in (`None`).
    fn load(&self, entry: Entry) -> Result<Option<[Arc<Slab>; 3]>, ExpertError> {
        let (key @ (layer, expert), precision) = entry;
        let l = self.layout(entry).ok_or(ExpertError::NoLayer { layer })?;
        let err = |e: std::io::Error| ExpertError::Read {
            layer,
            expert,
            why: e.to_string(),
        };
        let from = match (precision, &self.lowbit) {
            (Precision::Low, Some(low)) => Some(&low.file),
            (_, _) => match &self.backing {
                Backing::Read(file) => Some(file),
                Backing::Mapped(_) => None,
            },
        };
        match from {
            Some(file) => {
                let read = |i: usize| {
                    file.read(l.base[i] + (expert * l.per[i]) as u64, l.per[i])
                        .map(Arc::new)
                        .map_err(err)
                };
                Ok(Some([read(0)?, read(1)?, read(2)?]))
            }
            None => {
                for m in self.mapped(key).into_iter().flatten() {
                    madvise::populate(m).map_err(err)?;
                }
                Ok(None)
            }
        }
    }

    /// [`State::make_room`], paging evicted mapped experts out.
    fn make_room(&self, st: &mut State, need: u64) -> bool {
        let mut evicted = Vec::new();
        let ok = st.make_room(need, &mut evicted);
        for (key, _) in evicted {
            for m in self.mapped(key).into_iter().flatten() {
                madvise::page_out(m);
            }
        }
        ok
    }

    /// A reader thread: reads queued experts until the store closes.
    fn reader(&self) {
        let mut st = self.lock();
        loop {
            if st.stop {
                return;
            }
            // Full reads behind low-bit serves take at most half the readers,
            // so that the next layer's routed reads find one free.
            let upgrades_full = st.upgrading >= self.max_upgrades;
            let next = st
                .queue
                .iter()
                .position(|(_, k)| *k != Kind::Upgrade || !upgrades_full);
            let Some((entry, kind)) = next.and_then(|i| st.queue.remove(i)) else {
                st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let Some(l) = self.layout(entry) else {
                continue;
            };
            let full = (entry.0, Precision::Full);
            // Already there or being read (a low-bit copy is moot once the
            // full expert is); or no room without evicting something in use:
            // a prefetch never overshoots the budget.
            if st.slots.contains_key(&entry)
                || (entry.1 == Precision::Low && st.slots.contains_key(&full))
                || !self.make_room(&mut st, l.bound)
            {
                continue;
            }
            st.reserve(entry, l.bound);
            let upgrade = kind == Kind::Upgrade;
            st.upgrading += usize::from(upgrade);
            drop(st);
            let read = self.load(entry);
            st = self.lock();
            st.upgrading -= usize::from(upgrade);
            match read {
                Ok(mats) => {
                    st.c.count_read(entry.1, l);
                    st.c.prefetch_loaded += 1;
                    st.fill(entry, mats, l.bound, Some(kind));
                }
                // The fetch that wants it reads it again and reports the error.
                Err(_) => st.release(entry),
            }
            self.ready.notify_all();
            if upgrade {
                self.work.notify_all();
            }
        }
    }
}

/// The paging store (see the module documentation).
pub struct PagedExperts {
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    usage: Usage,
    opts: ExpertOptions,
    pinned: u64,
    /// Routed experts one token uses per layer (the `Ahead` guess size).
    n_used: usize,
    /// How many routed reads are queued ahead of the fetches.
    window: usize,
}

impl std::fmt::Debug for PagedExperts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedExperts")
            .field("opts", &self.opts)
            .field("pinned", &self.pinned)
            .finish()
    }
}

/// Decay of the recent routing counts per token (`Ahead`): about the last
/// five tokens matter.
const RECENT_DECAY: f32 = 0.8;

impl PagedExperts {
    /// A store over the expert stacks of `file` under `opts.budget`; with
    /// `lowbit` (the sidecar's stacks, from [`super::cold::open`]) the
    /// low-bit copy is paged through the same cache.
    pub fn open(
        file: &ModelFile,
        stacks: Vec<Option<LayerExperts>>,
        n_used: usize,
        opts: &ExpertOptions,
        lowbit: Option<Vec<Option<LayerExperts>>>,
    ) -> Result<PagedExperts, ExpertError> {
        let mapped = opts.io == ExpertIo::Madvise;
        if lowbit.is_some() && mapped {
            return Err(ExpertError::ColdMode {
                mode: ColdExperts::Lowbit,
                why: "pages the low-bit copy with owned reads: it needs --expert-io direct or \
                      buffered",
            });
        }
        let layouts = |stacks: &[Option<LayerExperts>], mapped| {
            stacks
                .iter()
                .enumerate()
                .map(|(layer, s)| s.as_ref().map(|s| layout(layer, s, mapped)).transpose())
                .collect::<Result<Vec<_>, _>>()
        };
        let layers = layouts(&stacks, mapped)?;
        let lowbit = match lowbit {
            Some(copy) => {
                let path = super::cold::sidecar_path(file);
                let file = ExpertFile::open(&path, opts.io == ExpertIo::Direct).map_err(|e| {
                    ExpertError::Cold {
                        path: path.display().to_string(),
                        why: e.to_string(),
                    }
                })?;
                Some(LowCopy {
                    file,
                    layers: layouts(&copy, false)?,
                })
            }
            None => None,
        };
        let expert_bytes: u64 = stacks
            .iter()
            .flatten()
            .map(|s| (s.gate.data().len() + s.up.data().len() + s.down.data().len()) as u64)
            .sum();
        let all: u64 = file.gguf().tensors().iter().map(|t| t.n_bytes).sum();
        let pinned = all.saturating_sub(expert_bytes);
        // A fetch may have to read one expert of either precision.
        let largest = layers
            .iter()
            .chain(lowbit.iter().flat_map(|c| &c.layers))
            .flatten()
            .map(|l| l.bound)
            .max()
            .unwrap_or(0);
        let minimum = pinned + n_used as u64 * largest;
        let budget = opts.budget.unwrap_or(u64::MAX);
        if budget < minimum {
            return Err(ExpertError::BudgetTooSmall {
                budget,
                minimum,
                pinned,
                n_used,
            });
        }
        let capacity = budget - pinned;
        let backing = if mapped {
            Backing::Mapped(stacks.clone())
        } else {
            let path = file.path();
            let ef = ExpertFile::open(path, opts.io == ExpertIo::Direct).map_err(|e| {
                ExpertError::Open {
                    path: path.display().to_string(),
                    why: e.to_string(),
                }
            })?;
            Backing::Read(ef)
        };
        let recent = layers
            .iter()
            .map(|l| vec![0.0; l.as_ref().map_or(0, |l| l.n_expert)])
            .collect();
        let with_lowbit = lowbit.is_some();
        let shared = Arc::new(Shared {
            backing,
            max_upgrades: (opts.readers / 2).max(1),
            lowbit,
            layers,
            state: Mutex::new(State {
                slots: HashMap::new(),
                residency: Residency::new(opts.policy),
                cached: 0,
                capacity,
                peak: 0,
                queue: VecDeque::new(),
                plan: VecDeque::new(),
                issued: HashSet::new(),
                current: 0,
                upgrading: 0,
                recent,
                stop: false,
                c: Counters::default(),
            }),
            ready: Condvar::new(),
            work: Condvar::new(),
        });
        let mut store = PagedExperts {
            shared: shared.clone(),
            readers: Vec::new(),
            usage: Usage::new(&stacks),
            opts: opts.clone(),
            pinned,
            n_used,
            // Half the experts that fit: the other half keeps what is hot.
            window: (capacity / largest.max(1) / 2).max(1) as usize,
        };
        // The low-bit path needs readers for its full reads.
        if opts.prefetch != Prefetch::Off || with_lowbit {
            for i in 0..opts.readers.max(1) {
                let sh = shared.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("expert-reader-{i}"))
                    .spawn(move || sh.reader())
                    .map_err(|e| ExpertError::Threads(e.to_string()))?;
                store.readers.push(handle);
            }
        }
        Ok(store)
    }

    /// What a prefetch of `key` reads: nothing if it is resident or being
    /// read at either precision, else the low-bit copy when there is one
    /// (the full expert follows when the fetch has used it), else the full.
    fn to_read(&self, st: &State, key: Key) -> Option<Entry> {
        if st.present(key) {
            return None;
        }
        match self.shared.lowbit {
            Some(_) => Some((key, Precision::Low)),
            None => Some((key, Precision::Full)),
        }
    }

    /// Queues the next routed experts of the plan, up to the window.
    fn top_up(&self, st: &mut State) {
        while st.issued.len() < self.window {
            let Some(key) = st.plan.pop_front() else {
                break;
            };
            if let Some(entry) = self.to_read(st, key) {
                st.enqueue(entry, Kind::Routed);
                st.issued.insert(key);
            }
        }
    }

    /// Queues the next MoE layer's most used experts of the recent tokens.
    fn guess_ahead(&self, st: &mut State, layer: usize) {
        let n = self.shared.layers.len();
        let Some(next) = (1..=n)
            .map(|d| (layer + d) % n)
            .find(|&l| self.shared.layers[l].is_some())
        else {
            return;
        };
        let row = &st.recent[next];
        let mut ids: Vec<usize> = (0..row.len()).filter(|&e| row[e] > 0.0).collect();
        ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        ids.truncate(self.n_used);
        for e in ids {
            if let Some(entry) = self.to_read(st, (next, e)) {
                st.enqueue(entry, Kind::Ahead);
            }
        }
    }
}

/// The byte ranges of one layer's experts.
fn layout(layer: usize, s: &LayerExperts, mapped: bool) -> Result<Layout, ExpertError> {
    let (n_embd, n_ff, n_expert) = s.dims();
    let stacks = [&s.gate, &s.up, &s.down];
    let mut base = [0u64; 3];
    let mut per = [0usize; 3];
    for (i, w) in stacks.iter().enumerate() {
        base[i] = w.file_offset().ok_or_else(|| ExpertError::Read {
            layer,
            expert: 0,
            why: "the experts are not in a file (a paging store needs a model file)".into(),
        })?;
        per[i] = w.data().len() / n_expert.max(1);
    }
    let bound = per
        .iter()
        .map(|&p| {
            if mapped {
                madvise::footprint(p)
            } else {
                slab::bound(p)
            }
        })
        .sum();
    Ok(Layout {
        n_embd,
        n_ff,
        n_expert,
        types: s.types(),
        base,
        per,
        bound,
    })
}

impl ExpertStore for PagedExperts {
    fn expert(&self, layer: usize, expert: usize) -> Result<Expert<'_>, ExpertError> {
        let key = (layer, expert);
        let full = (key, Precision::Full);
        let low = (key, Precision::Low);
        let sh = &*self.shared;
        let n_expert = sh
            .layout(full)
            .ok_or(ExpertError::NoLayer { layer })?
            .n_expert;
        if expert >= n_expert {
            return Err(ExpertError::NoExpert {
                layer,
                expert,
                n_expert,
            });
        }
        self.usage.count(layer, expert);
        let lowbit = sh.lowbit.is_some();
        let mut st = sh.lock();
        let mut waited = false;
        // Whether the low-bit copy served this expert before (it is hot).
        let mut reused = false;
        let (entry, mats) = loop {
            if let Some((mats, _)) = st.ready(full) {
                if waited {
                    st.c.in_flight += 1;
                } else {
                    st.c.hits += 1;
                }
                break (full, mats);
            }
            if let Some((mats, before)) = st.ready(low) {
                st.c.lowbit += 1;
                reused = before > 0;
                break (low, mats);
            }
            // Being read (a routed prefetch, or the full read of a low-bit
            // copy evicted since): wait rather than read a second copy.
            if st.loading(full) || st.loading(low) {
                waited = true;
                st = sh.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Read it here: the low-bit copy when there is one.
            let entry = if lowbit {
                st.c.lowbit += 1;
                st.c.lowbit_misses += 1;
                low
            } else {
                st.c.misses += 1;
                full
            };
            let l = sh.layout(entry).ok_or(ExpertError::NoLayer { layer })?;
            // A demand read goes ahead even when everything resident is in
            // use (then the cache overshoots by this expert).
            sh.make_room(&mut st, l.bound);
            st.reserve(entry, l.bound);
            drop(st);
            let read = sh.load(entry);
            st = sh.lock();
            match read {
                Ok(mats) => {
                    st.c.count_read(entry.1, l);
                    st.fill(entry, mats.clone(), l.bound, None);
                    sh.ready.notify_all();
                    break (entry, mats);
                }
                Err(e) => {
                    st.release(entry);
                    sh.ready.notify_all();
                    return Err(e);
                }
            }
        };
        st.residency.touch(entry);
        st.issued.remove(&key);
        if entry.1 == Precision::Full {
            // A read still queued for it (the fetch came first) would bring
            // it back after its eviction, unused.
            st.queue.retain(|(e, _)| e.0 != key);
        } else if reused {
            // Only a copy used again is worth its full read: reading the
            // full expert of every miss costs more disk time than the copy
            // saves (BENCHMARKS.md).
            st.enqueue(full, Kind::Upgrade);
            sh.work.notify_one();
        }
        if !st.plan.is_empty() {
            self.top_up(&mut st);
            sh.work.notify_all();
        }
        drop(st);
        let l = sh.layout(entry).ok_or(ExpertError::NoLayer { layer })?;
        let [gate, up, down] = match (mats, sh.mapped(key)) {
            (Some(m), _) => m.map(ExpertBytes::Resident),
            (None, Some(m)) => m.map(ExpertBytes::Borrowed),
            (None, None) => return Err(ExpertError::NoLayer { layer }),
        };
        Ok(Expert {
            n_embd: l.n_embd,
            n_ff: l.n_ff,
            types: l.types,
            gate,
            up,
            down,
        })
    }

    /// One at a time, as the store hands them out: experts held in use cannot be evicted,
    /// so holding more crowds the cache. Measured with `benches/paging_cgroup.sh` (Tiny
    /// Q4_0 under half its size, 64-token prompts): hit rate 53-54% holding one, 50%
    /// holding `n_used`, 41% holding the prefetch window; prompt speed the same way round.
    fn batch_experts(&self) -> usize {
        1
    }

    fn prefetch(&self, layer: usize, experts: &[usize]) {
        if self.opts.prefetch == Prefetch::Off {
            return;
        }
        let mut st = self.shared.lock();
        // Reads queued for earlier layers (guesses, full reads behind low-bit
        // serves, or routed ones the layer read itself) are stale.
        st.queue.clear();
        st.plan.clear();
        st.issued.clear();
        st.current = layer;
        st.plan.extend(experts.iter().map(|&e| (layer, e)));
        self.top_up(&mut st);
        if self.opts.prefetch == Prefetch::Ahead {
            if let Some(row) = st.recent.get_mut(layer) {
                row.iter_mut().for_each(|v| *v *= RECENT_DECAY);
                for &e in experts {
                    if let Some(v) = row.get_mut(e) {
                        *v += 1.0;
                    }
                }
            }
            self.guess_ahead(&mut st, layer);
        }
        drop(st);
        self.shared.work.notify_all();
    }

    fn stats(&self) -> ExpertStats {
        let popularity = self.usage.snapshot();
        let st = self.shared.lock();
        let requests = st.c.hits + st.c.in_flight + st.c.misses + st.c.lowbit;
        ExpertStats {
            store: "paged",
            policy: Some(self.opts.policy.to_string()),
            io: Some(
                match &self.shared.backing {
                    Backing::Read(f) if f.is_direct() => "direct",
                    Backing::Read(_) => "buffered",
                    Backing::Mapped(_) => "madvise",
                }
                .to_string(),
            ),
            prefetch: Some(self.opts.prefetch.to_string()),
            cold_experts: Some(self.opts.cold.to_string()),
            budget_bytes: self.opts.budget,
            pinned_bytes: self.pinned,
            lowbit_served: st.c.lowbit,
            lowbit_misses: st.c.lowbit_misses,
            lowbit_bytes_read: st.c.lowbit_bytes_read,
            cache_capacity_bytes: Some(st.capacity),
            peak_cached_bytes: st.peak,
            requests,
            hits: st.c.hits,
            in_flight: st.c.in_flight,
            misses: st.c.misses,
            hit_rate: ratio(st.c.hits, requests),
            bytes_read: st.c.bytes_read,
            evictions: st.c.evictions,
            prefetch_loaded: st.c.prefetch_loaded,
            prefetch_used: st.c.prefetch_used,
            prefetch_accuracy: ratio(st.c.prefetch_used, st.c.prefetch_loaded),
            popularity,
        }
    }
}

impl Drop for PagedExperts {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        for h in self.readers.drain(..) {
            // A reader that panicked has nothing left to clean up.
            let _ = h.join();
        }
    }
}
