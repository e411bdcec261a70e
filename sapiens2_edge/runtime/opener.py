"""Open an exported artifact directory with the best backend installed here.

Which backends can open a format comes from :data:`sapiens2_edge.artifact.FORMATS`; this module
knows how to find each backend's package and module. Torch-free unless the torch backend is chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..artifact import Manifest, backends_for, read_manifest
from ..errors import BackendUnavailableError, ConfigError

# backend -> module (under sapiens2_edge.runtime) providing
#   open_runner(root: Path, manifest: Manifest, device: str, max_batch: int) -> Backend
OPENERS = {"onnxruntime": "onnxruntime_backend", "openvino": "openvino_backend", "coreml": "coreml_backend",
           "torch": "torch_backend", "native": "native_backend", "litert": "litert_backend",
           "executorch": "executorch_backend"}
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "coreml": "coremltools", "torch": "torch",
            "native": "sapiens2_edge._native", "litert": "ai_edge_litert", "executorch": "executorch.runtime"}
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "coreml": "coreml", "torch": "torch", "native": "native",
          "litert": "litert", "executorch": "executorch"}
# Every backend name the Predictor knows.
BACKENDS = ("auto", *OPENERS)


def installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(PACKAGES[backend]) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(manifest: Manifest, requested: str) -> tuple[str, str]:
    """(backend, reason). ``requested`` is a backend name or ``auto``."""
    runners = backends_for(manifest.format, manifest.files)
    if requested != "auto":
        if requested not in runners:
            raise ConfigError(f"a {manifest.format} artifact cannot run on backend {requested!r}; "
                              f"it runs on {', '.join(runners)}")
        if not installed(requested):
            raise BackendUnavailableError(f"backend {requested!r} is not installed: "
                                          f"pip install 'sapiens2-edge[{EXTRAS[requested]}]'")
        return requested, "asked for"
    for name in runners:
        if installed(name):
            skipped = runners[: runners.index(name)]
            why = f"auto: first installed runtime for {manifest.format} artifacts"
            return name, why + (f" ({', '.join(skipped)} not installed)" if skipped else "")
    hint = " or ".join(f"pip install 'sapiens2-edge[{EXTRAS[r]}]'" for r in runners)
    raise BackendUnavailableError(f"no runtime for this {manifest.format} artifact is installed; {hint}")


def open_artifact(root, backend: str = "auto", device: str = "auto", max_batch: int | None = None):
    """(manifest, runner, reason) for the artifact at ``root`` (its checksums checked first)."""
    root = Path(root)
    manifest = read_manifest(root)
    name, reason = choose_backend(manifest, backend)
    batch = min(max_batch or manifest.max_batch, manifest.max_batch)
    module = importlib.import_module(f".{OPENERS[name]}", __package__)
    return manifest, module.open_runner(root, manifest, device, batch), reason
