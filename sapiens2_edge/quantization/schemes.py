"""Quantization schemes as config objects, in the style of torchao's ``quantize_(model, Config())``.

>>> quantize(model, Int8(activations=Static("mse")), calibration=Calibration("calib/", num_samples=16))
>>> quantize(model, Mixed(default=Int8(), layers={"backbone.blocks.0.*": Fp16()}), calibration=images)
>>> quantize(model, Mixed(budget="seg_agreement>=0.995"), calibration=images)
>>> apply(model, {"backbone.blocks.0.attn.wq": Fp8(), "backbone.blocks.1.ffn.w3": "int8-weight"})

Every scheme string is a shorthand of one of these: ``"int8-weight"`` = :class:`Int8WeightOnly`,
``"int4-weight"`` = :class:`Int4Weight`,
``"int8"`` = :class:`Int8` (dynamic per-token activations, SmoothQuant on when calibration data is
given), ``"fp8"`` = :class:`Fp8`, ``"fp16"`` = :class:`Fp16`, ``"mixed"`` = :class:`Mixed`; the
keyword options of ``quantize`` (``activation_mode=``, ``estimator=``, ...) fill the same fields.
The per-layer configs (all but :class:`Mixed`) are what :func:`~.convert.apply` takes per layer;
each resolves to the :class:`~.config.LayerQuantConfig` its :class:`~.linear.QuantLinear` stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Union

from ..errors import ConfigError
from .config import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_GROUP_SIZE,
    ESTIMATORS,
    GRANULARITIES,
    INT4_SCALE_METHODS,
    LAYER_SCHEMES,
    LayerQuantConfig,
    QuantRecipe,
    _check_choice,
    as_size,
    check_alpha,
    check_calibration_settings,
    check_count,
    check_group_size,
    check_layer_scheme,
    check_percentile,
    layer_config,
)

#: ``smoothquant_alpha="auto"``: alpha 0.5 when calibration data is given, off (with a note in the
#: report) without it. An explicit number needs calibration data.
AUTO = "auto"
DEFAULT_SMOOTHQUANT_ALPHA = 0.5


@dataclass(frozen=True)
class Dynamic:
    """Activations quantized per token at run time: ``absmax(row) / qmax``, no calibration."""

    mode: ClassVar[str] = "dynamic"


@dataclass(frozen=True)
class Static:
    """One calibrated per-tensor scale for the patch tokens; the first ``prefix_tokens`` tokens
    (CLS + storage) keep a per-token scale. ``estimator``: ``minmax``, ``percentile`` (of |x|) or
    ``mse`` (the clipping range with the least expected quantization error)."""

    estimator: str = "percentile"
    percentile: float = 99.99
    mode: ClassVar[str] = "static"

    def __post_init__(self) -> None:
        _check_choice("estimator", self.estimator, ESTIMATORS)
        check_percentile(self.percentile)


class LayerScheme:
    """Base of the per-layer scheme configs."""

    name: ClassVar[str]

    def layer_config(self) -> LayerQuantConfig:
        raise NotImplementedError

    def recipe_options(self) -> dict[str, Any]:
        """The :class:`~.config.QuantRecipe` fields this config sets."""
        return {}


@dataclass(frozen=True)
class Fp16(LayerScheme):
    """float16 weights (a plain half cast, no scale), float activations."""

    name: ClassVar[str] = "fp16"

    def layer_config(self) -> LayerQuantConfig:
        return layer_config("fp16")


@dataclass(frozen=True)
class Int8WeightOnly(LayerScheme):
    """int8 weights (symmetric, per output channel or per tensor), float activations."""

    granularity: str = "per_channel"
    name: ClassVar[str] = "int8-weight"

    def __post_init__(self) -> None:
        _check_choice("weight_granularity", self.granularity, GRANULARITIES)

    def layer_config(self) -> LayerQuantConfig:
        return layer_config(self.name, weight_granularity=self.granularity)

    def recipe_options(self) -> dict[str, Any]:
        return {"weight_granularity": self.granularity}


@dataclass(frozen=True)
class Int4Weight(LayerScheme):
    """int4 weights for size: symmetric [-8, 7], one float16 scale per ``group_size`` consecutive
    inputs of each output row, float activations. ``scale_method``: ``mse`` (each group's scale
    searched for the least weight error) or ``absmax`` (``absmax / 7``)."""

    group_size: int = DEFAULT_GROUP_SIZE
    scale_method: str = "mse"
    name: ClassVar[str] = "int4-weight"

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        _check_choice("scale_method", self.scale_method, INT4_SCALE_METHODS)

    def layer_config(self) -> LayerQuantConfig:
        return layer_config(self.name, group_size=self.group_size, scale_method=self.scale_method)

    def recipe_options(self) -> dict[str, Any]:
        return {"group_size": self.group_size, "scale_method": self.scale_method}


@dataclass(frozen=True)
class _WeightsAndActivations(LayerScheme):
    activations: Union[Dynamic, Static] = Dynamic()
    granularity: str = "per_channel"
    smoothquant_alpha: Union[float, str, None] = None

    def __post_init__(self) -> None:
        acts = {"dynamic": Dynamic(), "static": Static()}.get(self.activations, self.activations) \
            if isinstance(self.activations, str) else self.activations
        if not isinstance(acts, (Dynamic, Static)):
            raise ConfigError(f"{type(self).__name__}(activations={self.activations!r}) is not supported; expected "
                              "Dynamic() or Static(estimator=...) (or the strings 'dynamic' / 'static')")
        object.__setattr__(self, "activations", acts)
        _check_choice("weight_granularity", self.granularity, GRANULARITIES)
        if self.smoothquant_alpha != AUTO:
            check_alpha(self.smoothquant_alpha)

    def layer_config(self) -> LayerQuantConfig:
        a = self.activations
        return layer_config(self.name, weight_granularity=self.granularity, activation_mode=a.mode,
                            **({"estimator": a.estimator, "percentile": a.percentile} if isinstance(a, Static) else {}))

    def recipe_options(self) -> dict[str, Any]:
        a = self.activations
        alpha = DEFAULT_SMOOTHQUANT_ALPHA if self.smoothquant_alpha == AUTO else self.smoothquant_alpha
        return {"weight_granularity": self.granularity, "activation_mode": a.mode, "smoothquant_alpha": alpha,
                **({"estimator": a.estimator, "percentile": a.percentile} if isinstance(a, Static) else {})}


@dataclass(frozen=True)
class Int8(_WeightsAndActivations):
    """W8A8: int8 weights and int8 activations (``Dynamic()`` per token or ``Static(...)``
    calibrated). ``smoothquant_alpha``: ``"auto"`` (0.5 with calibration data), a number in
    [0, 1], or None (off)."""

    smoothquant_alpha: Union[float, str, None] = AUTO
    name: ClassVar[str] = "int8"


@dataclass(frozen=True)
class Fp8(_WeightsAndActivations):
    """E4M3 weights and activations (``Dynamic()`` or ``Static(...)``); SmoothQuant off unless
    ``smoothquant_alpha`` is given."""

    name: ClassVar[str] = "fp8"


LAYER_SCHEME_CLASSES: dict[str, type[LayerScheme]] = {c.name: c for c in (Fp16, Int8WeightOnly, Int4Weight, Int8,
                                                                            Fp8)}


def as_layer_scheme(spec: Any, where: str = "") -> LayerScheme | None:
    """A per-layer config from a config object or a scheme string; None for ``"float"`` / None."""
    if spec is None:
        return None
    if isinstance(spec, LayerScheme):
        return spec
    if isinstance(spec, str):
        check_layer_scheme(spec, where)
        return None if spec == "float" else LAYER_SCHEME_CLASSES[spec]()
    raise ConfigError(f"per-layer config{where} is a {type(spec).__name__}; expected Int8WeightOnly(), Int4Weight(), "
                      "Int8(...), "
                      f"Fp8(...), Fp16(), or one of the strings {', '.join(LAYER_SCHEMES)}")


def name_of(scheme: LayerScheme | None) -> str:
    return "float" if scheme is None else scheme.name


@dataclass(frozen=True)
class Mixed:
    """Per-layer schemes. ``layers``: module name or glob -> per-layer config (or scheme string,
    ``"float"`` = left float), later entries winning; every other selected layer gets ``default``.
    ``budget`` (e.g. ``"seg_agreement>=0.995, size<=0.3"``) instead searches the assignment: the
    most sensitive layers go to ``fallback`` until the budget is met, measured on
    ``search_samples`` calibration inputs (see :mod:`.sensitivity`)."""

    layers: Mapping[str, Any] = field(default_factory=dict)
    default: Any = field(default_factory=Int8)
    budget: str | None = None
    fallback: Any = "float"
    search_samples: int = 8
    name: ClassVar[str] = "mixed"

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise ConfigError(f"Mixed(layers=...) must map module names / glob patterns to configs, got "
                              f"{type(self.layers).__name__}")
        for k in self.layers:
            if not isinstance(k, str):
                raise ConfigError(f"Mixed(layers=...) keys must be module names or glob patterns, got {k!r}")
        object.__setattr__(self, "layers", {k: as_layer_scheme(v, f" for layer {k!r}") for k, v in self.layers.items()})
        object.__setattr__(self, "default", as_layer_scheme(self.default, " (default)"))
        object.__setattr__(self, "fallback", as_layer_scheme(self.fallback, " (fallback)"))
        check_count("search_samples", self.search_samples, 1)
        if self.budget is not None:
            if not isinstance(self.budget, str):
                raise ConfigError(f"Mixed(budget=...) must be a string such as 'seg_agreement>=0.995', got {self.budget!r}")
            if self.layers:
                raise ConfigError("Mixed(budget=...) chooses the per-layer schemes itself; leave layers= empty")
            if self.default is None:
                raise ConfigError("Mixed(budget=...) needs a default config to quantize with (e.g. Int8()), not 'float'")

    def recipe_options(self) -> dict[str, Any]:
        opts = self.default.recipe_options() if self.default is not None else {}
        if self.default is None or "smoothquant_alpha" not in opts:
            opts["smoothquant_alpha"] = DEFAULT_SMOOTHQUANT_ALPHA
        return {**opts, "default_scheme": name_of(self.default),
                "layer_schemes": {k: name_of(v) for k, v in self.layers.items()}}


SchemeConfig = Union[LayerScheme, Mixed]


@dataclass(frozen=True)
class Calibration:
    """Calibration data and how it is used: at most ``num_samples`` inputs, forward batches of
    ``batch_size``, network input ``input_size`` (H, W) (None = the model's), and
    ``report_samples`` inputs for the report's per-layer output SQNR (held-out ones where the
    report has them, else calibration inputs, which then also give its output SQNR), and
    ``calibration_input_size`` (H, W), the calibration forwards' input where it is not
    ``input_size`` (None = ``input_size``; smaller is cheaper, the held-out report stays at
    ``input_size``). ``data``: a
    folder of images, an iterable of RGB uint8 images / paths, or of normalised (B,3,H,W) tensors
    (None = no data)."""

    data: Any = None
    num_samples: int = DEFAULT_CALIBRATION_SIZE
    batch_size: int = 4
    input_size: tuple[int, int] | None = None
    report_samples: int = 8
    calibration_input_size: tuple[int, int] | None = None

    #: the keyword options of ``quantize`` that are shorthands of these fields
    SHORTHANDS: ClassVar[dict[str, str]] = {"calibration_size": "num_samples", "batch_size": "batch_size",
                                            "input_size": "input_size", "report_samples": "report_samples",
                                            "calibration_input_size": "calibration_input_size"}

    def __post_init__(self) -> None:
        for key in ("input_size", "calibration_input_size"):
            object.__setattr__(self, key, as_size(getattr(self, key)))
        check_calibration_settings(self.num_samples, self.batch_size, self.input_size, self.report_samples,
                                   self.calibration_input_size)

    @classmethod
    def of(cls, calibration: Any, options: dict[str, Any], recipe: QuantRecipe | None = None) -> "Calibration":
        """``calibration`` (data or a Calibration) with the shorthand ``options`` popped into it;
        defaults from ``recipe`` when one is given."""
        given = {field_: options.pop(key) for key, field_ in cls.SHORTHANDS.items() if key in options}
        if isinstance(calibration, Calibration):
            base = calibration
        elif recipe is not None:
            base = cls(calibration, recipe.calibration_size, recipe.batch_size, recipe.input_size, recipe.report_samples,
                       recipe.calibration_input_size)
        else:
            base = cls(calibration)
        return cls(**{**{f: getattr(base, f) for f in ("data", *cls.SHORTHANDS.values())}, **given})

    def recipe_options(self) -> dict[str, Any]:
        return {"calibration_size": self.num_samples, "batch_size": self.batch_size, "input_size": self.input_size,
                "report_samples": self.report_samples, "calibration_input_size": self.calibration_input_size}


# --- strings and recipes <-> config objects ----------------------------------------------------------
def scheme_for(name: str, recipe: QuantRecipe, alpha: Any) -> LayerScheme | None:
    """The per-layer config a recipe's settings give the per-layer scheme ``name``."""
    if name == "int4-weight":
        return Int4Weight(recipe.group_size, recipe.scale_method)
    if name in ("float", "fp16", "int8-weight"):
        return as_layer_scheme(name) if name != "int8-weight" else Int8WeightOnly(recipe.weight_granularity)
    acts = Static(recipe.estimator, recipe.percentile) if recipe.activation_mode == "static" else Dynamic()
    return LAYER_SCHEME_CLASSES[name](acts, recipe.weight_granularity, alpha)


def config_from_recipe(recipe: QuantRecipe, explicit_alpha: bool) -> SchemeConfig | None:
    """The config object a recipe (from a scheme string and options) stands for. The scheme
    default alpha becomes ``"auto"``; an alpha the caller asked for stays explicit."""
    alpha = recipe.smoothquant_alpha if explicit_alpha or recipe.smoothquant_alpha is None else AUTO
    if recipe.scheme != "mixed":
        return scheme_for(recipe.scheme, recipe, alpha)
    return Mixed(layers={p: scheme_for(s, recipe, alpha) for p, s in recipe.layer_schemes.items()},
                 default=scheme_for(recipe.default_scheme, recipe, alpha))


def as_scheme_config(spec: Any) -> SchemeConfig:
    if isinstance(spec, (LayerScheme, Mixed)):
        return spec
    raise ConfigError(f"quantize scheme is a {type(spec).__name__}; expected a scheme name, a QuantRecipe, "
                      "Int8WeightOnly(), Int4Weight(...), Int8(...), Fp8(...), Fp16() or Mixed(...)")


__all__ = ["Dynamic", "Static", "LayerScheme", "Int8WeightOnly", "Int4Weight", "Int8", "Fp8", "Fp16", "Mixed", "Calibration",
           "AUTO", "DEFAULT_SMOOTHQUANT_ALPHA", "as_layer_scheme", "name_of", "scheme_for", "config_from_recipe",
           "as_scheme_config", "SchemeConfig"]
