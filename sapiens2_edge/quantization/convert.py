"""``apply(model, {layer: config}, calibration=None) -> (QuantizedModel, QuantReport)``: quantize
the given layers with the given configs; every scheme of ``quantize`` (``Mixed`` included) is a
layer mapping handed to this function.

The steps, in order (each one only when some layer needs it):

1. copy the model (float32; the caller's model is never modified);
2. preprocess the calibration set (the task's own pipeline);
3. SmoothQuant: observe per-channel input maxima of each norm->linear group that feeds a layer
   with quantized activations, fold the smoothing factors into the norm and the linears (the
   layers of one group share their norm, so they must agree on one alpha);
4. static activations: each such layer's input range (after smoothing), per estimator. Steps 3
   and 4 share one backbone-only pass when the ranges need only maxima (``minmax``, or no
   smoothing at all); histogram estimators (``percentile``, ``mse``) of smoothed layers need the
   smoothed activations, which :mod:`.blockwise` gets in the same single pass, block by block
   (a second whole pass over the smoothed model only where that does not apply: see
   :func:`_calibrate`);
5. replace the layers with :class:`QuantLinear`;
6. report: weight SQNR per layer; with calibration data, per-layer output SQNR (the float input
   of each layer through the float and the quantized layer) and end-to-end output SQNR, on the
   first ``report_samples`` calibration inputs or, when ``held_out`` data is given, on it: then
   the same float and quantized forwards also give the task fidelity (``report.fidelity``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..errors import AlreadyQuantizedError, CalibrationError, ConfigError, InputSizeError, QuantizationError
from ..heap import release_freed_heap
from ..kernels import numerics as nx
from ..kernels import openvino_attention as ova
from ..models.model import Sapiens2Model
from . import attention_inputs, blockwise, head_int8
from .calibration import (
    CalibrationSet,
    attention_on_openvino,
    build_calibration_set,
    calibration_autocast,
    calibration_precision,
    progress,
)
from .config import DEFAULT_PREFIX_TOKENS, QuantRecipe, assign, make_recipe
from .kernels import check_kernel
from .linear import QuantLinear
from .measure import LAYER_TOKENS, measure_outputs
from .model import (
    QuantizedModel,
    as_quantized,
    candidate_linears,
    float_copy,
    is_quantized,
    round_float_storage,
    set_module,
    state_bytes,
)
from .observers import ChannelAbsMaxObserver, RangeObserver, attach_input_observers, non_finite_activations
from .report import LayerReport, QuantReport
from .schemes import AUTO, DEFAULT_SMOOTHQUANT_ALPHA, Calibration, LayerScheme, Mixed, as_layer_scheme
from .smoothquant import apply_smoothing, find_groups, smoothing_scales


def check_float_model(model: Any) -> None:
    if is_quantized(model):
        scheme_now = getattr(getattr(model, "recipe", None), "scheme", "unknown")
        raise AlreadyQuantizedError(
            f"the model is already quantized (scheme {scheme_now!r}); expected a float Sapiens2Model - quantize the "
            "float model (e.g. from load_model on the original checkpoint) instead")
    if not isinstance(model, Sapiens2Model):
        raise QuantizationError(f"quantize expects a Sapiens2Model (from load_model or build_model), got "
                                f"{type(model).__name__}")


def plan_layers(config: LayerScheme | Mixed, recipe: QuantRecipe, candidates: list[str]) -> dict[str, LayerScheme]:
    """Layer name -> config for a scheme config, with the recipe's exclusions."""
    default, patterns = (config.default, config.layers) if isinstance(config, Mixed) else (config, {})
    return assign(candidates, default, patterns, recipe.exclude, recipe.quantize_tokenizer)


def derived_recipe(layers: Mapping[str, LayerScheme], calibration: Calibration, prefix_tokens: int) -> QuantRecipe:
    """The record of an :func:`apply` call: the one scheme of all layers (or ``mixed``) with the
    most common layer config's settings; layers that differ are recorded per layer by the model."""
    common = Counter(layers.values()).most_common(1)[0][0]
    names = {s.name for s in layers.values()}
    opts = {**common.recipe_options(), **calibration.recipe_options(), "prefix_tokens": prefix_tokens}
    if len(names) > 1:
        return make_recipe("mixed", default_scheme=common.name, **opts)
    return make_recipe(common.name, **opts)


def _group_alpha(group, layers: Mapping[str, LayerScheme], configs) -> tuple[float | None, bool]:
    """(alpha, explicit) of one norm->linear group from its layers with quantized activations."""
    asked = {layers[n].smoothquant_alpha for n in group.linears
             if n in configs and configs[n].activation is not None} - {None}
    numbers = asked - {AUTO}
    if len(numbers) > 1:
        raise ConfigError(f"the layers fed by {group.norm} ({', '.join(group.linears)}) ask for SmoothQuant alphas "
                          f"{sorted(numbers)}; they share that norm, so expected one alpha for all of them")
    if numbers:
        return numbers.pop(), True
    return (DEFAULT_SMOOTHQUANT_ALPHA, False) if asked else (None, False)


def apply(model: Sapiens2Model, layers: Mapping[str, Any], calibration: Any = None, *,
          recipe: QuantRecipe | None = None, prefix_tokens: int = DEFAULT_PREFIX_TOKENS, kernel: str = "auto",
          progress: bool | None = None, held_out: Any = None, held_out_samples: int = 16,
          held_out_min_samples: int | None = None, inplace: bool = False) -> tuple[QuantizedModel, QuantReport]:
    """Quantize the named backbone linears of ``model``, each with its own config; ``model`` is not changed.

    layers: module name -> ``Int8WeightOnly()``, ``Int8(...)``, ``Fp8(...)``, ``Fp16()`` or a
    per-layer scheme string (``"float"`` / None: left float). calibration: data or a
    :class:`~.schemes.Calibration` (needed by static activations and SmoothQuant).
    recipe: the request recorded with the model (``quantize`` passes its own); default: derived
    from the configs. prefix_tokens: leading tokens of the main-block sequences (CLS + storage)
    kept out of static ranges (ignored when ``recipe`` is given). held_out: data the report measures
    on instead of the calibration inputs (up to ``held_out_samples``), also filling
    ``report.fidelity`` from the same forwards (only with calibration data; without it, no
    output is measured); with ``held_out_min_samples``, the report stops reading held-out images,
    after at least that many, once the task's headline metric is known to its 95 % interval
    (:mod:`.enough`). inplace: ``model`` itself (float32) is the float copy SmoothQuant folds
    into and the report's float side, instead of a copy of it: one copy of the weights less in
    memory, and ``model`` is left smoothed (the same function up to float rounding); the quantized
    model then shares the tensors that stay float with it (unless ``float_storage="fp16"``).
    """
    check_float_model(model)
    if not isinstance(layers, Mapping):
        raise ConfigError(f"apply expects a mapping of layer names to configs, got {type(layers).__name__}")
    candidates = candidate_linears(model)
    specs: dict[str, LayerScheme] = {}
    for name, spec in layers.items():
        scheme = as_layer_scheme(spec, f" for layer {name!r}")
        if name not in candidates:
            raise QuantizationError(f"{name!r} is not a quantizable layer; expected the module name of a backbone "
                                    f"nn.Linear such as {', '.join(repr(c) for c in candidates[:3])}")
        if scheme is not None:
            specs[name] = scheme
    if not specs:
        raise QuantizationError("no layer is left to quantize: every backbone linear is excluded or 'float'; expected "
                                "at least one (check exclude= and layer_schemes=)")
    check_kernel(kernel)
    cal = calibration if isinstance(calibration, Calibration) else Calibration(calibration)
    recipe = recipe or derived_recipe(specs, cal, prefix_tokens)
    notes: list[str] = []
    t0 = time.perf_counter()

    base = (model if inplace and _all_float32(model) else float_copy(model)).eval()
    device = base.backbone.cls_token.device
    configs = {n: s.layer_config() for n, s in specs.items()}
    static = [n for n, c in configs.items() if c.activation is not None and c.activation.mode == "static"]
    groups = [(g, *_group_alpha(g, specs, configs)) for g in find_groups(base)]
    groups = [(g, alpha, explicit) for g, alpha, explicit in groups if alpha is not None]

    calib: CalibrationSet | None = None
    input_size = tuple(cal.input_size or model.input_size)  # the report's held-out forwards'
    if cal.data is not None:
        calib_size = tuple(cal.calibration_input_size or input_size)
        if cal.calibration_input_size is not None:
            try:
                model.check_input_size(*calib_size)
            except InputSizeError as e:
                raise InputSizeError(f"calibration_input_size: {e}") from None
        calib = build_calibration_set(cal.data, model.task, calib_size, cal.num_samples, cal.batch_size, progress)
        release_freed_heap()  # the decoded images' pages (each phase's forwards allocate afresh; see heap.py)
    elif static:
        raise CalibrationError(f"activation_mode='static' needs calibration data to set the input ranges of "
                               f"{len(static)} layers; pass calibration= (images or normalised tensors) or use "
                               "activation_mode='dynamic'")

    # -- calibration passes: SmoothQuant statistics and static ranges ----------------------------
    smoothed: set[str] = set()
    if groups and calib is None:
        asked = [alpha for _, alpha, explicit in groups if explicit]
        if asked:
            raise CalibrationError(f"SmoothQuant (smoothquant_alpha={asked[0]}) needs calibration data for its "
                                   "activation statistics; pass calibration= or smoothquant_alpha=None")
        notes.append("SmoothQuant skipped: no calibration data was given (pass calibration= to enable it)")
        recipe = replace(recipe, smoothquant_alpha=None)
        groups = []
    ranges: dict[str, float] = {}
    attentions = attention_inputs.selected(base, recipe)
    if attentions and calib is None:
        raise CalibrationError(f"attention='int8' needs calibration data to set the q, k, v ranges of {len(attentions)} "
                               "attentions; pass calibration= (images or normalised tensors) or attention='float'")
    head_layers = head_int8.selected(base, recipe)
    if head_layers and calib is None:
        raise CalibrationError(f"head='int8' needs calibration data to set the input ranges of the head's "
                               f"{head_int8.describe(head_layers, base)}; pass calibration= (images or normalised tensors) "
                               "or head='float'")
    observers = attention_inputs.attach_observers(base, attentions)  # they see the calibration forwards below
    head_observers = {n: head_int8.HeadInputObserver() for n in head_layers}
    remove_head_observers = attach_input_observers(base, head_observers)
    try:
        if groups or static or attentions or head_layers:
            precision, why = calibration_precision(recipe.calibration_precision, device)
            recipe = replace(recipe, calibration_precision=precision)
            notes.append(f"calibration forwards in {precision} ({why})")
            # with held-out data the report does not read the calibration images again
            with calibration_autocast(precision, device), attention_on_openvino(base, precision, device) as ov_attn:
                hp, wp = base.arch.grid(calib.input_size)
                if ov_attn and hp * wp + DEFAULT_PREFIX_TOKENS >= ova.MIN_TOKENS:  # the main blocks' sequences
                    notes.append(f"calibration's attentions of {ova.MIN_TOKENS} tokens or more on OpenVINO's bf16 "
                                 "kernel (shorter ones on torch's)")
                if groups or static:
                    smoothed, ranges = _calibrate(base, calib, groups, static, configs, recipe, device, progress,
                                                  release_inputs=held_out is not None, head=head_layers)
                else:
                    what = " + ".join(w for w, on in (("attention inputs", attentions), ("head inputs", head_layers)) if on)
                    _run_backbone(base, calib, device, f"calibrate {what} ({calib.num_samples} images)",
                                  progress, len(calib), head=head_layers)
    finally:
        attention_inputs.remove(base, attentions)
        remove_head_observers()
    release_freed_heap()

    # -- convert ----------------------------------------------------------------------------------
    # the layers replaced below are not copied; in place, the caller's model is not used after the report
    # and what stays float is shared with it too (the 0.4b dense heads' weights alone are 220 MiB), unless
    # fp16 storage rounds it below
    shared = [""] if base is model and recipe.float_storage == "fp32" else configs
    qmodel = float_copy(base, skip=shared)
    modules = dict(base.named_modules())
    for n, cfg in configs.items():
        scale = None
        if n in ranges:
            scale = torch.tensor([max(ranges[n], 0.0) / nx.qmax_of(cfg.activation.dtype)])
            scale = torch.where(scale > 0, scale, torch.full_like(scale, nx.EPS_SCALE))
        layer = QuantLinear.from_float(modules[n], cfg, recipe.prefix_tokens_for(n), scale)
        layer.kernel = kernel
        set_module(qmodel, n, layer)
    attention_inputs.install(qmodel, {n: obs.scales() for n, obs in observers.items()})
    if observers:
        notes.append(f"int8 attention inputs: q, k, v of {len(observers)} attentions, per-tensor scales from the "
                     f"largest |x| over {calib.num_samples} calibration images")
    head_int8.install(qmodel, {n: obs.amax for n, obs in head_observers.items()})
    if head_observers:
        notes.append(f"int8 head: {head_int8.describe(head_layers, base)} with int8 weights per output channel "
                     f"and int8 inputs, per-tensor scales from the largest |x| over {calib.num_samples} calibration images")
    qmodel = as_quantized(qmodel, recipe, {n: s.name for n, s in specs.items()}).eval()
    if recipe.float_storage == "fp16":
        round_float_storage(qmodel)

    # -- report -----------------------------------------------------------------------------------
    qlayers = qmodel.quantized_layers()
    reports = [LayerReport(n, specs[n].name, nx.tensor_sqnr_db(modules[n].weight.detach().float(),
                                                               qlayers[n].dequantized_weight()),
                           smoothed=n in smoothed, input_range=ranges.get(n)) for n in configs]
    report = QuantReport(scheme=recipe.scheme, recipe=qmodel.recipe_dict(), layers=reports,
                         size_before_bytes=state_bytes(model), size_after_bytes=state_bytes(qmodel), notes=notes)
    if calib is not None and cal.report_samples > 0:
        report.calibration = {"num_samples": calib.num_samples, "input_size": list(calib.input_size),
                              "source": calib.source, "precision": recipe.calibration_precision,
                              "layer_sqnr_patch_tokens_max": LAYER_TOKENS}
        if held_out is None:  # the calibration inputs, at the calibration forwards' size
            batches = calib.head(cal.report_samples)
            _report_outputs(base, qmodel, batches, device, report, progress, "report")
            report.calibration.update(report_samples=min(cal.report_samples, calib.num_samples),
                                      report_input_size=list(calib.input_size))
        else:  # one float and one quantized forward per held-out batch give the report and the fidelity
            from .enough import EnoughImages
            from .evaluate import as_batches, shuffled
            from .fidelity import FidelityAccumulator

            size = input_size
            report.calibration["report_input_size"] = list(size)
            batch = report_batch_size(cal.batch_size, size)
            batches = as_batches(held_out, model.task, size, held_out_samples, batch, progress)
            fidelity = FidelityAccumulator(model.task, size)
            enough = EnoughImages(fidelity, held_out_min_samples, batches.num_samples)
            batches = shuffled(batches, batch) if enough.early else batches
            # every held-out image read gives the task fidelity and the output SQNR; the per-layer SQNR
            # comes from the first report_samples of them
            layer_inputs = _report_outputs(base, qmodel, batches, device, report, progress,
                                           f"report + fidelity ({'up to ' if enough.early else ''}"
                                           f"{batches.num_samples} held-out)", fidelity.add,
                                           layer_samples=cal.report_samples, enough=enough)
            report.fidelity = {**fidelity.result(), **enough.summary()}
            report.calibration.update(report_samples=report.fidelity["samples"], report_on="held-out",
                                      layer_sqnr_samples=layer_inputs)
    report.calibration["seconds"] = round(time.perf_counter() - t0, 3)
    return qmodel, report


#: input pixels per batch of the held-out report's forwards at most: each batch goes through the
#: float and the quantized model with per-layer hooks, and the heads' full-resolution activations
#: of four 1024x768 images alone take gigabytes (seg at 0.4b: four 64-channel 1024x768 maps are 0.8 GB each)
REPORT_BATCH_PIXELS = 1 << 20


def report_batch_size(batch_size: int, size) -> int:
    """The held-out report's batch size: ``batch_size``, fewer images where they are large."""
    return max(1, min(batch_size, REPORT_BATCH_PIXELS // (size[0] * size[1])))


def _all_float32(model) -> bool:
    return all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


def _report_outputs(base, qmodel, batches, device, report: QuantReport, show, desc: str, on_outputs=None,
                    layer_samples: int | None = None, enough=None) -> int:
    """Fill the report's per-layer and end-to-end output SQNR (``on_outputs``, ``layer_samples``,
    ``enough``: see :func:`.measure.measure_outputs`); returns the inputs the per-layer SQNR was measured on."""
    layer_sqnr, total, layer_inputs = measure_outputs(base, qmodel, qmodel.quantized_layers(), batches, len(batches), device,
                                                      on_outputs=on_outputs, desc=desc, show=show,
                                                      layer_samples=layer_samples, enough=enough)
    for lr in report.layers:
        lr.output_sqnr_db = layer_sqnr[lr.name]
    report.output_sqnr_db = total
    return layer_inputs


def _run_backbone(model: Sapiens2Model, batches: Iterable[torch.Tensor], device: torch.device, desc: str,
                  show: bool | None, total: int | None, head: Sequence[str] = ()) -> None:
    """Forward the backbone only (the observed layers are backbone linears), or with ``head`` (observed
    head layers) the head too, until those layers have read their inputs."""
    with torch.no_grad():
        for b in progress(batches, total, desc, show):
            b = b.to(device)
            model.check_input(b)
            feat = model.backbone(b.to(model.backbone.cls_token.dtype), "featmap")
            if head:
                head_int8.run_head_until_observed(model, feat, head, b.shape[-2] * b.shape[-1])


def _observed(base, observers: dict[str, Any], calib: CalibrationSet, device, desc: str, show,
              head: Sequence[str] = ()) -> None:
    remove = attach_input_observers(base, observers)
    try:
        _run_backbone(base, calib, device, desc, show, len(calib), head)
    finally:
        remove()
    release_freed_heap()


def _calibrate(base, calib: CalibrationSet, groups, static: list[str], configs, recipe: QuantRecipe, device,
               show, release_inputs: bool = False, head: Sequence[str] = ()) -> tuple[set[str], dict[str, float]]:
    """SmoothQuant statistics and folding, then the static ranges of the layers in ``static``.

    One backbone pass collects the per-channel maxima of each smoothing group's input and the
    ranges of every static layer that needs only its maximum (``minmax``): a smoothed layer's
    input is X_c / s_c, so its post-smoothing maximum is max_c(absmax_c / s_c), computed once s is
    known; an unsmoothed layer's input is what the float model computes anyway. A second pass, on
    the smoothed model, only when a layer of a smoothed group needs a histogram (``percentile``,
    ``mse``) of the smoothed input. Layers reading the same tensor (a group's linears) share one
    observer. ``head``: the first pass runs the head too, until these (observed) layers have read
    their inputs. Returns (smoothed layer names, layer name -> clipping value).
    """
    feeds = {n: g for g in find_groups(base) for n in g.linears}  # layer -> the group reading its input
    smooth = {n for g, _, _ in groups for n in g.linears}
    estimator = {n: configs[n].activation.estimator for n in static}
    first = {n for n in static if not groups or estimator[n] == "minmax"}
    n_images = calib.num_samples
    if set(first) != set(static) and blockwise.applies(base, calib, groups, static):
        what = " + ".join(w for w, on in (("smoothquant", groups), ("ranges", static)) if on)
        return blockwise.calibrate(base, calib, groups, static, configs, recipe, device,
                                   f"calibrate {what} ({n_images} images, block by block)", show, release_inputs,
                                   head)
    channel = {g.linears[0]: ChannelAbsMaxObserver(recipe.prefix_tokens_for(g.linears[0])) for g, _, _ in groups}
    direct = _shared_observers([n for n in first if n not in smooth], feeds, recipe,
                               lambda n: estimator[n] != "minmax")
    what = " + ".join(w for w, on in (("smoothquant", groups), ("ranges", first)) if on)
    _observed(base, {**channel, **direct}, calib, device, f"calibrate {what} ({n_images} images)", show, head)

    ranges = {n: obs.range(estimator[n], configs[n].activation.percentile, configs[n].activation.dtype)
              for n, obs in _expand(direct, [n for n in first if n not in smooth], feeds).items()}
    smoothed: set[str] = set()
    mods = dict(base.named_modules())
    for g, alpha, _ in groups:
        amax = channel[g.linears[0]].amax
        scales = None
        if amax is not None:
            scales = smoothing_scales(amax, [mods[n].weight for n in g.linears], alpha)
            apply_smoothing(base, g, scales)
            smoothed.update(g.linears)
        for n in g.linears:
            if n in first:
                ranges[n] = _smoothed_max(amax, scales)

    rest = [n for n in static if n not in ranges]
    if rest:  # histogram estimators on smoothed inputs: they need the smoothed activations themselves
        second = _shared_observers(rest, feeds, recipe, lambda n: True)
        _observed(base, second, calib, device, f"calibrate ranges ({n_images} images)", show)
        for n, obs in _expand(second, rest, feeds).items():
            act = configs[n].activation
            ranges[n] = obs.range(act.estimator, act.percentile, act.dtype)
    return smoothed, ranges


def _input_key(n: str, feeds) -> str:
    """The module whose input hook observes layer ``n``'s input (one per group: they read one tensor)."""
    return feeds[n].linears[0] if n in feeds else n


def _shared_observers(names: list[str], feeds, recipe: QuantRecipe, histogram) -> dict[str, RangeObserver]:
    out: dict[str, RangeObserver] = {}
    for n in names:
        key = _input_key(n, feeds)
        if key not in out:
            out[key] = RangeObserver(recipe.prefix_tokens_for(n), histogram=False)
        out[key].histogram = out[key].histogram or histogram(n)
    return out


def _expand(observers: dict[str, RangeObserver], names: list[str], feeds) -> dict[str, RangeObserver]:
    return {n: observers[_input_key(n, feeds)] for n in names}


def _smoothed_max(amax: torch.Tensor | None, scales: torch.Tensor | None) -> float:
    """max_c |X_c / s_c| from the per-channel maxima of X (the range a second pass would observe)."""
    if amax is None:
        return 0.0
    m = float((amax / scales).max()) if scales is not None else float(amax.max())
    if not math.isfinite(m):
        raise non_finite_activations()
    return m


__all__ = ["apply", "plan_layers", "check_float_model", "derived_recipe"]
