"""The C heap while torch runs: inside ``reuse_freed_pages`` a large block freed and allocated again
is served from pages already resident (no page faults), glibc's thresholds come back when the last
block ends, ``release`` gives the pages back, and the torch backend, the quantizer and the export's
reference forwards run inside it. Page faults are counted by the kernel (``ru_minflt``), so these
checks do not depend on the machine's speed."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sapiens2_edge.heap as heap
from sapiens2_edge.heap import release_freed_heap, reuse_depth, reuse_freed_pages
from tests.fixtures.tiny import INPUT, tiny_model

ROOT = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(heap._glibc() is None, reason="mallopt / malloc_trim are glibc's")

BLOCK = 64 << 20  # above glibc's largest mmap threshold (32 MiB): served by mmap unless told otherwise
PAGES = BLOCK // 4096


def _libc():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def faults_of_reallocating(rounds: int = 3) -> int:
    """Minor page faults of allocating, writing and freeing one BLOCK ``rounds`` times, after a first
    round that may fault its pages in."""
    libc = _libc()
    p = libc.malloc(BLOCK)
    ctypes.memset(p, 1, BLOCK)
    libc.free(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        p = libc.malloc(BLOCK)
        ctypes.memset(p, 1, BLOCK)
        libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _scenario(name: str) -> dict:
    """The fault counts of one scenario (run by :func:`_fresh`)."""
    out = {"depth_before": reuse_depth()}
    if name in ("reuse", "off"):  # "off": run with the opt-out set in the environment
        with reuse_freed_pages() as on:
            out.update(on=on, depth_inside=reuse_depth(), inside=faults_of_reallocating())
    elif name == "nest":
        with reuse_freed_pages():
            with reuse_freed_pages():
                out["depth_inner"] = reuse_depth()
            out.update(depth_inside=reuse_depth(), inside=faults_of_reallocating())
    elif name == "exception":
        try:
            with reuse_freed_pages():
                raise ValueError("boom")
        except ValueError as e:
            out["raised"] = str(e)
    out.update(depth_after=reuse_depth(), after=faults_of_reallocating())
    return out


def _fresh(name: str, **env: str) -> dict:
    """:func:`_scenario` in a fresh interpreter: glibc's heap is process-wide, and what earlier tests of
    this process left in it (a large resident top, say) can serve the block without faults whatever the
    thresholds say."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_heap import _scenario; "
            f"print(json.dumps(_scenario({name!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


MAPPED_AFRESH = 3 * PAGES * 9 // 10  # glibc's mmap per allocation: every page of three rounds faulted in


@glibc
def test_a_freed_block_is_reused_without_faults_inside_and_mapped_afresh_after():
    r = _fresh("reuse")
    assert r["depth_before"] == 0 and r["on"] and r["depth_inside"] == 1 and r["depth_after"] == 0
    assert r["inside"] < PAGES // 10, r  # three rounds of 16384 pages each, served from resident ones
    assert r["after"] >= MAPPED_AFRESH, r


@glibc
def test_blocks_nest_and_the_last_to_end_restores_glibc():
    r = _fresh("nest")
    assert r["depth_inner"] == 2 and r["depth_inside"] == 1 and r["depth_after"] == 0
    assert r["inside"] < PAGES // 10, r  # the inner block's end changed nothing
    assert r["after"] >= MAPPED_AFRESH, r


@glibc
def test_an_exception_inside_still_restores_glibc():
    r = _fresh("exception")
    assert r["raised"] == "boom" and r["depth_after"] == 0
    assert r["after"] >= MAPPED_AFRESH, r


@glibc
def test_release_gives_the_kept_pages_back_when_the_policy_ends():
    libc = _libc()
    with reuse_freed_pages(release=True):
        p = libc.malloc(2 * BLOCK)
        ctypes.memset(p, 1, 2 * BLOCK)
        libc.free(p)
        held = _rss_bytes()  # freed, still resident: that is the policy
    assert held - _rss_bytes() > BLOCK


@glibc
def test_turned_off_by_the_environment():
    r = _fresh("off", **{heap.OPT_OUT: "0"})
    assert not r["on"] and r["depth_inside"] == 0
    assert r["inside"] >= MAPPED_AFRESH, r


def test_nothing_changes_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with reuse_freed_pages(release=True) as on:
        assert not on and reuse_depth() == 0
    assert release_freed_heap() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux's")
@glibc
def test_freed_heap_pages_go_back_to_the_system():
    """128 MiB of 64 KiB heap blocks (below glibc's mmap threshold), freed under a block that keeps the
    heap's top: they stay resident until ``release_freed_heap``."""
    libc = _libc()
    size, count = 64 << 10, 2048
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    top = libc.malloc(size)
    try:
        for b in blocks:
            libc.free(b)
        held = _rss_bytes()
        assert release_freed_heap()
        assert held - _rss_bytes() > 96 << 20
    finally:
        libc.free(top)


def _depth_seen_by(model) -> list[int]:
    seen: list[int] = []
    model.backbone.register_forward_pre_hook(lambda *_: seen.append(reuse_depth()))
    return seen


@glibc
def test_the_torch_backend_runs_inside_and_ends_it():
    from sapiens2_edge.runtime.torch_backend import TorchBackend

    model = tiny_model("seg")
    seen = _depth_seen_by(model)
    out = TorchBackend(model, device="cpu")(np.zeros((1, 3, *INPUT), np.float32))
    assert seen == [1] and reuse_depth() == 0
    assert out[0].shape == (1, 29, *INPUT)


@glibc
def test_quantizing_runs_every_forward_inside():
    from sapiens2_edge.quantization import quantize

    model = tiny_model("seg")
    seen = _depth_seen_by(model)
    calib = [torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(0))]
    quantize(model, "int8", calibration=calib, input_size=INPUT, calibration_precision="fp32")
    assert seen and min(seen) >= 1 and reuse_depth() == 0


@glibc
def test_the_exports_reference_forward_runs_inside():
    from sapiens2_edge.exporters import torch_outputs

    model = tiny_model("seg")
    seen = _depth_seen_by(model)
    ref = torch_outputs(model, np.zeros((1, 3, *INPUT), np.float32))
    assert seen == [1] and reuse_depth() == 0 and ref[0].shape == (1, 29, *INPUT)


def test_the_bench_baseline_is_plain_torch_outside_it(monkeypatch):
    """``sapiens2-edge bench`` compares against what a user's own torch code runs: glibc's default heap and
    the head's layers one by one (not the torch backend's lean head)."""
    import sapiens2_edge.models.lean_head as lean_head
    from sapiens2_edge.bench import plain_torch
    from sapiens2_edge.models.lean_head import layer_by_layer
    from sapiens2_edge.runtime.torch_backend import TorchBackend

    model = tiny_model("seg").eval()
    seen = _depth_seen_by(model)
    lean = []
    run_units = lean_head.run_units
    monkeypatch.setattr(lean_head, "run_units", lambda *a: lean.append(1) or run_units(*a))
    x = np.random.default_rng(0).normal(size=(1, 3, *INPUT)).astype(np.float32)
    base = plain_torch(model)(x)
    assert seen == [0] and lean == []
    ours = TorchBackend(model, device="cpu")(x)[0]
    assert lean == [1]
    np.testing.assert_allclose(base[0], ours, rtol=1e-4, atol=1e-5)  # the lean head's rounding
    with layer_by_layer():
        np.testing.assert_array_equal(base[0], TorchBackend(model, device="cpu")(x)[0])
