"""Transposed convolutions (kernel 4, stride 2, padding 1) by output parity, for the ONNX Runtime graph.

Each output pixel of such a layer reads a 2 x 2 input window through one of four 2 x 2 slices of the
kernel, fixed by the pixel's row and column parity; so the layer is four 2 x 2 convolutions (one per
parity, its padding on the side its window reaches past) whose outputs interleave by pixel shuffle: the
same products, on MLAS' convolution (whose im2col runs in bounded segments) instead of ConvTranspose's
column buffer of C_out x 16 x H_in x W_in floats (805 MB for the 0.4b seg head's last one at 1024x768).

:class:`ParityHead` goes one step further for the pose / seg head. After its last transposed convolution
every layer is per pixel (InstanceNorm, SiLU, 1 x 1 convolutions) except the norm's statistics, which
are per channel over all pixels. So the four parity maps can stay apart until the last layer's output,
with each norm's mean and variance pooled over the four, and interleave once, at the head's (narrower)
output. The full-resolution activations are then four quarter-size tensors instead of one, never two
full-size tensors at once (the interleave's input and output): in ONNX Runtime the 0.4b seg head at
1024x768 holds 302 MB of activations at its peak instead of 403 MB, in blocks of the size the backbone's
tensors have (which ONNX Runtime's arena can reuse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.heads import INSTANCE_NORM_EPS, DeconvHead, InstanceNorm
from .onnx_quant import ExportQuantDeconv, dq_channels, qdq_int8

#: Each parity's two kernel taps, in input order: output row 2i reads input rows i - 1, i through kernel
#: rows 3, 1; row 2i + 1 reads rows i, i + 1 through kernel rows 2, 0 (columns alike).
PARITY_TAPS = ((3, 1), (2, 0))
#: The four parities (row, column) in pixel-shuffle order.
PARITIES = ((0, 0), (0, 1), (1, 0), (1, 1))


def parity_weights(deconv: nn.ConvTranspose2d) -> dict[str, torch.Tensor]:
    """The four (C_out, C_in, 2, 2) convolution kernels of ``deconv``, named ``weight_{row}{column}``."""
    return parity_kernels(deconv.weight.detach())


def parity_kernels(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four (C_out, C_in, 2, 2) slices of a transposed convolution's (C_in, C_out, 4, 4) kernel ``w``."""
    return {f"weight_{a}{b}": w[:, :, list(PARITY_TAPS[a])][:, :, :, list(PARITY_TAPS[b])].transpose(0, 1).contiguous()
            for a, b in PARITIES}


def _parity_maps(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The four parity outputs (B, C_out, H, W) of the deconvolution whose kernels ``module`` holds."""
    maps = [F.conv2d(F.pad(x, (1 - b, b, 1 - a, a)), getattr(module, f"weight_{a}{b}")) for a, b in PARITIES]
    if module.bias is not None:
        maps = [m + module.bias.reshape(1, -1, 1, 1) for m in maps]
    return maps


def _interleave(maps: list[torch.Tensor]) -> torch.Tensor:
    """Four parity maps (B, C, H, W) -> the (B, C, 2H, 2W) image they are the pixels of."""
    return F.pixel_shuffle(torch.stack(maps, 2).flatten(1, 2), 2)


class PhasedDeconv(nn.Module):
    """A ConvTranspose2d(kernel 4, stride 2, padding 1) as four 2 x 2 convolutions and a pixel shuffle."""

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        for name, w in parity_weights(deconv).items():
            self.register_buffer(name, w)
        self.register_buffer("bias", None if deconv.bias is None else deconv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _interleave(_parity_maps(self, x))


class PhasedQuantDeconv(nn.Module):
    """An int8 transposed convolution in its ONNX form (:class:`~.onnx_quant.ExportQuantDeconv`: the input
    rounded to int8 with its scale, int8 weights times per-output-channel scales) as four 2 x 2 convolutions
    over the int8 kernel's slices and a pixel shuffle, like :class:`PhasedDeconv`: the same values."""

    def __init__(self, m: nn.Module):
        super().__init__()
        for name, w in parity_kernels(m.weight).items():
            self.register_buffer(name, w)
        self.register_buffer("weight_scale", m.weight_scale.clone())
        self.register_buffer("input_scale", m.input_scale.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = qdq_int8(x, self.input_scale)
        return _interleave([F.conv2d(F.pad(x, (1 - b, b, 1 - a, a)),
                                     dq_channels(getattr(self, f"weight_{a}{b}"), self.weight_scale, 0))
                            for a, b in PARITIES])


def phased_quant(m: nn.Module) -> bool:
    """Whether ``m`` is an int8 transposed convolution's ONNX form of the kind :class:`PhasedQuantDeconv` takes."""
    return (type(m) is ExportQuantDeconv and tuple(m.weight.shape[2:]) == (4, 4) and m.stride in (2, (2, 2))
            and m.padding in (1, (1, 1)))


def phased(m: nn.Module) -> bool:
    """Whether ``m`` is a float transposed convolution of the kind this module rewrites."""
    return (type(m) is nn.ConvTranspose2d and m.kernel_size == (4, 4) and m.stride == (2, 2)
            and m.padding == (1, 1) and m.output_padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1)


def pooled_norm_silu(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """SiLU(InstanceNorm) of the image whose pixels ``maps`` are: each channel's mean and (biased) variance
    over all the maps' pixels, in two passes as InstanceNorm takes them."""
    mean = sum(m.mean((2, 3), keepdim=True) for m in maps) / len(maps)
    centred = [m - mean for m in maps]
    var = sum((c * c).mean((2, 3), keepdim=True) for c in centred) / len(maps)
    scale = torch.rsqrt(var + INSTANCE_NORM_EPS)
    return [F.silu(c * scale) for c in centred]


def parity_head(head: nn.Module) -> bool:
    """Whether ``head`` is a float pose / seg head that :class:`ParityHead` can compute: its last
    deconvolution unit and every ConvUnit after it are (layer, InstanceNorm, SiLU) with float layers and
    1 x 1 convolutions."""
    if type(head) is not DeconvHead or len(head.deconv_layers) < 3:
        return False
    convs = [head.deconv_layers[-3], *head.conv_layers[0::3], getattr(head, head.final_name)]
    norms = [head.deconv_layers[-2], *head.conv_layers[1::3]]
    acts = [head.deconv_layers[-1], *head.conv_layers[2::3]]
    return (phased(convs[0]) and all(type(c) is nn.Conv2d and c.kernel_size == (1, 1) and c.groups == 1
                                     for c in convs[1:])
            and all(type(n) is InstanceNorm for n in norms) and all(type(s) is nn.SiLU for s in acts))


class ParityHead(nn.Module):
    """A pose / seg head (see :func:`parity_head`) whose last deconvolution's four parity maps stay apart
    through the layers after it: ``early`` (the deconvolution units before the last, shared with the head),
    the last one's parity kernels, the ConvUnits' 1 x 1 convolutions and the final one (shared)."""

    def __init__(self, head: DeconvHead):
        super().__init__()
        self.early = head.deconv_layers[:-3]
        last = head.deconv_layers[-3]
        for name, w in parity_weights(last).items():
            self.register_buffer(name, w)
        self.register_buffer("bias", None if last.bias is None else last.bias.detach().clone())
        self.convs = nn.ModuleList(head.conv_layers[0::3])
        self.final = getattr(head, head.final_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = pooled_norm_silu(_parity_maps(self, self.early(x)))
        for conv in self.convs:
            maps = pooled_norm_silu([conv(m) for m in maps])
        return _interleave([self.final(m) for m in maps])


__all__ = ["PARITY_TAPS", "PhasedDeconv", "PhasedQuantDeconv", "ParityHead", "parity_head", "parity_kernels",
           "parity_weights", "phased", "phased_quant", "pooled_norm_silu"]
