"""``apply(model, {layer: config}, calibration=None) -> (QuantizedModel, QuantReport)``: quantize
the given layers with the given configs; every scheme of ``quantize`` (``Mixed`` included) is a
layer mapping handed to this function.

The steps, in order (each one only when some layer needs it):

1. copy the model (float32; the caller's model is never modified);
2. preprocess the calibration set (the task's own pipeline);
3. SmoothQuant: observe per-channel input maxima of each norm->linear group that feeds a layer
   with quantized activations, fold the smoothing factors into the norm and the linears (the
   layers of one group share their norm, so they must agree on one alpha);
4. static activations: observe each such layer's input range (after smoothing), per estimator;
5. replace the layers with :class:`QuantLinear`;
6. report: weight SQNR per layer; with calibration data, per-layer output SQNR (the float input
   of each layer through the float and the quantized layer) and end-to-end output SQNR.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import Any, Iterable, Mapping

import torch

from ..errors import AlreadyQuantizedError, CalibrationError, ConfigError, QuantizationError
from ..kernels import numerics as nx
from ..models.model import Sapiens2Model
from .calibration import CalibrationSet, build_calibration_set, progress
from .config import DEFAULT_PREFIX_TOKENS, QuantRecipe, assign, make_recipe
from .kernels import check_kernel
from .linear import QuantLinear
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
from .observers import ChannelAbsMaxObserver, RangeObserver, attach_input_observers
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


def _run(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device, desc: str,
         show: bool | None, total: int | None) -> None:
    with torch.no_grad():
        for b in progress(batches, total, desc, show):
            model(b.to(device))


def _flat(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return torch.cat([o.reshape(-1).double() for o in out])
    return out.reshape(-1).double()


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
          progress: bool | None = None) -> tuple[QuantizedModel, QuantReport]:
    """Quantize the named backbone linears of ``model``, each with its own config; ``model`` is not changed.

    layers: module name -> ``Int8WeightOnly()``, ``Int8(...)``, ``Fp8(...)``, ``Fp16()`` or a
    per-layer scheme string (``"float"`` / None: left float). calibration: data or a
    :class:`~.schemes.Calibration` (needed by static activations and SmoothQuant).
    recipe: the request recorded with the model (``quantize`` passes its own); default: derived
    from the configs. prefix_tokens: leading tokens of the main-block sequences (CLS + storage)
    kept out of static ranges (ignored when ``recipe`` is given).
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

    base = float_copy(model).eval()
    device = base.backbone.cls_token.device
    configs = {n: s.layer_config() for n, s in specs.items()}
    static = [n for n, c in configs.items() if c.activation is not None and c.activation.mode == "static"]
    groups = [(g, *_group_alpha(g, specs, configs)) for g in find_groups(base)]
    groups = [(g, alpha, explicit) for g, alpha, explicit in groups if alpha is not None]

    calib: CalibrationSet | None = None
    if cal.data is not None:
        input_size = tuple(cal.input_size or model.input_size)
        calib = build_calibration_set(cal.data, model.task, input_size, cal.num_samples, cal.batch_size, progress)
    elif static:
        raise CalibrationError(f"activation_mode='static' needs calibration data to set the input ranges of "
                               f"{len(static)} layers; pass calibration= (images or normalised tensors) or use "
                               "activation_mode='dynamic'")

    # -- SmoothQuant ------------------------------------------------------------------------------
    smoothed: set[str] = set()
    if groups and calib is None:
        asked = [alpha for _, alpha, explicit in groups if explicit]
        if asked:
            raise CalibrationError(f"SmoothQuant (smoothquant_alpha={asked[0]}) needs calibration data for its "
                                   "activation statistics; pass calibration= or smoothquant_alpha=None")
        notes.append("SmoothQuant skipped: no calibration data was given (pass calibration= to enable it)")
        recipe = replace(recipe, smoothquant_alpha=None)
        groups = []
    if groups:
        obs = {g.linears[0]: ChannelAbsMaxObserver(recipe.prefix_tokens_for(g.linears[0])) for g, _, _ in groups}
        remove = attach_input_observers(base, obs)
        try:
            _run(base, calib, device, "smoothquant", progress, len(calib))
        finally:
            remove()
        mods = dict(base.named_modules())
        for g, alpha, _ in groups:
            amax = obs[g.linears[0]].amax
            if amax is None:
                continue
            apply_smoothing(base, g, smoothing_scales(amax, [mods[n].weight for n in g.linears], alpha))
            smoothed.update(g.linears)

    # -- static activation ranges -----------------------------------------------------------------
    ranges: dict[str, float] = {}
    if static:
        obs = {n: RangeObserver(recipe.prefix_tokens_for(n)) for n in static}
        remove = attach_input_observers(base, obs)
        try:
            _run(base, calib, device, "calibrate", progress, len(calib))
        finally:
            remove()
        for n in static:
            act = configs[n].activation
            ranges[n] = obs[n].range(act.estimator, act.percentile, act.dtype)

    # -- convert ----------------------------------------------------------------------------------
    qmodel = float_copy(base)
    modules = dict(base.named_modules())
    for n, cfg in configs.items():
        scale = None
        if n in ranges:
            scale = torch.tensor([max(ranges[n], 0.0) / nx.qmax_of(cfg.activation.dtype)])
            scale = torch.where(scale > 0, scale, torch.full_like(scale, nx.EPS_SCALE))
        layer = QuantLinear.from_float(modules[n], cfg, recipe.prefix_tokens_for(n), scale)
        layer.kernel = kernel
        set_module(qmodel, n, layer)
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
        _measure_outputs(base, qmodel, calib, cal.report_samples, device, report, progress)
        report.calibration = {"num_samples": calib.num_samples, "input_size": list(calib.input_size),
                              "source": calib.source, "report_samples": min(cal.report_samples, calib.num_samples)}
    report.calibration["seconds"] = round(time.perf_counter() - t0, 3)
    return qmodel, report


def _measure_outputs(base, qmodel, calib: CalibrationSet, samples: int, device, report: QuantReport,
                     show: bool | None) -> None:
    """Per-layer output SQNR (same float input through float and quantized layer) and model SQNR."""
    qlayers = qmodel.quantized_layers()
    energy = {n: [0.0, 0.0] for n in qlayers}
    modules = dict(base.named_modules())
    handles = []
    for n, ql in qlayers.items():
        def hook(_mod, args, out, _n=n, _ql=ql):
            yq = _ql(args[0])
            ref = out.double()
            energy[_n][0] += float((ref * ref).sum())
            energy[_n][1] += float(((ref - yq.double()) ** 2).sum())
        handles.append(modules[n].register_forward_hook(hook))
    sig = noise = 0.0
    batches = calib.head(samples)
    try:
        with torch.no_grad():
            for b in progress(batches, len(batches), "report", show):
                b = b.to(device)
                ref = _flat(base(b))
                out = _flat(qmodel(b))
                sig += float((ref * ref).sum())
                noise += float(((ref - out) ** 2).sum())
    finally:
        for h in handles:
            h.remove()
    for lr in report.layers:
        lr.output_sqnr_db = nx.sqnr_db(*energy[lr.name])
    report.output_sqnr_db = nx.sqnr_db(sig, noise)


__all__ = ["apply", "plan_layers", "check_float_model", "derived_recipe"]
