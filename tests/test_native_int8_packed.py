"""The native engine's W8A8 linears on int8 weights packed once into oneDNN's layout (the default) against
the same weights read from the file in every call ($S2E_NATIVE_INT8_WEIGHTS=file): exact int32 products
against numpy's, bit-identical outputs at every batch and input size, the memory it keeps, and the errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.models.safetensors_header import read_header
from sapiens2_edge.runtime.native_backend import NativeBackend, import_native, onednn_status
from tests.fixtures.tiny import INPUT, INPUT_4K, TINY_4K, tiny_model

native = import_native()
usable = onednn_status()[0]
pytestmark = pytest.mark.skipif(not usable,
                                reason="no oneDNN: its wheel (the [onednn] extra, in [all]) exists for Linux x86-64 only")


EXACT_INT8 = usable and native.onednn_exact_int8()
needs_exact_int8 = pytest.mark.skipif(not EXACT_INT8, reason="this CPU has no VNNI / AMX int8 kernels: the engine "
                                                              "reads its int8 weights per call")


@pytest.fixture(autouse=True)
def default_int8_weights(monkeypatch):
    """The engine's default, whatever the calling shell set."""
    monkeypatch.delenv("S2E_NATIVE_INT8_WEIGHTS", raising=False)


@needs_exact_int8
@pytest.mark.parametrize("m,k,n", [(777, 768, 2304), (3081, 256, 64), (17, 64, 48), (3, 17, 5)])
def test_packed_products_are_exact_at_every_row_count(m, k, n):
    """Packed for m rows, the product of any number of rows (1, a few, m, more) is numpy's, at the int8
    extremes too (-128 x -128 sums are where a kernel that pairs products in int16 saturates). oneDNN may
    refuse another row count (None: the engine then multiplies the stored weights), never the packed one."""
    rng = np.random.default_rng(m + k + n)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    w[0] = -128
    for rows in (1, 5, m, 2 * m + 1):
        a = rng.integers(-128, 128, (rows, k), dtype=np.int8)
        a[0] = -128
        got = native.int8_matmul_packed(a, w, m)
        if got is None:
            assert rows != m
            continue
        c, size = got
        assert np.array_equal(c, a.astype(np.int64) @ w.astype(np.int64).T), rows
        assert size >= n * k  # the weights, blocked and padded, with their compensation


def test_packing_needs_exact_int8_kernels():
    a = np.ones((2, 4), np.int8)
    if EXACT_INT8:
        with pytest.raises(ValueError, match=r"int8_matmul_packed takes a \(M, K\) and w \(N, K\), both int8"):
            native.int8_matmul_packed(a, np.ones((3, 5), np.int8), 2)
        return
    with pytest.raises(ConfigError, match="packed int8 weights need VNNI or AMX int8 kernels"):
        native.int8_matmul_packed(a, a, 2)


def quantized_artifact(tmp_path, model, size, **options):
    calib = [torch.from_numpy(verification_inputs(size, batch=1, seed=s)) for s in range(20, 24)]
    qmodel, _ = s2e.quantize(model, "int8", calibration=calib, input_size=size, activation_mode="static",
                             progress=False, **options)
    return export(qmodel, tmp_path / "a", format="native", input_size=size, max_batch=2, verify=False)


def int8_linear_bytes(root) -> int:
    """Bytes of the stored int8 linear weights (the head's int8 convolutions are 4-d)."""
    tensors = read_header(root / "weights.safetensors").tensors.values()
    return sum(t.end - t.begin for t in tensors if t.dtype == "I8" and len(t.shape) == 2)


@needs_exact_int8
@pytest.mark.parametrize("tokenizer", [False, True], ids=["seg", "seg-4k"])
def test_packed_weights_give_the_outputs_of_weights_read_per_call(tokenizer, tmp_path, monkeypatch):
    """Every batch and input size, including ones the weights were not packed for, bit for bit (int32 sums
    are exact whichever layout the kernel reads)."""
    model = tiny_model("seg", TINY_4K, seed=3) if tokenizer else tiny_model("seg", seed=3)
    size = INPUT_4K if tokenizer else INPUT
    root = quantized_artifact(tmp_path, model, size, quantize_tokenizer=tokenizer)
    packed = NativeBackend(root)
    assert packed.engine.int8_weights_mode == "packed"
    monkeypatch.setenv("S2E_NATIVE_INT8_WEIGHTS", "file")
    per_call = NativeBackend(root)
    assert per_call.engine.int8_weights_mode == "file" and per_call.engine.packed_bytes == 0
    assert packed.engine.packed_bytes >= int8_linear_bytes(root)
    assert "packed once" in packed.describe() and "packed once" not in per_call.describe()
    h, w = size
    step = 64 if tokenizer else 16
    for batch, hw in [(1, size), (2, size), (1, (h + step, w - step))]:
        x = verification_inputs(hw, batch=batch, seed=batch)
        for a, b in zip(packed(x), per_call(x), strict=True):
            assert np.array_equal(a, b), (batch, hw)


def test_unknown_int8_weights_place_is_refused(tmp_path, monkeypatch):
    root = quantized_artifact(tmp_path, tiny_model("seg", seed=3), INPUT)
    monkeypatch.setenv("S2E_NATIVE_INT8_WEIGHTS", "mmap")
    with pytest.raises(ConfigError, match="S2E_NATIVE_INT8_WEIGHTS='mmap' is not a place the engine keeps int8 "
                                          "weights; expected 'packed' or 'file'"):
        NativeBackend(root)


def test_float_artifacts_and_cpus_without_exact_int8_read_weights_per_call(tmp_path):
    """Nothing is packed where there are no W8A8 layers, nor where oneDNN's int8 kernels would pair products
    in int16 (here: oneDNN capped at AVX2 without VNNI, in a child process)."""
    model = tiny_model("seg", seed=3)
    fp32 = NativeBackend(export(model, tmp_path / "f", format="native", input_size=INPUT, verify=False))
    assert fp32.engine.int8_weights_mode == "file" and fp32.engine.packed_bytes == 0
    root = quantized_artifact(tmp_path, model, INPUT)
    code = ("from sapiens2_edge.runtime.native_backend import NativeBackend\n"
            f"e = NativeBackend({str(root)!r}).engine\n"
            "print(e.int8_weights_mode, e.packed_bytes)\n")
    env = {k: v for k, v in os.environ.items() if k != "S2E_NATIVE_INT8_WEIGHTS"} | {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["file", "0"], out.stderr
