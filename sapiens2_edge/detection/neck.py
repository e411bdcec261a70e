"""CSPNeXt-PAFPN, the RTMDet neck: a top-down path (1 x 1 reduce, nearest 2x upsample, concat,
CSP layer) and a bottom-up path (stride-2 3 x 3 conv, concat, CSP layer), then a 3 x 3 conv per
level to ``neck_out_channels``. Its CSP layers add no identity and have no channel attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvModule, CSPLayer
from .config import RTMDetConfig


class CSPNeXtPAFPN(nn.Module):
    def __init__(self, cfg: RTMDetConfig) -> None:
        super().__init__()
        chans = cfg.neck_in_channels
        n = cfg.neck_csp_blocks
        self.reduce_layers = nn.ModuleList()
        self.top_down_blocks = nn.ModuleList()
        for idx in range(len(chans) - 1, 0, -1):
            self.reduce_layers.append(ConvModule(cfg, chans[idx], chans[idx - 1], 1))
            self.top_down_blocks.append(CSPLayer(cfg, chans[idx - 1] * 2, chans[idx - 1], n, False, False))
        self.downsamples = nn.ModuleList()
        self.bottom_up_blocks = nn.ModuleList()
        for idx in range(len(chans) - 1):
            self.downsamples.append(ConvModule(cfg, chans[idx], chans[idx], 3, stride=2))
            self.bottom_up_blocks.append(CSPLayer(cfg, chans[idx] * 2, chans[idx + 1], n, False, False))
        self.out_convs = nn.ModuleList(ConvModule(cfg, c, cfg.neck_out_channels, 3) for c in chans)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        levels = len(feats)
        # top-down: inner[0] is the finest level so far; the coarser entries keep their reduced maps
        inner = [feats[-1]]
        for k, idx in enumerate(range(levels - 1, 0, -1)):
            high = self.reduce_layers[k](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.top_down_blocks[k](torch.cat([up, feats[idx - 1]], dim=1)))
        # bottom-up
        outs = [inner[0]]
        for idx in range(levels - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner[idx + 1]], dim=1)))
        return tuple(conv(o) for conv, o in zip(self.out_convs, outs, strict=True))


__all__ = ["CSPNeXtPAFPN"]
