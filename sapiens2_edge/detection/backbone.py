"""CSPNeXt (P5), the RTMDet backbone: a 3-conv stem (stride 2) and four stages, each a stride-2
3 x 3 conv, SPP in the last one, and a CSP layer with channel attention. Outputs stages 2, 3, 4
(strides 8, 16, 32)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvModule, CSPLayer, SPPBottleneck
from .config import RTMDetConfig


def stage_plan(cfg: RTMDetConfig) -> list[tuple[int, int, int, bool, bool]]:
    """(in, out, blocks, add_identity, use_spp) of each stage after the width and depth factors:
    channels ``int(c * widen)``, blocks ``max(round(n * deepen), 1)``."""
    return [(int(cin * cfg.widen_factor), int(cout * cfg.widen_factor), max(round(n * cfg.deepen_factor), 1),
             identity, spp) for cin, cout, n, identity, spp in cfg.arch]


class CSPNeXt(nn.Module):
    def __init__(self, cfg: RTMDetConfig) -> None:
        super().__init__()
        first = cfg.arch[0][0]
        half = int(first * cfg.widen_factor // 2)
        self.stem = nn.Sequential(
            ConvModule(cfg, 3, half, 3, stride=2),
            ConvModule(cfg, half, half, 3),
            ConvModule(cfg, half, int(first * cfg.widen_factor), 3),
        )
        self.num_stages = len(cfg.arch)
        for i, (cin, cout, blocks, identity, spp) in enumerate(stage_plan(cfg)):
            layers: list[nn.Module] = [ConvModule(cfg, cin, cout, 3, stride=2)]
            if spp:
                layers.append(SPPBottleneck(cfg, cout, cout))
            layers.append(CSPLayer(cfg, cout, cout, blocks, identity, channel_attention=True))
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outs = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{i}")(x)
            if i >= 2:
                outs.append(x)
        return tuple(outs)


__all__ = ["CSPNeXt", "stage_plan"]
