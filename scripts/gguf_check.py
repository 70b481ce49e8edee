#!/usr/bin/env python3
"""Independent view of a GGUF file through the Python `gguf` package.

    gguf_check.py FILE                 print FILE as JSON, read with gguf.GGUFReader
    gguf_check.py --write-sample FILE  write a sample with gguf.GGUFWriter (every value
                                       type, typed/string/nested arrays, several tensor
                                       types, alignment 64), then print it as above
    gguf_check.py --rewrite SRC DST    read SRC with GGUFReader and write the same keys (in
                                       order, same types) and tensors with GGUFWriter to DST,
                                       then print DST as above; pocketvl's writer must produce
                                       the very same bytes

pocketvl's tests (quant/tests/it/gguf_python.rs) compare this JSON with what the Rust
reader sees, in both directions.

JSON: {"version", "alignment", "data_offset",
       "metadata": [[key, V], ...] in file order, where V is [type, value] for scalars
                   (f32/f64 values as their IEEE bit patterns, so NaN and -0.0 compare
                   exactly) and ["array", element_type, [V, ...]] for arrays,
       "tensors": [{"name", "type", "type_id", "ne" (fastest first), "n_bytes",
                    "offset" (relative to the data section), "sha256"}, ...]}
"""

import hashlib
import json
import struct
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

TYPE_NAMES = {
    GGUFValueType.UINT8: "u8",
    GGUFValueType.INT8: "i8",
    GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16",
    GGUFValueType.UINT32: "u32",
    GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32",
    GGUFValueType.BOOL: "bool",
    GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array",
    GGUFValueType.UINT64: "u64",
    GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}


def decode(parts, i, vtype):
    """Rebuilds one value from GGUFReader's flat list of parts, starting at parts[i].

    Returns (typed JSON value, index of the next part). Walking the parts (instead of
    ReaderField.contents) keeps nested arrays nested and empty arrays typed.
    """
    name = TYPE_NAMES[vtype]
    if vtype == GGUFValueType.STRING:
        return [name, bytes(parts[i + 1]).decode("utf-8")], i + 2
    if vtype == GGUFValueType.ARRAY:
        elem = GGUFValueType(int(parts[i][0]))
        count = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(count):
            item, i = decode(parts, i, elem)
            items.append(item)
        return [name, TYPE_NAMES[elem], items], i
    part = parts[i]
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        value = int.from_bytes(part.tobytes(), "little")
    elif vtype == GGUFValueType.BOOL:
        value = bool(part[0])
    else:
        value = int(part[0])
    return [name, value], i + 1


def describe(path):
    r = GGUFReader(path)
    metadata = []
    version = None
    for key, field in r.fields.items():
        if key == "GGUF.version":
            version = int(field.parts[0][0])
        if key.startswith("GGUF."):
            continue
        # parts: key length, key bytes, value type, then the value's parts.
        value, end = decode(field.parts, 3, GGUFValueType(int(field.parts[2][0])))
        assert end == len(field.parts), key
        metadata.append([key, value])
    tensors = []
    for t in r.tensors:
        raw = r.data[t.data_offset : t.data_offset + t.n_bytes].tobytes()
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "ne": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes),
            "offset": int(t.data_offset - r.data_offset),
            "sha256": hashlib.sha256(raw).hexdigest(),
        })
    return {
        "version": version,
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }


def write_sample(path):
    """A file exercising everything gguf-py can write."""
    w = GGUFWriter(path, arch="pocketvl-test")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", -1.5e-3)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo wörld ✓")
    w.add_uint64("test.u64", 2**64 - 2)
    w.add_int64("test.i64", -(2**63) + 1)
    w.add_float64("test.f64", 3.141592653589793)
    w.add_float32("test.f32_nan", float("nan"))
    w.add_float64("test.f64_neg_zero", -0.0)
    samples = {
        GGUFValueType.UINT8: [0, 255], GGUFValueType.INT8: [-128, 127],
        GGUFValueType.UINT16: [0, 65535], GGUFValueType.INT16: [-32768, 32767],
        GGUFValueType.UINT32: [0, 2**32 - 1], GGUFValueType.INT32: [-(2**31), 2**31 - 1],
        GGUFValueType.FLOAT32: [0.1, -2.5], GGUFValueType.BOOL: [True, False, True],
        GGUFValueType.STRING: ["a", "", "日本語"], GGUFValueType.UINT64: [0, 2**64 - 1],
        GGUFValueType.INT64: [-(2**63), 2**63 - 1], GGUFValueType.FLOAT64: [1e300, -1e-300],
    }
    for vtype, values in samples.items():
        w.add_key_value(f"test.array.{TYPE_NAMES[vtype]}", values, GGUFValueType.ARRAY, sub_type=vtype)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "▁the"])
    w.add_key_value("test.nested", [[1, 2], [3], [4, 5, 6]], GGUFValueType.ARRAY)

    rng = np.random.default_rng(0)
    w.add_tensor("t.f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("t.f16", rng.standard_normal((2, 3, 4)).astype(np.float16))
    w.add_tensor("t.f64", rng.standard_normal((7,)).astype(np.float64))
    w.add_tensor("t.i8", rng.integers(-128, 127, (9,), dtype=np.int8))
    w.add_tensor("t.i16", rng.integers(-999, 999, (2, 2), dtype=np.int16))
    w.add_tensor("t.i32", rng.integers(-999, 999, (1, 3), dtype=np.int32))
    w.add_tensor("t.i64", rng.integers(-999, 999, (4,), dtype=np.int64))
    w.add_tensor("t.scalar", np.array(1.5, dtype=np.float32))
    raw = lambda shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    w.add_tensor("t.bf16", raw((2, 6 * 2)), raw_dtype=GGMLQuantizationType.BF16)
    w.add_tensor("t.q8_0", raw((2, 2 * 34)), raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("t.q4_k", raw((3, 144)), raw_dtype=GGMLQuantizationType.Q4_K)
    w.add_tensor("t.q6_k", raw((1, 210)), raw_dtype=GGMLQuantizationType.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def to_python(typed):
    """Typed JSON (from `decode`) back to (GGUFValueType, Python value, sub_type)."""
    by_name = {v: k for k, v in TYPE_NAMES.items()}
    vtype = by_name[typed[0]]
    if vtype == GGUFValueType.ARRAY:
        elem = by_name[typed[1]]
        return vtype, [to_python(item)[1] for item in typed[2]], elem
    value = typed[1]
    if vtype == GGUFValueType.FLOAT32:
        value = struct.unpack("<f", struct.pack("<I", value))[0]
    elif vtype == GGUFValueType.FLOAT64:
        value = struct.unpack("<d", struct.pack("<Q", value))[0]
    return vtype, value, None


def rewrite(src, dst):
    """Copies SRC into DST through gguf-py's own writer."""
    r = GGUFReader(src)
    described = describe(src)
    meta = dict((k, v) for k, v in described["metadata"])
    w = GGUFWriter(dst, arch=meta["general.architecture"][1])
    for key, typed in described["metadata"]:
        if key == "general.architecture":
            continue
        vtype, value, sub_type = to_python(typed)
        if key == "general.alignment":
            w.add_custom_alignment(value)
        else:
            w.add_key_value(key, value, vtype, sub_type=sub_type)
    for t in r.tensors:
        raw = r.data[t.data_offset : t.data_offset + t.n_bytes]
        block, type_size = GGML_QUANT_SIZES[t.tensor_type]
        ne = [int(d) for d in t.shape]
        byte_shape = list(reversed([ne[0] // block * type_size] + ne[1:]))
        w.add_tensor(t.name, np.asarray(raw).reshape(byte_shape), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv):
    if len(argv) == 3 and argv[1] == "--write-sample":
        write_sample(argv[2])
        path = argv[2]
    elif len(argv) == 4 and argv[1] == "--rewrite":
        rewrite(argv[2], argv[3])
        path = argv[3]
    elif len(argv) == 2:
        path = argv[1]
    else:
        sys.exit(__doc__)
    json.dump(describe(path), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
