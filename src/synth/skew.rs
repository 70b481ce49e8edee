//! `--router-skew ALPHA`: a synthetic router with Zipf-like expert popularity.
//!
//! Random router weights route nearly uniformly, the worst case for an expert cache; real MoE
//! models do not (a few experts per layer take a large share of the tokens). With skew ALPHA the
//! expert of popularity rank r (1-based) is chosen for a token with probability
//!
//! ```text
//! p_r = min(P_CAP, c · r^-ALPHA),   c such that Σ_r p_r = k (the experts chosen per token)
//! ```
//!
//! — exactly Zipf below a flat head. The head is capped because of what a router can do with
//! the hidden states of a random-weight model: they are symmetric (h and -h equally likely:
//! every layer is odd in its input's sign up to the norms), so an expert chosen for h is not
//! chosen for -h whenever there are at least 2k experts, and no expert can be chosen for more
//! than half of the tokens. `P_CAP` sits just below that limit.
//!
//! How: both routings pick the top k of a monotone function of the logits `w_e · h` (softmax
//! greedy: the softmax; sigmoid `noaux_tc`: sigmoid plus the selection bias, which skew sets
//! to zero so that it does not add a second, unplanned preference), and for a hidden state
//! that is random relative to the router rows, `w_e · h` is Gaussian with a spread
//! proportional to `|w_e|`. So each router row keeps its random direction and gets a norm
//! factor `s_e`: a larger spread wins the top k more often, whatever the scale of `h` (top k
//! does not change when all logits are scaled together). The factors for the target profile
//! are fitted once per (experts, k, ALPHA) by a deterministic Monte-Carlo fixed point
//! ([`fit_scales`]), and assigned to the experts of each layer through a permutation drawn
//! from the layer's router name ([`rank_order`]), so that each layer has its own popular
//! experts as in a trained model.

use super::rng::{name_hash, SplitMix64};

/// Largest target probability of one expert (the symmetry limit is 1/2, see the module docs).
pub const P_CAP: f64 = 0.45;

/// Largest accepted ALPHA (beyond it the profile is the capped head and nothing else).
pub const MAX_ALPHA: f64 = 4.0;

/// Simulated tokens of the fit (its popularity estimates are within about ±0.005).
const FIT_TOKENS: usize = 16_384;
/// Fixed-point iterations of the fit.
const FIT_ITERS: usize = 120;

/// The target probability of each popularity rank (index 0 = rank 1), summing to `k`.
pub fn target_profile(n_experts: usize, k: usize, alpha: f64) -> Vec<f64> {
    let zipf: Vec<f64> = (1..=n_experts).map(|r| (r as f64).powf(-alpha)).collect();
    let total = |c: f64| -> f64 { zipf.iter().map(|z| (c * z).min(P_CAP)).sum() };
    // total(c) increases with c from 0 to n·P_CAP ≥ k: bisect for total(c) = k.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while total(hi) < k as f64 && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if total(mid) < k as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    zipf.iter().map(|z| (hi * z).min(P_CAP)).collect()
}

/// Standard normal values for the fit (Box–Muller: the fit needs real Gaussian tails, which
/// the checkpoint generator's bounded Irwin–Hall values do not have).
fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n + 1);
    let unit = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    while out.len() < n {
        let (u, v) = (unit(rng.next_u64()), unit(rng.next_u64()));
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        out.push(r * t.cos());
        out.push(r * t.sin());
    }
    out.truncate(n);
    out
}

/// How often each expert is in the top `k` of `s_e · z_e` over the fit's simulated tokens.
fn popularity(scales: &[f64], k: usize, z: &[f64]) -> Vec<f64> {
    let n = scales.len();
    let mut count = vec![0usize; n];
    let mut logits: Vec<(f64, usize)> = Vec::with_capacity(n);
    for tok in z.chunks_exact(n) {
        logits.clear();
        logits.extend(
            tok.iter()
                .zip(scales)
                .enumerate()
                .map(|(e, (z, s))| (-s * z, e)),
        );
        logits.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        for &(_, e) in &logits[..k] {
            count[e] += 1;
        }
    }
    let tokens = (z.len() / n).max(1) as f64;
    count.iter().map(|&c| c as f64 / tokens).collect()
}

/// Router row factors (by popularity rank, rms 1) that give [`target_profile`] for hidden
/// states random relative to the rows.
pub fn fit_scales(n_experts: usize, k: usize, alpha: f64) -> Vec<f32> {
    let n = n_experts;
    if n == 0 || k == 0 || k >= n || alpha <= 0.0 {
        return vec![1.0; n];
    }
    let target = target_profile(n, k, alpha);
    let z = normals(FIT_TOKENS * n, 0x5EED_0F5C_A1E5);
    let mut s = vec![1.0f64; n];
    for _ in 0..FIT_ITERS {
        let p = popularity(&s, k, &z);
        for (si, (&t, &pi)) in s.iter_mut().zip(target.iter().zip(&p)) {
            // Spread up where the expert is chosen too rarely, down where too often; damped
            // and clamped, since near the cap popularity hardly moves with the spread.
            *si *= (t / pi.max(1e-9)).clamp(0.5, 2.0).sqrt();
        }
        // Targets fall with rank, so must the spreads (keeps the iteration from oscillating).
        s.sort_by(|a, b| b.total_cmp(a));
        let rms = (s.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
        s.iter_mut().for_each(|x| *x /= rms);
    }
    s.iter().map(|&x| x as f32).collect()
}

/// `order[e]` = the popularity rank (0-based) of expert `e` of the router named `router`:
/// a Fisher–Yates permutation seeded by the name, so layers differ and files are reproducible.
pub fn rank_order(router: &str, n_experts: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_experts).collect();
    let mut rng = SplitMix64::new(name_hash(router) ^ 0x0005_7E3A_u64);
    for i in (1..n_experts).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The factor of each router row (indexed by expert) for layer router `router`.
pub fn router_row_scales(router: &str, by_rank: &[f32]) -> Vec<f32> {
    rank_order(router, by_rank.len())
        .into_iter()
        .map(|r| by_rank[r])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_capped_zipf_summing_to_k() {
        let p = target_profile(64, 6, 1.0);
        assert!((p.iter().sum::<f64>() - 6.0).abs() < 1e-9);
        assert!(p.iter().all(|&x| x <= P_CAP + 1e-12));
        assert!(p.windows(2).all(|w| w[0] >= w[1]));
        // Below the head, exactly c·r^-1: p_r · r is constant.
        assert!((p[20] * 21.0 - p[40] * 41.0).abs() < 1e-9);
        let flat = target_profile(64, 6, 0.0);
        assert!(flat.iter().all(|&x| (x - 6.0 / 64.0).abs() < 1e-9));
    }

    #[test]
    fn fitted_scales_reproduce_the_profile_on_fresh_samples() {
        for alpha in [0.5, 1.0, 1.5] {
            let s: Vec<f64> = fit_scales(64, 6, alpha)
                .into_iter()
                .map(f64::from)
                .collect();
            let fresh = normals(8192 * 64, 99);
            let p = popularity(&s, 6, &fresh);
            let t = target_profile(64, 6, alpha);
            for (r, (a, b)) in p.iter().zip(&t).enumerate() {
                assert!((a - b).abs() < 0.02, "alpha {alpha} rank {r}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn ranks_are_a_permutation_that_differs_by_layer() {
        let a = rank_order("language.model.layers.1.mlp.gate.weight", 64);
        let b = rank_order("language.model.layers.2.mlp.gate.weight", 64);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        assert_ne!(a, b);
    }
}
