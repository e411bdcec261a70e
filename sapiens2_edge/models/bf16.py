"""bf16 forwards of the torch model: which precision a forward gets, its autocast, and the long
attentions on OpenVINO's CPU kernel.

Two users: the quantizer's calibration forwards and the torch backend's bf16 inference. On a CPU
that computes bf16 natively (avx512_bf16, AMX) torch's bf16 linears run at about 2.5x its float32
GEMMs, but its bf16 ``scaled_dot_product_attention`` is no faster than float32, so where OpenVINO is
installed the attentions of long sequences go to OpenVINO's kernel
(:mod:`sapiens2_edge.kernels.openvino_attention`): 0.4b at 1024x768 on an AVX-512 BF16 EPYC, one
image, 2 cores: float32 25.1 s, torch's bf16 autocast 15.9 s, the torch backend's bf16 11.3 s
(benchmarks/results/cpu_peers.md).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ..cpu_features import bf16_flags
from ..kernels import openvino_attention as ova
from .backbone import Attention

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_precision(asked: str, device: Any, cpuinfo: str | None = None) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why) of torch forwards on ``device``: ``auto`` is bf16 on a CPU with
    native bf16 (``cpuinfo``: its /proc/cpuinfo text, default this machine's), else fp32."""
    if asked != "auto":
        return asked, "asked for"
    kind = torch.device(device).type
    if kind != "cpu":
        return "fp32", f"auto: fp32 on {kind}"
    has, evidence = bf16_flags(cpuinfo)
    return ("bf16" if has else "fp32"), f"auto: {evidence}"


def bf16_autocast(device: Any, enabled: bool = True) -> contextlib.AbstractContextManager:
    """torch's bf16 autocast on ``device``'s kind (bf16 GEMMs, convolutions and attention; norms and
    softmax-like reductions in float32); nothing when not ``enabled``.

    Without autocast's weight cache: it keeps the bf16 copy of every weight it casts until the context
    ends, a second copy of the model (0.8 GB at 0.4b) for one forward that reads each weight once
    anyway; and the quantizer folds SmoothQuant's factors into the float weights between two passes,
    which a cache would not see."""
    stack = contextlib.ExitStack()
    if enabled:
        stack.enter_context(warnings.catch_warnings())
        # QK-norm gets the projections' bf16 outputs with its float32 weight: torch takes its unfused
        # path and says so; the values are what autocast means
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False))
    return stack


#: the layers whose weights and biases autocast rounds to bf16 at every call (its GEMMs and convolutions)
GEMM_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _float32_gemm_params(model: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """(layer, "weight" or "bias", parameter) of every float32 weight and bias of ``model``'s layers of
    exactly the :data:`GEMM_LAYERS` types (subclasses and quantized layers are left out)."""
    return [(m, name, p) for m in model.modules() if type(m) in GEMM_LAYERS
            for name in ("weight", "bias") if (p := getattr(m, name)) is not None and p.dtype == torch.float32]


def store_gemm_weights_in_bf16_(model: nn.Module) -> int:
    """Store the weights and biases of ``model``'s linear and convolution layers in bf16, in place;
    returns the bytes that frees. Under bf16 autocast the model computes exactly the same (autocast
    rounds them to nearest bf16 at every call; now they are already), without that per-call cast and
    with half these weights' memory; only for a model nothing runs in fp32 any more. Each float32
    tensor is let go as soon as its bf16 copy is in place: the peak is one layer's copy above the model."""
    params, freed = _float32_gemm_params(model), 0
    while params:
        m, name, p = params.pop()
        setattr(m, name, nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
        freed += 2 * p.numel()
        del p
    return freed


@contextlib.contextmanager
def gemm_weights_in_bf16(model: nn.Module) -> Iterator[None]:
    """For the duration, ``model``'s linear and convolution weights stored in bf16
    (:func:`store_gemm_weights_in_bf16_`); its own float32 ones again after (e.g. while a bf16 program
    of it is exported: the program then holds bf16 weights, half the file)."""
    saved = _float32_gemm_params(model)
    store_gemm_weights_in_bf16_(model)
    try:
        yield
    finally:
        for m, name, p in saved:
            setattr(m, name, p)


def openvino_attention_kernel(device: Any) -> ova.OpenVINOAttention | None:
    """OpenVINO's attention kernel for bf16 forwards on ``device`` where it applies (a CPU that computes
    bf16 natively, OpenVINO installed, the kernels not held to torch's own); None elsewhere."""
    if torch.device(device).type == "cpu" and bf16_flags()[0] and ova.available():
        return ova.OpenVINOAttention()
    return None


@contextlib.contextmanager
def attention_on_openvino(model: torch.nn.Module, device: Any,
                          kernel: ova.OpenVINOAttention | None = None) -> Iterator[bool]:
    """For the duration, the long attentions of ``model``'s bf16 CPU forwards run on OpenVINO's kernel
    (``kernel``: one the caller keeps, whose graphs are compiled once per shape; default
    :func:`openvino_attention_kernel`'s) where it applies; yields whether they do. Attentions with a
    product of their own (an export's) keep it; anything but a long sequence under bf16 CPU autocast
    still takes torch's kernel (:class:`~sapiens2_edge.kernels.openvino_attention.AttentionProduct`)."""
    attentions = [m for m in model.modules() if isinstance(m, Attention) and m.product is None]
    if attentions and kernel is None:
        kernel = openvino_attention_kernel(device)
    if kernel is None or not attentions:
        yield False
        return
    product = ova.AttentionProduct(kernel)
    for m in attentions:
        m.product = product
    try:
        yield True
    finally:
        for m in attentions:
            m.product = None


__all__ = ["GEMM_LAYERS", "PRECISIONS", "attention_on_openvino", "bf16_autocast", "bf16_precision",
           "gemm_weights_in_bf16", "openvino_attention_kernel", "store_gemm_weights_in_bf16_"]
