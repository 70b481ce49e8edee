#!/usr/bin/env python3
"""Golden data for pocketvl's quant crate, from the PyPI `gguf` package.

Writes into OUT_DIR:
  input.f32            deterministic rows of 256 little-endian f32 (random + edge cases)
  gguf_<t>.bin         gguf.quants.quantize(input, t) for the simple types
  gguf_<t>.deq.f32     gguf.quants.dequantize of those bytes
  gguf_<t>.deq.f32     for K-quants: gguf's dequantization of ggml's own bytes
                       (GGML_DIR/ggml_<t>.bin, written by quant/golden-gen), when present

Usage: golden_simple.py OUT_DIR [GGML_DIR]   (GGML_DIR defaults to OUT_DIR)

quant/tests/it/golden.rs re-runs this into a temporary directory and requires every
file to equal the committed copy, so the inputs must be fully deterministic.
"""
import sys
import warnings
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROW = 256
SIMPLE = {"f16": T.F16, "bf16": T.BF16, "q4_0": T.Q4_0, "q4_1": T.Q4_1,
          "q5_0": T.Q5_0, "q5_1": T.Q5_1, "q8_0": T.Q8_0}
KQUANTS = {"q2_K": T.Q2_K, "q3_K": T.Q3_K, "q4_K": T.Q4_K, "q5_K": T.Q5_K, "q6_K": T.Q6_K}


def make_rows() -> np.ndarray:
    rng = np.random.default_rng(20261128)
    i = np.arange(ROW)
    rows = []
    rows.append(np.zeros(ROW))                                   # all zeros
    rows.append(np.full(ROW, 1.0))                               # positive constant
    rows.append(np.full(ROW, -0.37))                             # negative constant
    r = rng.standard_normal(ROW) * 0.01
    r[17] = 1000.0                                               # one large outlier
    rows.append(r)
    rows.append(rng.standard_normal(ROW) * 1e-6)                 # tiny values
    rows.append(rng.standard_normal(ROW) * 1e-9)                 # f16-subnormal range
    big = np.where(i % 2 == 0, 65504.0, -65504.0)                # f16 limits
    big[5] = 65519.0                                             # still rounds to 65504
    big[6] = -65520.0                                            # rounds to -inf in f16
    big[100:110] = rng.uniform(-70000.0, 70000.0, 10)
    rows.append(big)
    rows.append(np.where(i % 2 == 0, 1.0, -1.0) * (1 + i / ROW))  # alternating signs
    rows.append(rng.uniform(0.0, 1.0, ROW))                      # all positive (min > 0)
    rows.append(-rng.uniform(0.5, 2.0, ROW))                     # all negative
    rows.append(rng.standard_normal(ROW) * 10.0 ** ((i // 32) - 4))  # scale per sub-block
    rows.append(((i % 17) - 8) * 0.5)                            # exact half steps (ties)
    r = rng.standard_normal(ROW)
    r[64:96] = 0.0                                               # one zero sub-block
    r[200:216] = 1e-7                                            # one tiny Q6_K sub-block
    rows.append(r)
    for scale in (1.0, 0.02, 0.02, 3.0, 1.0, 0.1, 1.0, 50.0):    # ordinary weights
        rows.append(rng.standard_normal(ROW) * scale)
    return np.stack(rows).astype(np.float32)


def main() -> None:
    # The ±65504-ish edge row overflows to ±inf in f16 on purpose.
    warnings.filterwarnings("ignore", "overflow encountered in cast")
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    ggml_dir = Path(sys.argv[2]) if len(sys.argv) == 3 else out
    out.mkdir(parents=True, exist_ok=True)
    x = make_rows()
    x.astype("<f4").tofile(out / "input.f32")
    for name, qt in SIMPLE.items():
        q = quants.quantize(x, qt)
        qb = np.ascontiguousarray(q).view(np.uint8)
        qb.tofile(out / f"gguf_{name}.bin")
        d = quants.dequantize(qb.reshape(x.shape[0], -1), qt)
        d.astype("<f4").tofile(out / f"gguf_{name}.deq.f32")
    for name, qt in KQUANTS.items():
        src = ggml_dir / f"ggml_{name}.bin"
        if not src.exists():
            print(f"note: {src} missing, no gguf dequantization for {name}")
            continue
        qb = np.fromfile(src, dtype=np.uint8).reshape(x.shape[0], -1)
        d = quants.dequantize(qb, qt)
        d.astype("<f4").tofile(out / f"gguf_{name}.deq.f32")


if __name__ == "__main__":
    main()
