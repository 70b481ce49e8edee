#!/usr/bin/env python3
"""Independent check of files written by pocketvl's safetensors writer, with the official
`safetensors` package (whose Rust core rejects misaligned, overlapping or non-contiguous data).

usage: synth_check.py checkpoint DIR     -> prints JSON {name: [dtype, shape]} for every tensor,
                                            after checking the index against the shard headers
       synth_check.py values FILE        -> prints JSON {name: [dtype, shape, values]} for a
                                            file of F32/F16 tensors, loaded with safetensors.numpy
"""
import json
import os
import sys

from safetensors import safe_open
from safetensors.numpy import load_file


def checkpoint(d):
    index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    weight_map = index["weight_map"]
    out = {}
    total = 0
    for shard in sorted(set(weight_map.values())):
        with safe_open(os.path.join(d, shard), framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}, f.metadata()
            for name in f.keys():
                assert weight_map.get(name) == shard, (name, shard)
                s = f.get_slice(name)
                shape = s.get_shape()
                dtype = s.get_dtype()
                n = 1
                for x in shape:
                    n *= x
                total += n * {"BF16": 2, "F16": 2, "F32": 4}[dtype]
                out[name] = [dtype, shape]
    assert set(out) == set(weight_map), "index and shards disagree"
    assert index["metadata"]["total_size"] == total, (index["metadata"]["total_size"], total)
    return out


def values(path):
    return {k: [str(v.dtype), list(v.shape), v.astype("float64").ravel().tolist()]
            for k, v in load_file(path).items()}


if __name__ == "__main__":
    mode, arg = sys.argv[1], sys.argv[2]
    print(json.dumps(checkpoint(arg) if mode == "checkpoint" else values(arg)))
