//! What the expert store did during a run: `--stats` prints it, `--json`
//! carries it.

use serde::Serialize;

use super::options::human;

/// Counters of one store (the mmap store fills only the request and
/// popularity fields: the kernel does its paging out of sight).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExpertStats {
    /// `mmap` or `paged`.
    pub store: &'static str,
    pub policy: Option<String>,
    pub io: Option<String>,
    pub prefetch: Option<String>,
    pub budget_bytes: Option<u64>,
    /// Dense, attention, embedding and output weights, always resident.
    pub pinned_bytes: u64,
    /// The resident low-bit expert copy (`--cold-experts lowbit`; 0 without).
    pub lowbit_bytes: u64,
    /// Fetches served from the low-bit copy (their full expert was not
    /// resident yet).
    pub lowbit_served: u64,
    /// Budget left for cached experts.
    pub cache_capacity_bytes: Option<u64>,
    pub peak_cached_bytes: u64,
    /// Expert fetches by the model.
    pub requests: u64,
    /// Fetches served from the cache.
    pub hits: u64,
    /// Fetches that found their expert still being read by a prefetch.
    pub in_flight: u64,
    /// Fetches that had to read the expert themselves.
    pub misses: u64,
    /// `hits / requests`.
    pub hit_rate: Option<f64>,
    pub bytes_read: u64,
    pub evictions: u64,
    /// Experts read by prefetch, and how many of them the model then used.
    pub prefetch_loaded: u64,
    pub prefetch_used: u64,
    /// `prefetch_used / prefetch_loaded`.
    pub prefetch_accuracy: Option<f64>,
    /// Fetches per expert, `[layer][expert]` (empty rows: dense layers).
    pub popularity: Vec<Vec<u64>>,
}

/// `a / b`, `None` for an empty denominator.
pub fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

impl ExpertStats {
    /// The `--stats` lines.
    pub fn report(&self) -> String {
        let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
        let mut s = format!("expert store: {}", self.store);
        for (k, v) in [
            ("policy", &self.policy),
            ("io", &self.io),
            ("prefetch", &self.prefetch),
        ] {
            if let Some(v) = v {
                s += &format!(", {k} {v}");
            }
        }
        s += "\n";
        if let (Some(b), Some(c)) = (self.budget_bytes, self.cache_capacity_bytes) {
            let lowbit = if self.lowbit_bytes > 0 {
                format!("{} low-bit expert copy, ", human(self.lowbit_bytes))
            } else {
                String::new()
            };
            s += &format!(
                "budget {}: {} pinned, {lowbit}{} for experts (peak {} cached)\n",
                human(b),
                human(self.pinned_bytes),
                human(c),
                human(self.peak_cached_bytes)
            );
        }
        s += &format!("expert requests {}", self.requests);
        if self.store == "paged" {
            s += &format!(
                ": hits {} ({}), in flight {}, misses {}; read {}, {} evictions; \
                 prefetch {} loaded, {} used (accuracy {})",
                self.hits,
                pct(self.hit_rate),
                self.in_flight,
                self.misses,
                human(self.bytes_read),
                self.evictions,
                self.prefetch_loaded,
                self.prefetch_used,
                pct(self.prefetch_accuracy)
            );
            if self.lowbit_bytes > 0 {
                s += &format!(
                    "; served from the low-bit copy {} ({})",
                    self.lowbit_served,
                    pct(ratio(self.lowbit_served, self.requests))
                );
            }
        }
        s += "\n";
        for (il, row) in self.popularity.iter().enumerate() {
            let total: u64 = row.iter().sum();
            if total == 0 {
                continue;
            }
            let mut ids: Vec<usize> = (0..row.len()).collect();
            ids.sort_by_key(|&e| (std::cmp::Reverse(row[e]), e));
            let used = row.iter().filter(|&&c| c > 0).count();
            let top: Vec<String> = ids
                .iter()
                .take(5)
                .map(|&e| format!("{e} {:.1}%", row[e] as f64 * 100.0 / total as f64))
                .collect();
            // Share of the fetches taken by the most popular eighth of the experts.
            let eighth = row.len().div_ceil(8);
            let top_share: u64 = ids.iter().take(eighth).map(|&e| row[e]).sum();
            s += &format!(
                "layer {il:>2}: {used}/{} experts used, top {eighth} take {:.1}%; most used: {}\n",
                row.len(),
                top_share as f64 * 100.0 / total as f64,
                top.join(", ")
            );
        }
        s
    }
}
