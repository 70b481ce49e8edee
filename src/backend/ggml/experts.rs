//! A layer's routed experts on a device: the three `[k, n, n_expert]` stacks uploaded once
//! from the expert store (whatever store serves the CPU path: the mapped file, the paging
//! store, the low-bit copy), and the graph that runs each token's chosen experts through
//! `ggml_mul_mat_id`, the router's weights applied and the experts summed (the router itself
//! stays on the CPU: moe.rs `route_tokens`, so both paths pick the same experts).

use super::graph::{Ops, Resident, Tensor, WeightUpload};
use crate::backend::BackendError;
use crate::model::deepseek_vl2::LanguageModel;

/// One layer's routed-expert stacks on the device.
pub(super) struct ExpertsW {
    /// `[D, F, E]`.
    gate: Tensor,
    /// `[D, F, E]`.
    up: Tensor,
    /// `[F, D, E]`.
    down: Tensor,
}

fn store_err(il: usize, e: impl std::fmt::Display) -> BackendError {
    BackendError::Ggml(format!("layer {il} routed experts: {e}"))
}

/// Bytes of layer `il`'s routed experts (every expert the size of expert 0).
pub(super) fn layer_bytes(lm: &LanguageModel, il: usize) -> Result<u64, BackendError> {
    let ex = lm.experts().expert(il, 0).map_err(|e| store_err(il, e))?;
    let one = ex.gate().data.len() + ex.up().data.len() + ex.down().data.len();
    Ok((one * lm.hp.n_expert) as u64)
}

/// Declares layer `il`'s stacks in `up` (filled by [`fill`] once uploaded).
pub(super) fn declare(
    up: &mut WeightUpload<'_>,
    lm: &LanguageModel,
    il: usize,
) -> Result<ExpertsW, BackendError> {
    let ex = lm.experts().expert(il, 0).map_err(|e| store_err(il, e))?;
    let (d, f, n_expert) = (ex.n_embd, ex.n_ff, lm.hp.n_expert);
    let name = |s: &str| format!("layer {il} {s}");
    Ok(ExpertsW {
        gate: up.stack(&name("ffn_gate_exps"), ex.types[0], [d, f, n_expert])?,
        up: up.stack(&name("ffn_up_exps"), ex.types[1], [d, f, n_expert])?,
        down: up.stack(&name("ffn_down_exps"), ex.types[2], [f, d, n_expert])?,
    })
}

/// Copies every expert of layer `il` from the store into its slot of the stacks `w`
/// (allocated in `weights`); an expert whose size or types differ from expert 0's is an
/// error.
pub(super) fn fill(
    weights: &Resident,
    lm: &LanguageModel,
    il: usize,
    w: &ExpertsW,
) -> Result<(), BackendError> {
    let store = lm.experts();
    let n_expert = lm.hp.n_expert;
    let first = store.expert(il, 0).map_err(|e| store_err(il, e))?.types;
    for e in 0..n_expert {
        let ex = store.expert(il, e).map_err(|err| store_err(il, err))?;
        if ex.types != first {
            return Err(store_err(
                il,
                format!("expert {e} has types {:?}, expert 0 {first:?}", ex.types),
            ));
        }
        for (t, m) in [(w.gate, ex.gate()), (w.up, ex.up()), (w.down, ex.down())] {
            let slot = t.nb()[2];
            if m.data.len() != slot {
                return Err(store_err(
                    il,
                    format!("expert {e}: {} bytes for a slot of {slot}", m.data.len()),
                ));
            }
            weights.write(t, e * slot, m.data)?;
        }
    }
    Ok(())
}

/// `Σ_k w[k, t] expert_{ids[k, t]}(x_t)` for `x` `[D, n]`, `ids` `[K, n]` (i32), `wts`
/// `[1, K, n]`: each expert a SiLU-gated MLP. Returns `[D, n]`.
pub(super) fn routed(o: &Ops<'_>, w: &ExpertsW, x: Tensor, ids: Tensor, wts: Tensor) -> Tensor {
    let [d, n, ..] = x.ne();
    let k_used = ids.ne()[0];
    let x = o.reshape_3d(x, d, 1, n); // one row per token, shared by its K experts
    let gate = o.mul_mat_id(w.gate, x, ids); // [F, K, n]
    let up = o.mul_mat_id(w.up, x, ids); // [F, K, n]
    let hidden = o.mul(o.silu(gate), up);
    let each = o.mul(o.mul_mat_id(w.down, hidden, ids), wts); // [D, K, n]

    // The K weighted rows of each token summed, as views of `each` ([D, n], stride K·D).
    let nb = each.nb();
    let view = |k: i64| o.view_2d(each, d, n, nb[2], k as usize * nb[1]);
    let mut sum = view(0);
    for k in 1..k_used {
        sum = o.add(sum, view(k));
    }
    if k_used == 1 {
        sum = o.cont(sum);
    }
    sum
}
