"""``quantize(model, scheme, calibration=None, **options) -> (QuantizedModel, QuantReport)``.

The steps, in order (each one only when the recipe needs it):

1. copy the model (float32; the caller's model is never modified) and pick the layers: every
   backbone ``nn.Linear`` not matched by ``exclude`` (plus ``layer_schemes`` for ``mixed``);
2. preprocess the calibration set (the task's own pipeline);
3. SmoothQuant: observe per-channel input maxima of each norm->linear group that feeds a layer
   with quantized activations, fold the smoothing factors into the norm and the linears;
4. static activations: observe each such layer's input range (after smoothing), per estimator;
5. replace the layers with :class:`QuantLinear`;
6. report: weight SQNR per layer; with calibration data, per-layer output SQNR (the float input
   of each layer through the float and the quantized layer) and end-to-end output SQNR.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Iterable

import torch

from ..errors import AlreadyQuantizedError, CalibrationError, ConfigError, QuantizationError
from ..kernels import numerics as nx
from ..models.model import Sapiens2Model
from .calibration import CalibrationSet, build_calibration_set, progress
from .config import QuantRecipe, make_recipe
from .linear import QuantLinear
from .model import QuantizedModel, as_quantized, candidate_linears, float_copy, is_quantized, set_module, state_bytes
from .observers import ChannelAbsMaxObserver, RangeObserver, attach_input_observers
from .report import LayerReport, QuantReport
from .smoothquant import apply_smoothing, find_groups, smoothing_scales


def _run(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device, desc: str,
         show: bool | None, total: int | None) -> None:
    with torch.no_grad():
        for b in progress(batches, total, desc, show):
            model(b.to(device))


def _flat(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return torch.cat([o.reshape(-1).double() for o in out])
    return out.reshape(-1).double()


def quantize(model: Sapiens2Model, scheme: "str | QuantRecipe" = "int8", calibration: Any = None,
             **options: Any) -> tuple[QuantizedModel, QuantReport]:
    """Quantize the backbone linears of ``model`` with ``scheme``; the model itself is not changed.

    scheme: ``fp16``, ``int8-weight``, ``int8``, ``fp8``, ``mixed`` (or a :class:`QuantRecipe`).
    calibration: None, a folder of images, an iterable of RGB uint8 images / paths, or of
    normalised (B,3,H,W) float tensors (see :mod:`.calibration`). Needed for static activations
    and SmoothQuant; gives the report its output SQNR.
    options: any :class:`QuantRecipe` field (``weight_granularity``, ``activation_mode``,
    ``estimator``, ``percentile``, ``smoothquant_alpha``, ``exclude``, ``layer_schemes``,
    ``default_scheme``, ``quantize_tokenizer``, ``prefix_tokens``, ``calibration_size``,
    ``batch_size``, ``input_size``, ``report_samples``), plus ``progress`` (None = bar on a
    terminal only) and ``kernel`` (the GEMM path, default ``auto``). With ``scheme="mixed"``,
    ``budget="seg_agreement>=0.995"`` (and/or ``size<=0.3``) runs the sensitivity search of
    :mod:`.sensitivity` (``mixed_scheme``: the low-precision scheme, default ``int8``;
    ``fallback``: where sensitive layers go, default ``float``).

    ``int8`` and ``mixed`` use SmoothQuant (alpha 0.5) when calibration data is given; without it
    they fall back to no smoothing and say so in ``report.notes`` (an explicit
    ``smoothquant_alpha`` without calibration is an error).
    """
    if is_quantized(model):
        scheme_now = getattr(getattr(model, "recipe", None), "scheme", "unknown")
        raise AlreadyQuantizedError(
            f"the model is already quantized (scheme {scheme_now!r}); expected a float Sapiens2Model - quantize the "
            "float model (e.g. from load_model on the original checkpoint) instead")
    if not isinstance(model, Sapiens2Model):
        raise QuantizationError(f"quantize expects a Sapiens2Model (from load_model or build_model), got "
                                f"{type(model).__name__}")
    budget = options.pop("budget", None)
    if budget is not None:
        if scheme != "mixed":
            raise ConfigError(f"budget= chooses per-layer schemes, so it needs scheme='mixed' (got {scheme!r})")
        from .sensitivity import search_mixed

        return search_mixed(model, calibration, budget, scheme=options.pop("mixed_scheme", "int8"),
                            fallback=options.pop("fallback", "float"), **options)
    show = options.pop("progress", None)
    kernel = options.pop("kernel", "auto")
    explicit_alpha = options.get("smoothquant_alpha") is not None
    recipe = make_recipe(scheme, **options)
    if isinstance(scheme, QuantRecipe) and scheme.smoothquant_alpha is not None:
        explicit_alpha = True
    from .kernels import check_kernel

    check_kernel(kernel)
    notes: list[str] = []
    t0 = time.perf_counter()

    base = float_copy(model).eval()
    device = base.backbone.cls_token.device
    chosen = recipe.select(candidate_linears(base))
    if not chosen:
        raise QuantizationError("no layer is left to quantize: every backbone linear is excluded or 'float'; expected "
                                "at least one (check exclude= and layer_schemes=)")
    configs = {n: recipe.layer_config(s) for n, s in chosen.items()}
    static = [n for n, c in configs.items() if c.activation is not None and c.activation.mode == "static"]

    calib: CalibrationSet | None = None
    if calibration is not None:
        input_size = tuple(recipe.input_size or model.input_size)
        calib = build_calibration_set(calibration, model.task, input_size, recipe.calibration_size,
                                      recipe.batch_size, show)
    elif static:
        raise CalibrationError(f"activation_mode='static' needs calibration data to set the input ranges of "
                               f"{len(static)} layers; pass calibration= (images or normalised tensors) or use "
                               "activation_mode='dynamic'")

    # -- SmoothQuant ------------------------------------------------------------------------------
    smoothed: set[str] = set()
    if recipe.smoothquant_alpha is not None:
        groups = [g for g in find_groups(base)
                  if any(n in configs and configs[n].activation is not None for n in g.linears)]
        if groups and calib is None:
            if explicit_alpha:
                raise CalibrationError(f"SmoothQuant (smoothquant_alpha={recipe.smoothquant_alpha}) needs calibration "
                                       "data for its activation statistics; pass calibration= or smoothquant_alpha=None")
            notes.append("SmoothQuant skipped: no calibration data was given (pass calibration= to enable it)")
            recipe = replace(recipe, smoothquant_alpha=None)
            groups = []
        if groups:
            obs = {g.linears[0]: ChannelAbsMaxObserver(recipe.prefix_tokens_for(g.linears[0])) for g in groups}
            remove = attach_input_observers(base, obs)
            try:
                _run(base, calib, device, "smoothquant", show, len(calib))
            finally:
                remove()
            mods = dict(base.named_modules())
            for g in groups:
                amax = obs[g.linears[0]].amax
                if amax is None:
                    continue
                s = smoothing_scales(amax, [mods[n].weight for n in g.linears], recipe.smoothquant_alpha)
                apply_smoothing(base, g, s)
                smoothed.update(g.linears)

    # -- static activation ranges -----------------------------------------------------------------
    ranges: dict[str, float] = {}
    if static:
        obs = {n: RangeObserver(recipe.prefix_tokens_for(n)) for n in static}
        remove = attach_input_observers(base, obs)
        try:
            _run(base, calib, device, "calibrate", show, len(calib))
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
    qmodel = as_quantized(qmodel, recipe, chosen).eval()

    # -- report -----------------------------------------------------------------------------------
    qlayers = qmodel.quantized_layers()
    layers = []
    for n in configs:
        w = modules[n].weight.detach().float()
        layers.append(LayerReport(n, chosen[n], nx.tensor_sqnr_db(w, qlayers[n].dequantized_weight()),
                                  smoothed=n in smoothed, input_range=ranges.get(n)))
    report = QuantReport(scheme=recipe.scheme, recipe=qmodel.recipe_dict(), layers=layers,
                         size_before_bytes=state_bytes(model), size_after_bytes=state_bytes(qmodel), notes=notes)
    if calib is not None and recipe.report_samples > 0:
        _measure_outputs(base, qmodel, calib, recipe.report_samples, device, report, show)
        report.calibration = {"num_samples": calib.num_samples, "input_size": list(calib.input_size),
                              "source": calib.source, "report_samples": min(recipe.report_samples, calib.num_samples)}
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


__all__ = ["quantize"]
