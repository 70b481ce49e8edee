#!/usr/bin/env python3
"""Compare llama.cpp's last-position logits with a fixture's golden `text.logits_last`.

Why: the goldens come from the official DeepSeek-VL2 implementation in float32; llama.cpp is an
independent second implementation. The numbers printed here (max abs diff, cosine, argmax, and
greedy ids vs `text.gen_ids`) are what the interop report quotes.

Usage: llamacpp_compare.py LOGITS.npy FIXTURE_DIR [--gen "id id ..."] [--case text]
Needs numpy and safetensors. Exit status 0 means "compared" (not "equal": llama.cpp is expected
to differ a little, see the report); non-zero only on bad input.
"""
import argparse
import sys

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("logits")
    ap.add_argument("fixture")
    ap.add_argument("--case", default="text")
    ap.add_argument("--gen", default=None, help="generated ids from the logits tool")
    args = ap.parse_args()

    ours = np.load(args.logits).astype(np.float32)
    golden = load_file(f"{args.fixture}/golden.safetensors")
    ref = golden[f"{args.case}.logits_last"].astype(np.float32)
    if ours.shape != ref.shape:
        print(f"shape mismatch: llama.cpp {ours.shape} vs golden {ref.shape}", file=sys.stderr)
        return 1
    diff = np.abs(ours - ref)
    cos = float(np.dot(ours, ref) / (np.linalg.norm(ours) * np.linalg.norm(ref)))
    top_ref = np.argsort(-ref)[:5]
    top_ours = np.argsort(-ours)[:5]
    print(f"[{args.fixture.rstrip('/').split('/')[-1]}:{args.case}] logits_last "
          f"max_abs_diff={diff.max():.6g} mean_abs_diff={diff.mean():.6g} "
          f"at_id={int(diff.argmax())} cosine={cos:.8f} "
          f"ref_absmax={np.abs(ref).max():.4g}")
    print(f"  argmax llama.cpp={int(top_ours[0])} golden={int(top_ref[0])} "
          f"golden_margin={float(ref[top_ref[0]] - ref[top_ref[1]]):.4g}")
    print(f"  top5 llama.cpp={top_ours.tolist()} golden={top_ref.tolist()}")
    if args.gen is not None:
        gen = [int(x) for x in args.gen.split()]
        ref_gen = golden[f"{args.case}.gen_ids"].astype(np.int64).tolist()
        same = 0
        for a, b in zip(gen, ref_gen):
            if a != b:
                break
            same += 1
        print(f"  gen llama.cpp={gen}")
        print(f"  gen golden   ={ref_gen}")
        print(f"  greedy ids equal for the first {same} of {len(ref_gen)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
