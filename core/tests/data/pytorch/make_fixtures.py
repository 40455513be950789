#!/usr/bin/env python3
"""Regenerate the PyTorch checkpoint fixtures read by `core/src/checkpoint/pytorch.rs`.

The Rust reader interprets torch.save's pickle stream itself (it never runs
pickle code), so its tests need real files written by real torch, plus the
expected tensor values to compare against element by element. This script
writes both. Run it from anywhere (torch, numpy and safetensors installed):

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch numpy safetensors
    /tmp/venv-torch/bin/python core/tests/data/pytorch/make_fixtures.py

It was last run with torch 2.15.0 (CPU). Files written next to this script:

* state_dict.pt   - default torch.save (pickle protocol 2) of a real module's
                    state_dict (OrderedDict with `_metadata`, Parameters,
                    0-d int64 `num_batches_tracked`) plus every dtype the
                    reader supports, a transposed (non-contiguous) view, views
                    sharing one storage at different offsets, an expanded
                    (stride-0) view and an empty tensor.
* nested.pt       - {"epoch": 3, ..., "state_dict": {...}, "optimizer": {...}}:
                    the reader must pick the nested state_dict, skip the
                    non-tensor entries and flatten sub-dicts with '.'.
* protocol1.pt    - the state_dict saved with pickle_protocol=1 (text INT
                    `I01` for booleans, no protocol-2 opcodes).
* protocol4.pt    - the state_dict saved with pickle_protocol=4 (FRAME,
                    MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL).
* protocol5.pt    - {"model": state_dict, "meta": {bytes, bytearray, set,
                    frozenset, big int, floats}} with pickle_protocol=5
                    (BINBYTES, BYTEARRAY8, EMPTY_SET, ADDITEMS, FROZENSET).
* legacy.pt       - _use_new_zipfile_serialization=False (pre-1.6 format);
                    the reader must refuse it with advice to re-save.
* malicious.pt    - torch.save-shaped zip whose data.pkl calls os.system;
                    the reader must refuse it naming `os.system`. This script
                    only writes the bytes, it never unpickles them.
* expected.json   - for every readable fixture, the tensors in reader order:
                    name, dtype (reader's RawDType name), shape, the
                    contiguous little-endian bytes as hex, the values as
                    float32 ("f32") and, for integer/bool tensors, as int64
                    ("i64").
"""

import json
import os
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "Bool",
}


def path(name):
    return os.path.join(HERE, name)


def make_state_dict():
    """A real module's state_dict plus hand-made tensors covering the layouts
    the reader has to get right."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    sd = model.state_dict(keep_vars=True)  # keep_vars: Parameters, not plain tensors
    sd["0.weight"].data.mul_(2.0)
    sd["1.num_batches_tracked"].fill_(7)  # 0-d int64

    # every dtype, including awkward float values
    sd["dtypes.f64"] = torch.tensor([1.0, -2.5, 1e-300, 3.141592653589793], dtype=torch.float64)
    sd["dtypes.f16"] = torch.tensor(
        [0.0, -0.0, 1.0, -2.0, 65504.0, 6e-8, 1e-5, float("inf"), float("-inf"), 0.333],
        dtype=torch.float16,
    )
    sd["dtypes.bf16"] = torch.tensor([1.0, -3.75, 1e30, 1e-30, float("inf")], dtype=torch.bfloat16)
    sd["dtypes.i64"] = torch.tensor([[0, -1, 2**62], [-(2**63), 5, 6]], dtype=torch.int64)
    sd["dtypes.i32"] = torch.tensor([-(2**31), 2**31 - 1, 0], dtype=torch.int32)
    sd["dtypes.i16"] = torch.tensor([-32768, 32767, 1], dtype=torch.int16)
    sd["dtypes.i8"] = torch.tensor([-128, 127, 0, -1], dtype=torch.int8)
    sd["dtypes.u8"] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    sd["dtypes.bool"] = torch.tensor([True, False, True], dtype=torch.bool)
    sd["scalar.f32"] = torch.tensor(2.5)  # 0-d

    # layouts
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd["layout.transposed"] = base.t()  # shape [4, 3], stride (1, 4)
    permuted = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4)
    sd["layout.permuted"] = permuted.permute(2, 0, 1)  # 3-d non-contiguous f16
    shared = torch.arange(10, dtype=torch.int64) * 10
    sd["layout.shared_all"] = shared
    sd["layout.shared_offset"] = shared[3:7]  # same storage, storage_offset 3
    sd["layout.shared_strided"] = shared[1::3]  # offset 1, stride 3
    sd["layout.column"] = base[:, 2]  # offset 2, stride 4
    sd["layout.expanded"] = torch.tensor([1.5, -1.5]).unsqueeze(0).expand(3, 2)  # stride (0, 1)
    sd["layout.empty"] = torch.zeros(0, 3)
    return sd


def make_nested(sd):
    inner = {k: v for k, v in list(sd.items())[:4]}
    inner["sub"] = {"x": torch.tensor([1.0, 2.0]), "deeper": {"y": torch.tensor([[3]], dtype=torch.int32)}}
    inner["not_a_tensor"] = 42
    return {
        "epoch": 3,
        "name": "run-1",
        "nothing": None,
        "lr": 0.1,
        "state_dict": inner,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
    }


def expected_tensors(flat):
    out = []
    for name, t in flat:
        t = t.detach().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        entry = {
            "name": name,
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "hex": raw.hex(),
            "f32": t.to(torch.float32).reshape(-1).tolist(),
        }
        if not t.dtype.is_floating_point:
            entry["i64"] = t.to(torch.int64).reshape(-1).tolist()
        out.append(entry)
    return out


def flatten(d, prefix=""):
    """The reader's flattening: tensors in insertion order, sub-dicts joined
    with '.', everything else skipped."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out.append((key, v))
        elif isinstance(v, dict):
            out.extend(flatten(v, key + "."))
    return out


def write_malicious(file):
    """A zip laid out like torch.save output whose pickle is
    `os.system("echo pwned")` (protocol 2, hand-assembled so the exact global
    is `os.system`; pickling os.system on Linux would write `posix.system`)."""
    pkl = (
        b"\x80\x02"  # PROTO 2
        b"cos\nsystem\n"  # GLOBAL os.system
        b"q\x00"  # BINPUT 0
        b"X\x0a\x00\x00\x00echo pwned"  # BINUNICODE
        b"\x85"  # TUPLE1
        b"R"  # REDUCE  -> os.system("echo pwned")
        b"."  # STOP
    )
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as z:
        z.writestr("malicious/data.pkl", pkl)
        z.writestr("malicious/byteorder", "little")
        z.writestr("malicious/version", "3\n")


def main():
    sd = make_state_dict()
    expected = {}

    torch.save(sd, path("state_dict.pt"))
    expected["state_dict.pt"] = expected_tensors(flatten(sd))

    nested = make_nested(sd)
    torch.save(nested, path("nested.pt"))
    expected["nested.pt"] = expected_tensors(flatten(nested["state_dict"]))

    torch.save(sd, path("protocol1.pt"), pickle_protocol=1)
    expected["protocol1.pt"] = expected["state_dict.pt"]

    torch.save(sd, path("protocol4.pt"), pickle_protocol=4)
    expected["protocol4.pt"] = expected["state_dict.pt"]

    p5 = {
        "meta": {
            "blob": b"\x00\x01\x02",
            "buf": bytearray(b"abc"),
            "tags": {"a", "b"},
            "frozen": frozenset([1, 2]),
            "big": 2**70,
            "neg": -(2**40),
            "floats": [1.5, -0.25],
        },
        "model": sd,
    }
    torch.save(p5, path("protocol5.pt"), pickle_protocol=5)
    expected["protocol5.pt"] = expected["state_dict.pt"]

    torch.save(sd, path("legacy.pt"), _use_new_zipfile_serialization=False)
    write_malicious(path("malicious.pt"))

    with open(path("expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

    for name in sorted(os.listdir(HERE)):
        size = os.path.getsize(path(name))
        print(f"{name:20s} {size:8d} bytes")
        assert size < 50_000 or name == "expected.json", f"{name} is too large for a fixture"


if __name__ == "__main__":
    main()
