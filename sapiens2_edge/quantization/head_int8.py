"""int8 transposed convolutions in the pose / seg head (``recipe.head="int8"``).

The head's four ConvTranspose2d(4, stride 2) layers upsample the backbone's features to the output
resolution; at 0.1b 512x384 they are a quarter of our int8 OpenVINO artifact's time when they run in
bf16, and OpenVINO runs them with its int8 kernels when they reach it as FakeQuantize on the input and
int8 weight constants with per-output-channel scales (benchmarks/results/cpu_peers.md). Here:

- weights: symmetric int8, one scale per output channel (axis 1 of torch's (in, out, k, k) layout);
- input: symmetric int8, one calibrated scale per tensor, the largest |x| over the calibration images
  (the inputs are the normed backbone features and InstanceNorm -> SiLU outputs: narrow ranges);
- everything else in the head (norms, SiLU, the 1x1 convolutions, the final convolution) stays float:
  the 1x1 convolutions gain little in int8 and cost more fidelity (measured with the deconvolutions).

In torch :class:`QuantDeconv` computes ``conv_transpose2d(q(x), dequantized weights)``, the integers kept
as float, so every exporter traces plain float ops; the ONNX export writes
``Clip -> QuantizeLinear -> DequantizeLinear`` on the input and ``DequantizeLinear(axis=1)`` on the int8
weights (:mod:`sapiens2_edge.exporters.onnx_quant`).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..kernels import numerics as nx
from ..models.lean_head import conv_transpose2d
from ..models.model import set_module
from .attention_inputs import fake_quant_int8
from .observers import finite_absmax

HEAD = "decode_head."


class QuantDeconv(nn.Module):
    """A ConvTranspose2d with int8 weights (``weight``, (in, out, k, k)), float32 per-output-channel
    ``weight_scale`` (out,) and a float32 per-tensor ``input_scale`` (1,). No bias (the heads' transposed
    convolutions have none: an InstanceNorm follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.register_buffer("weight", torch.zeros(in_channels, out_channels, kernel_size, kernel_size, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_channels, dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32))

    @classmethod
    def like(cls, m: nn.ConvTranspose2d) -> "QuantDeconv":
        check_deconv(m)
        return cls(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])

    @classmethod
    def from_float(cls, m: nn.ConvTranspose2d, input_amax: float) -> "QuantDeconv":
        q = cls.like(m)
        w = m.weight.detach().float()
        scale = nx.weight_scales(w.transpose(0, 1).reshape(w.shape[1], -1), "int8")  # per output channel
        with torch.no_grad():
            q.weight.copy_(nx.quantize_int8(w, scale.view(1, -1, 1, 1)))
            q.weight_scale.copy_(scale)
            q.input_scale.fill_(max(input_amax / nx.INT8_MAX, nx.EPS_SCALE))
        return q

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d(fake_quant_int8(x, self.input_scale), self.dequantized_weight().to(x.dtype), None,
                                self.stride, self.padding)


def check_deconv(m: nn.ConvTranspose2d) -> None:
    """The form :class:`QuantDeconv` holds: square kernel, one stride / padding, no bias, groups, dilation
    or output padding (the official heads' transposed convolutions all have it)."""
    k, s, p = m.kernel_size, m.stride, m.padding
    if (m.bias is not None or m.groups != 1 or k[0] != k[1] or s[0] != s[1] or p[0] != p[1]
            or m.dilation != (1, 1) or m.output_padding != (0, 0)):
        raise ConfigError(f"head='int8' takes transposed convolutions with a square kernel, one stride and padding "
                          f"and no bias, groups, dilation or output padding; got {m}")


class DeconvInputObserver:
    """Calibration: the largest |x| a transposed convolution reads."""

    def __init__(self):
        self.amax = 0.0

    def observe(self, x: torch.Tensor) -> None:
        self.amax = max(self.amax, finite_absmax(x))


def deconv_names(model: nn.Module) -> list[str]:
    """Module names of the head's transposed convolutions (pose and seg heads have four)."""
    return [n for n, m in model.named_modules() if n.startswith(HEAD) and isinstance(m, nn.ConvTranspose2d)]


def selected(model: nn.Module, recipe) -> list[str]:
    """The transposed convolutions ``recipe`` quantizes (none unless ``recipe.head == "int8"``); an error
    where the recipe asks for an int8 head and the model has no such layer."""
    if getattr(recipe, "head", "float") != "int8":
        return []
    names = deconv_names(model)
    if not names:
        what = f"this {model.task} head" if getattr(model, "task", None) else "a backbone-only model"
        raise ConfigError(f"head='int8' quantizes the transposed convolutions of the pose and seg heads; {what} has "
                          "none: quantize with head='float'")
    return names


def install(model: nn.Module, amax: Mapping[str, float] | Iterable[str]) -> None:
    """Replace each named ConvTranspose2d by its :class:`QuantDeconv`: from the float layer with the given
    input maxima (a mapping), or as empty placeholders to load a state dict into (names)."""
    for n in amax:
        m = model.get_submodule(n)
        set_module(model, n, QuantDeconv.from_float(m, amax[n]) if isinstance(amax, Mapping) else QuantDeconv.like(m))


def quantized_deconvs(model: nn.Module) -> dict[str, QuantDeconv]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantDeconv)}


__all__ = ["QuantDeconv", "DeconvInputObserver", "deconv_names", "selected", "install", "quantized_deconvs",
           "check_deconv"]
