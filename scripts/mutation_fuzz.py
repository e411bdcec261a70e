"""Seeded mutation fuzzer for everything a user hands the SDK: float checkpoints, quantized
checkpoints, image files and person boxes.

Every case starts from a small valid input (tiny checkpoints built from the test fixtures'
models, ``save_quantized`` files, PNG/JPEG files, well-formed boxes) and applies a few
structured edits: byte flips, truncation, a lying length prefix, and header JSON edits (dims,
dtypes, offsets, duplicate keys, metadata values of the wrong type, huge integers, deep
nesting, the arch/head/recipe JSON of a quantized file). Each case must end in success or in a
typed :class:`sapiens2_edge.errors.Sapiens2EdgeError`, within a time limit and under a memory
ceiling (``RLIMIT_AS`` in the worker process). Cases run in a forked worker; a case that
overruns the time limit is killed and the worker restarted.

    python scripts/mutation_fuzz.py --cases 7000 --seed 0
    python scripts/mutation_fuzz.py --cases 500 --seed 3 --kinds image,boxes -v

Outcomes: ``ok``, ``typed`` (with the error class), ``untyped`` (a finding: any other
exception), ``timeout`` (over ``--time-limit``), ``memory`` (the allocation ceiling was hit or
the worker died), and ``slow`` / ``rss`` (outliers: over ``--slow`` seconds, or resident memory
grew by more than ``--rss-mb`` during the case).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository, when not installed (PYTHONPATH wins)

KINDS = ("float", "quantized", "image", "boxes")
HUGE_INTS = [2**31, 2**32 + 1, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, 10**4000, -1, -(2**63)]
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, float("nan"), "x", "", [], {}, [1, 2], {"a": 1},
                         10**30, 10**4000, -(10**20), 1e308]
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64",
          "F4", "Q8", "", "f32"]


# ---------------------------------------------------------------------------------------------
# Seed inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class Seeds:
    root: Path
    float_files: list[bytes] = field(default_factory=list)
    quant_files: list[bytes] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)


def build_seeds(root: Path) -> Seeds:
    """Tiny valid checkpoints (float: pretrain and task layouts; quantized: int8 dynamic and
    static, fp8, mixed) and small PNG/JPEG images."""
    import cv2
    import numpy as np
    import torch

    from sapiens2_edge.models.arch import ArchSpec, HeadSpec
    from sapiens2_edge.models.model import build_model
    from sapiens2_edge.quantization import quantize, save_quantized
    from tests.fixtures.tiny import save

    arch = ArchSpec(16, 2, 4, (4, 2), 32, name="fuzz")
    seg = HeadSpec("seg", 16, 29, deconv=(8,), conv=(8,), conv_kernel=1)
    pose = HeadSpec("pose", 16, 308, deconv=(4,), conv=(4,), conv_kernel=1)
    seeds = Seeds(root)
    size = (32, 32)
    models = {"pretrain": build_model(arch, seed=1), "seg": build_model(arch, head=seg, seed=2),
              "pose": build_model(arch, head=pose, seed=3)}
    for name, m in models.items():
        p = save(m, root / f"{name}.safetensors", dtype=torch.float16 if name == "pose" else torch.float32)
        seeds.float_files.append(p.read_bytes())
    calib = [torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))]
    recipes = [("int8", {}), ("int8", {"activation_mode": "static", "estimator": "minmax"}), ("fp8", {}),
               ("mixed", {"layer_schemes": {"backbone.blocks.0.*": "fp16", "backbone.blocks.1.*": "int8-weight"}})]
    for i, (scheme, opts) in enumerate(recipes):
        q, report = quantize(models["seg"] if i != 2 else models["pretrain"], scheme, calibration=calib,
                             input_size=size, progress=False, **opts)
        p = save_quantized(q, root / f"q{i}.safetensors", report=report if i == 0 else None)
        seeds.quant_files.append(p.read_bytes())
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for ext, arr in ((".png", img), (".png", img[..., 0]), (".jpg", img), (".png", np.dstack([img, img[..., :1]]))):
        ok, buf = cv2.imencode(ext, arr)
        assert ok
        seeds.images.append(buf.tobytes())
    return seeds


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------
def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header_text: str | bytes, data: bytes) -> bytes:
    h = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(h)) + h + data


def _byte_flips(rng: random.Random, b: bytes, header_bias: bool = True) -> bytes:
    out = bytearray(b)
    (n,) = struct.unpack("<Q", b[:8]) if len(b) >= 8 else (len(b),)
    for _ in range(rng.randint(1, 8)):
        hi = min(len(out), 8 + n) if header_bias and rng.random() < 0.7 else len(out)
        pos = rng.randrange(max(hi, 1))
        if pos < len(out):
            out[pos] = rng.randrange(256) if rng.random() < 0.5 else out[pos] ^ (1 << rng.randrange(8))
    return bytes(out)


def _truncate(rng: random.Random, b: bytes) -> bytes:
    return b[: rng.randrange(len(b))]


def _odd(rng: random.Random) -> Any:
    return rng.choice(ODD_VALUES)


def _mutate_shape(rng: random.Random, entry: dict) -> None:
    shape = entry.get("shape")
    choice = rng.randrange(10)
    if choice == 0:
        entry["shape"] = [rng.choice(HUGE_INTS)] + (shape[1:] if isinstance(shape, list) else [])
    elif choice == 1:
        entry["shape"] = [1] * rng.choice([9, 64, 5000, 100_000])
    elif choice == 2:
        entry["shape"] = [2**62] * rng.choice([2, 9, 1000])
    elif choice == 3:
        entry["shape"] = []
    elif choice == 4:
        entry["shape"] = [0] + (shape[1:] if isinstance(shape, list) else [])
    elif choice == 5:
        entry["shape"] = _odd(rng)
    elif choice == 6 and isinstance(shape, list) and shape:
        shape = list(shape)
        shape[rng.randrange(len(shape))] = _odd(rng)
        entry["shape"] = shape
    elif choice == 7 and isinstance(shape, list):
        entry["shape"] = list(reversed(shape)) if rng.random() < 0.5 else shape[:-1]
    elif choice == 8 and isinstance(shape, list):  # the same byte count, a different shape
        n = 1
        for d in shape:
            n *= d if isinstance(d, int) else 1
        entry["shape"] = [n] if rng.random() < 0.5 else [1, n, 1]
    else:
        entry["shape"] = [3, -1]


def _mutate_offsets(rng: random.Random, entry: dict, data_len: int) -> None:
    off = entry.get("data_offsets")
    choice = rng.randrange(7)
    if choice == 0 and isinstance(off, list) and len(off) == 2:
        i = rng.randrange(2)
        off = list(off)
        off[i] += rng.choice([-8, -1, 1, 2, 8, data_len])
        entry["data_offsets"] = off
    elif choice == 1 and isinstance(off, list):
        entry["data_offsets"] = list(reversed(off))
    elif choice == 2:
        entry["data_offsets"] = [0, rng.choice(HUGE_INTS)]
    elif choice == 3:
        entry["data_offsets"] = [rng.choice(HUGE_INTS), rng.choice(HUGE_INTS)]
    elif choice == 4:
        entry["data_offsets"] = _odd(rng)
    elif choice == 5:
        entry["data_offsets"] = [0, 1, 2]
    else:
        entry["data_offsets"] = [0, data_len]


def _mutate_json_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A structural edit somewhere inside a JSON value (a metadata document)."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        key = rng.choice(list(value))
        value = dict(value)
        r = rng.random()
        if r < 0.1:
            del value[key]
        elif r < 0.15:
            value["unexpected_field"] = _odd(rng)
        else:
            value[key] = _mutate_json_value(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.6:
        value = list(value)
        i = rng.randrange(len(value))
        r = rng.random()
        if r < 0.15:
            del value[i]
        elif r < 0.3:
            value.append(value[i])
        else:
            value[i] = _mutate_json_value(rng, value[i], depth + 1)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.6:
        return rng.choice([0, 1, -1, 2, 3, value * 2, value + 1, value * 64, 10**6, 10**12, 2**63, 10**4000])
    if isinstance(value, str) and rng.random() < 0.5:
        return rng.choice(["", "int8", "fp8", "float", "bogus", "pose", "seg", value + "x", "backbone.blocks.9.attn.wq"])
    return _odd(rng)


def _big_arch(rng: random.Random) -> dict:
    from sapiens2_edge.models.arch import PRESETS

    return rng.choice(list(PRESETS.values())).to_dict()


def _mutate_metadata(rng: random.Random, header: dict) -> str | None:
    """Edit ``__metadata__``; may return raw JSON text of the whole header (deep nesting)."""
    meta = header.get("__metadata__")
    choice = rng.randrange(8)
    if choice == 0 or not isinstance(meta, dict) or not meta:
        header["__metadata__"] = _odd(rng) if rng.random() < 0.5 else {"k": _odd(rng)}
        return None
    meta = dict(meta)
    header["__metadata__"] = meta
    key = rng.choice(list(meta))
    if choice == 1:
        meta[key] = _odd(rng)
    elif choice == 2:  # deep nesting in a metadata value (as a JSON string) or in the header itself
        depth = rng.choice([100, 5000, 200_000])
        if rng.random() < 0.5:
            meta[key] = "[" * depth + "]" * depth
        else:
            text = json.dumps(header)
            return text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    elif choice == 3:
        meta[key] = str(10**rng.choice([20, 400, 4000]))
    elif choice in (4, 5, 6):  # edit the JSON document inside a metadata value (arch / head / recipe)
        keys = [k for k in meta if k.startswith("sapiens2_edge.") and k != "sapiens2_edge.version"] or [key]
        key = rng.choice(keys)
        try:
            doc = json.loads(meta[key])
        except (TypeError, ValueError, RecursionError):
            doc = meta[key]
        if key.endswith(".arch") and rng.random() < 0.25:
            doc = _big_arch(rng)
        else:
            for _ in range(rng.randint(1, 3)):
                doc = _mutate_json_value(rng, doc)
        try:
            meta[key] = json.dumps(doc)
        except (TypeError, ValueError, RecursionError):
            meta[key] = "{"
    else:
        del meta[key]
    return None


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}


def _relayout(rng: random.Random, header: dict) -> bytes | None:
    """Recompute every data_offsets entry from the (mutated) shapes and dtypes and make data of the
    matching size, so the container is valid and the edit reaches the loaders behind the parser.
    None when some entry is not a plain tensor or the data would be large."""
    pos = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _ITEMSIZE or not isinstance(entry.get("shape"), list):
            return None
        shape = entry["shape"]
        if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**20 for d in shape):
            return None
        n = _ITEMSIZE[entry["dtype"]]
        for d in shape:
            n *= d
        if pos + n > 16 * 2**20:
            return None
        entry["data_offsets"] = [pos, pos + n]
        pos += n
    return rng.randbytes(pos) if rng.random() < 0.5 else bytes(pos)


def _small_shape(rng: random.Random, entry: dict) -> None:
    """A plausible-looking wrong shape: scalar, 1-D, a zero dim, a dim of 1, swapped dims."""
    shape = entry.get("shape") if isinstance(entry.get("shape"), list) else [4]
    choice = rng.randrange(6)
    if choice == 0:
        entry["shape"] = []
    elif choice == 1:
        entry["shape"] = [rng.choice([0, 1, 2, 3, 4, 16])]
    elif choice == 2 and shape:
        shape = list(shape)
        shape[rng.randrange(len(shape))] = rng.choice([0, 1, 2, 3, 5, 8, 64])
        entry["shape"] = shape
    elif choice == 3:
        entry["shape"] = list(reversed(shape))
    elif choice == 4:
        entry["shape"] = shape + [1]
    else:
        entry["shape"] = shape[1:]


def mutate_checkpoint(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    """One checkpoint mutation; returns (name, bytes)."""
    op = rng.randrange(11)
    if op == 0:
        return "byte_flips", _byte_flips(rng, raw)
    if op == 1:
        return "truncate", _truncate(rng, raw)
    if op in (3, 4):  # a consistent container whose shapes / dtypes no longer fit the architecture
        header, _ = split_safetensors(raw)
        names = [k for k in header if k != "__metadata__"]
        wanted = [k for k in names if any(w in k for w in ("patch_embed", "blocks.0.", "q_norm", "wk.", "w12",
                                                              "conv", "deconv", "upsample", "scale", "rope"))]
        for _ in range(rng.randint(1, 3)):
            t = rng.choice(wanted if wanted and rng.random() < 0.8 else names)
            entry = dict(header[t])
            if rng.random() < 0.8:
                _small_shape(rng, entry)
            else:
                entry["dtype"] = rng.choice(list(_ITEMSIZE))
            header[t] = entry
        if rng.random() < 0.3 and isinstance(header.get("__metadata__"), dict):
            _mutate_metadata(rng, header)
        data = _relayout(rng, header)
        if data is not None:
            try:
                return "consistent_shapes", join_safetensors(json.dumps(header), data)
            except (TypeError, ValueError, RecursionError):
                pass
    if op == 2:
        n = rng.choice([0, 1, 7, len(raw), 2**40, 2**64 - 1, struct.unpack("<Q", raw[:8])[0] + rng.choice([-1, 1])])
        return "length_prefix", struct.pack("<Q", n) + raw[8:]
    header, data = split_safetensors(raw)
    text: str | None = None
    name = "header"
    for _ in range(rng.randint(1, 3)):
        sub = rng.randrange(8)
        names = [k for k in header if k != "__metadata__"] or ["extra"]
        t = rng.choice(names)
        entry = dict(header[t]) if isinstance(header.get(t), dict) else {}
        if sub == 0:
            name = "dims"
            _mutate_shape(rng, entry)
            header[t] = entry
        elif sub == 1:
            name = "dtype"
            entry["dtype"] = rng.choice(DTYPES) if rng.random() < 0.8 else _odd(rng)
            header[t] = entry
        elif sub == 2:
            name = "offsets"
            _mutate_offsets(rng, entry, len(data))
            header[t] = entry
        elif sub in (3, 4):
            name = "metadata"
            text = _mutate_metadata(rng, header) or text
        elif sub == 5:
            name = "keys"
            r = rng.random()
            if r < 0.4:
                header[t + rng.choice(["x", ".weight", ""]) if r < 0.2 else "module." + t] = header.pop(t)
            elif r < 0.7:
                header.pop(t)
            else:
                header[rng.choice(["extra", "blocks.99.ln1.weight", "decode_head.conv_pose.weight"])] = header.get(t)
        elif sub == 6:
            name = "entry"
            header[t] = _odd(rng) if rng.random() < 0.5 else {k: v for k, v in entry.items() if rng.random() < 0.6}
        else:
            name = "duplicate_keys"
            body = json.dumps(header)
            dup = rng.choice(names + ["__metadata__"] if "__metadata__" in header else names)
            text = body[:-1] + f", {json.dumps(dup)}: {json.dumps(header.get(dup))}" + "}"
    if text is None:
        try:
            text = json.dumps(header)
        except ValueError:
            text = "{}"
    if rng.random() < 0.2:  # keep the data the same size as the header now says, or lie
        data = data[: rng.randrange(len(data) + 1)]
    return name, join_safetensors(text, data)


def _png_chunks(b: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos + 8 <= len(b):
        (n,) = struct.unpack(">I", b[pos:pos + 4])
        out.append((b[pos + 4:pos + 8], b[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for kind, body in chunks:
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return bytes(out)


def mutate_image(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    op = rng.randrange(6)
    if op == 0:
        return "byte_flips", _byte_flips(rng, raw, header_bias=False)
    if op == 1:
        return "truncate", _truncate(rng, raw)
    if op == 2:
        return "garbage", bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    dims = rng.choice([(17000, 17000), (32769, 1), (1, 100_000), (0, 24), (24, 0), (2**31 - 1, 2**31 - 1),
                       (65535, 65535), (16384, 16384), (1, 1), (48, 64)])
    if raw.startswith(b"\x89PNG"):
        chunks = _png_chunks(raw)
        kind, ihdr = chunks[0]
        ihdr = bytearray(ihdr)
        if op == 3:
            ihdr[0:8] = struct.pack(">II", *dims)
        elif op == 4:
            ihdr[8] = rng.choice([1, 2, 4, 8, 16, 3, 0])
            ihdr[9] = rng.choice([0, 2, 3, 4, 6, 5])
        else:
            ihdr[0:8] = struct.pack(">II", *dims)
            chunks = [c for c in chunks if c[0] != b"IDAT"] + [(b"IDAT", zlib.compress(b"\0" * 4096))]
            chunks = [c for c in chunks if c[0] != b"IEND"] + [(b"IEND", b"")]
        chunks[0] = (kind, bytes(ihdr))
        return "png_header", _png_join(chunks)
    # JPEG: the frame header (SOF0/SOF2) holds height then width as big-endian 16-bit numbers
    b = bytearray(raw)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = b.find(marker)
        if i >= 0:
            h, w = (min(d, 65535) for d in dims)
            if op == 5:
                b[i + 5] = rng.randrange(256)  # precision / components
                b[i + 9] = rng.randrange(256)
            else:
                b[i + 5:i + 9] = struct.pack(">HH", h, w)
            break
    return "jpeg_header", bytes(b)


def make_boxes(rng: random.Random) -> tuple[str, Any]:
    """Person boxes for a 48 x 64 (H x W) image, valid or not."""
    good = [[4.0, 3.0, 40.0, 44.0], [0, 0, 63, 47]]
    op = rng.randrange(12)
    if op == 0:
        return "huge_float", [[0.0, 0.0, 1e308, 1e308]]
    if op == 1:
        return "huge_int", [[0, 0, 10**400, 10]]
    if op == 2:
        v = rng.choice([float("nan"), float("inf"), -float("inf"), -1e308, 1e-300, 5e-324])
        box = list(good[0])
        box[rng.randrange(4)] = v
        return "odd_float", [box]
    if op == 3:
        return "many", [good[0]] * rng.choice([99, 100, 101, 150, 400])
    if op == 4:
        return "shape", rng.choice([[1, 2, 3], [[1, 2, 3]], [[[1, 2, 3, 4]]], [], [[]], [[1, 2, 3, 4, 5, 6]],
                                    [good[0], [1, 2, 3]]])
    if op == 5:
        return "type", rng.choice(["1,2,3,4", {"x": 1}, [["a", "b", "c", "d"]], [[1 + 2j, 0, 3, 4]], {1, 2, 3, 4},
                                   [[None, 1, 2, 3]], b"abcd", [[True, False, True, True]]])
    if op == 6:
        return "degenerate", [[10, 10, 10, 20]] if rng.random() < 0.5 else [[10, 10, 10 + 1e-12, 10 + 1e-12]]
    if op == 7:
        return "outside", [[-100, -100, -50, -50]] if rng.random() < 0.5 else [[1000, 1000, 2000, 2000]]
    if op == 8:
        lim = rng.choice([1e6, 1e9, 1e15, 1e100])
        return "far", [[-lim, -lim, lim, lim]]
    if op == 9:
        import numpy as np

        return "dtype", np.array(good, dtype=rng.choice(["float16", "int64", "uint8", "float32", "object"]))
    if op == 10:
        return "score_column", [[4, 3, 40, 44, rng.choice([0.9, float("nan"), 1e308])]]
    return "valid", good[: rng.randint(1, 2)]


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------
def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def make_case(seeds: Seeds, seed: int, index: int, kinds: tuple[str, ...]) -> tuple[str, str, Any]:
    rng = case_rng(seed, index)
    kind = kinds[index % len(kinds)]
    if kind == "float":
        name, data = mutate_checkpoint(rng, rng.choice(seeds.float_files))
    elif kind == "quantized":
        name, data = mutate_checkpoint(rng, rng.choice(seeds.quant_files))
    elif kind == "image":
        name, data = mutate_image(rng, rng.choice(seeds.images))
    else:
        name, data = make_boxes(rng)
    return kind, name, data


def _fake_pose_infer(batch: Any) -> Any:
    """Heatmaps with one clear peak per keypoint, for an (B, 3, 32, 24) input -> (B, 308, 8, 6)."""
    import numpy as np

    hm = np.zeros((len(batch), 308, 8, 6), np.float32)
    hm[:, :, 4, 3] = 1.0
    return hm


def run_case(seeds: Seeds, kind: str, data: Any, workdir: Path) -> None:
    """Feed one mutated input to the public API (raises what the SDK raises)."""
    if kind in ("float", "quantized"):
        import sapiens2_edge
        from sapiens2_edge.models.safetensors_header import header_summary

        p = workdir / "case.safetensors"
        p.write_bytes(data)
        header_summary(p)
        sapiens2_edge.load_model(p)
    elif kind == "image":
        from sapiens2_edge.tasks.image import load_image

        p = workdir / "case.img"
        p.write_bytes(data)
        load_image(p)
    else:
        import numpy as np

        from sapiens2_edge.tasks import get_pipeline

        image = np.full((48, 64, 3), 127, np.uint8)
        pipe = get_pipeline("pose", input_size=(32, 24))
        (result,) = pipe([image], _fake_pose_infer, boxes=[data], batch_size=8)
        if not np.isfinite(result.keypoints).all():
            raise AssertionError(f"boxes {data!r:.80} gave non-finite keypoints without an error")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def classify(exc: BaseException | None) -> tuple[str, str]:
    from sapiens2_edge.errors import Sapiens2EdgeError

    if exc is None:
        return "ok", ""
    if isinstance(exc, Sapiens2EdgeError):
        return "typed", type(exc).__name__
    msg = str(exc) if not isinstance(exc, RecursionError) else "recursion"
    if isinstance(exc, MemoryError) or "can't allocate memory" in msg or "not enough memory" in msg.lower():
        return "memory", f"{type(exc).__name__}: {msg[:160]}"
    tb = traceback.extract_tb(exc.__traceback__)
    own = [f for f in tb if "sapiens2_edge" in f.filename] or tb
    site = f"{Path(own[-1].filename).name}:{own[-1].lineno}" if own else "?"
    return "untyped", f"{type(exc).__name__} at {site}: {msg[:160]}"


def worker(conn: Any, seeds: Seeds, seed: int, kinds: tuple[str, ...], mem_mb: int, quiet: bool) -> None:
    import numpy as np

    if quiet:  # libpng / libjpeg / OpenCV print their complaints straight to fd 2
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)

    np.seterr(all="ignore")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    limit = _vm_bytes() + mem_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    workdir = Path(tempfile.mkdtemp(prefix="s2e-fuzz-"))
    while True:
        index = conn.recv()
        if index is None:
            return
        kind, name, data = make_case(seeds, seed, index, kinds)
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        err: BaseException | None = None
        try:
            run_case(seeds, kind, data, workdir)
        except BaseException as e:  # noqa: BLE001 - classifying every exception is the point
            err = e
        seconds = time.perf_counter() - t0
        outcome, detail = classify(err)
        conn.send((index, kind, name, outcome, detail, seconds, _rss_mb() - rss0))
        del err, data


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    typed: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    sites: Counter = field(default_factory=Counter)
    outliers: list[str] = field(default_factory=list)
    max_seconds: float = 0.0
    max_rss_mb: float = 0.0
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return sum(self.counts[k] for k in ("untyped", "timeout", "memory"))


def run(cases: int, seed: int = 0, kinds: tuple[str, ...] = KINDS, time_limit: float = 10.0, mem_mb: int = 1536,
        slow: float = 1.0, rss_mb: float = 200.0, quiet: bool = True, progress: Callable[[int], None] | None = None) -> Report:
    """Run ``cases`` seeded cases; the report counts outcomes and lists findings and outliers."""
    ctx = mp.get_context("fork")
    report = Report()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s2e-fuzz-seeds-") as tmp:
        seeds = build_seeds(Path(tmp))
        proc = conn = None

        def start() -> None:
            nonlocal proc, conn
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, seeds, seed, kinds, mem_mb, quiet), daemon=True)
            proc.start()

        start()
        for index in range(cases):
            assert conn is not None and proc is not None
            conn.send(index)
            if conn.poll(time_limit):
                try:
                    _, kind, name, outcome, detail, seconds, grew = conn.recv()
                except EOFError:
                    kind, name = make_case_name(seeds, seed, index, kinds)
                    outcome, detail, seconds, grew = "memory", "worker died", 0.0, 0.0
            else:
                kind, name = make_case_name(seeds, seed, index, kinds)
                outcome, detail, seconds, grew = "timeout", f"over {time_limit:g} s", time_limit, 0.0
            if outcome == "timeout" or detail == "worker died":
                proc.kill()
                proc.join()
                start()
            report.counts[outcome] += 1
            report.by_kind.setdefault(kind, Counter())[outcome] += 1
            if outcome == "typed":
                report.typed[detail] += 1
            elif outcome != "ok":
                report.findings.append(f"case {index} ({kind}/{name}): {outcome}: {detail}")
                report.sites[f"{outcome}: {detail.split(': ')[0]}"] += 1
            if seconds > slow:
                report.outliers.append(f"case {index} ({kind}/{name}): slow, {seconds:.2f} s")
                report.counts["slow"] += 1
            if grew > rss_mb:
                report.outliers.append(f"case {index} ({kind}/{name}): rss grew {grew:.0f} MB")
                report.counts["rss"] += 1
            report.max_seconds = max(report.max_seconds, seconds)
            report.max_rss_mb = max(report.max_rss_mb, grew)
            if progress:
                progress(index)
        assert conn is not None and proc is not None
        conn.send(None)
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    report.seconds = time.perf_counter() - t_start
    return report


def make_case_name(seeds: Seeds, seed: int, index: int, kinds: tuple[str, ...]) -> tuple[str, str]:
    kind, name, _ = make_case(seeds, seed, index, kinds)
    return kind, name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per case before it counts as a timeout")
    ap.add_argument("--mem-mb", type=int, default=1536, help="address-space ceiling per case above the worker's start")
    ap.add_argument("--slow", type=float, default=1.0, help="seconds above which a case is listed as an outlier")
    ap.add_argument("--rss-mb", type=float, default=200.0, help="RSS growth above which a case is listed")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every typed error class and outlier")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown kinds {sorted(unknown)}; expected a subset of {', '.join(KINDS)}")
    import sapiens2_edge

    print(f"fuzzing {Path(sapiens2_edge.__file__).parent}")
    r = run(args.cases, args.seed, kinds, args.time_limit, args.mem_mb, args.slow, args.rss_mb)
    print(f"{args.cases} cases, seed {args.seed}, {r.seconds:.1f} s "
          f"(slowest case {r.max_seconds:.2f} s, largest RSS growth {r.max_rss_mb:.0f} MB)")
    for outcome in ("ok", "typed", "untyped", "timeout", "memory", "slow", "rss"):
        print(f"  {outcome:8s} {r.counts[outcome]}")
    for kind, c in sorted(r.by_kind.items()):
        print(f"  [{kind}] " + ", ".join(f"{k}={v}" for k, v in sorted(c.items())))
    if args.verbose:
        for name, n in r.typed.most_common():
            print(f"  typed {name}: {n}")
    if r.findings:
        print(f"findings ({len(r.findings)}, {len(r.sites)} distinct sites):")
        for site, n in r.sites.most_common():
            print(f"  {n:5d} x {site}")
        for f in r.findings[:20]:
            print("   ", f)
    for o in r.outliers[: None if args.verbose else 10]:
        print("  outlier:", o)
    return 1 if r.bad else 0


if __name__ == "__main__":
    sys.exit(main())
