"""The heads' forward in torch on the CPU without the transients of their full-resolution maps.

A seg head at 1024x768 ends on 64-channel maps of 192 MiB each. Run module by module, every unit
holds its input and output and oneDNN adds reorders of both to its blocked layout: the 0.4b seg head
raised a forward's peak by ~780 MiB over its input, and by ~1.5 GiB where freed pages stay mapped
for reuse (:mod:`sapiens2_edge.heap`). Here, in eager CPU inference of float32 maps only (no autograd
or autocast, not traced, compiled or exported: an exported graph keeps the plain layers):

- a transposed convolution runs by groups of output channels, each group's output at most
  :data:`GROUP_BYTES`, written into the layer's output: oneDNN's reorders are a group's, not the layer's;
- a 1x1 convolution is one GEMM per image on the (C, H x W) view of its NCHW input (no reorder);
- a same-size convolution (the dense heads' 3x3) runs by bands of rows, each band's input and output at
  most :data:`BAND_BYTES`, and a PixelShuffle right after it is applied band by band (the dense heads'
  upsampling units never hold their unshuffled map whole);
- InstanceNorm, the albedo head's channel RMSNorm and SiLU write into their input (the tensor the layer
  before made).

:func:`layer_by_layer` turns it off (the benchmarks' baseline: the official model's layers), and so do
hooks on a module holding the layers (a ``Sequential`` of units) or on every module: they fire only where
each module is called. A hooked layer alone runs as its own call on the lean path.

Under bf16 autocast (the torch backend's bf16 precision) the same path runs on bf16 maps
(:func:`run_units_bf16`): the transposed convolutions by groups, the same-size convolutions by bands,
the 1x1 convolutions as GEMMs, SiLU in place (the norms are torch's kernels there).

The 0.4b seg head at 1024x768 (AVX-512 EPYC, 2 threads): peak over its input 1534 -> 489 MiB with the
freed pages kept, 768 -> 456 MiB without; time 2.13 -> 2.28 s and 3.22 -> 3.12 s. The output differs
from the layer-by-layer one by float rounding (rel L2 8.7e-7 at 0.4b seg: sums taken in another order).
The 0.4b normal head at 1024x768 (AVX2 EPYC, 2 threads): peak over its input 1.3-2.1 GiB (it varies with
the reused heap) -> 765 MiB, time 10.37 -> 10.22 s (benchmarks/results/quantize.md).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: the largest output of one transposed-convolution call (a 16-channel group at 1024x768)
GROUP_BYTES = 48 << 20
#: the largest input or output of one band of a same-size convolution (oneDNN holds four such at once:
#: the band's input and output, each also in its blocked layout)
BAND_BYTES = 16 << 20
_plain_depth = 0  # layer_by_layer() blocks running


@contextlib.contextmanager
def layer_by_layer() -> Iterator[None]:
    """The head's layers one by one even in eager CPU inference: what the official PyTorch model runs
    (the benchmarks' baseline)."""
    global _plain_depth
    _plain_depth += 1
    try:
        yield
    finally:
        _plain_depth -= 1


def eager_cpu_inference(x: torch.Tensor, autocast: bool = False) -> bool:
    """Whether ``x`` goes through an eager forward on the CPU with no autograd graph to keep (and no
    autocast, whose casts decide each layer's dtype, unless ``autocast``: the caller handles bf16
    autocast itself, see :func:`bf16_autocast_on`)."""
    return (x.device.type == "cpu" and not _plain_depth and not torch.is_grad_enabled()
            and (autocast or not torch.is_autocast_enabled("cpu")) and not torch.jit.is_tracing()
            and not torch.jit.is_scripting() and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export())


def bf16_autocast_on() -> bool:
    """Whether the CPU's autocast is on in bf16 (the torch backend's bf16 precision)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def lean_forward(layers: list[nn.Module], x: torch.Tensor, containers: Iterable[nn.Module] = ()) -> torch.Tensor | None:
    """``layers`` on ``x`` without the maps' transients in eager CPU inference of float32 maps
    (:func:`run_units`) or under bf16 autocast (:func:`run_units_bf16`); None where the plain layers must run:
    also where one of ``containers`` (the modules that hold ``layers``) has hooks or a forward of its own,
    or hooks are registered for every module, which only a call of each module fires."""
    if any(_called_as_module(c) for c in containers) or _global_hooks():
        return None
    if eager_cpu_inference(x) and x.dtype == torch.float32:
        return run_units(layers, x)
    if eager_cpu_inference(x, autocast=True) and bf16_autocast_on():
        return run_units_bf16(layers, x)
    return None


def _how_many(each: int, bound: int) -> int:
    """How many parts of ``each`` bytes one call takes within ``bound`` bytes (at least one)."""
    return max(1, bound // max(each, 1))


def run_units_bf16(layers: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor | None:
    """:func:`run_units` on bf16 maps, for a head under bf16 autocast: what autocast computes (bf16
    convolutions on bf16-rounded weights, bf16 maps) without the transients of its layers. None
    where a layer is not one this module knows or is called as its own module (hooks, an int8 layer):
    those run under autocast as they are."""
    layers = list(layers)
    known = all(not _called_as_module(m) and (_is_plain_deconv(m) or _is_same_size_conv(m) or type(m) is nn.SiLU
                                              or type(m) is nn.PixelShuffle or _in_place_form(m) is not None)
                for m in layers)
    if not known:
        return None
    with torch.autocast("cpu", enabled=False):
        return run_units(layers, x.to(torch.bfloat16))


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride,
                     padding) -> torch.Tensor:
    """``F.conv_transpose2d`` (no groups, dilation or output padding), by groups of output channels in
    eager CPU inference (see the module's docstring)."""
    if not eager_cpu_inference(x):
        return F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding)
    cout, k = weight.shape[1], weight.shape[2:]
    size = tuple((n - 1) * s - 2 * p + kk
                 for n, s, p, kk in zip(x.shape[2:], _pair(stride), _pair(padding), k, strict=True))
    group = _how_many(x.shape[0] * size[0] * size[1] * x.element_size(), GROUP_BYTES)
    weight, bias = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)  # bf16 maps: bf16 weights
    if group >= cout:
        return F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding)
    out = x.new_empty((x.shape[0], cout) + size)
    for c in range(0, cout, group):
        part = slice(c, min(c + group, cout))
        out[:, part] = F.conv_transpose2d(x, weight[:, part], None if bias is None else bias[part], stride=stride,
                                          padding=padding)
    return out


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def pointwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution (stride 1, no padding or groups) as one GEMM per image of an NCHW input."""
    n, c, h, w = x.shape
    weight = conv.weight.reshape(conv.out_channels, c).to(x.dtype)
    out = x.new_empty((n, conv.out_channels, h, w))
    rows = x.reshape(n, c, h * w)
    for i in range(n):
        target = out[i].view(conv.out_channels, h * w)
        if conv.bias is None:
            torch.mm(weight, rows[i], out=target)
        else:
            torch.addmm(conv.bias[:, None].to(x.dtype), weight, rows[i], out=target)
    return out


def conv2d_by_rows(x: torch.Tensor, conv: nn.Conv2d, shuffle: int = 1) -> torch.Tensor:
    """A same-size convolution (:func:`_is_same_size_conv`) by bands of output rows, each band's output at
    most :data:`BAND_BYTES` and its input too (oneDNN copies both to its blocked layout), written into the
    layer's output; ``shuffle`` > 1 applies the following ``PixelShuffle(shuffle)`` to each band as it is
    written (the unshuffled map is never whole). A band reads its rows of ``x`` and the ``k // 2`` rows on
    either side (zeros past the edges)."""
    n, c, h, w = x.shape
    weight = conv.weight.to(x.dtype)
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    ph, pw = conv.padding
    row_bytes = n * max(conv.out_channels, c) * w * x.element_size()
    rows = max(1, _how_many(row_bytes, BAND_BYTES) - 2 * ph)
    if rows >= h:
        y = F.conv2d(x, weight, bias, padding=conv.padding)
        return F.pixel_shuffle(y, shuffle) if shuffle > 1 else y
    out = x.new_empty((n, conv.out_channels // shuffle ** 2, h * shuffle, w * shuffle))
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        a, b = max(r0 - ph, 0), min(r1 + ph, h)
        band = F.pad(x[:, :, a:b], (0, 0, ph - (r0 - a), ph - (b - r1)))
        y = F.conv2d(band, weight, bias, padding=(0, pw))
        out[:, :, r0 * shuffle:r1 * shuffle] = F.pixel_shuffle(y, shuffle) if shuffle > 1 else y
        del band, y  # not alive beside the next band's
    return out


def instance_norm_(x: torch.Tensor, eps: float) -> torch.Tensor:
    """InstanceNorm without affine parameters, written into ``x`` (biased variance, as torch's): the map
    centred on its mean, then its sum of squares (plain reductions: ``var_mean``'s Welford pass took 0.32 s
    on a 128x1024x768 map, these passes 0.08 s together, ``F.instance_norm`` 0.26 s). A bf16 ``x`` goes
    to torch's kernel (a new tensor: torch's ``var_mean`` in bf16 is 15x slower than it)."""
    if x.dtype != torch.float32:
        return F.instance_norm(x, eps=eps)
    for _ in range(2):  # the second pass takes off what the first mean's rounding left (a map far from 0)
        x.sub_(x.mean(dim=(2, 3), keepdim=True))
    scale = _sum_of_squares(x).div_(x.shape[2] * x.shape[3]).add_(eps).rsqrt_()
    return x.mul_(scale)


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """Per (image, channel) sum of squares of an NCHW ``x``, by bands of rows of at most :data:`BAND_BYTES`
    (torch's sums are pairwise; ``vector_norm`` accumulates in order and was 100x less exact on a
    1024x768 channel)."""
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, 1, 1))
    rows = _how_many(n * c * w * x.element_size(), BAND_BYTES)
    for r in range(0, h, rows):
        out += x[:, :, r:r + rows].square().sum(dim=(2, 3), keepdim=True)
    return out


def rms_norm_channels_(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the channels of an NCHW float32 ``x`` at every pixel, written into ``x`` (the root
    mean square from the channels' 2-norm: no squared copy of the map)."""
    scale = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    scale.square_().div_(x.shape[1]).add_(eps).rsqrt_()
    return x.mul_(scale).mul_(weight.to(x.dtype).view(1, -1, 1, 1))


def _called_as_module(m: nn.Module) -> bool:
    """Hooks, or a forward set on the instance: the layer runs as its own call."""
    return bool(m._forward_hooks or m._forward_pre_hooks) or "forward" in m.__dict__


def _global_hooks() -> bool:
    """Hooks registered for every module (``torch.nn.modules.module.register_module_forward_hook``)."""
    mod = torch.nn.modules.module
    return bool(getattr(mod, "_global_forward_hooks", None) or getattr(mod, "_global_forward_pre_hooks", None))


def _is_pointwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
            and m.groups == 1 and m.dilation == (1, 1))


def _is_same_size_conv(m: nn.Module) -> bool:
    """A convolution whose output has its input's size (stride 1, odd kernel, zero padding of half of it)."""
    return (type(m) is nn.Conv2d and m.stride == (1, 1) and m.groups == 1 and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and all(k % 2 for k in m.kernel_size)
            and m.padding == tuple(k // 2 for k in m.kernel_size))


def _shuffle_after(layers: list[nn.Module], i: int) -> int:
    """The upscale factor of a plain ``PixelShuffle`` right after ``layers[i]`` (1 where there is none)."""
    nxt = layers[i + 1] if i + 1 < len(layers) else None
    return nxt.upscale_factor if type(nxt) is nn.PixelShuffle and not _called_as_module(nxt) else 1


def _is_plain_deconv(m: nn.Module) -> bool:
    return (type(m) is nn.ConvTranspose2d and m.groups == 1 and m.dilation == (1, 1)
            and m.output_padding == (0, 0))


def _in_place_form(m: nn.Module):
    """The layer's ``forward_`` (its forward written into its input) where the class that defines its
    ``forward`` defines it too (a subclass with a forward of its own is called as it is)."""
    owner = next(c for c in type(m).__mro__ if "forward" in c.__dict__)
    return owner.__dict__.get("forward_")


def run_units(layers: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``x`` through ``layers`` in turn, the lean way where a layer is one this module knows (and has no
    hooks or forward of its own, which then see the call as usual); a norm with an in-place form
    (``forward_``) and SiLU write into a tensor an earlier layer made, never into ``x``."""
    source = x.untyped_storage().data_ptr()
    layers = list(layers)
    steps = iter(enumerate(layers))
    for i, m in steps:
        own = x.untyped_storage().data_ptr() != source
        if _called_as_module(m):
            x = m(x)
        elif _is_plain_deconv(m):
            x = conv_transpose2d(x, m.weight, m.bias, m.stride, m.padding)
        elif _is_pointwise(m) and x.dim() == 4 and x.is_contiguous():
            x = pointwise_conv(x, m)
        elif _is_same_size_conv(m) and x.dim() == 4:
            shuffle = _shuffle_after(layers, i)
            x = conv2d_by_rows(x, m, shuffle)
            if shuffle > 1:
                next(steps)  # the PixelShuffle, applied band by band
        elif own and (in_place := _in_place_form(m)) is not None:
            x = in_place(m, x)
        elif own and type(m) is nn.SiLU:
            x = F.silu(x, inplace=True)
        else:
            x = m(x)
    return x


__all__ = ["eager_cpu_inference", "bf16_autocast_on", "layer_by_layer", "lean_forward", "conv_transpose2d", "pointwise_conv",
           "conv2d_by_rows", "instance_norm_", "rms_norm_channels_", "run_units", "run_units_bf16", "GROUP_BYTES",
           "BAND_BYTES"]
