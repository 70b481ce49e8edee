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
//! With the low-bit copy (`--cold-experts lowbit`, [`ResidentCopy`], counted
//! in the budget beside the pinned weights) a fetch never waits: an expert
//! that is not ready (absent, or still being read) is served from the copy,
//! and its full read is queued for the reader threads if it is not already
//! under way; once read, the full expert serves the fetches that find it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use quant::GgmlType;

use super::cold::ResidentCopy;
use super::madvise;
use super::options::{ExpertIo, ExpertOptions, Prefetch};
use super::policy::{Key, Residency};
use super::slab::{ExpertFile, Slab, ALIGN};
use super::stats::{ratio, ExpertStats};
use super::{slice, Expert, ExpertBytes, ExpertError, ExpertStore, LayerExperts, Usage};
use crate::loader::ModelFile;

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

/// Why an expert is being read ahead of its use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The router picked it: the layer will fetch it next.
    Routed,
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
}

struct State {
    slots: HashMap<Key, Slot>,
    residency: Residency,
    /// Bytes of ready and reserved slots.
    cached: u64,
    capacity: u64,
    peak: u64,
    /// Reads for the reader threads, routed first.
    queue: VecDeque<(Key, Kind)>,
    /// Routed experts of the current layer not yet queued (the window).
    plan: VecDeque<Key>,
    /// Routed experts of the current layer queued and not yet fetched: at
    /// most the window, so that prefetched experts waiting for their turn
    /// never crowd out the ones in use.
    issued: HashSet<Key>,
    /// The layer whose routed experts are being fetched.
    current: usize,
    /// Exponentially decayed routing counts, `[layer][expert]` (for `Ahead`).
    recent: Vec<Vec<f32>>,
    stop: bool,
    c: Counters,
}

impl State {
    /// Frees room for `need` more bytes by evicting ready experts nobody
    /// uses and no routed prefetch is waiting to hand out; the evicted keys
    /// are pushed on `evicted`. Returns whether the room is there.
    fn make_room(&mut self, need: u64, evicted: &mut Vec<Key>) -> bool {
        while self.cached + need > self.capacity {
            let evictable = self.slots.iter().filter_map(|(k, s)| match s {
                // Routed prefetches of the current layer are about to be used.
                Slot::Ready { mats, pending, .. }
                    if mats.as_ref().is_none_or(|m| Arc::strong_count(&m[0]) == 1)
                        && !(*pending == Some(Kind::Routed) && k.0 == self.current) =>
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
    fn reserve(&mut self, key: Key, bound: u64) {
        self.cached += bound;
        self.peak = self.peak.max(self.cached);
        self.slots.insert(key, Slot::Loading { reserved: bound });
    }

    /// Drops the reservation of `key`.
    fn release(&mut self, key: Key) {
        if let Some(Slot::Loading { reserved }) = self.slots.remove(&key) {
            self.cached -= reserved;
        }
    }

    /// Replaces the reservation of `key` (`bound` bytes) by the read expert.
    fn fill(&mut self, key: Key, mats: Option<[Arc<Slab>; 3]>, bound: u64, pending: Option<Kind>) {
        self.release(key);
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
            },
        );
    }
}

/// Where resident experts live.
enum Backing {
    /// Owned copies read from this file.
    Read(ExpertFile),
    /// The mapping of these stacks, paged with `madvise`.
    Mapped(Vec<Option<LayerExperts>>),
}

struct Shared {
    backing: Backing,
    /// The low-bit copy that serves fetches the cache cannot serve at once.
    lowbit: Option<ResidentCopy>,
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

    fn layout(&self, key: Key) -> Option<&Layout> {
        self.layers.get(key.0).and_then(Option::as_ref)
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

    /// Makes `key` resident: reads owned copies of its three matrices, or
    /// pages their mapping in (`None`).
    fn load(&self, key: Key) -> Result<Option<[Arc<Slab>; 3]>, ExpertError> {
        let (layer, expert) = key;
        let l = self.layout(key).ok_or(ExpertError::NoLayer { layer })?;
        let err = |e: std::io::Error| ExpertError::Read {
            layer,
            expert,
            why: e.to_string(),
        };
        match &self.backing {
            Backing::Read(file) => {
                let read = |i: usize| {
                    file.read(l.base[i] + (expert * l.per[i]) as u64, l.per[i])
                        .map(Arc::new)
                        .map_err(err)
                };
                Ok(Some([read(0)?, read(1)?, read(2)?]))
            }
            Backing::Mapped(_) => {
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
        for key in evicted {
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
            let Some((key, kind)) = st.queue.pop_front() else {
                st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let Some(l) = self.layout(key) else {
                continue;
            };
            // Already there or being read; or no room without evicting
            // something in use: a prefetch never overshoots the budget.
            if st.slots.contains_key(&key) || !self.make_room(&mut st, l.bound) {
                continue;
            }
            st.reserve(key, l.bound);
            drop(st);
            let read = self.load(key);
            st = self.lock();
            match read {
                Ok(mats) => {
                    st.c.bytes_read += l.per.iter().sum::<usize>() as u64;
                    st.c.prefetch_loaded += 1;
                    st.fill(key, mats, l.bound, Some(kind));
                }
                // The fetch that wants it reads it again and reports the error.
                Err(_) => st.release(key),
            }
            self.ready.notify_all();
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
    /// Bytes of the resident low-bit copy (0 without it).
    cold: u64,
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
    /// A store over the expert stacks of `file` under `opts.budget`, with
    /// the low-bit copy `lowbit` resident inside that budget when given.
    pub fn open(
        file: &ModelFile,
        stacks: Vec<Option<LayerExperts>>,
        n_used: usize,
        opts: &ExpertOptions,
        lowbit: Option<ResidentCopy>,
    ) -> Result<PagedExperts, ExpertError> {
        let mapped = opts.io == ExpertIo::Madvise;
        let layers: Vec<Option<Layout>> = stacks
            .iter()
            .enumerate()
            .map(|(layer, s)| s.as_ref().map(|s| layout(layer, s, mapped)).transpose())
            .collect::<Result<_, _>>()?;
        let expert_bytes: u64 = stacks
            .iter()
            .flatten()
            .map(|s| (s.gate.data().len() + s.up.data().len() + s.down.data().len()) as u64)
            .sum();
        let all: u64 = file.gguf().tensors().iter().map(|t| t.n_bytes).sum();
        let pinned = all.saturating_sub(expert_bytes);
        let largest = layers.iter().flatten().map(|l| l.bound).max().unwrap_or(0);
        let cold = lowbit.as_ref().map_or(0, ResidentCopy::bytes);
        let minimum = pinned + cold + n_used as u64 * largest;
        let budget = opts.budget.unwrap_or(u64::MAX);
        if budget < minimum {
            return Err(ExpertError::BudgetTooSmall {
                budget,
                minimum,
                pinned,
                cold,
                n_used,
            });
        }
        let capacity = budget - pinned - cold;
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
            cold,
            n_used,
            // Half the experts that fit: the other half keeps what is hot.
            window: (capacity / largest.max(1) / 2).max(1) as usize,
        };
        // The low-bit path needs readers for its background reads.
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

    /// Queues the next routed experts of the plan, up to the window.
    fn top_up(&self, st: &mut State) {
        while st.issued.len() < self.window {
            let Some(key) = st.plan.pop_front() else {
                break;
            };
            if !st.slots.contains_key(&key) {
                st.queue.push_back((key, Kind::Routed));
                st.issued.insert(key);
            }
        }
        // Routed reads go before guesses.
        st.queue
            .make_contiguous()
            .sort_by_key(|(_, k)| *k == Kind::Ahead);
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
            if !st.slots.contains_key(&(next, e)) {
                st.queue.push_back(((next, e), Kind::Ahead));
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
                p as u64 + 3 * ALIGN
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
        let l = self
            .shared
            .layout(key)
            .ok_or(ExpertError::NoLayer { layer })?;
        if expert >= l.n_expert {
            return Err(ExpertError::NoExpert {
                layer,
                expert,
                n_expert: l.n_expert,
            });
        }
        self.usage.count(layer, expert);
        let sh = &*self.shared;
        let mut st = sh.lock();
        let mut waited = false;
        let mats = loop {
            let st_ref = &mut *st;
            if sh.lowbit.is_some() && !matches!(st_ref.slots.get(&key), Some(Slot::Ready { .. })) {
                st_ref.c.lowbit += 1;
                let queued = st_ref.queue.iter().any(|(k, _)| *k == key);
                if !st_ref.slots.contains_key(&key) && !queued {
                    st_ref.queue.push_front((key, Kind::Routed));
                    sh.work.notify_one();
                }
                break None;
            }
            match st_ref.slots.get_mut(&key) {
                Some(Slot::Ready { mats, pending, .. }) => {
                    if pending.take().is_some() {
                        st_ref.c.prefetch_used += 1;
                    }
                    if waited {
                        st_ref.c.in_flight += 1;
                    } else {
                        st_ref.c.hits += 1;
                    }
                    break Some(mats.clone());
                }
                Some(Slot::Loading { .. }) => {
                    waited = true;
                    st = sh.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                None => {
                    st_ref.c.misses += 1;
                    // A demand read goes ahead even when everything resident
                    // is in use (then the cache overshoots by this expert).
                    sh.make_room(&mut st, l.bound);
                    st.reserve(key, l.bound);
                    drop(st);
                    let read = sh.load(key);
                    st = sh.lock();
                    match read {
                        Ok(mats) => {
                            st.c.bytes_read += l.per.iter().sum::<usize>() as u64;
                            st.fill(key, mats.clone(), l.bound, None);
                            sh.ready.notify_all();
                            break Some(mats);
                        }
                        Err(e) => {
                            st.release(key);
                            sh.ready.notify_all();
                            return Err(e);
                        }
                    }
                }
            }
        };
        st.residency.touch(key);
        st.issued.remove(&key);
        // A read still queued for it (the fetch came first) would bring it
        // back after its eviction, unused; with the low-bit copy serving this
        // fetch, that read is the point.
        if mats.is_some() {
            st.queue.retain(|(k, _)| *k != key);
        }
        if !st.plan.is_empty() {
            self.top_up(&mut st);
            sh.work.notify_all();
        }
        drop(st);
        let (types, [gate, up, down]) = match (mats, sh.mapped(key), &sh.lowbit) {
            (Some(Some(m)), _, _) => (l.types, m.map(ExpertBytes::Resident)),
            (Some(None), Some(m), _) => (l.types, m.map(ExpertBytes::Borrowed)),
            (None, _, Some(copy)) => {
                let (types, m) = copy
                    .expert(layer, expert)
                    .ok_or(ExpertError::NoLayer { layer })?;
                (types, m.map(ExpertBytes::Borrowed))
            }
            _ => return Err(ExpertError::NoLayer { layer }),
        };
        Ok(Expert {
            n_embd: l.n_embd,
            n_ff: l.n_ff,
            types,
            gate,
            up,
            down,
        })
    }

    fn prefetch(&self, layer: usize, experts: &[usize]) {
        if self.opts.prefetch == Prefetch::Off {
            return;
        }
        let mut st = self.shared.lock();
        // Reads queued for earlier layers (guesses, or routed ones the layer
        // read itself) are stale.
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
            budget_bytes: self.opts.budget,
            pinned_bytes: self.pinned,
            lowbit_bytes: self.cold,
            lowbit_served: st.c.lowbit,
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
