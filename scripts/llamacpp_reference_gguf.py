#!/usr/bin/env python3
"""Write a llama.cpp-style GGUF of a fixture's language model with the Python `gguf` package.

Why: an independent baseline for the interop check. Every key and tensor name comes from
gguf-py's own constants and helpers (what llama.cpp's convert_hf_to_gguf.py would use), so if
llama.cpp loads this file and gets logits X, then (a) pocketvl's converter output can be
compared with it key by key and tensor by tensor, and (b) the distance between X and the golden
logits is llama.cpp's own numerical/semantic distance from the reference, not a converter bug.

Follows docs/DEEPSEEK-VL2.md §9.7-9.8: `deepseek` arch with q/k rows permuted for
NORM rope (MHA fixture), `deepseek2` with q-LoRA, kv_a_mqa, attn_k_b/attn_v_b split and sigmoid
noaux_tc routing (MLA fixture). All tensors are written as float32 (bf16 widened exactly).

Usage: llamacpp_reference_gguf.py HF_DIR OUT.gguf
Needs numpy and gguf.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

# Tokens the DeepSeek-VL2 processor appends when missing, in its order (fixtures README §3).
PROCESSOR_TOKENS = ["<｜▁pad▁｜>", "<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>",
                    "<|grounding|>", "<|User|>", "<|Assistant|>"]


def load_safetensors(hf_dir: Path) -> dict:
    """Reads every tensor of every shard as float32 numpy (bf16/f16/f32 supported)."""
    out = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        data = path.read_bytes()
        (hlen,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + hlen])
        base = 8 + hlen
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            raw = data[base + a:base + b]
            shape = info["shape"]
            if info["dtype"] == "BF16":
                u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = u.view(np.float32)
            elif info["dtype"] == "F16":
                arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
            elif info["dtype"] == "F32":
                arr = np.frombuffer(raw, dtype="<f4").copy()
            else:
                raise SystemExit(f"unsupported dtype {info['dtype']} for {name}")
            out[name] = arr.reshape(shape)
    return out


def tn(kind: gguf.MODEL_TENSOR, suffix: str = "weight", bid=None) -> str:
    name = gguf.TENSOR_NAMES[kind]
    if bid is not None:
        name = name.format(bid=bid)
    return f"{name}.{suffix}"


def permute_norm_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split rope rows -> ggml NORM (adjacent pairs): new 2i = old i, new 2i+1 = old i+d/2."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tokenizer(w: gguf.GGUFWriter, hf_dir: Path, vocab_size: int, cfg: dict) -> None:
    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    id_to_tok = {i: t for t, i in tok["model"]["vocab"].items()}
    special = {}
    for added in tok.get("added_tokens", []):
        id_to_tok[added["id"]] = added["content"]
        special[added["id"]] = bool(added.get("special", False))
    known = set(id_to_tok.values())
    next_id = max(id_to_tok) + 1
    for t in PROCESSOR_TOKENS:
        if t not in known:
            id_to_tok[next_id] = t
            special[next_id] = True
            known.add(t)
            next_id += 1
    tokens, types = [], []
    for i in range(vocab_size):
        t = id_to_tok.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if special.get(i) else gguf.TokenType.NORMAL)
    merges = tok["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("deepseek-v3")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(int(cfg.get("bos_token_id", 0)))
    w.add_eos_token_id(int(cfg.get("eos_token_id", 1)))
    pad = tokens.index("<｜▁pad▁｜>") if "<｜▁pad▁｜>" in tokens else 2
    w.add_pad_token_id(pad)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    hf_dir, out = Path(sys.argv[1]), sys.argv[2]
    cfg = json.loads((hf_dir / "config.json").read_text())["language_config"]
    t = load_safetensors(hf_dir)
    T = gguf.MODEL_TENSOR

    use_mla = cfg.get("use_mla", True)
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    L = cfg["num_hidden_layers"]
    V = cfg.get("vocab_size", 102400)
    E = cfg["n_routed_experts"]
    F = cfg["moe_intermediate_size"]
    dense = cfg.get("first_k_dense_replace", 0)
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)

    arch = gguf.MODEL_ARCH.DEEPSEEK2 if use_mla else gguf.MODEL_ARCH.DEEPSEEK
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(hf_dir.parent.name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(V)
    w.add_expert_count(E)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_shared_count(cfg["n_shared_experts"])
    w.add_leading_dense_block_count(dense)
    w.add_expert_feed_forward_length(F)
    w.add_expert_weights_scale(float(cfg.get("routed_scaling_factor", 1.0)))

    if use_mla:
        r_kv = cfg.get("kv_lora_rank", 512)
        nope = cfg.get("qk_nope_head_dim", 128)
        rope = cfg.get("qk_rope_head_dim", 64)
        vdim = cfg.get("v_head_dim", 128)
        r_q = cfg.get("q_lora_rank")
        w.add_head_count_kv(1)
        w.add_rope_dimension_count(rope)
        w.add_q_lora_rank(int(r_q or 0))
        w.add_kv_lora_rank(r_kv)
        w.add_key_length(r_kv + rope)
        w.add_value_length(r_kv)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(vdim)
        w.add_expert_weights_norm(bool(cfg.get("norm_topk_prob", False)))
        sigmoid = cfg.get("scoring_func", "softmax") == "sigmoid"
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if sigmoid
                                 else gguf.ExpertGatingFuncType.SOFTMAX)
        if cfg.get("topk_method") == "noaux_tc" and cfg.get("n_group", 1) > 1:
            w.add_expert_group_count(cfg["n_group"])
            w.add_expert_group_used_count(cfg["topk_group"])
    else:
        hd = D // H
        w.add_head_count_kv(cfg.get("num_key_value_heads", H))
        w.add_rope_dimension_count(hd)

    add_tokenizer(w, hf_dir, V, cfg)

    p = "language.model."
    w.add_tensor(tn(T.TOKEN_EMBD), t[p + "embed_tokens.weight"])
    w.add_tensor(tn(T.OUTPUT_NORM), t[p + "norm.weight"])
    w.add_tensor(tn(T.OUTPUT), t["language.lm_head.weight"])
    for i in range(L):
        q = f"{p}layers.{i}."
        w.add_tensor(tn(T.ATTN_NORM, bid=i), t[q + "input_layernorm.weight"])
        w.add_tensor(tn(T.FFN_NORM, bid=i), t[q + "post_attention_layernorm.weight"])
        a = q + "self_attn."
        if use_mla:
            if r_q:
                w.add_tensor(tn(T.ATTN_Q_A, bid=i), t[a + "q_a_proj.weight"])
                w.add_tensor(tn(T.ATTN_Q_A_NORM, bid=i), t[a + "q_a_layernorm.weight"])
                w.add_tensor(tn(T.ATTN_Q_B, bid=i), t[a + "q_b_proj.weight"])
            else:
                w.add_tensor(tn(T.ATTN_Q, bid=i), t[a + "q_proj.weight"])
            w.add_tensor(tn(T.ATTN_KV_A_MQA, bid=i), t[a + "kv_a_proj_with_mqa.weight"])
            w.add_tensor(tn(T.ATTN_KV_A_NORM, bid=i), t[a + "kv_a_layernorm.weight"])
            kvb = t[a + "kv_b_proj.weight"].reshape(H, nope + vdim, r_kv)
            k_b = np.ascontiguousarray(kvb[:, :nope, :].transpose(0, 2, 1))  # [H, r_kv, nope]
            v_b = np.ascontiguousarray(kvb[:, nope:, :])  # [H, vdim, r_kv]
            w.add_tensor(tn(T.ATTN_K_B, bid=i), k_b)
            w.add_tensor(tn(T.ATTN_V_B, bid=i), v_b)
        else:
            w.add_tensor(tn(T.ATTN_Q, bid=i), permute_norm_rope(t[a + "q_proj.weight"], H))
            w.add_tensor(tn(T.ATTN_K, bid=i),
                         permute_norm_rope(t[a + "k_proj.weight"], cfg.get("num_key_value_heads", H)))
            w.add_tensor(tn(T.ATTN_V, bid=i), t[a + "v_proj.weight"])
        w.add_tensor(tn(T.ATTN_OUT, bid=i), t[a + "o_proj.weight"])
        m = q + "mlp."
        if i < dense:
            w.add_tensor(tn(T.FFN_GATE, bid=i), t[m + "gate_proj.weight"])
            w.add_tensor(tn(T.FFN_UP, bid=i), t[m + "up_proj.weight"])
            w.add_tensor(tn(T.FFN_DOWN, bid=i), t[m + "down_proj.weight"])
            continue
        w.add_tensor(tn(T.FFN_GATE_INP, bid=i), t[m + "gate.weight"])
        bias = m + "gate.e_score_correction_bias"
        if bias in t:
            w.add_tensor(tn(T.FFN_EXP_PROBS_B, "bias", bid=i), t[bias])
        for kind, hf in ((T.FFN_GATE_EXP, "gate_proj"), (T.FFN_UP_EXP, "up_proj"),
                         (T.FFN_DOWN_EXP, "down_proj")):
            stacked = np.stack([t[f"{m}experts.{e}.{hf}.weight"] for e in range(E)])
            w.add_tensor(tn(kind, bid=i), stacked)
        w.add_tensor(tn(T.FFN_GATE_SHEXP, bid=i), t[m + "shared_experts.gate_proj.weight"])
        w.add_tensor(tn(T.FFN_UP_SHEXP, bid=i), t[m + "shared_experts.up_proj.weight"])
        w.add_tensor(tn(T.FFN_DOWN_SHEXP, bid=i), t[m + "shared_experts.down_proj.weight"])

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({gguf.MODEL_ARCH_NAMES[arch]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
