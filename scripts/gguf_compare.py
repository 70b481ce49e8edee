#!/usr/bin/env python3
"""Lists a GGUF file with the PyPI `gguf` package, as an independent reader for pocketvl tests.

Prints one JSON object: {"tensors": [{"name", "type", "ne", "sample"}], "metadata": {key: value}}
where `ne` is ggml's dimension order (fastest first), `type` the ggml type name as gguf-py
spells it (GGMLQuantizationType name, e.g. "Q4_K"), and `sample` the first SAMPLE dequantized
values of the tensor (gguf.quants.dequantize), as float32 converted to Python floats.
Scalar metadata only (strings, numbers, bools); arrays are reported by their length.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

SAMPLE = 512


def main() -> None:
    reader = GGUFReader(sys.argv[1])
    tensors = []
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).reshape(-1)[:SAMPLE].astype(np.float32)
        tensors.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "ne": [int(x) for x in t.shape],
                "sample": [float(x) for x in values],
            }
        )
    meta = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        if len(field.types) == 1 and len(field.data) == 1:
            v = field.parts[field.data[0]]
            if field.types[0].name == "STRING":
                meta[field.name] = bytes(v).decode("utf-8")
            else:
                meta[field.name] = v.tolist()[0]
        else:
            meta[field.name] = {"array_len": len(field.data)}
    json.dump({"tensors": tensors, "metadata": meta}, sys.stdout)


if __name__ == "__main__":
    main()
