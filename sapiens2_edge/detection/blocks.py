"""RTMDet's building blocks, with the module names of mmcv / mmdetection so that ``state_dict()``
keys match the official checkpoint: ``conv`` / ``bn`` (conv without bias, BatchNorm, SiLU), the
depthwise-separable pair, channel attention, the CSPNeXt block, the CSP layer and SPP."""

from __future__ import annotations

import torch
from torch import nn

from .config import RTMDetConfig


class ConvModule(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU; keys ``conv.weight`` and ``bn.*``."""

    def __init__(self, cfg: RTMDetConfig, cin: int, cout: int, kernel: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.activate = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise k x k ConvModule, then pointwise 1 x 1 ConvModule (each with BN and SiLU)."""

    def __init__(self, cfg: RTMDetConfig, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(cfg, cin, cin, kernel, groups=cin)
        self.pointwise_conv = ConvModule(cfg, cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ChannelAttention(nn.Module):
    """x * hardsigmoid(fc(mean over H, W)); ``fc`` is a 1 x 1 conv with bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPNeXtBlock(nn.Module):
    """3 x 3 ConvModule, then a depthwise-separable k x k pair; the input is added when asked."""

    def __init__(self, cfg: RTMDetConfig, channels: int, add_identity: bool) -> None:
        super().__init__()
        self.conv1 = ConvModule(cfg, channels, channels, 3)
        self.conv2 = DepthwiseSeparableConvModule(cfg, channels, channels, cfg.block_kernel_size)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    """Cross-stage-partial layer: main path (1 x 1 conv, CSPNeXt blocks) and short path (1 x 1 conv),
    concatenated (main first), optionally channel attention, then a 1 x 1 conv to ``cout``."""

    def __init__(self, cfg: RTMDetConfig, cin: int, cout: int, num_blocks: int, add_identity: bool,
                 channel_attention: bool) -> None:
        super().__init__()
        mid = int(cout * cfg.expand_ratio)
        self.main_conv = ConvModule(cfg, cin, mid, 1)
        self.short_conv = ConvModule(cfg, cin, mid, 1)
        self.final_conv = ConvModule(cfg, 2 * mid, cout, 1)
        self.blocks = nn.Sequential(*(CSPNeXtBlock(cfg, mid, add_identity) for _ in range(num_blocks)))
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        if self.attention is not None:
            out = self.attention(out)
        return self.final_conv(out)


class SPPBottleneck(nn.Module):
    """1 x 1 conv to half the channels, max pools (stride 1, same size) concatenated after the
    input, then a 1 x 1 conv."""

    def __init__(self, cfg: RTMDetConfig, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin // 2
        self.conv1 = ConvModule(cfg, cin, mid, 1)
        self.poolings = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in cfg.spp_kernel_sizes)
        self.conv2 = ConvModule(cfg, mid * (len(cfg.spp_kernel_sizes) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pool(x) for pool in self.poolings)], dim=1))


__all__ = ["ConvModule", "DepthwiseSeparableConvModule", "ChannelAttention", "CSPNeXtBlock", "CSPLayer",
           "SPPBottleneck"]
