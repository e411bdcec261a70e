"""The head's upsampling layers in int8 (``recipe.head="int8"``).

- pose / seg: the four ConvTranspose2d(4, stride 2) layers that upsample the backbone's features to the
  output resolution; at 0.1b 512x384 they are a quarter of our int8 OpenVINO artifact's time when they
  run in bf16.
- normal / pointmap / albedo: the 3x3 convolutions up to the output resolution (``input_conv`` and the
  four PixelShuffle units' convolutions): 91 % of the 0.4b normal head's operations at 1024x768, the head a
  third of the normal model's and three fifths of the pointmap model's (benchmarks/results/cpu_peers.md).
  The three ``conv_layers`` at the output resolution stay float: narrow (64, 32, 16 channels), they shape
  the output's last detail, and in int8 they turned the trained normal fixture's normals by 6.9 degrees
  against its float model (the last alone 6.3) where the five upsampling ones cost 0.35
  (benchmarks/results/quantize.md).

OpenVINO runs them with its int8 kernels when they reach it as FakeQuantize on the input and int8 weight
constants with per-output-channel scales. Here:

- weights: symmetric int8, one scale per output channel (axis 1 of a transposed convolution's
  (in, out, k, k) layout, axis 0 of a convolution's (out, in, k, k));
- input: symmetric int8, one calibrated scale per tensor, the largest |x| over the calibration images
  (the inputs are the normed backbone features and norm -> SiLU outputs: narrow ranges);
- everything else in the head (norms, SiLU, 1x1 convolutions, the dense heads' full-resolution 3x3 ones,
  the final convolution, the pointmap's scale branch) stays float: those gain little in int8 and cost
  more fidelity (measured with the transposed convolutions and on the trained normal fixture).

In torch :class:`QuantDeconv` computes ``conv_transpose2d(q(x), dequantized weights)`` and
:class:`QuantConv` ``conv2d(q(x), dequantized weights, bias)``, the integers kept as float, so every
exporter traces plain float ops; the ONNX export writes ``Clip -> QuantizeLinear -> DequantizeLinear`` on
the input and ``DequantizeLinear`` along the output channels on the int8 weights
(:mod:`sapiens2_edge.exporters.onnx_quant`).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
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


class QuantConv(nn.Module):
    """A Conv2d with int8 weights (``weight``, (out, in, k, k)), float32 per-output-channel ``weight_scale``
    (out,), a float32 per-tensor ``input_scale`` (1,) and the float ``bias`` (out,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.padding = padding
        self.register_buffer("weight", torch.zeros(out_channels, in_channels, kernel_size, kernel_size, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_channels, dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @classmethod
    def like(cls, m: nn.Conv2d) -> "QuantConv":
        check_conv(m)
        return cls(m.in_channels, m.out_channels, m.kernel_size[0], m.padding[0])

    @classmethod
    def from_float(cls, m: nn.Conv2d, input_amax: float) -> "QuantConv":
        q = cls.like(m)
        w = m.weight.detach().float()
        scale = nx.weight_scales(w.reshape(w.shape[0], -1), "int8")  # per output channel
        with torch.no_grad():
            q.weight.copy_(nx.quantize_int8(w, scale.view(-1, 1, 1, 1)))
            q.weight_scale.copy_(scale)
            q.input_scale.fill_(max(input_amax / nx.INT8_MAX, nx.EPS_SCALE))
            q.bias.copy_(m.bias.detach())
        return q

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(fake_quant_int8(x, self.input_scale), self.dequantized_weight().to(x.dtype),
                        self.bias.to(x.dtype), 1, self.padding)


def check_conv(m: nn.Conv2d) -> None:
    """The form :class:`QuantConv` holds: a square kernel of odd size, stride 1, "same" padding, a bias, no
    groups or dilation (the dense heads' 3x3 convolutions)."""
    k, s, p = m.kernel_size, m.stride, m.padding
    if (m.bias is None or m.groups != 1 or k[0] != k[1] or k[0] % 2 == 0 or s != (1, 1) or p != (k[0] // 2,) * 2
            or m.dilation != (1, 1) or m.padding_mode != "zeros"):
        raise ConfigError(f"head='int8' takes convolutions with a square kernel of odd size, stride 1, zero padding "
                          f"that keeps the size, a bias and no groups or dilation; got {m}")


def check_deconv(m: nn.ConvTranspose2d) -> None:
    """The form :class:`QuantDeconv` holds: square kernel, one stride / padding, no bias, groups, dilation
    or output padding (the official heads' transposed convolutions all have it)."""
    k, s, p = m.kernel_size, m.stride, m.padding
    if (m.bias is not None or m.groups != 1 or k[0] != k[1] or s[0] != s[1] or p[0] != p[1]
            or m.dilation != (1, 1) or m.output_padding != (0, 0)):
        raise ConfigError(f"head='int8' takes transposed convolutions with a square kernel, one stride and padding "
                          f"and no bias, groups, dilation or output padding; got {m}")


class HeadInputObserver:
    """Calibration: the largest |x| an int8 head layer reads."""

    def __init__(self):
        self.amax = 0.0

    def observe(self, x: torch.Tensor) -> None:
        self.amax = max(self.amax, finite_absmax(x))


class _InputsSeen(Exception):
    """Raised by :func:`run_head_until_observed` once every observed layer has read its input."""


#: input pixels per head forward at most while calibrating: the head's activations grow with the image
#: (at 0.4b 1024x768 a normal head's last upsampling convolution reads a 512-channel 512x384 map, 0.4 GB per
#: image), its observers only keep a maximum, so a batch's images go through the head a few at a time
HEAD_PIXELS = 1 << 20


def run_head_until_observed(model: nn.Module, feat: torch.Tensor, names: Iterable[str], image_pixels: int) -> None:
    """``model.decode_head`` on ``feat`` up to the moment each layer in ``names`` has read its input (their
    observers, hooked before, have seen it), and no further: what the head computes after that, the last
    observed layer itself included, is not needed to calibrate it. For a dense head's int8 recipe that is
    the last upsampling convolution and the full-resolution layers after it: a quarter of a 0.1b normal
    head's operations and its largest activations. The batch goes through in slices of at most
    :data:`HEAD_PIXELS` input pixels (``image_pixels``: one input image's)."""
    modules = dict(model.named_modules())
    waiting = set(names)
    seen: set[str] = set()

    def mark(name: str):
        def hook(_module, _args):
            seen.add(name)
            if seen >= waiting:
                raise _InputsSeen
        return hook
    handles = [modules[n].register_forward_pre_hook(mark(n)) for n in waiting]
    try:
        for part in feat.split(max(1, HEAD_PIXELS // image_pixels)):
            seen.clear()
            try:
                model.decode_head(part)
            except _InputsSeen:
                pass
    finally:
        for h in handles:
            h.remove()


def deconv_names(model: nn.Module) -> list[str]:
    """Module names of the head's transposed convolutions (pose and seg heads have four)."""
    return [n for n, m in model.named_modules() if n.startswith(HEAD) and isinstance(m, nn.ConvTranspose2d)]


def dense_conv_names(model: nn.Module) -> list[str]:
    """Module names of the dense heads' upsampling 3x3 convolutions (normal, pointmap and albedo heads:
    ``input_conv`` and the PixelShuffle units'; the full-resolution ``conv_layers`` after them, the
    pointmap's scale branch and every head's final convolution are not)."""
    return [n for n, m in model.named_modules()
            if n.startswith((HEAD + "input_conv.", HEAD + "upsample_blocks.")) and type(m) is nn.Conv2d
            and m.kernel_size == (3, 3)]


def head_layer_names(model: nn.Module) -> list[str]:
    """What ``head="int8"`` quantizes in ``model``: its transposed convolutions, else its upsampling 3x3
    convolutions."""
    return deconv_names(model) or dense_conv_names(model)


def describe(names: list[str], model: nn.Module) -> str:
    """"4 transposed convolutions" or "5 3x3 convolutions", for messages."""
    deconv = bool(names) and isinstance(model.get_submodule(names[0]), (nn.ConvTranspose2d, QuantDeconv))
    return f"{len(names)} {'transposed' if deconv else '3x3'} convolution{'s' * (len(names) != 1)}"


def selected(model: nn.Module, recipe) -> list[str]:
    """The head layers ``recipe`` quantizes (none unless ``recipe.head == "int8"``); an error where the
    recipe asks for an int8 head and the model has none (a backbone-only model)."""
    if getattr(recipe, "head", "float") != "int8":
        return []
    names = head_layer_names(model)
    if not names:
        raise ConfigError("head='int8' quantizes the head's transposed convolutions (pose, seg) or upsampling 3x3 "
                          "convolutions (normal, pointmap, albedo); a backbone-only model has none: quantize with "
                          "head='float'")
    return names


def install(model: nn.Module, amax: Mapping[str, float] | Iterable[str]) -> None:
    """Replace each named ConvTranspose2d / Conv2d by its :class:`QuantDeconv` / :class:`QuantConv`: from the
    float layer with the given input maxima (a mapping), or as empty placeholders to load a state dict
    into (names)."""
    for n in amax:
        m = model.get_submodule(n)
        kind = QuantDeconv if isinstance(m, nn.ConvTranspose2d) else QuantConv
        set_module(model, n, kind.from_float(m, amax[n]) if isinstance(amax, Mapping) else kind.like(m))


def quantized_deconvs(model: nn.Module) -> dict[str, QuantDeconv]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantDeconv)}


def quantized_convs(model: nn.Module) -> dict[str, QuantConv]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv)}


def quantized_head_layers(model: nn.Module) -> dict[str, QuantDeconv | QuantConv]:
    """Every int8 head layer of ``model``, transposed or not."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantDeconv, QuantConv))}


__all__ = ["QuantDeconv", "QuantConv", "HeadInputObserver", "deconv_names", "dense_conv_names", "head_layer_names",
           "describe", "selected", "install", "quantized_deconvs", "quantized_convs", "quantized_head_layers", "check_deconv",
           "check_conv"]
