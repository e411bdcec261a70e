"""Run in a minimal environment (the core install only: no torch, onnxruntime or openvino): the
native engine must be chosen by backend="auto" and reproduce the torch reference outputs that
make_artifact.py stored.

    python tests/minimal_env/check_native.py OUT_DIR
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np


def image() -> np.ndarray:
    """A deterministic synthetic RGB image (numpy only)."""
    yy, xx = np.mgrid[0:90, 0:70]
    return np.stack([(xx * 3) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)


def main(out: Path) -> None:
    for heavy in ("torch", "onnxruntime", "openvino"):
        assert importlib.util.find_spec(heavy) is None, f"{heavy} is installed: this is not a minimal environment"
    import sapiens2_edge as s2e
    from sapiens2_edge.runtime import verify_artifact

    expected = np.load(out / "expected.npz")
    pred = s2e.Predictor(out / "artifact")
    assert pred.backend == "native", (pred.backend, pred.backend_reason)
    logits = pred.runner(expected["x"])[0]
    rel = float(np.linalg.norm(logits - expected["logits"]) / np.linalg.norm(expected["logits"]))
    assert rel <= 1e-4, f"native logits differ from torch: relative L2 {rel:.3g}"
    agree = float(np.mean(pred(image()).labels == expected["labels"]))
    assert agree >= 0.999, f"labels agree on {agree:.4f} of pixels"
    result = verify_artifact(out / "artifact")
    assert result["passed"] and result["backend"] == "native", result
    loaded = [m for m in ("torch", "onnxruntime", "openvino") if m in sys.modules]
    assert not loaded, loaded
    print(f"minimal env ok: backend {pred.backend} ({pred.backend_reason}); {pred.runner.describe()}; "
          f"relative L2 {rel:.2e}, label agreement {agree:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
