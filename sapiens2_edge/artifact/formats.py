"""The one registry of artifact formats: for each, what ``export`` accepts and writes and which
runtime backends open it. Exporters validate requests against it before any work; the runtime
picks its backends from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, UnknownSchemeError

#: Keyword options of ``export`` that every format takes: the task fidelity of a quantized model
#: against its float model (see ``sapiens2_edge.exporters.export``).
FIDELITY_OPTIONS: tuple[str, ...] = ("float_model", "fidelity_data", "fidelity_keypoints", "report")


@dataclass(frozen=True)
class Format:
    """What one artifact format is.

    precisions: the manifest precisions an artifact of this format can have (a float model's and
    the schemes of quantized models it can carry). schemes: the quantization schemes
    ``export(scheme=...)`` may quantize to for it. options: its format-specific keyword options
    of ``export`` with their defaults. files: what its exporter writes besides ``manifest.json`` and
    ``reference.npz`` (optional files included). backends: the runtime backends that open it,
    best first (CUDA-capable runtimes first). export_extra: the extra that installs what exporting
    to it needs; export_packages: the packages (beyond torch) its exporter imports.
    static_ranges: whether it carries calibrated static activation ranges (a format that quantizes
    activations only at run time, per token, does not). int8_head: whether it carries a recipe's int8
    head (``head="int8"``: the head's transposed or upsampling 3x3 convolutions in int8 with a calibrated input scale). choices: the
    values an option takes, where they are a fixed set (checked before any work).
    """

    name: str
    precisions: tuple[str, ...]
    schemes: tuple[str, ...]
    backends: tuple[str, ...]
    files: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    default_precision: str = "fp32"
    export_extra: str = "torch"
    export_packages: tuple[str, ...] = ()
    static_ranges: bool = True
    int8_head: bool = False
    choices: dict[str, tuple] = field(default_factory=dict)

    @property
    def export_options(self) -> tuple[str, ...]:
        return (*self.options, *FIDELITY_OPTIONS)

    def writes(self, rel: str) -> bool:
        """Whether ``rel`` (a path relative to the artifact) is one of this format's files or inside one."""
        return any(rel == f or rel.startswith(f + "/") for f in self.files)


ALL_SCHEMES = ("fp16", "int8-weight", "int4-weight", "int8", "fp8", "mixed")
#: The forms of an ONNX graph: "onnxruntime", shaped for ONNX Runtime (each attention its fused
#: ``com.microsoft`` MultiHeadAttention: no (T, T) scores in memory; the head's transposed convolutions as
#: sub-pixel convolutions: no column buffer); "standard", torch.onnx's standard operators, which any ONNX
#: runtime reads (TensorRT on its own); "auto", the first, except in graphs with fp8 layers (made for
#: TensorRT): the second. See exporters.onnxruntime_graph.
ONNX_GRAPHS = ("auto", "onnxruntime", "standard")
_ONNX_CHOICES = {"opset": (18, 23), "graph": ONNX_GRAPHS}
_NO_FP8 = ("fp16", "int8-weight", "int4-weight", "int8", "mixed")
_ORT_SCHEMES = ("int8-weight", "int4-weight", "int8", "mixed")
_ET_SCHEMES = ("int8-weight", "int4-weight", "int8", "mixed")

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", precisions=("fp32", *ALL_SCHEMES), schemes=ALL_SCHEMES, backends=("onnxruntime", "openvino"),
           files=("model.onnx", "model.onnx.data"), options={"opset": 18, "graph": "auto"},
           export_extra="export", export_packages=("onnx",), int8_head=True, choices=_ONNX_CHOICES),
    # bf16: OpenVINO computes in bf16 on CPUs with native bf16 (ONNX Runtime's CPU provider has no bf16
    # MatMul/Add kernels, so onnx offers none).
    Format("openvino", precisions=("fp32", "bf16", *_NO_FP8), schemes=_NO_FP8, backends=("openvino",),
           files=("openvino/model.xml", "openvino/model.bin"), options={"opset": 18}, export_extra="export",
           export_packages=("onnx", "openvino"), int8_head=True, choices={"opset": _ONNX_CHOICES["opset"]}),
    Format("coreml", precisions=("fp32", *_NO_FP8), schemes=_NO_FP8, backends=("coreml",),
           files=("model.mlpackage",), default_precision="fp16", export_extra="coreml", export_packages=("coremltools",)),
    Format("torch", precisions=("fp32", "bf16", *ALL_SCHEMES), schemes=ALL_SCHEMES, backends=("torch",),
           files=("model.pt2", "model_aoti.pt2"), int8_head=True),
    # The engine runs float, fp16, int8-weight and int8 (W8A8, on oneDNN's int8 GEMMs) layers and an int8
    # head, not int4 or fp8; its weights file is a self-describing checkpoint, so torch can run it too.
    Format("native", precisions=("fp32", "fp16", "bf16"), schemes=("fp16", "int8-weight", "int8", "mixed"), backends=("native", "torch"),
           files=("weights.safetensors",), int8_head=True),
    # LiteRT / TFLite: float activations only (int8 weights from our scales, fp16 weights); a
    # batch-1 graph, run here by the LiteRT interpreter (CPU, XNNPACK).
    Format("litert", precisions=("fp32", "fp16", "int8-weight", "mixed"), schemes=("fp16", "int8-weight", "mixed"),
           backends=("litert",), files=("model.tflite",), export_extra="litert-export",
           export_packages=("litert_torch", "ai_edge_litert")),
    # ONNX Runtime mobile: the ORT-format graph, optimized once for ARM, plus the operator list of a
    # minimal build. No fp16: the conversion runs on this CPU, whose ONNX Runtime has no fp16 kernels, so
    # it would bake fp32 casts (and fp32 weights) into the file; fp8 targets TensorRT. int4-weight layers
    # stay com.microsoft MatMulNBits holding our packed values (ORT mobile runs them).
    Format("ort", precisions=("fp32", *_ORT_SCHEMES), schemes=_ORT_SCHEMES, backends=("onnxruntime",),
           files=("model.ort", "required_operators.config"), options={"opset": 18, "graph": "auto"},
           export_extra="export", export_packages=("onnx", "onnxruntime"), int8_head=True, choices=_ONNX_CHOICES),
    # ExecuTorch: a .pte lowered to XNNPACK at batch 1 (the runtime runs a batch image by image);
    # quantized layers become XNNPACK's dynamically quantized GEMMs (int8 activations per token) with
    # our int8 / int4 weights; static activation ranges and fp8 have no XNNPACK form.
    Format("executorch", precisions=("fp32", "fp16", *_ET_SCHEMES), schemes=("fp16", *_ET_SCHEMES),
           backends=("executorch",),
           files=("model.pte",), export_extra="executorch", export_packages=("executorch",), static_ranges=False),
)}

#: What the native engine reads; any artifact carrying it runs on the native backend too.
NATIVE_WEIGHTS = "weights.safetensors"


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ConfigError(f"unknown export format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def check_export_request(name: str, options: Iterable[str] | Mapping[str, Any] = (), precision: str | None = None,
                         scheme: str | None = None) -> Format:
    """The format ``name``, after checking the keyword ``options`` (their names; their values where a
    mapping is given), the precision and the quantization scheme asked of it (before any work is done)."""
    fmt = get_format(name)
    unknown = [o for o in options if o not in fmt.export_options]
    if unknown:
        raise ConfigError(f"unknown export option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"for format {name!r}; its options are {', '.join(fmt.export_options)}")
    if isinstance(options, Mapping):
        for option, allowed in fmt.choices.items():
            value = options.get(option, allowed[0])
            if isinstance(value, bool) or value not in allowed:
                raise ConfigError(f"{name} option {option}={value!r:.60} is not supported; expected one of "
                                  f"{', '.join(map(repr, allowed))}")
    if scheme is not None and scheme not in ALL_SCHEMES:
        raise UnknownSchemeError(f"unknown quantization scheme {scheme!r}; expected one of {', '.join(ALL_SCHEMES)}")
    if precision is not None and precision not in fmt.precisions:
        raise ConfigError(f"{name} precision {precision!r} is not supported; expected one of "
                          f"{', '.join(fmt.precisions)}")
    if scheme is not None and scheme not in fmt.schemes:
        raise ConfigError(f"a {name} artifact cannot carry quantization scheme {scheme!r}; {name} supports the "
                          f"schemes {', '.join(fmt.schemes)}")
    return fmt


def backends_for(fmt: str, files=()) -> tuple[str, ...]:
    """The backends that can open an artifact of format ``fmt`` holding ``files``, best first."""
    backends = get_format(fmt).backends
    if NATIVE_WEIGHTS in files and "native" not in backends:
        backends = (*backends, "native")
    return backends
