"""Reference fingerprints and the numeric comparison that verifies an artifact.

At export the torch model's outputs on :func:`verification_inputs` are stored, subsampled, in
``reference.npz``; verification runs the same inputs through a runtime and compares.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ArtifactError
from .paths import inside

REFERENCE = "reference.npz"

# Relative L2 a verification may reach per precision before the export is refused. Quantized
# artifacts are compared with the torch QuantizedModel of the same recipe: weight-only is as exact
# as fp32; with quantized activations a 1e-6 input change already flips roundings that grow
# through the blocks (~1e-2 on the random tiny models), so the end-to-end bound is looser and the
# per-layer exactness is tested separately (tests/test_export_quantized.py). bf16 (OpenVINO computing
# in bf16, unit roundoff 2^-9) against torch fp32, 2 verification inputs, avx512_bf16 CPU: trained tiny
# fixtures 5.1e-3 (seg) and 1.1e-2 (pose); random weights 3.2e-2 (tiny seg), 3.3e-2 (tiny pose), 2.6e-2
# (0.1b seg 512x384): the bound is 1.5x the worst. int8 artifacts with their float ops in bf16 measured
# 1.3e-2 / 2.8e-2 (trained seg / pose) against the torch QuantizedModel, inside the int8 bound.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2, "int8-weight": 1e-3, "int4-weight": 1e-3, "int8": 5e-2, "fp8": 5e-2,
             "mixed": 5e-2}
MAX_REFERENCE_BYTES = 256 << 20  # uncompressed: fingerprints are at most ~64x64 pixels per output
DEFAULT_TOLERANCE = 1e-3


def tolerance_for(precision: str) -> float:
    return TOLERANCE.get(precision, DEFAULT_TOLERANCE)


def verification_inputs(input_size: Sequence[int], batch: int = 2, seed: int = 0) -> np.ndarray:
    """Normalised sample inputs: a smooth image-like pattern plus noise, reproducible by seed."""
    rng = np.random.default_rng(seed)
    h, w = input_size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) + np.cos(4 * yy - c) for c in range(3)])
    return (base[None] + 0.5 * rng.standard_normal((batch, 3, h, w))).astype(np.float32)


def reference_inputs(input_size: Sequence[int], max_batch: int) -> np.ndarray:
    """The inputs the stored reference outputs were computed on."""
    return verification_inputs(input_size, batch=min(2, max_batch))


def fingerprint(output: np.ndarray) -> np.ndarray:
    """A small, fixed subsample of a reference output (every s-th pixel, at most ~64 per side),
    stored with the artifact so ``verify`` can re-check numerics without the torch model."""
    a = np.asarray(output, np.float32)
    if a.ndim == 4:
        s = max(1, a.shape[2] // 64, a.shape[3] // 64)
        a = a[:, :, ::s, ::s]
    return np.ascontiguousarray(a)


def save_reference(root: Path, names: Sequence[str], outputs: Sequence[np.ndarray]) -> str:
    """Write the fingerprints of ``outputs`` under ``root``; returns the file's relative path."""
    np.savez_compressed(Path(root) / REFERENCE, **{n: fingerprint(o) for n, o in zip(names, outputs, strict=True)})
    return REFERENCE


def load_reference(root: Path, rel: str | None, names: Sequence[str]) -> list[np.ndarray]:
    """The stored fingerprints of ``names`` (``rel``: the manifest's reference file, None if absent)."""
    if rel is None:
        raise ArtifactError(f"{root} carries no reference outputs ({REFERENCE}); re-export it to verify numerics")
    path = inside(root, rel)
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
        if total > MAX_REFERENCE_BYTES:
            raise ArtifactError(f"{path} unpacks to {total} bytes, more than the {MAX_REFERENCE_BYTES} reference "
                                "outputs take; re-export the artifact")
        with np.load(path, allow_pickle=False) as stored:
            missing = [n for n in names if n not in stored.files]
            if missing:
                raise ArtifactError(f"{path} lacks reference outputs {missing}; re-export the artifact")
            arrays = [stored[n] for n in names]
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's .npy parser raises many types (zlib, zipfile, tokenize...)
        raise ArtifactError(f"cannot read the reference outputs {path}: {str(e)[:200] or type(e).__name__}; "
                            "re-export the artifact") from None
    bad = [n for n, a in zip(names, arrays, strict=True) if a.dtype.kind != "f"]
    if bad:
        raise ArtifactError(f"{path}: reference outputs {bad} are not floating-point arrays; re-export the artifact")
    return arrays


def compare(ref: Sequence[np.ndarray], test: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """Relative L2 and max abs difference per output, and the worst relative L2 (``rel_l2``)."""
    per = {}
    for name, r, t in zip(names, ref, test, strict=True):
        r64, t64 = np.asarray(r, np.float64), np.asarray(t, np.float64)
        per[name] = {"rel_l2": float(np.linalg.norm(r64 - t64) / max(np.linalg.norm(r64), 1e-30)),
                     "max_abs": float(np.abs(r64 - t64).max())}
    return {"outputs": per, "rel_l2": max(v["rel_l2"] for v in per.values())}


def compare_fingerprints(stored: Sequence[np.ndarray], outputs: Sequence[np.ndarray], names: Sequence[str],
                         tolerance: float) -> dict[str, Any]:
    """:func:`compare` of fresh outputs (fingerprinted here) with stored fingerprints, plus the verdict."""
    prints = [fingerprint(o) for o in outputs]
    for name, s, p in zip(names, stored, prints, strict=True):
        if s.shape != p.shape:
            raise ArtifactError(f"the stored reference output {name!r} has shape {s.shape}, the runtime's fingerprint "
                                f"{p.shape}: the reference does not belong to this model; re-export the artifact")
    result = compare(stored, prints, names)
    result.update({"tolerance": tolerance, "passed": result["rel_l2"] <= tolerance})
    return result
