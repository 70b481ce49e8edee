//! The expert-store flags shared by `pocketvl run`, `pocketvl bench model`
//! ([`ExpertArgs`]: the store and `--stats`) and `pocketvl serve`
//! ([`ExpertStoreArgs`]: the store alone; a server has no end to report at).

use crate::experts::{
    parse_size, CachePolicy, ColdExperts, ExpertIo, ExpertOptions, ExpertStats, Prefetch,
    DEFAULT_READERS,
};

/// Memory budget and expert paging.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpertStoreArgs {
    /// Memory for model weights (e.g. 4GiB, 3500MB): dense and attention weights stay
    /// resident, routed experts are cached within the rest and read on demand. Without it
    /// the whole file is memory-mapped.
    #[arg(long = "mem-budget", value_name = "SIZE", value_parser = parse_size)]
    pub mem_budget: Option<u64>,
    /// Which cached expert is evicted first: lru or lfu.
    #[arg(long = "expert-cache", value_name = "POLICY", default_value_t = CachePolicy::default())]
    pub expert_cache: CachePolicy,
    /// How missing experts are read: direct (O_DIRECT, no page-cache copy) or buffered.
    #[arg(long = "expert-io", value_name = "MODE", default_value_t = ExpertIo::default())]
    pub expert_io: ExpertIo,
    /// What is read before it is needed: off, routed (the router's picks, on reader
    /// threads) or ahead (also the next layer's recently popular experts).
    #[arg(long = "expert-prefetch", value_name = "MODE", default_value_t = Prefetch::default())]
    pub expert_prefetch: Prefetch,
    /// Reader threads of the paging store.
    #[arg(long = "expert-readers", value_name = "N", default_value_t = DEFAULT_READERS)]
    pub expert_readers: usize,
    /// The low-bit copy of the routed experts (cold-<model file name>, written by `pocketvl
    /// convert --cold-experts TYPE`): off; lowbit (with --mem-budget: kept resident within
    /// the budget, serves every fetch whose expert is not resident yet while the full one
    /// is read; outputs then depend on read timing); only (every routed expert from the
    /// low-bit copy, mapped, no budget).
    #[arg(long = "cold-experts", value_name = "MODE", default_value_t = ColdExperts::default())]
    pub cold_experts: ColdExperts,
    /// Do not read the model files into memory in the background as they are opened (by
    /// default, where they fit in free memory, a reader thread brings them in while the
    /// tokenizer loads and the vision tower runs; without it the first passes read them
    /// page by page).
    #[arg(long = "no-preload")]
    pub no_preload: bool,
}

/// The store's flags and `--stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpertArgs {
    #[command(flatten)]
    pub store: ExpertStoreArgs,
    /// Print the expert store's statistics (hit rate, bytes read, prefetch accuracy,
    /// low-bit serves, per-layer expert popularity) on stderr; with --json they are in the
    /// JSON too.
    #[arg(long)]
    pub stats: bool,
}

impl ExpertStoreArgs {
    /// The store configuration the flags ask for.
    pub fn options(&self) -> ExpertOptions {
        ExpertOptions {
            budget: self.mem_budget,
            policy: self.expert_cache,
            io: self.expert_io,
            prefetch: self.expert_prefetch,
            readers: self.expert_readers,
            cold: self.cold_experts,
            preload: !self.no_preload,
        }
    }
}

impl ExpertArgs {
    /// The store configuration the flags ask for.
    pub fn options(&self) -> ExpertOptions {
        self.store.options()
    }

    /// With `--stats`: prints `stats` on stderr and returns them for the JSON.
    pub fn report(&self, stats: ExpertStats) -> Option<ExpertStats> {
        if !self.stats {
            return None;
        }
        eprint!("{}", stats.report());
        Some(stats)
    }
}
