"""The torch backend: runs a :class:`~sapiens2_edge.models.model.Sapiens2Model` in eager mode, and
exported torch programs. The one runtime module that may import models: it loads checkpoints."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..artifact import looks_like_artifact
from ..artifact.paths import inside
from ..cpu_features import bf16_flags
from ..errors import ArtifactError, ConfigError
from ..heap import reuse_freed_pages
from ..models.bf16 import (
    PRECISIONS,
    attention_on_openvino,
    bf16_autocast,
    bf16_precision,
    openvino_attention_kernel,
    store_gemm_weights_in_bf16_,
)
from ..models.model import Sapiens2Model
from .base import batch_input, check_input_size, load_errors, run_errors
from .pt2_check import check_program_archive

#: AOTInductor packages are compiled shared libraries: loading one runs its code. They are run
#: only when this environment variable is 1 (the artifact is trusted); otherwise the program runs.
TRUST_COMPILED = "SAPIENS2_EDGE_TRUST_COMPILED"


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else must be a valid torch device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}; expected 'auto', 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return dev


class TorchBackend:
    """A task model run eagerly. ``precision``: fp32 (the reference numerics), bf16 (torch's bf16 autocast,
    the long attentions on OpenVINO's bf16 kernel where it is installed: :mod:`sapiens2_edge.models.bf16`)
    or auto (bf16 on a CPU that computes it natively, else fp32). bf16 is refused where torch would
    emulate it (a CPU without avx512_bf16 / AMX, a GPU without bf16): slower than fp32 there.
    ``owns_model``: nothing else runs ``model`` (the backend loaded it), so in bf16 its linear and
    convolution weights are stored in bf16 once (the same outputs, half their memory, no per-call cast)."""

    name = "torch"

    def __init__(self, model: Sapiens2Model, device: str | torch.device | None = "auto", batch_size: int | None = None,
                 precision: str = "fp32", owns_model: bool = False):
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.torch_device = select_device(device)
        self.device = str(self.torch_device)
        self.precision, self.precision_reason = resolve_precision(precision, self.torch_device)
        self.model = model.to(self.torch_device).eval()
        self.batch_size = batch_size
        self.weights_in_bf16 = self.precision == "bf16" and owns_model and store_gemm_weights_in_bf16_(self.model) > 0
        # compiled once per shape and kept: every call's long attentions reuse its graphs
        self._attention = openvino_attention_kernel(self.torch_device) if self.precision == "bf16" else None

    def describe(self) -> str:
        arch = self.model.arch
        how = "fp32" if self.precision == "fp32" else "bf16 autocast" + (
            ", GEMM weights stored in bf16" if self.weights_in_bf16 else "") + (
            ", long attentions on OpenVINO's bf16 kernel" if self._attention is not None else "")
        return (f"torch {torch.__version__} eager {how} on {self.device} "
                f"({arch.name}, {self.model.task or 'featmap'}, RoPE {self.model.rope_mode})")

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        step = self.batch_size or len(x)
        parts = []
        bf16 = self.precision == "bf16"
        with reuse_freed_pages(), bf16_autocast(self.torch_device, enabled=bf16), \
                attention_on_openvino(self.model, self.torch_device, self._attention) if bf16 else nullcontext():
            for chunk in x.split(step):
                out = self.model(chunk.to(self.torch_device))
                parts.append(tuple(o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def resolve_precision(asked: str, device: torch.device) -> tuple[str, str]:
    """(fp32 or bf16, why) of a :class:`TorchBackend` on ``device``; bf16 only where it is computed natively."""
    if asked not in PRECISIONS:
        raise ConfigError(f"precision {asked!r} is not one a checkpoint runs at in torch; expected one of "
                          f"{', '.join(PRECISIONS)}")
    precision, why = bf16_precision(asked, device)
    if precision != "bf16":
        return precision, why
    native, evidence = bf16_flags()
    if device.type == "cpu" and native is False:
        raise ConfigError(f"precision='bf16' runs slower than fp32 on this CPU: {evidence}, so torch would "
                          "emulate it; use precision='fp32' (or 'auto', which picks bf16 only where it is native)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision='bf16' needs a GPU with bf16 arithmetic; {torch.cuda.get_device_name(device)} "
                          "has none: use precision='fp32'")
    return precision, why


def open_checkpoint(model, task: str | None = None, device: str = "auto", batch_size: int | None = None,
                    precision: str = "fp32") -> TorchBackend:
    """A :class:`TorchBackend` for a loaded model or anything ``load_model`` accepts."""
    from ..models.loading import load_model  # sapiens2_edge.loading.load_model once that module exists

    owned = not isinstance(model, Sapiens2Model)
    if owned:
        if not isinstance(model, (str, os.PathLike)):
            raise ConfigError(f"expected an artifact directory, a Sapiens2Model, a checkpoint path or a "
                              f"Hugging Face id, got {type(model).__name__}")
        if looks_like_artifact(model):  # an artifact without its manifest is not a checkpoint
            from ..artifact import read_manifest

            read_manifest(model)
        model = load_model(model, task=task)
    return TorchBackend(model, device=device, batch_size=batch_size, precision=precision, owns_model=owned)


def open_detector(path: str | os.PathLike, device: str = "auto", **options):
    """The official person detector (RTMDet-m) from its safetensors file, as a callable
    image -> ``Detections`` (:class:`~sapiens2_edge.detection.RTMDetPersonDetector`)."""
    from ..detection.detector import RTMDetPersonDetector
    from ..errors import CheckpointNotFoundError

    if not Path(path).is_file():
        raise CheckpointNotFoundError(f"no person detector at {path}; expected the RTMDet-m safetensors file "
                                      "(sapiens2-edge convert turns the official .pth into one)")
    return RTMDetPersonDetector(path, device=select_device(device), **options)


def default_checkpoint(task: str, size: str = "0.4b") -> Path | None:
    """The official checkpoint for ``task``/``size`` if it is on this machine (a path under
    ``$SAPIENS_CHECKPOINT_ROOT`` or in the Hugging Face cache), else None. Never downloads."""
    from ..errors import CheckpointError
    from ..models.checkpoint import resolve_checkpoint

    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return resolve_checkpoint(f"facebook/sapiens2-{task}-{size}")
    except (CheckpointError, FileNotFoundError):  # CheckpointNotFoundError is a FileNotFoundError
        return None
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


# --- exported "torch" artifacts -------------------------------------------------------------------------
def _register_custom_ops() -> None:
    """A program that carries our kernels' custom ops needs them registered before it loads."""
    import importlib

    try:
        importlib.import_module("sapiens2_edge.kernels")
    except ImportError:  # kernels need triton; a program without custom ops loads without them
        pass


class _BatchLimit:
    max_batch: int | None = None

    def check_batch(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch_input(batch, self.max_batch))


class ExportedProgramBackend(_BatchLimit):
    """Runs a ``torch.export`` program (``model.pt2``) on CPU or CUDA."""

    name = "torch"

    def __init__(self, path, device: str | torch.device | None = "auto", max_batch: int | None = None):
        _register_custom_ops()
        self.torch_device = select_device(device)
        self.device = str(self.torch_device)
        self.path = Path(path)
        check_program_archive(self.path)  # nothing pickled, no code: before torch reads it
        with load_errors(self.path, "a torch.export program"):
            program = torch.export.load(str(self.path))
            self.module = program.module().to(self.torch_device)
            sig = program.graph_signature.user_inputs
            shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name in sig]
        if len(shapes) != 1 or len(shapes[0]) != 4:
            raise ArtifactError(f"{self.path} does not take one (B, 3, H, W) image batch")
        self.input_dims = [int(d) if isinstance(d, int) else None for d in shapes[0]]
        self.max_batch = max_batch

    def describe(self) -> str:
        return f"torch {torch.__version__} torch.export program ({self.path.name}) on {self.device}"

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = self.check_batch(batch).to(self.torch_device)
        with run_errors(self.path), reuse_freed_pages():
            out = self.module(x)
            return tuple(o.float().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,)))


class AOTIBackend(_BatchLimit):
    """Runs an AOTInductor package (compiled for CUDA at export)."""

    name = "torch"
    device = "cuda"

    def __init__(self, path, max_batch: int | None = None):
        _register_custom_ops()
        self.path = Path(path)
        self.runner = torch._inductor.aoti_load_package(str(self.path))
        self.max_batch = max_batch

    def describe(self) -> str:
        return f"torch {torch.__version__} AOTInductor package ({self.path.name}) on cuda"

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        out = self.runner(self.check_batch(batch).to("cuda"))
        return tuple(o.float().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,)))


def open_runner(root: Path, manifest, device: str, max_batch: int):
    """A "torch" artifact: the program (the AOTInductor package on CUDA when it was built and
    $SAPIENS2_EDGE_TRUST_COMPILED is 1: a compiled library runs code when loaded). A
    "native" artifact: its self-describing weights loaded as a checkpoint and run eagerly."""
    if manifest.format == "native":
        path = inside(root, manifest.require_file("model", root))
        with load_errors(path, "native weights"):
            return open_checkpoint(path, task=manifest.task, device=device, batch_size=max_batch)
    if manifest.format != "torch":
        raise ConfigError(f"the torch backend opens torch artifacts here, not {manifest.format!r} ones (and native "
                          "artifacts, whose weights load as a checkpoint)")
    dev = select_device(device)
    aoti = manifest.file_for("aoti_package")
    if dev.type == "cuda" and aoti is not None and os.environ.get(TRUST_COMPILED) == "1":
        path = inside(root, aoti)
        with load_errors(path, "an AOTInductor package"):
            return AOTIBackend(path, max_batch=max_batch)
    path = inside(root, manifest.require_file("model", root))
    backend = ExportedProgramBackend(path, device=dev, max_batch=max_batch)
    check_input_size(path, backend.input_dims, manifest)
    return backend
