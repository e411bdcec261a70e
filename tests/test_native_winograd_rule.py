"""Where the native engine's float32 heads run by Winograd: the rule per CPU kind (winograd::choose_tile), set
by one-layer measurements against oneDNN's direct kernels (cpp/include/s2e/winograd.hpp,
benchmarks/results/cpu_peers.md), and the engine reading which kind its CPU is. The rule is a pure function
of the layer's shape and the CPU kind: it runs without oneDNN."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sapiens2_edge.runtime.native_backend import import_native, onednn_status

native = import_native()

#: (cin, cout, H, W, transposed) -> the tile on an AVX2 CPU and on an AVX-512 one, by the layer measurements
#: that set the rule: the heads' layers of 0.1b / 0.4b and narrow or small ones
RULE = [
    ((768, 768, 32, 24, False), (2, 0)),  # AVX-512: a tie on 32x24
    ((768, 3072, 32, 24, False), (2, 0)),
    ((768, 2048, 64, 48, False), (4, 4)),
    ((1024, 3072, 64, 48, False), (4, 4)),
    ((256, 512, 256, 192, False), (4, 4)),
    ((256, 128, 512, 384, False), (4, 4)),  # at the channel threshold
    ((128, 64, 512, 384, False), (0, 0)),  # narrower: direct on both
    ((768, 512, 32, 24, True), (4, 0)),  # 48 tiles per phase: 4x4 on AVX2, a loss on AVX-512
    ((512, 256, 64, 48, True), (4, 0)),
    ((256, 128, 128, 96, True), (4, 0)),
    ((512, 512, 64, 48, True), (4, 4)),  # on both AVX-512 limits (tests/test_native_winograd.py's wide seg head)
    ((1024, 512, 64, 48, True), (4, 4)),
    ((1024, 1024, 64, 48, True), (4, 4)),
    ((1024, 768, 128, 96, True), (4, 4)),
    ((1024, 768, 32, 24, True), (4, 0)),  # wide enough, too few tiles on AVX-512
    ((256, 128, 16, 12, True), (2, 0)),  # 12 tiles: 2x2 on AVX2
    ((128, 64, 256, 192, True), (0, 0)),
]


@pytest.mark.parametrize("layer, tiles", RULE, ids=[f"{'deconv' if t else 'conv'}{a}-{b}@{h}x{w}"
                                                      for (a, b, h, w, t), _ in RULE])
def test_winograd_where_it_measured_faster(layer, tiles):
    cin, cout, h, w, deconv = layer
    tiles_4x4 = ((h + 3) // 4) * ((w + 3) // 4)
    for avx512, tile in zip((False, True), tiles, strict=True):
        assert native.winograd_tile(*layer, avx512=avx512) == tile, (layer, avx512)
        # every layer when forced: 4x4 tiles on AVX-512; on AVX2 2x2 below the 4x4 tiles' threshold
        expected = 4 if avx512 or tiles_4x4 >= (48 if deconv else 128) else 2
        assert native.winograd_tile(*layer, avx512=avx512, forced=True) == expected, (layer, avx512)


def test_the_rule_follows_this_cpus_kernels():
    """Without an explicit CPU kind the rule is this CPU's: AVX-512 where oneDNN's kernels are AVX-512 ones,
    which on Linux is where /proc/cpuinfo lists AVX-512's F, BW, VL and DQ (oneDNN's avx512_core)."""
    usable = onednn_status()[0]  # oneDNN loaded as the backend loads it (before any engine)
    layer = (768, 512, 32, 24, True)  # a layer whose tile differs by CPU kind
    assert native.winograd_tile(*layer) == native.winograd_tile(*layer, avx512=native.onednn_avx512())
    cpuinfo = Path("/proc/cpuinfo")
    if not usable or not cpuinfo.is_file() or os.environ.get("ONEDNN_MAX_CPU_ISA"):
        pytest.skip("compares oneDNN's kernels with the CPU's flags: needs oneDNN, /proc/cpuinfo and no ISA cap")
    flags = set(cpuinfo.read_text().split())
    assert native.onednn_avx512() == ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)
