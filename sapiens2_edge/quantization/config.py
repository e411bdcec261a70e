"""Quantization configuration objects (torchao style): what a scheme can vary, as frozen dataclasses.

A :class:`QuantRecipe` is the whole request: the scheme name, the per-layer configuration every
selected layer gets (:class:`LayerQuantConfig` = :class:`WeightQuantConfig` +
:class:`ActivationQuantConfig`), SmoothQuant, which layers are left alone, and calibration
settings. :func:`make_recipe` builds one from a scheme name and keyword options; the recipe is
stored as JSON in every quantized checkpoint, so it must round-trip through ``to_dict`` /
``from_dict``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, UnknownSchemeError
from ..spec import NUM_PREFIX_TOKENS

#: Scheme names (API, CLI, manifest).
SCHEMES: tuple[str, ...] = ("fp16", "int8-weight", "int4-weight", "int8", "fp8", "mixed")
#: Per-layer schemes ``mixed`` accepts (``float`` keeps the layer as ``nn.Linear``).
LAYER_SCHEMES: tuple[str, ...] = ("float", "fp16", "int8-weight", "int4-weight", "int8", "fp8")
#: Weight-only schemes: float activations, no calibration data needed.
WEIGHT_ONLY_SCHEMES: tuple[str, ...] = ("fp16", "int8-weight", "int4-weight")

WEIGHT_DTYPES = ("int8", "int4", "fp8", "fp16")
ACT_DTYPES = ("int8", "fp8")
GRANULARITIES = ("per_channel", "per_tensor")
ACT_MODES = ("dynamic", "static")
ESTIMATORS = ("minmax", "percentile", "mse")
#: int4 group sizes: powers of two from 16 (what ONNX Runtime's MatMulNBits takes as block_size)
GROUP_SIZES = (16, 32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32
INT4_SCALE_METHODS = ("mse", "absmax")
#: How the tensors that stay float (head, patch embedding, norms, tokens) are stored: ``fp16``
#: rounds them to float16 when quantizing (the model then computes with those values, in fp32)
FLOAT_STORAGE = ("fp32", "fp16")
#: Precision of the calibration forwards: ``auto`` is bf16 on a CPU that computes it natively
#: (avx512_bf16, AMX), fp32 elsewhere; the recipe records what was used. bf16 rounds the
#: activations the ranges and SmoothQuant maxima are read from (2**-8 relative per operation; the
#: trained fixtures' static ranges move by at most 0.6 %, their fidelity within the noise), and runs
#: the calibration 1.5x faster on an AVX-512 BF16 EPYC (benchmarks/results/quantize.md).
CALIBRATION_PRECISIONS = ("auto", "fp32", "bf16")
#: What the attention product reads: ``float`` (q, k, v as computed; runtimes run the attention in
#: their float precision) or ``int8`` (q, k, v rounded to int8 with calibrated per-tensor scales,
#: see :mod:`.attention_inputs`; needs calibration data)
ATTENTION_MODES = ("float", "int8")
#: The head's upsampling layers (pose / seg: transposed convolutions; normal / pointmap / albedo: 3x3
#: convolutions): ``float`` or ``int8`` (int8 weights per output channel, inputs per tensor from the
#: calibration maxima, see :mod:`.head_int8`; needs calibration data)
HEAD_MODES = ("float", "int8")

#: Default exclusions (glob patterns over module names). Only ``nn.Linear`` modules inside the
#: backbone are ever quantized, so these are documentation as much as filters: the patch
#: embedding conv and the whole head (pointmap scale branch included) stay float.
DEFAULT_EXCLUDE: tuple[str, ...] = ("backbone.patch_embed.*", "decode_head.*")
#: CLS + 8 storage tokens lead every main-block sequence and carry outlier activations.
DEFAULT_PREFIX_TOKENS = NUM_PREFIX_TOKENS
#: The 4K tokenizer's window sequences start with one ``w_cls`` token.
TOKENIZER_PREFIX_TOKENS = 1

DEFAULT_CALIBRATION_SIZE = 32
"""Default number of calibration images.

32 images is what ViT post-training-quantization work settled on (PTQ4ViT, RepQ-ViT, and
NoisyQuant all calibrate ImageNet ViTs on 32 images) and is enough here because every statistic
we collect is a maximum or a high percentile over *tokens*: at 1024x768 one image holds 3072
patch tokens, so 32 images give ~98k tokens per layer (~100M values at C=1024), and the 99.99th
percentile still rests on ~10k values above it. SmoothQuant's per-channel maxima stabilise after
a few images. More images cost a full forward pass each (seconds per image for 0.4B on CPU) and
mostly add images of the same statistics; use more when the domain is varied (pass
``calibration_size=``).
"""


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; expected one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class WeightQuantConfig:
    """How a linear's weight is stored.

    dtype: ``int8`` (symmetric, range [-127, 127]), ``fp8`` (E4M3, range [-448, 448]),
    ``fp16`` (a plain half cast, no scale) or ``int4`` (symmetric [-8, 7], one float16 scale per
    ``group_size`` inputs, granularity ``per_group``). granularity: ``per_channel`` (one scale per
    output row) or ``per_tensor`` (one scale for the weight); ignored for fp16. scale_method
    (int4): ``mse`` (the group scale with the least weight error) or ``absmax``.
    """

    dtype: str = "int8"
    granularity: str = "per_channel"
    group_size: int | None = None
    scale_method: str | None = None

    def __post_init__(self) -> None:
        _check_choice("weight dtype", self.dtype, WEIGHT_DTYPES)
        if self.dtype == "int4":
            _check_choice("weight_granularity", self.granularity, ("per_group",))
            check_group_size(self.group_size)
            _check_choice("scale_method", self.scale_method, INT4_SCALE_METHODS)
        else:
            _check_choice("weight_granularity", self.granularity, GRANULARITIES)
            if self.group_size is not None or self.scale_method is not None:
                raise ConfigError(f"group_size and scale_method are int4 settings; a {self.dtype} weight has none")


@dataclass(frozen=True)
class ActivationQuantConfig:
    """How a linear's input is quantized at run time.

    mode ``dynamic``: one scale per token (row), ``absmax / qmax``, computed on the fly.
    mode ``static``: one calibrated per-tensor scale for the patch tokens; the first
    ``prefix_tokens`` tokens of each sequence (CLS + storage, outliers) are left out of the
    calibrated range and get their own dynamic per-token scale at run time.
    estimator (static only): ``minmax``, ``percentile`` (of |x|, default 99.99) or ``mse``
    (the clipping range minimising the expected quantization error over the histogram).
    """

    dtype: str = "int8"
    mode: str = "dynamic"
    estimator: str = "percentile"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        _check_choice("activation dtype", self.dtype, ACT_DTYPES)
        _check_choice("activation_mode", self.mode, ACT_MODES)
        _check_choice("estimator", self.estimator, ESTIMATORS)
        check_percentile(self.percentile)


@dataclass(frozen=True)
class LayerQuantConfig:
    """Everything one quantized linear needs: its scheme name, weight and activation configs
    (``activation`` None = float activations, i.e. weight-only)."""

    scheme: str
    weight: WeightQuantConfig
    activation: ActivationQuantConfig | None = None

    def to_dict(self) -> dict:
        w = {k: v for k, v in asdict(self.weight).items() if v is not None}
        return {"scheme": self.scheme, "weight": w,
                "activation": asdict(self.activation) if self.activation else None}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LayerQuantConfig":
        act = d.get("activation")
        return cls(d["scheme"], WeightQuantConfig(**d["weight"]), ActivationQuantConfig(**act) if act else None)


def layer_config(scheme: str, *, weight_granularity: str = "per_channel", activation_mode: str = "dynamic",
                 estimator: str = "percentile", percentile: float = 99.99, group_size: int = DEFAULT_GROUP_SIZE,
                 scale_method: str = "mse") -> LayerQuantConfig | None:
    """The :class:`LayerQuantConfig` of a per-layer scheme (None for ``float``)."""
    check_layer_scheme(scheme)
    if scheme == "float":
        return None
    if scheme == "int4-weight":
        return LayerQuantConfig(scheme, WeightQuantConfig("int4", "per_group", group_size, scale_method))
    if scheme == "fp16":
        return LayerQuantConfig("fp16", WeightQuantConfig("fp16"))
    if scheme == "int8-weight":
        return LayerQuantConfig(scheme, WeightQuantConfig("int8", weight_granularity))
    dtype = "int8" if scheme == "int8" else "fp8"
    if activation_mode == "dynamic":  # the estimator sets static ranges only: one config per dynamic scheme
        estimator, percentile = "percentile", 99.99
    return LayerQuantConfig(scheme, WeightQuantConfig(dtype, weight_granularity),
                            ActivationQuantConfig(dtype, activation_mode, estimator, percentile))


def check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")


def check_group_size(group_size: Any) -> None:
    if group_size not in GROUP_SIZES or isinstance(group_size, bool):
        raise ConfigError(f"group_size={group_size!r} is not supported; expected one of "
                          f"{', '.join(map(str, GROUP_SIZES))} (inputs per int4 scale; it must divide every layer's "
                          "input width)")


def check_alpha(alpha: Any) -> None:
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0):
        raise ConfigError(f"smoothquant_alpha={alpha!r} must be a number in [0, 1] (0.5 is typical) or None to turn it off")


def check_percentile(percentile: Any) -> None:
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50.0 < percentile <= 100.0:
        raise ConfigError(f"percentile={percentile!r} must be in (50, 100], e.g. 99.99")


def check_calibration_settings(size: Any, batch_size: Any, input_size: Any, report_samples: Any,
                               calibration_input_size: Any = None) -> None:
    """The calibration settings a recipe records (see :class:`~.schemes.Calibration`)."""
    check_count("calibration_size", size, 1)
    check_count("batch_size", batch_size, 1)
    check_count("report_samples", report_samples, 0)
    for name, value, example in (("input_size", input_size, "(1024, 768)"),
                                 ("calibration_input_size", calibration_input_size, "(512, 384)")):
        if value is None:
            continue
        try:
            h, w = value
            ok = all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (h, w))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{name} must be (H, W) positive integers, e.g. {example}; got {value!r}")


def as_size(value: Any) -> Any:
    """A list / tuple (H, W) as a tuple; anything else as it is (the checks above name it)."""
    if value is None or isinstance(value, (str, bytes)):
        return value
    try:
        return tuple(value)
    except TypeError:
        return value


def check_scheme(scheme: Any) -> str:
    if scheme not in SCHEMES:
        raise UnknownSchemeError(f"unknown quantization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return scheme


def check_layer_scheme(scheme: Any, where: str = "") -> str:
    if scheme not in LAYER_SCHEMES:
        raise UnknownSchemeError(
            f"unknown per-layer scheme {scheme!r}{where}; expected one of {', '.join(LAYER_SCHEMES)}")
    return scheme


@dataclass(frozen=True)
class QuantRecipe:
    """A complete quantization request; stored as JSON in the quantized checkpoint.

    scheme: one of :data:`SCHEMES`. default_scheme: the per-layer scheme of every selected
    layer (the scheme itself except for ``mixed``, where it is the fallback of
    ``layer_schemes``). layer_schemes (``mixed`` only): glob pattern or module name ->
    per-layer scheme; an explicit entry overrides ``exclude``. smoothquant_alpha: migration
    strength on RMSNorm->Linear pairs (None = off). exclude: glob patterns of module names left
    float. quantize_tokenizer: quantize the 4K tokenizer's linears too. prefix_tokens: leading
    tokens of main-block sequences kept out of static ranges and SmoothQuant statistics.
    calibration_size / batch_size / input_size: calibration set size, forward batch size, and
    network input (H, W) (None = the model's). calibration_input_size: network input (H, W) of the
    calibration forwards where it is not ``input_size`` (None: ``input_size``): a smaller one makes
    them cheaper (half the side: ~4x fewer tokens, ~5x less time at 1024x768) while the held-out
    report and fidelity stay at ``input_size``. report_samples: inputs the per-layer output SQNR
    is measured on (the first held-out images where there are, else calibration inputs).
    group_size / scale_method: the int4 weights' group size and scale choice (``int4-weight``
    layers only). float_storage: ``fp32``, or ``fp16`` to round the float tensors that are not
    quantized (head, patch embedding, norms) to float16 and store them so.
    calibration_precision: precision of the calibration forwards (see :data:`CALIBRATION_PRECISIONS`;
    a quantized model records the one it was calibrated in). attention: ``float`` or ``int8``
    (q, k, v of every backbone attention not excluded rounded to int8 with calibrated scales; see
    :data:`ATTENTION_MODES`). head: ``float`` or ``int8`` (the head's transposed convolutions, or a
    dense head's upsampling 3x3 convolutions, in int8 with a calibrated input scale; see :data:`HEAD_MODES`).
    """

    scheme: str
    default_scheme: str
    weight_granularity: str = "per_channel"
    activation_mode: str = "dynamic"
    estimator: str = "percentile"
    percentile: float = 99.99
    smoothquant_alpha: float | None = None
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    layer_schemes: dict[str, str] = field(default_factory=dict)
    quantize_tokenizer: bool = True
    prefix_tokens: int = DEFAULT_PREFIX_TOKENS
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    batch_size: int = 4
    input_size: tuple[int, int] | None = None
    report_samples: int = 8
    calibration_input_size: tuple[int, int] | None = None
    group_size: int = DEFAULT_GROUP_SIZE
    scale_method: str = "mse"
    float_storage: str = "fp32"
    calibration_precision: str = "auto"
    attention: str = "float"
    head: str = "float"

    def __post_init__(self) -> None:
        check_scheme(self.scheme)
        _check_choice("attention", self.attention, ATTENTION_MODES)
        _check_choice("head", self.head, HEAD_MODES)
        _check_choice("float_storage", self.float_storage, FLOAT_STORAGE)
        _check_choice("calibration_precision", self.calibration_precision, CALIBRATION_PRECISIONS)
        check_group_size(self.group_size)
        _check_choice("scale_method", self.scale_method, INT4_SCALE_METHODS)
        check_layer_scheme(self.default_scheme, " (default_scheme)")
        _check_choice("weight_granularity", self.weight_granularity, GRANULARITIES)
        _check_choice("activation_mode", self.activation_mode, ACT_MODES)
        _check_choice("estimator", self.estimator, ESTIMATORS)
        check_percentile(self.percentile)
        check_alpha(self.smoothquant_alpha)
        if self.layer_schemes and self.scheme != "mixed":
            raise ConfigError(f"layer_schemes is only accepted with scheme='mixed', not {self.scheme!r}")
        if self.scheme != "mixed" and self.default_scheme != self.scheme:
            raise ConfigError(f"default_scheme is only accepted with scheme='mixed' (got {self.default_scheme!r} "
                              f"for scheme {self.scheme!r})")
        if not isinstance(self.layer_schemes, Mapping):
            raise ConfigError(f"layer_schemes must map module names / glob patterns to schemes, got "
                              f"{type(self.layer_schemes).__name__}")
        for k, v in self.layer_schemes.items():
            if not isinstance(k, str):
                raise ConfigError(f"layer_schemes keys must be module names or glob patterns, got {k!r}")
            check_layer_scheme(v, f" for layer {k!r}")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise ConfigError(f"exclude must be a sequence of glob patterns, got {self.exclude!r}")
        check_count("prefix_tokens", self.prefix_tokens, 0)
        check_calibration_settings(self.calibration_size, self.batch_size, self.input_size, self.report_samples,
                                   self.calibration_input_size)

    # -- per-layer ---------------------------------------------------------------------------------
    def layer_config(self, scheme: str) -> LayerQuantConfig | None:
        return layer_config(scheme, weight_granularity=self.weight_granularity, activation_mode=self.activation_mode,
                            estimator=self.estimator, percentile=self.percentile, group_size=self.group_size,
                            scale_method=self.scale_method)

    def prefix_tokens_for(self, name: str) -> int:
        """Leading tokens that are not patch tokens in the sequences layer ``name`` sees."""
        return TOKENIZER_PREFIX_TOKENS if ".tokenizer." in f".{name}" else self.prefix_tokens

    def select(self, candidates: Sequence[str]) -> dict[str, str]:
        """Per-layer scheme of every candidate linear that gets quantized (``float`` ones left out)."""
        return assign(candidates, self.default_scheme, self.layer_schemes, self.exclude, self.quantize_tokenizer)

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        d["layer_schemes"] = dict(self.layer_schemes)
        for key in ("input_size", "calibration_input_size"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantRecipe":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "exclude" in kw:
            kw["exclude"] = tuple(kw["exclude"])
        for key in ("input_size", "calibration_input_size"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def assign(candidates: Sequence[str], default: Any, patterns: Mapping[str, Any], exclude: Sequence[str] = DEFAULT_EXCLUDE,
           quantize_tokenizer: bool = True) -> dict[str, Any]:
    """Layer name -> what it gets: ``default`` for every candidate not excluded, then each
    ``patterns`` entry (a module name or glob) for the layers it matches, later entries winning;
    an explicit entry overrides ``exclude``. Layers assigned ``"float"`` or None are left out."""
    from ..errors import QuantizationError

    chosen: dict[str, Any] = {}
    for name in candidates:
        if not quantize_tokenizer and name.startswith("backbone.tokenizer."):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        chosen[name] = default
    for pattern, value in patterns.items():
        hits = [n for n in candidates if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise QuantizationError(
                f"layer_schemes entry {pattern!r} matches no quantizable layer; expected a name or glob of a "
                f"backbone nn.Linear such as {', '.join(repr(c) for c in candidates[:3])}")
        for n in hits:
            chosen[n] = value
    return {n: v for n, v in chosen.items() if v is not None and not (isinstance(v, str) and v == "float")}


_SCHEME_DEFAULTS: dict[str, dict[str, Any]] = {
    "fp16": {},
    "int8-weight": {},
    "int4-weight": {},
    "int8": {"smoothquant_alpha": 0.5},
    "fp8": {},
    "mixed": {"smoothquant_alpha": 0.5},
}
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(QuantRecipe) if f.name != "scheme")


def make_recipe(scheme: "str | QuantRecipe", **options: Any) -> QuantRecipe:
    """A :class:`QuantRecipe` from a scheme name (or a recipe to override) and keyword options.

    Options are the recipe's fields (see :class:`QuantRecipe`). Scheme defaults: ``int8`` and
    ``mixed`` turn SmoothQuant on with alpha 0.5; ``mixed`` uses ``default_scheme='int8'``.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown quantize option(s) {unknown}; accepted options: {', '.join(OPTION_NAMES)}")
    if "exclude" in options and options["exclude"] is not None and not isinstance(options["exclude"], str):
        options["exclude"] = tuple(options["exclude"])
    for key in ("input_size", "calibration_input_size"):
        if key in options:
            options[key] = as_size(options[key])
    if options.get("layer_schemes") is None:
        options.pop("layer_schemes", None)
    if isinstance(scheme, QuantRecipe):
        return replace(scheme, **options)
    check_scheme(scheme)
    base: dict[str, Any] = {"default_scheme": "int8" if scheme == "mixed" else scheme, **_SCHEME_DEFAULTS[scheme]}
    base.update(options)
    return QuantRecipe(scheme=scheme, **base)


__all__ = [
    "SCHEMES", "LAYER_SCHEMES", "DEFAULT_EXCLUDE", "DEFAULT_PREFIX_TOKENS", "DEFAULT_CALIBRATION_SIZE",
    "WeightQuantConfig", "ActivationQuantConfig", "LayerQuantConfig", "QuantRecipe", "make_recipe",
    "layer_config", "check_scheme", "WEIGHT_ONLY_SCHEMES", "GROUP_SIZES", "DEFAULT_GROUP_SIZE", "check_layer_scheme", "assign", "check_calibration_settings",
]
