"""``quantize(model, scheme, calibration=None, **options) -> (QuantizedModel, QuantReport)``.

``scheme`` is a config object of :mod:`.schemes` (``Int8(activations=Static("mse"))``,
``Mixed(...)``, ...), a scheme name with keyword options as shorthands of its fields, or a
:class:`~.config.QuantRecipe`. Either way it becomes a layer -> config mapping that
:func:`~.convert.apply` carries out (a ``Mixed`` budget runs the search of :mod:`.sensitivity`,
which does the same for every assignment it tries).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import ConfigError
from ..heap import reuse_freed_pages
from ..models.model import Sapiens2Model
from .config import QuantRecipe, make_recipe
from .convert import apply, check_float_model, plan_layers
from .model import QuantizedModel, candidate_linears
from .report import QuantReport
from .schemes import Calibration, Mixed, SchemeConfig, as_scheme_config, config_from_recipe
from .sensitivity import search_mixed

#: options that pick layers rather than say how to quantize them: accepted with config objects too
SELECTION_OPTIONS = ("exclude", "quantize_tokenizer", "prefix_tokens", "float_storage", "attention", "head")


def _request(scheme: Any, calibration: Calibration, options: dict[str, Any]) -> tuple[SchemeConfig, QuantRecipe]:
    """(config object, recipe to record) of a quantize call."""
    if isinstance(scheme, (str, QuantRecipe)):
        budget = options.pop("budget", None)
        if budget is not None and scheme != "mixed":
            raise ConfigError(f"budget= chooses per-layer schemes, so it needs scheme='mixed' (got {scheme!r})")
        explicit = options.get("smoothquant_alpha") is not None or (
            isinstance(scheme, QuantRecipe) and scheme.smoothquant_alpha is not None)
        if budget is None:
            recipe = make_recipe(scheme, **options, **calibration.recipe_options())
            return config_from_recipe(recipe, explicit), recipe
        search = {k: options.pop(k) for k in ("mixed_scheme", "fallback", "samples") if k in options}
        recipe = make_recipe("mixed", default_scheme=search.get("mixed_scheme", "int8"), **options,
                             **calibration.recipe_options())
        return replace(config_from_recipe(recipe, explicit), budget=budget, fallback=search.get("fallback", "float"),
                       search_samples=search.get("samples", 8)), recipe
    config = as_scheme_config(scheme)
    stray = sorted(set(options) - set(SELECTION_OPTIONS))
    if stray:
        raise ConfigError(f"quantize option(s) {stray} set what the config object already says; with "
                          f"{type(config).__name__}(...) only {', '.join(SELECTION_OPTIONS)}, kernel, progress, held_out, "
                          "held_out_samples, held_out_min_samples, inplace "
                          "and the calibration settings (calibration_size, batch_size, input_size, report_samples, "
                          "calibration_input_size) are "
                          "accepted: put the rest on the config (e.g. Int8(activations=Static('mse')))")
    return config, make_recipe(config.name, **config.recipe_options(), **options, **calibration.recipe_options())


def quantize(model: Sapiens2Model, scheme: Any = "int8", calibration: Any = None,
             **options: Any) -> tuple[QuantizedModel, QuantReport]:
    """Quantize the backbone linears of ``model`` with ``scheme``; the model itself is not changed
    (unless ``inplace=True``).

    scheme: a config object (``Int8WeightOnly()``, ``Int8(activations=Static(...) | Dynamic())``,
    ``Fp8(...)``, ``Fp16()``, ``Mixed(layers=..., budget=...)``), a :class:`QuantRecipe`, or a
    name: ``fp16``, ``int8-weight``, ``int8``, ``fp8``, ``mixed``.
    calibration: None, a folder of images, an iterable of RGB uint8 images / paths, or of
    normalised (B,3,H,W) float tensors, or a :class:`~.schemes.Calibration` holding one of those
    and its settings. Needed for static activations and SmoothQuant; gives the report its output SQNR.
    options: ``exclude``, ``quantize_tokenizer``, ``prefix_tokens`` (which layers, how many prefix
    tokens), ``held_out`` / ``held_out_samples`` (data the report measures on instead of the
    calibration inputs, which also fills ``report.fidelity`` from the same forwards; ignored by a
    budget search, which measures on its own samples), ``held_out_min_samples`` (stop reading held-out
    data after at least that many inputs once the task metric's 95 % interval is tight; default: read all), ``inplace`` (True: smooth ``model`` itself rather than
    a copy of it, saving one copy of the weights in memory; the model stays the same function up to float
    rounding, and the quantized model shares the tensors that stay float with it), ``float_storage`` (``fp16``: round and store the unquantized float tensors, the head
    among them, as float16), ``attention`` (``int8``: q, k and v of every backbone attention rounded to int8 with
    per-tensor scales read from the calibration data, which OpenVINO runs as int8 attention; default ``float``),
    ``head`` (``int8``: the pose / seg head's transposed convolutions with int8 weights per output channel and
    int8 inputs with a scale read from the calibration data, which OpenVINO runs with its int8 convolution
    kernels; default ``float``),
    ``progress`` (None = bar on a terminal only), ``kernel`` (the GEMM path, default
    ``auto``), the calibration settings ``calibration_size``, ``batch_size``, ``input_size``,
    ``report_samples``, ``calibration_input_size`` (shorthands of the Calibration fields); with a scheme name also any other
    :class:`QuantRecipe` field (``weight_granularity``, ``activation_mode``, ``estimator``,
    ``percentile``, ``smoothquant_alpha``, ``layer_schemes``, ``default_scheme``) and, with
    ``scheme="mixed"``, ``budget="seg_agreement>=0.995"`` (and/or ``size<=0.3``), ``mixed_scheme``
    (default ``int8``), ``fallback`` (default ``float``), ``samples`` (default 8): shorthands of
    :class:`~.schemes.Mixed`.

    ``int8`` and ``mixed`` use SmoothQuant (alpha 0.5) when calibration data is given; without it
    they fall back to no smoothing and say so in ``report.notes`` (an explicit
    ``smoothquant_alpha`` without calibration is an error).
    """
    check_float_model(model)
    show = options.pop("progress", None)
    kernel = options.pop("kernel", "auto")
    run_options = {k: options.pop(k) for k in ("held_out", "held_out_samples", "held_out_min_samples", "inplace")
                   if k in options}
    cal = Calibration.of(calibration, options, scheme if isinstance(scheme, QuantRecipe) else None)
    config, recipe = _request(scheme, cal, options)
    with reuse_freed_pages(release=True):  # the forwards' freed pages reused, given back at the end
        if isinstance(config, Mixed) and config.budget is not None:
            return search_mixed(model, config, recipe, cal, kernel=kernel, progress=show)
        return apply(model, plan_layers(config, recipe, candidate_linears(model)), cal, recipe=recipe, kernel=kernel,
                     progress=show, **run_options)


__all__ = ["quantize"]
