//! How the expert store is chosen and tuned: the memory budget, the cache
//! policy, the read path and the prefetch rule (the CLI's `--mem-budget`,
//! `--expert-cache`, `--expert-io`, `--expert-prefetch`).

/// Which resident expert makes room for a new one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// Least recently used (best measured on both routing regimes: BENCHMARKS.md).
    #[default]
    Lru,
    /// Least frequently used over the whole run (ties: least recent).
    Lfu,
}

/// How a missing expert is read from the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpertIo {
    /// `O_DIRECT` reads: no page-cache copy, so only the cache's own bytes are
    /// charged to the process's memory (falls back to `Buffered` where the
    /// file system refuses direct I/O, e.g. tmpfs).
    #[default]
    Direct,
    /// Ordinary `pread` through the page cache.
    Buffered,
    /// No copies: the experts stay in the file mapping, paged in with
    /// `MADV_POPULATE_READ` and out with `MADV_PAGEOUT` under the same budget.
    Madvise,
}

/// What the store loads before it is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    /// Nothing: every miss is read when the expert is fetched.
    Off,
    /// The experts the router picked, as soon as it has run: reader threads
    /// load them in parallel while the layer waits for the first.
    #[default]
    Routed,
    /// `Routed`, plus the next MoE layer's most used experts of the recent
    /// tokens (an exponentially decayed count), loaded while this layer computes.
    Ahead,
}

/// Whether the low-bit copy of the routed experts (the `cold-<name>` sidecar
/// that `pocketvl convert --cold-experts TYPE` writes) is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColdExperts {
    /// Never: every expert is served at the model file's precision.
    #[default]
    Off,
    /// Under `--mem-budget`: the low-bit copy is paged through the same cache
    /// as the full experts; a fetch whose full expert is not resident is
    /// served from the copy (cached, or read: fewer bytes); a copy served
    /// again has its full expert read in the background, used from then on
    /// while it stays cached. Outputs then depend on read timing (not
    /// bit-reproducible).
    Lowbit,
    /// Every routed expert from the low-bit copy, mapped (no budget): the
    /// quality floor of `Lowbit`, and the smallest way to run the model.
    Only,
}

/// The expert store's configuration. `budget: None` is the plain mmap store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertOptions {
    /// Bytes every resident weight may take: pinned dense/attention weights
    /// plus cached experts.
    pub budget: Option<u64>,
    pub policy: CachePolicy,
    pub io: ExpertIo,
    pub prefetch: Prefetch,
    /// Reader threads of the paging store (I/O, not compute).
    pub readers: usize,
    pub cold: ColdExperts,
    /// Without a budget (the mmap store): read the whole file into memory on a background
    /// thread from load on ([`crate::loader::Preload`]), where it fits.
    pub preload: bool,
}

/// Reader threads by default: enough parallel reads to cover one layer's
/// routed experts on an SSD, few enough to stay off the compute cores.
pub const DEFAULT_READERS: usize = 4;

impl Default for ExpertOptions {
    fn default() -> Self {
        ExpertOptions {
            budget: None,
            policy: CachePolicy::default(),
            io: ExpertIo::default(),
            prefetch: Prefetch::default(),
            readers: DEFAULT_READERS,
            cold: ColdExperts::default(),
            preload: true,
        }
    }
}

names!(CachePolicy, "cache policy", Lru => "lru", Lfu => "lfu");
names!(ExpertIo, "expert I/O mode", Direct => "direct", Buffered => "buffered", Madvise => "madvise");
names!(Prefetch, "prefetch mode", Off => "off", Routed => "routed", Ahead => "ahead");
names!(ColdExperts, "cold-expert mode", Off => "off", Lowbit => "lowbit", Only => "only");

/// Parses a size such as `4GiB`, `512MiB`, `1.5G`, `300MB`, `65536`: binary
/// units for `Ki/Mi/Gi/Ti` (and bare `K/M/G/T`, as `ulimit` and `free`
/// mean them), decimal for `KB/MB/GB/TB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 4GiB, 512MiB, 300MB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => {
            return Err(format!(
                "unknown size unit `{u}` in `{text}` (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("size `{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// `bytes` in the largest binary unit that keeps a leading digit.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn names_round_trip() {
        for p in [CachePolicy::Lru, CachePolicy::Lfu] {
            assert_eq!(p.to_string().parse::<CachePolicy>(), Ok(p));
        }
        for p in [Prefetch::Off, Prefetch::Routed, Prefetch::Ahead] {
            assert_eq!(p.to_string().parse::<Prefetch>(), Ok(p));
        }
        for c in [ColdExperts::Off, ColdExperts::Lowbit, ColdExperts::Only] {
            assert_eq!(c.to_string().parse::<ColdExperts>(), Ok(c));
        }
        assert!("mru"
            .parse::<CachePolicy>()
            .unwrap_err()
            .contains("lru, lfu"));
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(10), "10 B");
    }
}
