"""The C++ side of the native engine: configure + build with CMake into a temporary directory and
run ctest (the unit tests, and engine cases compared with torch), in a Release build and in an
AddressSanitizer + UndefinedBehaviorSanitizer build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sapiens2_edge.cpu_features import bf16_flags
from sapiens2_edge.exporters import export, verification_inputs
from sapiens2_edge.runtime.native_backend import onednn_library
from tests.fixtures.tiny import INPUT_4K, TINY, TINY_4K, input_size, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine_cases(tmp_path_factory) -> Path:
    """Tiny native artifacts with a torch input/output pair each, as raw float32 files."""
    base = tmp_path_factory.mktemp("cases")
    lines = []
    for task, arch in [("seg", TINY), ("pose", TINY), ("normal", TINY), ("albedo", TINY), ("pointmap", TINY),
                       ("seg", TINY_4K)]:
        model = tiny_model(task, arch, seed=4)
        size = INPUT_4K if arch.is_4k else input_size(task)
        root = export(model, base / f"{task}-{arch.name}", format="native", input_size=size, verify=False)
        x = verification_inputs(size, batch=2 if task == "seg" else 1, seed=7)
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
        outs = out if isinstance(out, tuple) else (out,)
        x.tofile(root / "input.f32")
        for i, o in enumerate(outs):
            o.numpy().astype(np.float32).tofile(root / f"expected_{i}.f32")
        lines.append(f"{root} {x.shape[0]} {size[0]} {size[1]} {len(outs)}")
    (base / "cases.txt").write_text("\n".join(lines) + "\n")
    return base / "cases.txt"


def build_and_test(build: Path, cases: Path, *options: str, env: dict | None = None) -> str:
    env = {**os.environ, "S2E_ENGINE_CASES": str(cases), "OMP_NUM_THREADS": "2", **(env or {})}
    # the BLAS comes from the scipy-openblas32 wheel of the Python running the tests (a venv's, in CI)
    python = f"-DPython3_EXECUTABLE={sys.executable}"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), python, *options], check=True, capture_output=True,
                   env=env)
    proc = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure", "-V"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_ctest_release(tmp_path, engine_cases):
    # oneDNN for the bf16 GEMM tests: the installed wheel's library (the refusal is checked where it is absent)
    lib = onednn_library()
    out = build_and_test(tmp_path / "build", engine_cases, "-DCMAKE_BUILD_TYPE=Release",
                         env={"S2E_ONEDNN_LIBRARY": lib} if lib else None)
    if lib:
        assert "PASS linear_bf16_matches_rounded_product" in out and "oneDNN not usable here" not in out
        ran = "PASS attention_bf16_on_int8_values_applies_the_scales" in out and "bf16 on int8 values" in out
        # the bf16 attention runs where oneDNN has native bf16 (an AVX2-only CPU has none)
        assert ran if bf16_flags()[0] else ran or "no native bf16 oneDNN here" in out
    for name in ("test_json", "test_safetensors", "test_ops", "test_engine", "test_onednn"):
        assert f"{name} " in out and "0 failed checks" in out
    assert out.count("rel L2") == 7  # 6 cases, pointmap has two outputs
    assert "100% tests passed" in out
    assert (tmp_path / "build" / "libs2e.a").is_file()


@pytest.mark.slow
def test_ctest_asan_ubsan(tmp_path, engine_cases):
    """Every C++ test, engine cases included, runs clean under ASan + UBSan (any report aborts). oneDNN,
    a library built without the sanitizers, stays out of this build's tests (S2E_ONEDNN_LIBRARY names no
    file: its tests check the refusal)."""
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
           "S2E_ONEDNN_LIBRARY": str(tmp_path / "no-libdnnl.so")}
    out = build_and_test(tmp_path / "asan", engine_cases, "-DCMAKE_BUILD_TYPE=Debug", "-DS2E_SANITIZE=ON", env=env)
    assert "100% tests passed" in out and out.count("rel L2") == 7 and "ERROR: AddressSanitizer" not in out and "runtime error" not in out
