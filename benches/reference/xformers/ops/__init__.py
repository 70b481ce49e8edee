"""Exact attention in place of `xformers.ops.memory_efficient_attention` (no CPU build).

xformers' contract: q, k, v are [batch, tokens, heads, head_dim]; the result has the same layout;
softmax(q k^T * scale) v with scale = head_dim ** -0.5 by default. This computes exactly that
in the inputs' dtype (matmul, softmax, matmul: no approximation), so
timings charge the reference for a standard attention, as a user without a GPU would run it.
"""

import torch


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
    if attn_bias is not None:
        raise NotImplementedError("the stand-in supports attn_bias=None only")
    if scale is None:
        scale = query.shape[-1] ** -0.5
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    probs = torch.softmax(scores, dim=-1)
    if p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=p)
    return torch.matmul(probs, v).transpose(1, 2)
