//! DeepSeek MoE: the router, the routed experts and the shared experts.
//!
//! Mirrors `DeepseekV2MoE` / `MoEGate` of the reference
//! (`deepseek_vl2/models/modeling_deepseek.py`), rules in DEEPSEEK-VL2.md
//! §7.7–7.8 and fixtures README rules 14–16: routing in float32 on float32
//! gate logits; `greedy` = top-k of the scores; `noaux_tc` = top-k of
//! score + bias inside the best groups, weights from the unbiased scores.

use quant::GgmlType;
use rayon::prelude::*;

use super::moe_batch::{self, BatchScratch, Job};
use super::moe_token::{self, TokenScratch};
use crate::experts::{Expert, ExpertError, ExpertStore};
use crate::loader::{Gating, TopkMethod, Weight};
use crate::ops::{matmul, matmul_gate_up_silu, softmax, MatView};

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

/// Indices of the `k` largest values into `idx`, largest first; ties go to
/// the lower index (the reference's ties are measure-zero events in float32).
/// The comparator is a total order, so the unstable sort (which, unlike the
/// stable one, needs no buffer) gives the same order.
fn top_k_into(values: &[f32], k: usize, idx: &mut Vec<usize>) {
    idx.clear();
    idx.extend(0..values.len());
    idx.sort_unstable_by(|&a, &b| {
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
}

/// Buffers of [`route`], reused from token to token so routing allocates
/// nothing in decode.
#[derive(Default)]
pub struct RouteScratch {
    scores: Vec<f32>,
    /// Biased scores (`noaux_tc`).
    u: Vec<f32>,
    idx: Vec<usize>,
    group_scores: Vec<f32>,
    keep: Vec<usize>,
}

/// Routes one token: from the gate logits `[n_expert]` (and the selection
/// bias of `noaux_tc`) to the chosen experts and their final weights, in
/// selection order, into `ids` and `weights` (`n_used` each).
pub fn route(
    cfg: &RouterConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    rs: &mut RouteScratch,
    ids: &mut [usize],
    weights: &mut [f32],
) {
    let scores = &mut rs.scores;
    scores.clear();
    scores.extend_from_slice(logits);
    match cfg.gating {
        Gating::Softmax => softmax(scores),
        Gating::Sigmoid => scores
            .iter_mut()
            .for_each(|z| *z = 1.0 / (1.0 + (-*z).exp())),
    }
    match cfg.method {
        TopkMethod::Greedy => top_k_into(scores, cfg.n_used, &mut rs.idx),
        TopkMethod::NoauxTc => {
            // The bias only chooses: u = s + b.
            let u = &mut rs.u;
            u.clear();
            match bias {
                Some(b) => u.extend(scores.iter().zip(b).map(|(s, b)| s + b)),
                None => u.extend_from_slice(scores),
            }
            if cfg.n_group > 1 {
                let gs = cfg.n_expert / cfg.n_group;
                // Group score: sum of the two best biased scores in the group.
                rs.group_scores.clear();
                for g in u.chunks(gs) {
                    top_k_into(g, 2.min(g.len()), &mut rs.idx);
                    rs.group_scores.push(rs.idx.iter().map(|&i| g[i]).sum());
                }
                top_k_into(&rs.group_scores, cfg.n_group_used, &mut rs.keep);
                for (g, chunk) in u.chunks_mut(gs).enumerate() {
                    if !rs.keep.contains(&g) {
                        // The reference masks with 0.0, not -inf (rule 15).
                        chunk.iter_mut().for_each(|v| *v = 0.0);
                    }
                }
            }
            top_k_into(u, cfg.n_used, &mut rs.idx)
        }
    };
    ids.copy_from_slice(&rs.idx);
    weights
        .iter_mut()
        .zip(&rs.idx)
        .for_each(|(w, &i)| *w = scores[i]);
    if cfg.n_used > 1 && cfg.norm {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w = *w / sum * cfg.scale);
    } else {
        weights.iter_mut().for_each(|w| *w *= cfg.scale);
    }
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

    /// `out = mlp(x)` for `x` `[n, D]`, `out` `[n, D]`; `hidden` is scratch.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], hidden: &mut Vec<f32>) {
        hidden.resize(n * self.n_ff(), 0.0);
        matmul_gate_up_silu(&self.gate.view(), &self.up.view(), x, n, hidden);
        matmul(&self.down, hidden, n, out);
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

/// The experts chosen for each token of a batch and their weights, `[n, k]` row-major,
/// borrowed from the scratch [`route_tokens`] filled.
#[derive(Clone, Copy, Debug)]
pub struct Routing<'a> {
    /// Experts per token.
    pub k: usize,
    pub ids: &'a [usize],
    pub weights: &'a [f32],
}

/// Buffers of the MoE layer kept between forward passes (the model owns one
/// set), so that decode allocates no activations.
#[derive(Default)]
pub struct MoeScratch {
    logits: Vec<f32>,
    route: RouteScratch,
    /// The last forward's routing, `[n, n_used]` row-major: the experts
    /// chosen for each token and their weights (for `--trace`).
    pub routed_ids: Vec<usize>,
    pub routed_weights: Vec<f32>,
    /// The experts picked by any token, ascending.
    picked: Vec<usize>,
    /// Per expert: (token, weight) pairs.
    assigned: Vec<Vec<(usize, f32)>>,
    /// The batch path's buffers.
    batch: BatchScratch,
    /// Decode's buffers.
    token: TokenScratch,
    /// The shared experts beside a device: hidden rows and output.
    hidden: Vec<f32>,
    y: Vec<f32>,
}

impl MoeScratch {
    /// The routing of the last [`route_tokens`] (or [`moe_forward`]) call, `k` experts per
    /// token.
    pub fn routing(&self, k: usize) -> Routing<'_> {
        Routing {
            k,
            ids: &self.routed_ids,
            weights: &self.routed_weights,
        }
    }
}

/// `out = Σ_k w_k expert_k(x) + shared(x)` for `x` `[n, D]` (the
/// post-attention-norm output); `shared` is `w.shared`, or `None` when the shared experts
/// run elsewhere (a device adds them after). Tokens are grouped by expert so that each
/// routed expert runs over just the tokens routed to it, all experts in the same
/// parallel regions ([`moe_batch`]); a single token runs every chosen expert and the
/// shared ones together ([`moe_token`]).
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    layer: usize,
    w: &MoeWeights,
    shared: Option<&Mlp>,
    cfg: &RouterConfig,
    store: &dyn ExpertStore,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    sc: &mut MoeScratch,
) -> Result<(), ExpertError> {
    let d = out.len() / n.max(1);
    let e_count = cfg.n_expert;
    route_tokens(w, cfg, x, n, sc);
    sc.assigned.resize(e_count, Vec::new());
    sc.assigned.iter_mut().for_each(Vec::clear);
    for (t, (ids, weights)) in sc
        .routed_ids
        .chunks(cfg.n_used)
        .zip(sc.routed_weights.chunks(cfg.n_used))
        .enumerate()
    {
        for (&e, &wt) in ids.iter().zip(weights) {
            sc.assigned[e].push((t, wt));
        }
    }
    // The picked experts, ascending (the order they are fetched in).
    sc.picked.clear();
    sc.picked
        .extend((0..e_count).filter(|&e| !sc.assigned[e].is_empty()));
    store.prefetch(layer, &sc.picked);
    if n == 1 && cfg.n_used < moe_token::MAX_JOBS {
        // Ascending expert id, shared last: the summation order of the batch
        // path. Fixed arrays, so decode allocates nothing here.
        let mut experts: [Option<(Expert<'_>, usize)>; moe_token::MAX_JOBS] =
            std::array::from_fn(|_| None);
        for (slot, &e) in experts.iter_mut().zip(&sc.picked) {
            *slot = Some((store.expert(layer, e)?, e));
        }
        let empty = MatView {
            ty: GgmlType::F32,
            k: 0,
            n: 0,
            data: &[],
        };
        let mut jobs = [Job {
            gate: empty,
            up: empty,
            down: empty,
            tokens: None,
        }; moe_token::MAX_JOBS];
        let routed = experts.iter().flatten().map(|(ex, e)| Job {
            gate: ex.gate(),
            up: ex.up(),
            down: ex.down(),
            tokens: Some(&sc.assigned[*e]),
        });
        let shared = shared.iter().map(|sh| Job {
            gate: sh.gate.view(),
            up: sh.up.view(),
            down: sh.down.view(),
            tokens: None,
        });
        let mut len = 0;
        for (slot, job) in jobs.iter_mut().zip(routed.chain(shared)) {
            *slot = job;
            len += 1;
        }
        moe_token::run(&jobs[..len], x, out, &mut sc.token);
        return Ok(());
    }
    // Groups of as many experts as the store lets a batch hold, ascending (one group for
    // a mapping); the shared experts run with the last.
    let limit = store.batch_experts().max(1);
    let groups: Vec<&[usize]> = if sc.picked.is_empty() {
        vec![&[]]
    } else {
        sc.picked.chunks(limit).collect()
    };
    for (gi, group) in groups.iter().enumerate() {
        let experts = group
            .iter()
            .map(|&e| store.expert(layer, e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut jobs: Vec<Job<'_>> = experts
            .iter()
            .zip(group.iter())
            .map(|(ex, &e)| Job {
                gate: ex.gate(),
                up: ex.up(),
                down: ex.down(),
                tokens: Some(&sc.assigned[e]),
            })
            .collect();
        if gi + 1 == groups.len() {
            jobs.extend(shared.map(|sh| Job {
                gate: sh.gate.view(),
                up: sh.up.view(),
                down: sh.down.view(),
                tokens: None,
            }));
        }
        moe_batch::run_group(&jobs, x, n, d, gi == 0, &mut sc.batch);
    }
    moe_batch::finish(&sc.batch, n, d, out);
    Ok(())
}

/// The router of one MoE layer for `x` `[n, D]`: each token's experts and weights, into
/// `sc.routed_ids` / `sc.routed_weights` (read them through [`MoeScratch::routing`]).
pub fn route_tokens(w: &MoeWeights, cfg: &RouterConfig, x: &[f32], n: usize, sc: &mut MoeScratch) {
    let e_count = cfg.n_expert;
    sc.logits.resize(n * e_count, 0.0);
    matmul(&w.gate_inp, x, n, &mut sc.logits);
    let k = cfg.n_used;
    sc.routed_ids.resize(n * k, 0);
    sc.routed_weights.resize(n * k, 0.0);
    let bias = w.bias.as_deref();
    if n < ROUTE_SERIAL_TOKENS {
        let tokens = sc.logits.chunks(e_count).zip(
            sc.routed_ids
                .chunks_mut(k)
                .zip(sc.routed_weights.chunks_mut(k)),
        );
        for (logits, (ids, wts)) in tokens {
            route(cfg, logits, bias, &mut sc.route, ids, wts);
        }
    } else {
        sc.logits
            .par_chunks(e_count * ROUTE_SERIAL_TOKENS)
            .zip(
                sc.routed_ids
                    .par_chunks_mut(k * ROUTE_SERIAL_TOKENS)
                    .zip(sc.routed_weights.par_chunks_mut(k * ROUTE_SERIAL_TOKENS)),
            )
            .for_each(|(logits, (ids, wts))| {
                let mut rs = RouteScratch::default();
                for (logits, (ids, wts)) in logits
                    .chunks(e_count)
                    .zip(ids.chunks_mut(k).zip(wts.chunks_mut(k)))
                {
                    route(cfg, logits, bias, &mut rs, ids, wts);
                }
            });
    }
}

/// Tokens routed on the calling thread: a batch of more is routed in tasks of this many
/// (a token's routing is ~1 µs: a softmax and a sort of the expert scores).
const ROUTE_SERIAL_TOKENS: usize = 32;

/// `out += shared(x)` for `x` `[n, D]`: the shared experts, added after the routed ones.
pub fn add_shared(sh: &Mlp, x: &[f32], n: usize, out: &mut [f32], sc: &mut MoeScratch) {
    sc.y.resize(out.len(), 0.0);
    sh.forward(x, n, &mut sc.y, &mut sc.hidden);
    out.iter_mut().zip(&sc.y).for_each(|(o, s)| *o += s);
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

    /// [`route`] of one token into fresh vectors.
    fn route1(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<usize>, Vec<f32>) {
        let (mut ids, mut w) = (vec![0; cfg.n_used], vec![0.0; cfg.n_used]);
        route(
            cfg,
            logits,
            bias,
            &mut RouteScratch::default(),
            &mut ids,
            &mut w,
        );
        (ids, w)
    }

    #[test]
    fn greedy_softmax_weights_are_raw_probabilities() {
        let logits = [0.1f32, 2.0, -1.0, 1.5, 0.0, 0.3, -0.2, 1.9];
        let c = RouterConfig {
            scale: 1.5,
            ..cfg(Gating::Softmax, TopkMethod::Greedy)
        };
        let (ids, w) = route1(&c, &logits, None);
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
        let (ids, _) = route1(&cfg(Gating::Softmax, TopkMethod::Greedy), &logits, None);
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
        let (ids, w) = route1(&c, &logits, Some(&bias));
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
        let (ids, w) = route1(&c, &logits, Some(&[0.0; 8]));
        // Kept groups: 2 (1.25) and 1 (1.2); group 0 (0.96) is masked.
        assert_eq!(ids, vec![4, 2, 3]);
        for (i, &e) in ids.iter().enumerate() {
            assert!((w[i] - probs[e]).abs() < 1e-5);
        }
        // With negative biases every kept expert scores below 0.0, so a
        // masked expert (set to 0.0, not -inf) is chosen, as in the reference.
        let bias = [-2.0f32; 8];
        let (ids, _) = route1(&c, &logits, Some(&bias));
        assert_eq!(ids, vec![0, 1, 6]);
    }

    /// One MoE layer of `d` model width: 8 experts of width `f` (3 used) in `routed`
    /// type (their up matrices in `routed_up`), shared experts of width `2f` in `shared_ty`, a softmax router; and `n`
    /// tokens of input.
    struct Layer {
        store: crate::experts::MmapExperts,
        shared: Mlp,
        weights: MoeWeights,
        cfg: RouterConfig,
        x: Vec<f32>,
    }

    fn layer(
        routed: GgmlType,
        routed_up: GgmlType,
        shared_ty: GgmlType,
        d: usize,
        f: usize,
        n: usize,
    ) -> Layer {
        use crate::experts::{LayerExperts, MmapExperts};
        let e = 8usize;
        let vals = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((((i + seed * 131) * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.4)
                .collect()
        };
        let (du, fu, eu) = (d as u64, f as u64, e as u64);
        let w = |ty, ne: &[u64], seed| {
            let v = vals(seed, ne.iter().product::<u64>() as usize);
            if ty == GgmlType::F32 {
                Weight::from_f32(ne, &v)
            } else {
                Weight::quantized(ty, ne, &v)
            }
        };
        let store = MmapExperts::new(vec![Some(LayerExperts {
            gate: w(routed, &[du, fu, eu], 1),
            up: w(routed_up, &[du, fu, eu], 2),
            down: w(routed, &[fu, du, eu], 3),
        })]);
        let shared = Mlp {
            gate: w(shared_ty, &[du, 2 * fu], 5),
            up: w(shared_ty, &[du, 2 * fu], 6),
            down: w(shared_ty, &[2 * fu, du], 7),
        };
        let weights = MoeWeights {
            gate_inp: Weight::from_f32(&[du, eu], &vals(4, d * e)),
            bias: None,
            shared: Some(shared.clone()),
        };
        let cfg = RouterConfig {
            n_used: 3,
            ..cfg(Gating::Softmax, TopkMethod::Greedy)
        };
        Layer {
            store,
            shared,
            weights,
            cfg,
            x: vals(8, n * d),
        }
    }

    /// Runs two tokens through the batch path and each alone through the
    /// one-token path (under pools of each of `threads` workers) and asserts
    /// the same experts and the same bits (see [`layer`] for the shapes).
    fn one_token_equals_batch(
        routed: GgmlType,
        shared_ty: GgmlType,
        d: usize,
        f: usize,
        threads: &[usize],
    ) {
        let Layer {
            store,
            shared,
            weights,
            cfg: c,
            x,
        } = layer(routed, routed, shared_ty, d, f, 2);
        let mut sc = MoeScratch::default();
        let mut batch = vec![0.0f32; 2 * d];
        let sh = Some(&shared);
        moe_forward(0, &weights, sh, &c, &store, &x, 2, &mut batch, &mut sc).unwrap();
        let batch_ids = sc.routed_ids.clone();
        for &n in threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            for t in 0..2 {
                let mut one = vec![0.0f32; d];
                let xt = &x[t * d..][..d];
                pool.install(|| moe_forward(0, &weights, sh, &c, &store, xt, 1, &mut one, &mut sc))
                    .unwrap();
                assert_eq!(sc.routed_ids, batch_ids[t * 3..][..3]);
                assert_eq!(one, batch[t * d..][..d], "{n} threads, token {t}");
            }
        }
    }

    /// A batch routed in parallel tasks picks, per token, the experts and weights that
    /// token routed alone gets (`noaux_tc` with groups and a bias: every step of `route`).
    #[test]
    fn batch_routing_equals_each_token_alone() {
        let (d, e, n) = (16usize, 8usize, 3 * ROUTE_SERIAL_TOKENS + 5);
        let c = RouterConfig {
            n_group: 4,
            n_group_used: 2,
            n_used: 3,
            ..cfg(Gating::Sigmoid, TopkMethod::NoauxTc)
        };
        let bias = crate::ops::lcg(5, e, 0.1);
        let w = MoeWeights {
            gate_inp: Weight::from_f32(&[d as u64, e as u64], &crate::ops::lcg(6, d * e, 1.0)),
            bias: Some(bias.clone()),
            shared: None,
        };
        let x = crate::ops::lcg(7, n * d, 1.0);
        let mut sc = MoeScratch::default();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| route_tokens(&w, &c, &x, n, &mut sc));
        for t in 0..n {
            let logits = &sc.logits[t * e..][..e];
            let (ids, wts) = route1(&c, logits, Some(&bias));
            assert_eq!(sc.routed_ids[t * 3..][..3], ids[..], "token {t}");
            assert_eq!(sc.routed_weights[t * 3..][..3], wts[..], "token {t}");
        }
    }

    /// A store that lets a batch hold at most `limit` experts (a paging store's window).
    struct Windowed<'a>(&'a dyn ExpertStore, usize);

    impl ExpertStore for Windowed<'_> {
        fn expert(&self, layer: usize, expert: usize) -> Result<Expert<'_>, ExpertError> {
            self.0.expert(layer, expert)
        }
        fn batch_experts(&self) -> usize {
            self.1
        }
        fn stats(&self) -> crate::experts::ExpertStats {
            self.0.stats()
        }
    }

    /// The layer as separate matmuls per routed expert over its tokens, summed in
    /// ascending expert order, then the shared experts: the definition the batch path
    /// keeps the bits of.
    fn per_expert_matmuls(l: &Layer, n: usize, d: usize) -> Vec<f32> {
        use crate::ops::matmul_view;
        let mut sc = MoeScratch::default();
        route_tokens(&l.weights, &l.cfg, &l.x, n, &mut sc);
        let k = l.cfg.n_used;
        let mut out = vec![0.0f32; n * d];
        for e in 0..l.cfg.n_expert {
            let toks: Vec<(usize, f32)> = (0..n)
                .flat_map(|t| (0..k).map(move |i| (t, t * k + i)))
                .filter(|&(_, i)| sc.routed_ids[i] == e)
                .map(|(t, i)| (t, sc.routed_weights[i]))
                .collect();
            if toks.is_empty() {
                continue;
            }
            let ex = l.store.expert(0, e).unwrap();
            let m = toks.len();
            let xs: Vec<f32> = toks
                .iter()
                .flat_map(|&(t, _)| l.x[t * d..][..d].iter().copied())
                .collect();
            let mut h = vec![0.0f32; m * ex.n_ff];
            matmul_gate_up_silu(&ex.gate(), &ex.up(), &xs, m, &mut h);
            let mut y = vec![0.0f32; m * d];
            matmul_view(&ex.down(), &h, m, &mut y);
            for (&(t, wt), y) in toks.iter().zip(y.chunks(d)) {
                let o = &mut out[t * d..][..d];
                o.iter_mut().zip(y).for_each(|(o, v)| *o += wt * v);
            }
        }
        let mut y = vec![0.0f32; n * d];
        l.shared.forward(&l.x, n, &mut y, &mut Vec::new());
        out.iter_mut().zip(&y).for_each(|(o, s)| *o += s);
        out
    }

    /// The batch path (every expert in shared parallel regions, in groups of a store's
    /// window, its gate/up tasks cut otherwise than each expert's matmul would cut its
    /// rows) gives the per-expert matmuls' bits: for 1 to 3 workers, one group or
    /// groups of 1 and 3 experts, 9 tokens (experts with one token and with many), the
    /// q4_0 recipe's mix (routed Q4_0, shared Q8_0), and K-quant routed experts (their
    /// activations in Q8_K's 256-wide blocks) beside Q8_0 shared ones, and a gate and up
    /// pairing with different activation formats (Q4_0 with Q8_0, Q4_K with Q8_K).
    #[test]
    fn batch_path_equals_per_expert_matmuls() {
        let n = 9;
        for (routed, routed_up, shared_ty, d, f) in [
            (GgmlType::Q4_0, GgmlType::Q4_0, GgmlType::Q8_0, 64, 96),
            (GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q8_0, 256, 256),
            (GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q8_0, 256, 256),
            (GgmlType::F32, GgmlType::F32, GgmlType::F32, 32, 48),
        ] {
            let l = layer(routed, routed_up, shared_ty, d, f, n);
            let want = per_expert_matmuls(&l, n, d);
            for threads in [1usize, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for limit in [usize::MAX, 1, 3] {
                    let store = Windowed(&l.store, limit);
                    let mut sc = MoeScratch::default();
                    let mut got = vec![f32::NAN; n * d];
                    let sh = Some(&l.shared);
                    // A pass over other tokens first: nothing of it may leak into the next.
                    let other: Vec<f32> = l.x.iter().rev().copied().collect();
                    pool.install(|| {
                        let (w, c) = (&l.weights, &l.cfg);
                        moe_forward(0, w, sh, c, &store, &other, n, &mut got, &mut sc)?;
                        moe_forward(0, w, sh, c, &store, &l.x, n, &mut got, &mut sc)
                    })
                    .unwrap();
                    let ty = routed.name();
                    assert_eq!(got, want, "{ty}: {threads} threads, {limit} experts held");
                }
            }
        }
    }

    /// The one-token path (all experts in two parallel regions) gives the
    /// same bits as the batch path (grouped per expert) for the same token.
    #[test]
    fn one_token_path_equals_batch_path() {
        one_token_equals_batch(GgmlType::F32, GgmlType::F32, 32, 48, &[2]);
    }

    /// Routed Q4_0 and shared Q8_0 experts (the q4_0 recipe's mix): the gate/up
    /// ranges carry equal bytes, not equal rows, and the one-token path still
    /// gives the batch path's bits for any number of ranges (1 to 13 workers:
    /// 2 to 26 ranges over the 3 x 96 + 192 hidden rows).
    #[test]
    fn one_token_path_with_mixed_types_equals_batch_path() {
        one_token_equals_batch(GgmlType::Q4_0, GgmlType::Q8_0, 64, 96, &[1, 2, 3, 5, 13]);
    }
}
