"""ExecuTorch backend: runs a ``.pte`` (XNNPACK-delegated) through ExecuTorch's Python runtime.

ExecuTorch's Python bindings link libtorch (``executorch.extension.pybindings`` imports torch
first to load it) and take torch tensors, so this backend needs torch installed: the
``[executorch]`` extra brings it. On a phone the same ``.pte`` runs in the C++/Java/Swift runtime
without torch. The program was exported for batch 1 (XNNPACK's dynamic shapes are not reliable for
this graph), so a batch runs image by image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact.paths import inside
from ..errors import ArtifactError, BackendUnavailableError
from .base import batch_input, load_errors, run_errors

INSTALL = "pip install 'sapiens2-edge[executorch]'"


def import_executorch_runtime():
    try:
        from executorch.runtime import Runtime
    except ImportError:
        raise BackendUnavailableError(f"the executorch backend needs ExecuTorch's runtime: {INSTALL}") from None
    return Runtime


class ExecuTorchBackend:
    name = "executorch"
    device = "cpu"

    def __init__(self, path: str | Path, max_batch: int | None = None):
        runtime = import_executorch_runtime().get()
        self.path = Path(path)
        with load_errors(self.path, "an ExecuTorch program"):
            self.program = runtime.load_program(self.path)
            if "forward" not in self.program.method_names:
                raise ArtifactError(f"{self.path} has no forward method (it has {sorted(self.program.method_names)}); "
                                    "re-export the artifact")
            self.method = self.program.load_method("forward")
        meta = self.method.metadata
        if meta.num_inputs() != 1:
            raise ArtifactError(f"{self.path} takes {meta.num_inputs()} inputs; an artifact's program takes one "
                                "(1, 3, H, W) image")
        self.input_shape = tuple(meta.input_tensor_meta(0).sizes())
        self.max_batch = max_batch

    def describe(self) -> str:
        from importlib.metadata import version

        return f"executorch {version('executorch')} (XNNPACK delegate, CPU), batch 1 per call"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch  # ExecuTorch's bindings take torch tensors (and load libtorch anyway)

        x = batch_input(batch, self.max_batch)
        outs = []
        with run_errors(self.path):
            for i in range(len(x)):
                got = self.method.execute([torch.from_numpy(x[i:i + 1])])
                outs.append([np.asarray(o.float().numpy()) for o in got])
        return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))


def open_runner(root: Path, manifest, device: str, max_batch: int) -> ExecuTorchBackend:
    path = inside(root, manifest.require_file("model", root))
    backend = ExecuTorchBackend(path, max_batch=max_batch)
    want = (1, 3, *manifest.input_size)
    if backend.input_shape != want:
        raise ArtifactError(f"{path} takes inputs of shape {list(backend.input_shape)}, but the manifest says "
                            f"input_size {manifest.input_size} (program input {list(want)}): the manifest does not "
                            "belong to this program; re-export the artifact")
    return backend
