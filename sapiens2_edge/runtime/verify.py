"""Re-check an exported artifact on this machine: checksums, then numerics against the torch
reference outputs stored at export (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import compare_fingerprints, load_reference, reference_inputs, tolerance_for
from .opener import open_artifact


def verify_artifact(root, backend: str = "auto", tolerance: float | None = None) -> dict[str, Any]:
    """{outputs, rel_l2, backend, tolerance, passed}; ``tolerance`` defaults to the one the export used."""
    manifest, runner, _ = open_artifact(root, backend)
    # a runner that runs differently from how the stored reference was made (an int8 OpenVINO artifact
    # with bf16 float ops) gives the one the export verified
    runner = getattr(runner, "as_verified", lambda: runner)()
    stored = load_reference(Path(root), manifest.file_for("reference"), manifest.outputs)
    got = runner(reference_inputs(manifest.input_size, manifest.max_batch))
    if tolerance is None:
        tolerance = manifest.fidelity.get("tolerance", tolerance_for(manifest.precision))
    result = compare_fingerprints(stored, got, manifest.outputs, tolerance)
    result["backend"] = runner.name
    return result
