"""Open an exported artifact directory with the best backend installed here.

Torch-free unless the torch backend is chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from ..exporters.manifest import MANIFEST, Manifest, read_manifest

# Which backends can run which artifact format, best first (CUDA-capable runtimes first).
RUNNERS = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",), "coreml": ("coreml",),
           "torch": ("torch",), "native": ("native", "torch")}
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "coreml": "coremltools", "torch": "torch",
            "native": "sapiens2_edge._native"}
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "coreml": "coreml", "torch": "torch", "native": "native"}
# backend -> module (under sapiens2_edge.runtime) providing
#   open_runner(root: Path, manifest: Manifest, device: str, max_batch: int) -> Backend
OPENERS = {"onnxruntime": "onnxruntime_backend", "openvino": "openvino_backend", "coreml": "coreml_backend",
           "torch": "torch_backend", "native": "native_backend"}
WEIGHTS = "weights.safetensors"  # what the native engine reads; any artifact carrying it runs there too


def is_artifact(path) -> bool:
    try:
        return (Path(path) / MANIFEST).is_file()
    except TypeError:
        return False


def installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(PACKAGES[backend]) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(manifest: Manifest, requested: str) -> tuple[str, str]:
    """(backend, reason). ``requested`` is a backend name or ``auto``."""
    runners = RUNNERS[manifest.format]
    if WEIGHTS in manifest.files and "native" not in runners:
        runners = (*runners, "native")
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
            skipped = [r for r in runners[: runners.index(name)]]
            why = f"auto: first installed runtime for a {manifest.format} artifact"
            return name, why + (f" ({', '.join(skipped)} not installed)" if skipped else "")
    hint = " or ".join(f"pip install 'sapiens2-edge[{EXTRAS[r]}]'" for r in runners)
    raise BackendUnavailableError(f"no runtime for this {manifest.format} artifact is installed; {hint}")


def open_artifact(root, backend: str = "auto", device: str = "auto", max_batch: int | None = None):
    """(manifest, runner, reason) for the artifact at ``root``."""
    root = Path(root)
    manifest = read_manifest(root)
    name, reason = choose_backend(manifest, backend)
    batch = min(max_batch or manifest.max_batch, manifest.max_batch)
    if name not in OPENERS:
        raise ConfigError(f"backend {name!r} for {manifest.format} artifacts is not available in this version")
    runner = importlib.import_module(f".{OPENERS[name]}", __package__).open_runner(root, manifest, device, batch)
    return manifest, runner, reason


def model_file(manifest: Manifest, root: Path) -> str:
    rel = manifest.file_for("model")
    if rel is None:
        raise ArtifactError(f"the manifest of {root} lists no model file")
    return rel
