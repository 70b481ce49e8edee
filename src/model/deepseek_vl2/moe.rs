//! DeepSeek MoE: the router, the routed experts and the shared experts.
//!
//! Mirrors `DeepseekV2MoE` / `MoEGate` of the reference
//! (`deepseek_vl2/models/modeling_deepseek.py`), rules in DEEPSEEK-VL2.md
//! §7.7–7.8 and fixtures README rules 14–16: routing in float32 on float32
//! gate logits; `greedy` = top-k of the scores; `noaux_tc` = top-k of
//! score + bias inside the best groups, weights from the unbiased scores.

use crate::experts::{ExpertError, ExpertStore};
use crate::loader::{Gating, TopkMethod, Weight};
use crate::ops::{matmul, matmul_view, silu_mul, softmax};

/// The routing rule of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    pub n_expert: usize,
    pub n_used: usize,
    pub gating: Gating,
    pub method: TopkMethod,
    pub n_group: usize,
    pub n_group_used: usize,
    /// `norm_topk_prob`: divide the chosen weights by their sum.
    pub norm: bool,
    /// `routed_scaling_factor`.
    pub scale: f32,
}

/// Indices of the `k` largest values, largest first; ties go to the lower
/// index (the reference's ties are measure-zero events in float32).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| {
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// Routes one token: from the gate logits `[n_expert]` (and the selection
/// bias of `noaux_tc`) to the chosen experts and their final weights, in
/// selection order.
pub fn route(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<usize>, Vec<f32>) {
    let mut scores = logits.to_vec();
    match cfg.gating {
        Gating::Softmax => softmax(&mut scores),
        Gating::Sigmoid => scores
            .iter_mut()
            .for_each(|z| *z = 1.0 / (1.0 + (-*z).exp())),
    }
    let ids = match cfg.method {
        TopkMethod::Greedy => top_k(&scores, cfg.n_used),
        TopkMethod::NoauxTc => {
            // The bias only chooses: u = s + b.
            let mut u: Vec<f32> = match bias {
                Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            if cfg.n_group > 1 {
                let gs = cfg.n_expert / cfg.n_group;
                // Group score: sum of the two best biased scores in the group.
                let group_scores: Vec<f32> = u
                    .chunks(gs)
                    .map(|g| top_k(g, 2.min(g.len())).iter().map(|&i| g[i]).sum())
                    .collect();
                let keep = top_k(&group_scores, cfg.n_group_used);
                for (g, chunk) in u.chunks_mut(gs).enumerate() {
                    if !keep.contains(&g) {
                        // The reference masks with 0.0, not -inf (rule 15).
                        chunk.iter_mut().for_each(|v| *v = 0.0);
                    }
                }
            }
            top_k(&u, cfg.n_used)
        }
    };
    let mut weights: Vec<f32> = ids.iter().map(|&i| scores[i]).collect();
    if cfg.n_used > 1 && cfg.norm {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w = *w / sum * cfg.scale);
    } else {
        weights.iter_mut().for_each(|w| *w *= cfg.scale);
    }
    (ids, weights)
}

/// A SiLU-gated MLP `down(silu(gate(x)) * up(x))` (dense layers and the
/// shared experts).
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

impl Mlp {
    /// Width of the hidden layer.
    pub fn n_ff(&self) -> usize {
        self.gate.view().n
    }

    /// `out = mlp(x)` for `x` `[n, D]`, `out` `[n, D]`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let f = self.n_ff();
        let mut g = vec![0.0f32; n * f];
        let mut u = vec![0.0f32; n * f];
        matmul(&self.gate, x, n, &mut g);
        matmul(&self.up, x, n, &mut u);
        silu_mul(&mut g, &u);
        matmul(&self.down, &g, n, out);
    }
}

/// Weights of one MoE layer (the routed experts live in the expert store).
#[derive(Clone, Debug)]
pub struct MoeWeights {
    /// Router `[D, E]`, F32.
    pub gate_inp: Weight,
    /// `noaux_tc` selection bias `[E]`.
    pub bias: Option<Vec<f32>>,
    pub shared: Option<Mlp>,
}

/// The experts chosen for each token of a batch: `ids[t]`, `weights[t]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    pub ids: Vec<Vec<usize>>,
    pub weights: Vec<Vec<f32>>,
}

/// `out = Σ_k w_k expert_k(x) + shared(x)` for `x` `[n, D]` (the
/// post-attention-norm output). Tokens are grouped by expert so that each
/// routed expert runs one matmul over just the tokens routed to it.
pub fn moe_forward(
    layer: usize,
    w: &MoeWeights,
    cfg: &RouterConfig,
    store: &dyn ExpertStore,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<Routing, ExpertError> {
    let d = out.len() / n.max(1);
    let e_count = cfg.n_expert;
    let mut logits = vec![0.0f32; n * e_count];
    matmul(&w.gate_inp, x, n, &mut logits);
    let mut routing = Routing::default();
    // Per expert: (token, weight) pairs.
    let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e_count];
    for t in 0..n {
        let (ids, weights) = route(cfg, &logits[t * e_count..][..e_count], w.bias.as_deref());
        for (&e, &wt) in ids.iter().zip(&weights) {
            assigned[e].push((t, wt));
        }
        routing.ids.push(ids);
        routing.weights.push(weights);
    }
    out.iter_mut().for_each(|v| *v = 0.0);
    let mut xs = Vec::new();
    let mut g = Vec::new();
    let mut u = Vec::new();
    let mut y = Vec::new();
    for (e, toks) in assigned.iter().enumerate() {
        if toks.is_empty() {
            continue;
        }
        let expert = store.expert(layer, e)?;
        let (m, f) = (toks.len(), expert.n_ff);
        xs.clear();
        for &(t, _) in toks {
            xs.extend_from_slice(&x[t * d..][..d]);
        }
        g.resize(m * f, 0.0);
        u.resize(m * f, 0.0);
        y.resize(m * d, 0.0);
        matmul_view(&expert.gate(), &xs, m, &mut g);
        matmul_view(&expert.up(), &xs, m, &mut u);
        silu_mul(&mut g, &u);
        matmul_view(&expert.down(), &g, m, &mut y);
        for (j, &(t, wt)) in toks.iter().enumerate() {
            let o = &mut out[t * d..][..d];
            for (o, v) in o.iter_mut().zip(&y[j * d..][..d]) {
                *o += wt * v;
            }
        }
    }
    if let Some(sh) = &w.shared {
        let mut s = vec![0.0f32; n * d];
        sh.forward(x, n, &mut s);
        out.iter_mut().zip(&s).for_each(|(o, s)| *o += s);
    }
    Ok(routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gating: Gating, method: TopkMethod) -> RouterConfig {
        RouterConfig {
            n_expert: 8,
            n_used: 2,
            gating,
            method,
            n_group: 1,
            n_group_used: 1,
            norm: false,
            scale: 1.0,
        }
    }

    #[test]
    fn greedy_softmax_weights_are_raw_probabilities() {
        let logits = [0.1f32, 2.0, -1.0, 1.5, 0.0, 0.3, -0.2, 1.9];
        let c = RouterConfig {
            scale: 1.5,
            ..cfg(Gating::Softmax, TopkMethod::Greedy)
        };
        let (ids, w) = route(&c, &logits, None);
        assert_eq!(ids, vec![1, 7]);
        let z: f64 = logits.iter().map(|v| (*v as f64).exp()).sum();
        assert!((w[0] as f64 - 1.5 * (2.0f64).exp() / z).abs() < 1e-6);
        assert!((w[1] as f64 - 1.5 * (1.9f64).exp() / z).abs() < 1e-6);
        assert!(
            w.iter().sum::<f32>() < 1.5,
            "no renormalisation without norm_topk_prob"
        );
    }

    #[test]
    fn ties_choose_the_lower_index() {
        let logits = [1.0f32, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0];
        let (ids, _) = route(&cfg(Gating::Softmax, TopkMethod::Greedy), &logits, None);
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn bias_changes_the_choice_but_not_the_weight() {
        let logits = [0.5f32, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2];
        let mut bias = [0.0f32; 8];
        bias[6] = 1.0; // expert 6 wins selection despite a low score
        let c = RouterConfig {
            norm: true,
            scale: 2.0,
            ..cfg(Gating::Sigmoid, TopkMethod::NoauxTc)
        };
        let (ids, w) = route(&c, &logits, Some(&bias));
        assert_eq!(ids, vec![6, 0]);
        let sig = |z: f32| 1.0 / (1.0 + (-z).exp());
        let (s6, s0) = (sig(-0.1), sig(0.5));
        assert!((w[0] - s6 / (s6 + s0) * 2.0).abs() < 1e-6);
        assert!((w[1] - s0 / (s6 + s0) * 2.0).abs() < 1e-6);
        assert!((w.iter().sum::<f32>() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn groups_keep_the_best_two_sums_and_mask_others_with_zero() {
        // 4 groups of 2. Group sums of biased scores decide; group 0 has the
        // single best expert but the worst pair.
        let sig_inv = |p: f32| (p / (1.0 - p)).ln();
        let probs = [0.95f32, 0.01, 0.6, 0.6, 0.7, 0.55, 0.3, 0.3];
        let logits: Vec<f32> = probs.iter().map(|&p| sig_inv(p)).collect();
        let c = RouterConfig {
            n_group: 4,
            n_group_used: 2,
            n_used: 3,
            ..cfg(Gating::Sigmoid, TopkMethod::NoauxTc)
        };
        let (ids, w) = route(&c, &logits, Some(&[0.0; 8]));
        // Kept groups: 2 (1.25) and 1 (1.2); group 0 (0.96) is masked.
        assert_eq!(ids, vec![4, 2, 3]);
        for (i, &e) in ids.iter().enumerate() {
            assert!((w[i] - probs[e]).abs() < 1e-5);
        }
        // With negative biases every kept expert scores below 0.0, so a
        // masked expert (set to 0.0, not -inf) is chosen, as in the reference.
        let bias = [-2.0f32; 8];
        let (ids, _) = route(&c, &logits, Some(&bias));
        assert_eq!(ids, vec![0, 1, 6]);
    }
}
