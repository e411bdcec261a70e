"""Releasing a mapped weights file's resident pages: only read-only mappings of that file, the data
reads back unchanged, and the OpenVINO backend holds its model.bin once (the plugin's repacked copy)
instead of twice."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from sapiens2_edge.runtime.page_release import mapped_ranges, release_mapped_file

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


@linux
def test_read_only_pages_are_released_and_read_back(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    f = tmp_path / "w.bin"
    data.tofile(f)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, np.uint8)
        assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page resident now
        assert resident_kb(f) >= 8 << 10
        assert release_mapped_file(f) == 8 << 20
        assert resident_kb(f) == 0
        np.testing.assert_array_equal(view, data)  # faulted back in from the file
        del view


@linux
def test_written_private_pages_are_kept(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(bytes(1 << 20))
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        m[:4] = b"edit"  # a private change, only in this mapping
        assert release_mapped_file(f) == 0
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
        resident_kept, outs_kept, _ = resident_after_runs(kept)
    assert resident_kept >= size_kb * 0.9  # OpenVINO read every page of the file while compiling
    # what it reads again while running (a few small constants) is all that comes back
    assert resident <= resident_kept / 2, (resident, resident_kept)
    for a, b in zip([*outs[0], *outs[1]], [*outs_kept[0], *outs[0]], strict=True):
        np.testing.assert_array_equal(a, b)
    assert verify_artifact(released)["passed"]
