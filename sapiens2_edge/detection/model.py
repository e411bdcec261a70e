"""The RTMDet detector network (backbone, neck, bbox_head) and ``rtmdet_m()``, the official
person detector randomly initialised. ``state_dict()`` keys are those of the official checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import CSPNeXt
from .config import RTMDetConfig
from .head import RTMDetSepBNHead
from .neck import CSPNeXtPAFPN


class RTMDet(nn.Module):
    """Normalised BGR input (B, 3, H, W), H and W multiples of 32 -> (class logits per level,
    box distances per level), levels at strides 8, 16, 32."""

    def __init__(self, cfg: RTMDetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RTMDetConfig()
        self.backbone = CSPNeXt(self.cfg)
        self.neck = CSPNeXtPAFPN(self.cfg)
        self.bbox_head = RTMDetSepBNHead(self.cfg)
        #: where the weights came from (a file path), and whether they are trained weights
        self.source: str | None = None
        self.pretrained = False

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return self.bbox_head(self.neck(self.backbone(x)))


def rtmdet_m(cfg: RTMDetConfig | None = None, seed: int | None = None) -> RTMDet:
    """RTMDet-m for one class (the official person detector), randomly initialised, in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    return RTMDet(cfg).eval()


def expected_shapes(model: RTMDet) -> dict[str, tuple[int, ...]]:
    """Every checkpoint key of ``model`` and its shape (``num_batches_tracked`` included)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


__all__ = ["RTMDet", "rtmdet_m", "expected_shapes"]
