"""Fuzz the native engine's parsers (safetensors container, JSON, engine configuration) through the
bindings with atheris. Any exception other than the typed errors they promise is a finding; a crash
of the process (the C++ code) is one too.

    python scripts/fuzz_native_parser.py -max_total_time=20        # libFuzzer options pass through
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not installed

with atheris.instrument_imports():
    from sapiens2_edge.errors import ArtifactError, CorruptCheckpointError
    from sapiens2_edge.runtime.native_backend import import_native

native = import_native()


def seeds() -> list[bytes]:
    """Valid inputs to start from: a small safetensors file and an engine configuration."""
    header = {"__metadata__": {"k": "v"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "q": {"dtype": "I8", "shape": [3], "data_offsets": [16, 19]}}
    raw = json.dumps(header).encode()
    st = struct.pack("<Q", len(raw)) + raw + bytes(range(19))
    config = {"arch": {"embed_dim": 64, "depth": 2, "num_heads": 4, "kv_heads": [4, 2], "ffn_hidden": 256},
              "head": {"task": "seg", "in_channels": 64, "out_channels": 29, "deconv": [16], "conv": [16]},
              "rope_mode": "bf16", "input_size": [128, 96], "max_batch": 2}
    return [b"\x00" + st, b"\x01" + json.dumps(config).encode(), b"\x02" + json.dumps(config).encode()]


SEEDS = seeds()
TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"-1", b"18446744073709551615", b"1e308", b"\\u", b"null",
          b'"F8_E4M3"', b'"data_offsets"', b"\xff", b"\x00" * 8]


def mutate(fdp: atheris.FuzzedDataProvider) -> tuple[int, bytes]:
    """A valid seed with a few structured edits: the C++ code is not coverage-instrumented, so
    near-valid inputs reach far deeper into the parsers than random bytes do."""
    kind = fdp.ConsumeIntInRange(0, 2)
    b = bytearray(SEEDS[kind][1:])
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        op = fdp.ConsumeIntInRange(0, 4)
        pos = fdp.ConsumeIntInRange(0, len(b)) if b else 0
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << fdp.ConsumeIntInRange(0, 7)
        elif op == 1:
            b[pos:pos] = TOKENS[fdp.ConsumeIntInRange(0, len(TOKENS) - 1)]
        elif op == 2:
            del b[pos:pos + fdp.ConsumeIntInRange(1, 16)]
        elif op == 3:
            del b[pos:]
        else:
            b[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
    return kind, bytes(b)


def test_one_input(data: bytes) -> None:
    kind, body = mutate(atheris.FuzzedDataProvider(data))
    try:
        if kind == 0:
            tensors, meta = native.parse_safetensors(body)
            assert isinstance(tensors, dict) and isinstance(meta, dict)
        elif kind == 1:
            native.parse_json(body)
        else:
            native.parse_config(body)
    except (CorruptCheckpointError, ArtifactError):
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
