"""Releasing a mapped weights file's resident pages: only read-only mappings of that file, the data
reads back unchanged, pages are given back while a runtime compiles too, and the OpenVINO backend
holds its model.bin once (the plugin's repacked copy) instead of twice; its results are arrays of
their own, never overwritten by a later call."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sapiens2_edge.runtime.page_release import PageReleaser, mapped_ranges, release_mapped_file

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise are Linux's")


def resident_kb(path: Path) -> int:
    """Rss (kB) of this process's mappings of ``path``, from /proc/self/smaps."""
    real, total, current = os.path.realpath(path), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
            current = len(head) == 6 and head[5] == real
        elif current and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_mapped_ranges_parses_proc_maps(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    maps = (f"7f0000000000-7f0000003000 r--p 00000000 08:01 42 {f}\n"
            f"7f0000003000-7f0000004000 rw-p 00003000 08:01 42 {f}\n"
            f"7f0000004000-7f0000005000 r--p 00000000 08:01 43 {tmp_path / 'other.bin'}\n"
            "7f0000005000-7f0000006000 rw-p 00000000 00:00 0\n")
    assert mapped_ranges(f, maps) == [(0x7F0000000000, 0x7F0000003000, "r--p"), (0x7F0000003000, 0x7F0000004000, "rw-p")]


@contextlib.contextmanager
def mapped_file(tmp_path: Path, seed: int):
    """An 8 MB file of random bytes mapped shared read-only (as OpenVINO maps model.bin): yields its path,
    its bytes and a view of the mapping."""
    data = np.random.default_rng(seed).integers(0, 255, 8 << 20, dtype=np.uint8)
    f = tmp_path / "w.bin"
    data.tofile(f)
    with open(f, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    yield f, data, np.frombuffer(m, np.uint8)  # unmapped when the caller drops the view


@contextlib.contextmanager
def privately_mapped_file(tmp_path: Path):
    """A 1 MB file of zeros mapped copy-on-write: yields its path and the mapping."""
    f = tmp_path / "w.bin"
    f.write_bytes(bytes(1 << 20))
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        yield f, m


def reads_every_page(view: np.ndarray, data: np.ndarray) -> bool:
    return int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))


@linux
def test_read_only_pages_are_released_and_read_back(tmp_path):
    with mapped_file(tmp_path, seed=0) as (f, data, view):
        assert reads_every_page(view, data)  # every page resident now
        assert resident_kb(f) >= 8 << 10
        assert release_mapped_file(f) == 8 << 20
        assert resident_kb(f) == 0
        np.testing.assert_array_equal(view, data)  # faulted back in from the file


@linux
def test_written_private_pages_are_kept(tmp_path):
    with privately_mapped_file(tmp_path) as (f, m):
        m[:4] = b"edit"  # a private change, only in this mapping
        assert release_mapped_file(f) == 0
        assert m[:4] == b"edit" and f.read_bytes()[:4] == bytes(4)


def wait_until(condition, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@linux
def test_shared_read_only_pages_are_released_while_a_block_runs(tmp_path):
    with mapped_file(tmp_path, seed=2) as (f, data, view):
        assert [p for _, _, p in mapped_ranges(f, Path("/proc/self/maps").read_text())] == ["r--s"]
        with PageReleaser(f, interval=0.01) as releaser:
            assert reads_every_page(view, data)
            assert wait_until(lambda: resident_kb(f) == 0), resident_kb(f)
        assert releaser.rounds >= 1
        rounds = releaser.rounds
        np.testing.assert_array_equal(view, data)  # faulted back in, and kept once the block is done
        time.sleep(0.05)
        assert releaser.rounds == rounds and resident_kb(f) >= 8 << 10


@linux
def test_private_mappings_are_left_alone_while_a_block_runs(tmp_path):
    with privately_mapped_file(tmp_path) as (f, m):
        with PageReleaser(f, interval=0.01) as releaser:
            m[:4] = b"edit"
            assert wait_until(lambda: releaser.rounds >= 3)
        assert m[:4] == b"edit" and f.read_bytes()[:4] == bytes(4)


@linux
def test_nothing_mapped_is_nothing_released(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    assert release_mapped_file(f) == 0
    assert release_mapped_file(tmp_path / "missing.bin") == 0


@linux
def test_openvino_backend_holds_the_weights_once(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import sapiens2_edge as s2e
    from sapiens2_edge.runtime import openvino_backend, verify_artifact
    from tests.fixtures.tiny import INPUT, tiny_model

    x = np.random.default_rng(1).standard_normal((1, 3, *INPUT)).astype(np.float32)

    def resident_after_runs(root: Path) -> tuple[int, list, int]:
        backend = openvino_backend.OpenVINOBackend(root / "openvino" / "model.xml")
        outs = [backend(x), backend(x)]
        return resident_kb(root / "openvino" / "model.bin"), outs, backend.released_bytes

    model = tiny_model("seg", seed=3)
    kept = s2e.export(model, tmp_path / "kept", format="openvino", input_size=INPUT, max_batch=1)
    released = s2e.export(model, tmp_path / "released", format="openvino", input_size=INPUT, max_batch=1)
    size_kb = (released / "openvino" / "model.bin").stat().st_size // 1024
    resident, outs, advised = resident_after_runs(released)
    assert advised >= size_kb * 1024
    with monkeypatch.context() as m:
        m.setattr(openvino_backend, "release_mapped_file", lambda path: 0)
        m.setattr(openvino_backend, "PageReleaser", lambda path: contextlib.nullcontext())
        resident_kept, outs_kept, _ = resident_after_runs(kept)
    assert resident_kept >= size_kb * 0.9  # OpenVINO read every page of the file while compiling
    # what it reads again while running (a few small constants) is all that comes back
    assert resident <= resident_kept / 2, (resident, resident_kept)
    for a, b in zip([*outs[0], *outs[1]], [*outs_kept[0], *outs[0]], strict=True):
        np.testing.assert_array_equal(a, b)
    assert verify_artifact(released)["passed"]


def test_openvino_results_are_arrays_of_their_own(tmp_path, monkeypatch):
    """OpenVINO writes each call's results into new arrays (no copy afterwards): equal to the copied
    results, and a caller's earlier result is not overwritten by the next call; batches of any size
    up to max_batch and outputs whose shape is only known after running (copied) both work."""
    pytest.importorskip("openvino")
    import sapiens2_edge as s2e
    from sapiens2_edge.runtime import openvino_backend
    from tests.fixtures.tiny import INPUT, tiny_model

    rng = np.random.default_rng(4)
    x1, x2 = (rng.standard_normal((2, 3, *INPUT)).astype(np.float32) for _ in range(2))
    root = s2e.export(tiny_model("pose", seed=5), tmp_path / "a", format="openvino", input_size=INPUT, max_batch=2)
    backend = openvino_backend.OpenVINOBackend(root / "openvino" / "model.xml", max_batch=2)
    assert backend._fresh_outputs(2) is not None
    first = backend(x1)
    kept = [a.copy() for a in first]
    second = backend(x2)
    one = backend(x1[:1])
    for a, b in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    with monkeypatch.context() as m:
        m.setattr(openvino_backend.OpenVINOBackend, "_fresh_outputs", lambda self, batch: None)
        copying = openvino_backend.OpenVINOBackend(root / "openvino" / "model.xml", max_batch=2)
        copied = [copying(x1), copying(x2), copying(x1[:1])]
    for got, want in zip([first, second, one], copied, strict=True):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.flags.owndata and a.flags.writeable
            np.testing.assert_array_equal(a, b)
    assert one[0].shape[0] == 1 and not np.array_equal(first[0], second[0])


def test_onnxruntime_backend_gives_back_the_freed_heap_after_loading(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    import sapiens2_edge.runtime.onnxruntime_backend as backend

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in ("image", "out")]
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g", io[:1],
                                                io[1:]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "m.onnx")
    calls = []
    monkeypatch.setattr(backend, "release_freed_heap", lambda: calls.append(True) or True)
    b = backend.OnnxRuntimeBackend(tmp_path / "m.onnx", providers=["CPUExecutionProvider"])
    assert calls == [True] and b.session is not None
