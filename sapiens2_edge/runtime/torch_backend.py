"""The torch backend: runs a :class:`~sapiens2_edge.models.model.Sapiens2Model` in eager mode."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..models.model import Sapiens2Model


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
    name = "torch"

    def __init__(self, model: Sapiens2Model, device: str | torch.device | None = "auto", batch_size: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.torch_device = select_device(device)
        self.device = str(self.torch_device)
        self.model = model.to(self.torch_device).eval()
        self.batch_size = batch_size

    def describe(self) -> str:
        arch = self.model.arch
        return (f"torch {torch.__version__} eager fp32 on {self.device} "
                f"({arch.name}, {self.model.task or 'featmap'}, RoPE {self.model.rope_mode})")

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        step = self.batch_size or len(x)
        parts = []
        for chunk in x.split(step):
            out = self.model(chunk.to(self.torch_device))
            parts.append(tuple(o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
