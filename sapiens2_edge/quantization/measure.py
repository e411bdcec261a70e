"""The report's output measurements: per-layer and end-to-end SQNR of a quantized model against
its float source, from one float and one quantized forward per batch.

Per layer, the float model's own input to the layer goes through the float layer (the hook's
output) and the quantized layer; energies are accumulated in float64 from the float32 tensors
(no float64 copies of whole activations). The raw outputs of both models go to a callback, so
the same forwards also give the task fidelity (:func:`.fidelity.task_fidelity`) when the batches
are held-out data.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..heap import release_freed_heap
from ..kernels import numerics as nx
from .calibration import progress

Outputs = tuple[np.ndarray, ...]


def _square_sum(x: torch.Tensor) -> float:
    """sum x**2: float32 squares summed per row of the last dim, the row sums added in float64
    (``sum(dtype=torch.float64)`` over the whole tensor is ~5x slower on CPU and no more useful)."""
    rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
    return float((rows * rows).sum(dim=1).double().sum())


def energies(ref: torch.Tensor, test: torch.Tensor) -> tuple[float, float]:
    """(sum ref**2, sum (ref - test)**2) from float32 tensors, with float64 accumulation across rows."""
    ref = ref.detach().float()
    return _square_sum(ref), _square_sum(ref - test.detach().float())


#: patch tokens per image on which a layer's SQNR is measured at most (evenly spaced; every prefix
#: token too): a 1024x768 input has 3072, and running every quantized layer once more on all of them
#: cost about a fifth of a held-out image's time at 0.4b, for a number that settles on far fewer
LAYER_TOKENS = 1024


def token_rows(tokens: int, prefix: int, most: int = LAYER_TOKENS) -> tuple[torch.Tensor | None, float]:
    """(token indices a layer's SQNR reads: the ``prefix`` tokens, then every k-th patch token so that
    at most ``most`` of them; None for all) and the weight of each read patch token (how many it stands
    for: the energies are estimates of the whole)."""
    patches = tokens - prefix
    stride = -(-patches // most)  # ceil
    if stride <= 1:
        return None, 1.0
    idx = torch.cat([torch.arange(prefix), torch.arange(prefix, tokens, stride)])
    return idx, patches / (len(idx) - prefix)


def layer_energies(ref: torch.Tensor, layer: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(sum ref**2, sum (ref - layer(x))**2) of one layer, ``ref`` its float output for input ``x``;
    a (B, T, C) token sequence is measured on :func:`token_rows`, weighted back to the whole."""
    prefix = int(getattr(layer, "prefix_tokens", 0) or 0)
    idx, weight = token_rows(x.shape[1], prefix) if x.ndim == 3 else (None, 1.0)
    if idx is None:
        return energies(ref, layer(x))
    x, ref = x.index_select(1, idx), ref.index_select(1, idx)
    test = layer(x)  # rows are independent; the first ``prefix`` rows keep their per-token scales
    s0, e0 = energies(ref[:, :prefix], test[:, :prefix]) if prefix else (0.0, 0.0)
    s1, e1 = energies(ref[:, prefix:], test[:, prefix:])
    return s0 + weight * s1, e0 + weight * e1


def numpy_outputs(out) -> Outputs:
    """A model's output (a tensor or a tuple of them) as float32 numpy arrays."""
    return tuple(o.float().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,)))


def _output_energies(ref: Outputs, test: Outputs) -> tuple[float, float]:
    """:func:`energies` summed over the outputs of one batch."""
    pairs = [energies(torch.from_numpy(r), torch.from_numpy(t)) for r, t in zip(ref, test, strict=True)]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def measure_outputs(base: nn.Module, qmodel: nn.Module, layers: Mapping[str, nn.Module],
                    batches: Iterable[torch.Tensor], total: int | None, device, *,
                    on_outputs: Callable[[Outputs, Outputs], None] | None = None,
                    desc: str = "report", show=None, layer_samples: int | None = None,
                    enough: Callable[[int], bool] | None = None) -> tuple[dict[str, float], float, int]:
    """Run ``base`` (the float model, with a hook on each module named in ``layers``) and ``qmodel``
    once per batch. Returns (layer name -> output SQNR dB, end-to-end output SQNR dB, inputs the
    per-layer SQNR was measured on);
    ``on_outputs(float outputs, quantized outputs)`` is called with each batch's raw outputs (e.g.
    :meth:`.fidelity.FidelityAccumulator.add`), which are not kept. ``layer_samples``: the per-layer
    hooks run on the batches that begin within the first ``layer_samples`` inputs only (None: all):
    running every quantized layer once more on the float inputs costs about a quarter of a
    held-out image's time, and a layer's SQNR over millions of values settles within a few images,
    while the task fidelity needs every image. Per image, a layer reads at most :data:`LAYER_TOKENS`
    patch tokens (:func:`layer_energies`). ``enough(inputs run so far)``, called after each batch, ends
    the run when it returns True (e.g. :class:`.enough.EnoughImages`)."""
    modules = dict(base.named_modules())
    energy = {n: [0.0, 0.0] for n in layers}
    handles = []
    seen = [0]  # inputs already run
    layer_inputs = 0  # of them, those the per-layer hooks measured
    for n, ql in layers.items():
        def hook(_mod, args, out, _n=n, _ql=ql):
            if layer_samples is not None and seen[0] >= layer_samples:
                return
            s, e = layer_energies(out, _ql, args[0])
            energy[_n][0] += s
            energy[_n][1] += e
        handles.append(modules[n].register_forward_hook(hook))
    sig = noise = 0.0
    try:
        with torch.no_grad():
            for b in progress(batches, total, desc, show):
                # the forwards before (a batch's, the conversion's) grew the reused heap: see sapiens2_edge.heap
                release_freed_heap()
                b = b.to(device)
                ref, test = numpy_outputs(base(b)), numpy_outputs(qmodel(b))
                s, e = _output_energies(ref, test)
                sig, noise = sig + s, noise + e
                if on_outputs is not None:
                    on_outputs(ref, test)
                if layer_samples is None or seen[0] < layer_samples:
                    layer_inputs += b.shape[0]
                seen[0] += b.shape[0]
                del ref, test
                if enough is not None and enough(seen[0]):
                    break
    finally:
        for h in handles:
            h.remove()
    return {n: nx.sqnr_db(*e) for n, e in energy.items()}, nx.sqnr_db(sig, noise), layer_inputs


__all__ = ["measure_outputs", "numpy_outputs", "energies", "layer_energies", "token_rows", "LAYER_TOKENS"]
