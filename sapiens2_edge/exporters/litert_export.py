"""LiteRT / TFLite export: ``model.tflite`` through ``litert_torch`` (the maintained PyTorch -> LiteRT
converter, formerly ai-edge-torch), checked here with ``ai_edge_litert``'s interpreter.

Choices, and why:

* The graph keeps the reference numerics: RoPE tables of the export grid frozen as constants and
  the bf16 rounding of q/k as CAST ops (LiteRT has bf16 casts), rms_norm (MEAN/RSQRT/MUL), SDPA
  (BATCH_MATMUL + SOFTMAX), transposed-conv and resize heads as they are: no rewrite was needed
  (measured rel L2 ~2e-6 against torch). Only the unused bf16 ``periods`` buffer is made float32
  (the converter cannot inline bf16 constants).
* The batch is fixed at 1 (``options["graph_batch"]``): the converter cannot lower this model
  with a symbolic batch (a reshape after the attention goes through its JAX bridge, which needs
  concrete shapes). Phone apps run one image at a time; the runtime loops over a larger batch.
* ``fp16`` (float model): fp16 weights by ai-edge-quantizer's FLOAT_CASTING of every weight
  (fp16 constants + DEQUANTIZE; the CPU computes in fp32).
* Quantized models are rebuilt from each layer's decomposition (OUR tensors). The converter
  cannot carry an int8 weight through (its PT2E static mode folds a weight's quantize/dequantize
  back into a float constant; without it the float weight is kept and quantized at run time), so
  a quantized layer is converted as a float linear holding our exact ``int8 * scale`` and is then
  stored by ai-edge-quantizer: int8 per output channel (min-max symmetric, which on those values
  gives back our int8 values and scales; every int8 weight of the file is checked equal to ours,
  bit for bit, with its scales: a scheme whose scales are not the row's absmax / 127 fails there)
  or fp16 (FLOAT_CASTING) for fp16-scheme layers; the float activations of the recipe stay float.
  Per-tensor int8 scales are refused (the file's int8 weights are per channel).
* Activation quantization (``int8`` W8A8, ``fp8``, mixed layers with either) is refused with a
  ConfigError naming the layer: LiteRT's integer kernels quantize activations per tensor with
  scales of their own choosing (dynamic range) or from a fully static int8 graph, neither of which
  is our per-token / calibrated recipe with float prefix tokens; no float fallback is made.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ConfigError, ExportError

MODEL_FILE = "model.tflite"
GRAPH_BATCH = 1
PRECISIONS = ("fp32", "fp16", "int8-weight", "mixed")
EXPORT_HINT = "pip install 'sapiens2-edge[litert-export]'"
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "TRANSPOSE_CONV", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def import_converter():
    try:
        import litert_torch
    except ImportError:
        raise BackendUnavailableError(f"the litert format needs the converter litert-torch: {EXPORT_HINT}") from None
    return litert_torch


def converter_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --- the torch program that gets converted ------------------------------------------------------------
def check_layer(d, name: str) -> None:
    """A quantized layer LiteRT can carry as our recipe: float activations, per-channel int8 or fp16 weights."""
    if d.act_dtype is not None:
        raise ConfigError(f"layer {name}: LiteRT cannot run its {d.kind} activation quantization as the recipe "
                          "does (per-token or calibrated per-tensor scales with float prefix tokens); the litert "
                          "format carries weight-only schemes (int8-weight, fp16, mixed of those): quantize with "
                          "scheme 'int8-weight', or export this model to onnx or openvino")
    if d.weight_dtype not in ("int8", "fp16"):
        raise ConfigError(f"layer {name}: LiteRT has no {d.weight_dtype} weights; the litert format carries int8 "
                          "and fp16 weights (schemes int8-weight, fp16)")
    if d.weight_dtype == "int8" and not d.per_channel:
        raise ConfigError(f"layer {name}: its int8 weight has one per-tensor scale; the litert format stores int8 "
                          "weights per output channel: quantize with per-channel weights (the int8-weight default)")


def litert_source(model):
    """A copy of ``model`` ready for litert_torch.convert: float32 periods buffer, repeat-KV
    attention, the eager (unfused) attention path, quantized layers as the float linears of
    :mod:`.litert_linear`. ``model`` is not changed; a layer LiteRT cannot carry is a ConfigError
    naming it."""
    import torch

    from ..models.backbone import Attention
    from ..quantization.attention_inputs import quantized_attentions
    from ..quantization.linear import QuantLinear
    from ..quantization.model import set_module
    from .litert_linear import litert_linear

    layers = [(n, m.decompose()) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name, d in layers:
        check_layer(d, name)
    attentions = quantized_attentions(model)
    if attentions:
        raise ConfigError(f"{len(attentions)} attentions have int8 inputs (recipe attention='int8'), which the litert "
                          "format does not carry: its converter turns the rounding into int8 tensors of its own "
                          "kernels; quantize with attention='float', or export this model to onnx, openvino or native")
    src = copy.deepcopy(model).eval()
    rope = src.backbone.rope_embed
    rope.periods = rope.periods.to(torch.float32)  # bf16 values, exact in fp32; the frozen tables are used
    for name, d in layers:
        set_module(src, name, litert_linear(d))
    for m in src.modules():
        if isinstance(m, Attention):
            m.repeat_kv, m.fused = True, False
    return src


def convert(src, input_size):
    """litert_torch.convert of ``src`` at batch 1."""
    import torch

    from .onnx_export import frozen_rope

    lt = import_converter()
    x = torch.zeros(GRAPH_BATCH, 3, *input_size)
    with frozen_rope(src, input_size), torch.no_grad(), _quiet():
        try:
            return lt.convert(src, (x,))
        except Exception as e:  # noqa: BLE001 - any converter failure is an export failure
            raise ExportError(f"litert_torch.convert failed for the LiteRT program: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:500]}") from e


@contextlib.contextmanager
def _quiet():
    """The converter narrates every pass on stdout/stderr and warns a lot; keep a terminal clean."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger().setLevel(level)


def store_weights(path: Path, rules: list[tuple[str, str, str]]) -> None:
    """Re-store the weights of the ops matching each ``(kind, regex, op)`` rule, in place, with
    ai-edge-quantizer (weight-only: DEQUANTIZE before a float op): kind ``fp16`` as fp16
    constants (FLOAT_CASTING), ``int8`` as int8 per output channel (min-max symmetric)."""
    try:
        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer
    except ImportError:
        raise BackendUnavailableError(f"quantized and fp16 litert artifacts need ai-edge-quantizer: {EXPORT_HINT}") from None
    q = quantizer.Quantizer(str(path))
    names = algorithm_manager.AlgorithmName
    for kind, regex, op in rules:
        if kind == "fp16":
            q.add_weight_only_config(regex=regex, operation_name=op, num_bits=16, algorithm_key=names.FLOAT_CASTING)
        else:
            q.add_weight_only_config(regex=regex, operation_name=op, num_bits=8,
                                     granularity=qtyping.QuantGranularity.CHANNELWISE,
                                     algorithm_key=names.MIN_MAX_UNIFORM_QUANT)
    tmp = path.with_suffix(".stored.tflite")
    with _quiet():
        q.quantize(enable_progress_report=False).export_model(str(tmp), overwrite=True)
    os.replace(tmp, path)


# --- inspection of the written file ---------------------------------------------------------------------
def inspect_file(path: Path) -> dict[str, Any]:
    """What the .tflite holds (read with ai-edge-quantizer's flatbuffer reader, no interpreter):
    input shape, op counts, weight dtypes, and the int8 weights with their scales."""
    from collections import Counter

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(Path(path))
    graph = model.subgraphs[0]
    codes = {v: k for k, v in vars(_builtin_ops()).items() if isinstance(v, int) and k.isupper()}
    ops = Counter(codes.get(model.operatorCodes[op.opcodeIndex].builtinCode, "CUSTOM") for op in graph.operators)
    dtypes: Counter = Counter()
    int8 = []
    for t in graph.tensors:
        data = fb.get_tensor_data(t, model.buffers)
        if data is None or data.ndim < 2 or data.size < 64:
            continue
        dtypes[data.dtype.name] += 1
        if data.dtype == np.int8:
            q = t.quantization
            scales = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
            axis = int(q.quantizedDimension) if q is not None else -1
            int8.append((fb.get_tensor_name(t), data, scales, axis))
    shape = [int(d) for d in graph.tensors[graph.inputs[0]].shape]
    return {"input_shape": shape, "op_types": dict(sorted(ops.items())), "weight_dtypes": dict(sorted(dtypes.items())),
            "int8_weights": len(int8), "size_bytes": Path(path).stat().st_size, "_int8": int8}


def _builtin_ops():
    from ai_edge_quantizer import qtyping

    return qtyping.BuiltinOperator


def check_int8_weights(int8, model) -> dict[str, Any]:
    """Every int8 weight of the file is one of our int8 QuantLinear weights, bit for bit, with our
    scales (per output channel on axis 0, or one per tensor), and every one of ours is there."""
    from ..quantization.linear import QuantLinear

    ours: dict[bytes, list] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            d = m.decompose()
            if d.weight_dtype == "int8":
                ours.setdefault(d.weight.numpy().tobytes(), []).append((name, d.channel_scales().numpy()))
    n_ours = sum(len(v) for v in ours.values())
    matched = 0
    for tname, data, scales, axis in int8:
        hits = ours.get(np.ascontiguousarray(data).tobytes())
        if not hits:
            raise ExportError(f"LiteRT int8 weight {tname} {list(data.shape)} equals none of the model's int8 weights")
        name, want = hits.pop(0)
        got = np.broadcast_to(scales, want.shape) if scales.size == 1 else scales
        if axis != 0 or got.shape != want.shape or not np.array_equal(got, want):
            raise ExportError(f"LiteRT int8 weight {tname} ({name}) does not carry the layer's scales")
        matched += 1
    if matched != n_ours:
        raise ExportError(f"the LiteRT file holds {matched} int8 weights, the model has {n_ours}: the converter "
                          "did not store every int8 layer as int8")
    return {"int8_weights_matched": matched, "bit_exact": True}


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from ..quantization.linear import QuantLinear
    from .litert_linear import SCOPES

    src = litert_source(model)  # first: a layer it cannot carry is named
    if opts.precision not in PRECISIONS:
        raise ConfigError(f"LiteRT precision {opts.precision!r} is not supported; expected one of "
                          f"{', '.join(PRECISIONS)}")
    kinds = [m.decompose().weight_dtype for m in model.modules() if isinstance(m, QuantLinear)]
    path = Path(out_dir) / MODEL_FILE
    convert(src, opts.input_size).export(str(path))
    rules = [("fp16", ".*", "*")] if opts.precision == "fp16" else []
    rules += [(k, SCOPES[k], "FULLY_CONNECTED") for k in ("int8", "fp16") if k in kinds]
    if rules:
        store_weights(path, rules)
    info = inspect_file(path)
    int8 = info.pop("_int8")
    notes: dict[str, Any] = {"graph_batch": GRAPH_BATCH, "converter": converter_versions(), "file": info}
    if int8 or "int8" in kinds:
        notes["int8_check"] = check_int8_weights(int8, model)
    n16 = info["weight_dtypes"].get("float16", 0)
    if n16 < kinds.count("fp16"):
        raise ExportError(f"the LiteRT file holds {n16} fp16 weights, the model has {kinds.count('fp16')} fp16 layers")
    opts.notes["litert"] = notes
    if hasattr(model, "recipe_dict"):
        opts.notes["quantization"] = {"format": "litert", "layers": dict(sorted(_count(kinds).items()))}
    return {MODEL_FILE: "model"}


def _count(kinds) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return out


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.litert_backend import LiteRTBackend

    return LiteRTBackend(Path(out_dir) / MODEL_FILE)
