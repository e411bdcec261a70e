"""Calibration block by block: SmoothQuant statistics and every static range from one forward
per calibration image, whatever the estimator.

Run as whole-model passes, SmoothQuant with a histogram estimator (``percentile``, ``mse``)
takes two: a smoothing factor depends on every image's per-channel maxima, and the histogram
of a smoothed layer input needs the factor first. Here the calibration set's activations at the
current block boundary are kept instead (images x tokens x width float32: 12.6 MB per 1024x768
image at 0.4b), so each half of a block (norm -> attention, norm -> FFN) can

1. take its group's per-channel maxima from the norm's output over all images (a norm is cheap),
2. fold the smoothing factors into that norm and the linears it feeds,
3. run once over all images with the range observers of its static layers attached.

Every projection, attention and FFN runs once per image. What is observed is what the two-pass
procedure's second pass observes (the smoothed model's inputs), except that the maxima of block
``i`` are read behind blocks ``< i`` that are already smoothed: equal to the unsmoothed model's
up to float rounding.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..heap import release_freed_heap
from .calibration import CalibrationSet, progress
from .head_int8 import run_head_until_observed
from .observers import ChannelAbsMaxObserver, RangeObserver, attach_input_observers, non_finite_activations
from .smoothquant import apply_smoothing, smoothing_scales

BLOCKS = "backbone.blocks."
#: the most memory the kept block-boundary activations may take; above it calibration runs as passes
MAX_STATE_BYTES = 2 << 30


def state_bytes(model, calib: CalibrationSet) -> int:
    """Memory of the block-boundary activations of the whole calibration set (float32)."""
    from ..spec import NUM_PREFIX_TOKENS, PATCH_SIZE

    h, w = calib.input_size
    patches = (h // PATCH_SIZE) * (w // PATCH_SIZE)
    if model.backbone.arch.is_4k:
        from ..spec import WINDOW_SIZE

        patches //= WINDOW_SIZE * WINDOW_SIZE
    return calib.num_samples * (NUM_PREFIX_TOKENS + patches) * model.backbone.arch.embed_dim * 4


def applies(model, calib: CalibrationSet, groups, static: list[str]) -> bool:
    """Whether every smoothed and statically calibrated layer sits in a main block and the kept
    activations fit in :data:`MAX_STATE_BYTES` (else: whole-model passes)."""
    names = [n for g, _, _ in groups for n in (g.norm, *g.linears)] + list(static)
    return all(n.startswith(BLOCKS) for n in names) and state_bytes(model, calib) <= MAX_STATE_BYTES


def calibrate(base, calib: CalibrationSet, groups, static: list[str], configs, recipe, device, desc: str,
              show, release_inputs: bool = False, head: Sequence[str] = ()) -> tuple[set[str], dict[str, float]]:
    """SmoothQuant folding and static ranges of ``base`` (modified in place) block by block.

    groups: (SmoothGroup, alpha, explicit) of the groups to smooth; static: names of the layers
    with static activations. ``release_inputs``: drop the calibration images once embedded (the
    caller needs them no more; 9.4 MB per 1024x768 image). Returns (smoothed layer names, layer
    name -> clipping value). ``head``: run the head on the last block's outputs too, until these
    (observed) layers have read their inputs."""
    smooth = {g.norm: (g, alpha) for g, alpha, _ in groups}
    static_set = set(static)
    backbone = base.backbone
    modules = dict(base.named_modules())
    observers: dict[str, RangeObserver] = {}
    smoothed: set[str] = set()
    with torch.no_grad():
        states, rope, hp, wp = _embed(base, calib, device)
        if release_inputs:
            calib.release()
        release_freed_heap()  # see _advance
        for i, blk in enumerate(progress(backbone.blocks, len(backbone.blocks), desc, show, unit="block")):
            name = f"{BLOCKS}{i}"
            halves = ((blk.ln1, "ln1", ("attn.wq", "attn.wk", "attn.wv"), "attn.proj",
                       lambda x, _b=blk: _b.attention_residual(x, rope)),
                      (blk.ln2, "ln2", ("ffn.w12",), "ffn.w3", blk.ffn_residual))
            for norm, norm_name, fed, inner, run in halves:
                group = smooth.get(f"{name}.{norm_name}")
                if group is not None:
                    # a generator: each norm output is observed and dropped (not 32 images of them at once)
                    smoothed.update(_smooth(base, modules, group, (norm(x) for x in states), recipe))
                attached = _range_observers(observers, [f"{name}.{p}" for p in fed], f"{name}.{inner}",
                                            static_set, configs, recipe)
                remove = attach_input_observers(base, attached)
                try:
                    for j in range(len(states)):
                        _advance(states, j, run)
                finally:
                    remove()
                release_freed_heap()  # see _advance
        if head:
            for j in range(len(states)):
                run_head_until_observed(base, backbone.featmap(backbone.ln1(states[j]), hp, wp), head,
                                        calib.input_size[0] * calib.input_size[1])
                states[j] = None
    ranges = {}
    for n in static:
        act = configs[n].activation
        ranges[n] = observers[n].range(act.estimator, act.percentile, act.dtype)
    return smoothed, ranges


def _advance(states: list[torch.Tensor], j: int, run) -> None:
    """``states[j] = run(states[j])``, the result written into the state's own buffer where it fits:
    the kept states then never move, and every allocation of the forward is freed before the next
    image's. A fresh buffer per image and block, allocated while the forward's transients were live,
    left holes the reused heap (:mod:`sapiens2_edge.heap`) could not fill, block after block (an
    8-block model of 0.4b's width with 32 images at 1024x768 peaked at 4.05 GB, 3.06 GB written in place).

    The heap still grows over the images of one half block and keeps what it grew by; the caller gives
    its free pages back after each half block (``malloc_trim``: a half block's transients are faulted in
    once per 32 images, not once per image): the same model's calibration alone, bf16 forwards on an
    AVX-512 EPYC, held 2624 MiB after its last half block without, 1517 MiB with (peaks 2625 / 2256 MiB),
    in the same time."""
    out = run(states[j])
    if out.dtype == states[j].dtype and out.shape == states[j].shape:
        states[j].copy_(out)
    else:
        states[j] = out


def _embed(base, calib: CalibrationSet, device) -> tuple[list[torch.Tensor], Any, int, int]:
    """The first block's input of every calibration batch, the RoPE tables and the patch grid (one
    input size)."""
    states, rope, hp, wp = [], None, 0, 0
    for b in calib:
        b = b.to(device)
        base.check_input(b)
        t, rope, hp, wp = base.backbone.embed(b.to(base.backbone.cls_token.dtype))
        states.append(t)
    return states, rope, hp, wp


def _smooth(base, modules, group, inputs: Iterable[torch.Tensor], recipe) -> tuple[str, ...]:
    """Fold the factors of one group from its norm's outputs over the calibration set."""
    g, alpha = group
    obs = ChannelAbsMaxObserver(recipe.prefix_tokens_for(g.linears[0]))
    for x in inputs:
        obs.observe(x)
    if obs.amax is None:
        return ()
    if not bool(torch.isfinite(obs.amax).all()):
        raise non_finite_activations()
    apply_smoothing(base, g, smoothing_scales(obs.amax, [modules[n].weight for n in g.linears], alpha))
    return g.linears


def _range_observers(observers: dict[str, RangeObserver], fed: list[str], inner: str, static: set[str], configs,
                     recipe) -> dict[str, RangeObserver]:
    """Observers for the static layers of one half block, keyed by the module whose input they see
    (the linears fed by one norm read one tensor and share an observer); also recorded per layer."""
    attached: dict[str, RangeObserver] = {}
    for names in (fed, [inner]):
        wanted = [n for n in names if n in static]
        if not wanted:
            continue
        obs = RangeObserver(recipe.prefix_tokens_for(wanted[0]),
                            histogram=any(configs[n].activation.estimator != "minmax" for n in wanted))
        attached[names[0]] = obs
        observers.update({n: obs for n in wanted})
    return attached


__all__ = ["applies", "calibrate", "state_bytes", "MAX_STATE_BYTES"]
