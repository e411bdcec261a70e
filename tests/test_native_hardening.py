"""The native engine survives a weights file changed under it, and bounds its inputs before work.

A weights file truncated or rewritten in place while a Predictor holds it open must give a typed
error, never kill the process (a memory-mapped file does: SIGBUS). Each such case runs in a child
process, so that a crash fails the test instead of killing pytest. Sizes that would cost minutes
(a manifest input_size of 8192x6144, a header with huge dims) are refused at once.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.errors import ArtifactError, CorruptCheckpointError, InputSizeError
from sapiens2_edge.exporters import export
from sapiens2_edge.runtime.native_backend import NativeBackend, import_native
from tests.fixtures.tiny import INPUT, TINY_4K, tiny_model

ROOT = Path(__file__).resolve().parents[1]
CHANGED = "changed since it was opened"
FAST_S = 2.0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Two fp32 seg artifacts of the same architecture (same file size, other weights), an
    int8-weight one, and a pose one (another file size)."""
    base = tmp_path_factory.mktemp("hard")
    seg = tiny_model("seg", seed=2)
    q, _ = s2e.quantize(tiny_model("seg", seed=5), scheme="int8-weight", progress=False)
    return {
        "fp32": export(seg, base / "fp32", format="native", input_size=INPUT, verify=False),
        "other": export(tiny_model("seg", seed=3), base / "other", format="native", input_size=INPUT, verify=False),
        "int8": export(q, base / "int8", format="native", input_size=INPUT, verify=False),
        "pose": export(tiny_model("pose", seed=4), base / "pose", format="native", input_size=INPUT, verify=False),
    }


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


CHILD = """
import os, sys, time, threading
import numpy as np
import sapiens2_edge as s2e
from sapiens2_edge.errors import CorruptCheckpointError

root, mode, other = sys.argv[1], sys.argv[2], sys.argv[3]
weights = os.path.join(root, "weights.safetensors")
new = open(other, "rb").read()
pred = s2e.Predictor(root, backend="native")
x = np.random.default_rng(0).standard_normal((1, 3, 128, 96)).astype(np.float32)
before = pred.runner(x)[0]
time.sleep(0.02)  # a later modification time than the file's, whatever the clock's granularity

if mode == "truncate":
    os.truncate(weights, os.path.getsize(weights) // 2)
elif mode == "rewrite":      # a new artifact's weights written over the file in place
    with open(weights, "wb") as f:
        f.write(new)
elif mode == "replace":      # a new file renamed over the old one
    with open(weights + ".tmp", "wb") as f:
        f.write(new)
    os.replace(weights + ".tmp", weights)
elif mode == "during":       # the file truncated and rewritten while runs are in flight
    stop = threading.Event()
    def churn():
        old = open(weights, "rb").read()
        while not stop.is_set():
            os.truncate(weights, len(old) // 3)
            with open(weights, "r+b") as f:
                f.write(old)
    t = threading.Thread(target=churn)
    t.start()
    outcomes = set()
    for _ in range(30):
        try:
            pred.runner(x)
            outcomes.add("ran")
        except CorruptCheckpointError as e:
            assert "changed since it was opened" in str(e), e
            outcomes.add("refused")
    stop.set()
    t.join()
    print("DURING", sorted(outcomes))
    sys.exit(0)

try:
    after = pred.runner(x)[0]
except CorruptCheckpointError as e:
    print("REFUSED", e)
else:
    print("RAN", bool(np.array_equal(before, after)))
"""


def run_child(root: Path, mode: str, other: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), mode, str(other / "weights.safetensors")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    # A negative return code is a signal (SIGBUS = -7): the crash this file guards against.
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_truncated_weights_refused_not_crash(artifacts, kind, tmp_path):
    out = run_child(fresh_copy(artifacts[kind], tmp_path / "a"), "truncate", artifacts["pose"])
    assert out.startswith("REFUSED") and CHANGED in out and "reopen the artifact" in out, out
    assert "weights.safetensors" in out and "bytes" in out, out


def test_rewritten_with_other_size_refused(artifacts, tmp_path):
    out = run_child(fresh_copy(artifacts["fp32"], tmp_path / "a"), "rewrite", artifacts["pose"])
    assert out.startswith("REFUSED") and CHANGED in out and "size" in out, out


def test_same_size_rewrite_in_place_refused(artifacts, tmp_path):
    other = artifacts["other"] / "weights.safetensors"
    assert other.stat().st_size == (artifacts["fp32"] / "weights.safetensors").stat().st_size
    out = run_child(fresh_copy(artifacts["fp32"], tmp_path / "a"), "rewrite", artifacts["other"])
    assert out.startswith("REFUSED") and CHANGED in out and "same size" in out, out


def test_replaced_file_keeps_serving_the_opened_weights(artifacts, tmp_path):
    """A file renamed over the weights (the atomic way to update a file) leaves the opened one (its
    inode) intact and still open, so the Predictor keeps running the weights it validated, unchanged."""
    root = fresh_copy(artifacts["fp32"], tmp_path / "a")
    out = run_child(root, "replace", artifacts["other"])
    assert out.strip() == "RAN True", out


def test_changes_during_runs_never_crash(artifacts, tmp_path):
    out = run_child(fresh_copy(artifacts["int8"], tmp_path / "a"), "during", artifacts["other"])
    assert out.startswith("DURING") and "refused" in out, out


def test_unchanged_file_still_matches_after_many_runs(artifacts):
    backend = NativeBackend(artifacts["int8"])
    x = np.random.default_rng(1).standard_normal((2, 3, *INPUT)).astype(np.float32)
    first = backend(x)[0]
    for _ in range(3):
        assert np.array_equal(backend(x)[0], first)


# --- bounds before work -----------------------------------------------------------------------

def with_manifest(src: Path, dst: Path, **changes) -> Path:
    root = fresh_copy(src, dst)
    m = json.loads((root / "manifest.json").read_text())
    m.update(changes)
    (root / "manifest.json").write_text(json.dumps(m))
    return root


@pytest.mark.parametrize("size,match", [
    ([8192, 6144], "input size 8192x6144 is larger than the engine takes: at most 2048 a side and 3145728 pixels"),
    ([2048, 2048], "larger than the engine takes"),
    ([1 << 40, 16], "larger than the engine takes"),
    ([1000, 768], "input size 1000x768 is not a positive multiple of 16 in both sides"),
    ([0, 768], "not a positive multiple of 16"),
])
def test_manifest_input_size_bounded(artifacts, tmp_path, size, match):
    root = with_manifest(artifacts["fp32"], tmp_path / "a", input_size=size)
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=match):
        s2e.Predictor(root, backend="native")
    assert time.perf_counter() - start < FAST_S


def test_largest_input_sizes_accepted(artifacts, tmp_path):
    native = import_native()
    for size in ([2048, 1536], [1536, 2048]):
        root = with_manifest(artifacts["fp32"], tmp_path / f"a{size[0]}", input_size=size)
        assert native.Engine(str(root)).input_size == tuple(size)


def test_4k_input_size_bounded(tmp_path):
    model = tiny_model("seg", TINY_4K, seed=6)
    root = export(model, tmp_path / "k", format="native", input_size=(256, 192), verify=False)
    native = import_native()
    ok = with_manifest(root, tmp_path / "ok", input_size=[4096, 3072])
    assert native.Engine(str(ok)).input_size == (4096, 3072)
    big = with_manifest(root, tmp_path / "big", input_size=[4096, 4096])
    with pytest.raises(ArtifactError, match="at most 4096 a side and 12582912 pixels \\(4096x3072, the 4K model"):
        native.Engine(str(big))
    odd = with_manifest(root, tmp_path / "odd", input_size=[256, 208])
    with pytest.raises(ArtifactError, match="not a positive multiple of 64 in both sides \\(the 4K tokenizer"):
        native.Engine(str(odd))


@pytest.mark.parametrize("value,match", [
    (0, "max_batch = 0 is outside 1..1024"),
    (10**9, "max_batch = 1000000000 is outside 1..1024"),
    ("8", "max_batch must be an integer, found a string"),
    (2.5, "max_batch must be an integer, found a number"),
])
def test_manifest_max_batch_bounded(artifacts, tmp_path, value, match):
    root = with_manifest(artifacts["fp32"], tmp_path / "a", max_batch=value)
    with pytest.raises(ArtifactError, match=match):
        NativeBackend(root)


def test_run_refuses_oversized_input_fast(artifacts):
    engine = NativeBackend(artifacts["fp32"]).engine
    x = np.zeros((1, 3, 4096, 4096), np.float32)  # untouched zero pages: cheap to hand over
    start = time.perf_counter()
    with pytest.raises(InputSizeError, match="input size 4096x4096 is larger than the engine takes"):
        engine.run(x)
    assert time.perf_counter() - start < FAST_S


def header_only(tensors: dict, data: bytes = b"") -> bytes:
    header = json.dumps(tensors).encode()
    return struct.pack("<Q", len(header)) + header + data


HUGE = {"w": {"dtype": "F32", "shape": [1 << 32] * 8, "data_offsets": [0, 8]}}


def test_huge_dims_rejected_fast_in_memory():
    native = import_native()
    start = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="overflows the 8 data bytes of the file"):
        native.parse_safetensors(header_only(HUGE, b"\0" * 8))
    assert time.perf_counter() - start < FAST_S


def test_huge_dims_rejected_fast_on_disk(artifacts, tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(header_only(HUGE, b"\0" * 8))
    native = import_native()
    start = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="overflows"):
        native.read_safetensors_header(str(path))
    root = fresh_copy(artifacts["fp32"], tmp_path / "a")
    (root / "weights.safetensors").write_bytes(header_only(HUGE, b"\0" * 8))
    with pytest.raises(CorruptCheckpointError, match="overflows"):
        native.Engine(str(root))
    assert time.perf_counter() - start < FAST_S


def test_empty_tensor_with_huge_dims_is_valid():
    native = import_native()
    tensors, _ = native.parse_safetensors(header_only({"e": {"dtype": "F32", "shape": [1 << 62, 0],
                                                             "data_offsets": [0, 0]}}))
    assert tensors == {"e": ("F32", [1 << 62, 0])}

