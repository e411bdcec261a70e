"""Task heads (spec section 2). Sequential indices count the parameter-free modules too, so
weighted layers sit at 0, 3, 6, ... exactly as in the official checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import PATCH_SIZE, check_task
from .arch import HeadSpec, scale_grid_for
from .backbone import EPS
from .lean_head import instance_norm_, lean_forward, rms_norm_channels_

INSTANCE_NORM_EPS = 1e-5


class InstanceNorm(nn.Module):
    """InstanceNorm2d without affine parameters or running statistics (eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS)

    def forward_(self, x: torch.Tensor) -> torch.Tensor:
        """The same, written into ``x`` (the eager head's lean path: :mod:`.lean_head`)."""
        return instance_norm_(x, INSTANCE_NORM_EPS)


class RMSNorm2d(nn.Module):
    """Channel-wise RMSNorm applied at every pixel (albedo head); holds its weight in ``norm``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.norm.weight, EPS)
        return y.permute(0, 3, 1, 2)

    def forward_(self, x: torch.Tensor) -> torch.Tensor:
        """The same, written into a float32 ``x`` (the eager head's lean path); other dtypes: :meth:`forward`."""
        if x.dtype != torch.float32:
            return self.forward(x)
        return rms_norm_channels_(x, self.norm.weight, EPS)


def _norm(channels: int, rms: bool) -> nn.Module:
    return RMSNorm2d(channels) if rms else InstanceNorm()


def deconv_units(cin: int, outs: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out in outs:
        layers += [nn.ConvTranspose2d(cin, out, 4, stride=2, padding=1, bias=False), InstanceNorm(), nn.SiLU()]
        cin = out
    return nn.Sequential(*layers)


def conv_units(cin: int, outs: tuple[int, ...], k: int, rms: bool = False, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    pad = 0 if stride > 1 else (k - 1) // 2
    for out in outs:
        layers += [nn.Conv2d(cin, out, k, stride=stride, padding=pad), _norm(out, rms), nn.SiLU()]
        cin = out
    return nn.Sequential(*layers)


class DeconvHead(nn.Module):
    """pose / seg: DeconvUnits, 1x1 ConvUnits, then ``conv_pose`` (raw heatmaps at input/4) or
    ``conv_seg`` (class logits at full resolution)."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.deconv_layers = deconv_units(spec.in_channels, spec.deconv)
        self.conv_layers = conv_units(spec.deconv[-1], spec.conv, spec.conv_kernel)
        self.final_name = f"conv_{spec.task}"
        self.add_module(self.final_name, nn.Conv2d(spec.conv[-1], spec.out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final = getattr(self, self.final_name)
        out = lean_forward([*self.deconv_layers, *self.conv_layers, final], x,
                           containers=(self.deconv_layers, self.conv_layers))
        return out if out is not None else final(self.conv_layers(self.deconv_layers(x)))


class UpsampleUnit(nn.Sequential):
    """Conv3x3 -> PixelShuffle(2) -> norm -> SiLU."""

    def __init__(self, cin: int, out: int, rms: bool):
        super().__init__(nn.Conv2d(cin, 4 * out, 3, padding=1), nn.PixelShuffle(2), _norm(out, rms), nn.SiLU())


class DenseHead(nn.Module):
    """normal / albedo / pointmap dense branch: input conv, PixelShuffle upsampling, 3x3 ConvUnits,
    and a final 1x1 conv named after the task (``conv_normal``, ``conv_albedo``, ``conv_pointmap``)."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        rms = spec.task == "albedo"
        c = spec.in_channels
        self.input_conv = conv_units(c, (c,), 3, rms)
        self.upsample_blocks = nn.ModuleList()
        for out in spec.upsample:
            self.upsample_blocks.append(UpsampleUnit(c, out, rms))
            c = out
        self.conv_layers = conv_units(c, spec.conv, 3, rms)
        self.final_name = f"conv_{spec.task}"
        self.add_module(self.final_name, nn.Conv2d(spec.conv[-1], spec.out_channels, 1))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        out = lean_forward([*self.input_conv, *(m for b in self.upsample_blocks for m in b), *self.conv_layers,
                            getattr(self, self.final_name)], x,
                           containers=(self.input_conv, *self.upsample_blocks, self.conv_layers))
        if out is not None:
            return out
        x = self.input_conv(x)
        for blk in self.upsample_blocks:
            x = blk(x)
        return getattr(self, self.final_name)(self.conv_layers(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class PointmapHead(DenseHead):
    """Dense branch plus the scale branch (stride-2 1x1 convs on the featmap, then an MLP)."""

    def __init__(self, spec: HeadSpec, stride: int = PATCH_SIZE):
        super().__init__(spec)
        self.input_size = spec.input_size
        self.scale_conv_layers = conv_units(spec.in_channels, spec.scale_conv, 1, stride=2)
        gh, gw = scale_grid_for(spec.input_size, stride, len(spec.scale_conv))
        layers: list[nn.Module] = [nn.Flatten()]
        cin = spec.scale_conv[-1] * gh * gw
        for i, out in enumerate(spec.scale_fc):
            layers.append(nn.Linear(cin, out))
            if i < len(spec.scale_fc) - 1:
                layers.append(nn.SiLU())
            cin = out
        self.scale_final_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dense(x), self.scale_final_layer(self.scale_conv_layers(x))


def build_head(spec: HeadSpec, stride: int = PATCH_SIZE) -> nn.Module:
    check_task(spec.task)
    if spec.task in ("pose", "seg"):
        return DeconvHead(spec)
    if spec.task in ("normal", "albedo"):
        return DenseHead(spec)
    return PointmapHead(spec, stride)
