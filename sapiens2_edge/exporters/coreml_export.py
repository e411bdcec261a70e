"""Core ML export: an ML Program ``model.mlpackage`` through ``torch.export`` -> coremltools (iOS 18).

Choices, and why:

* Attention uses the repeat-KV path (``Attention.repeat_kv``): Core ML cannot convert SDPA's
  ``enable_gqa`` flag.
* RoPE runs in ``fp32`` mode with the tables of the export grid frozen as constants: Core ML has
  no bfloat16, so the reference's bf16 rounding of q/k cannot be expressed. With fp16 compute
  q/k are rounded to fp16 (11-bit significand) instead of bf16 (8-bit), which is closer to exact.
* A float model exports as ``fp16`` by default: FLOAT16 compute, the precision the Neural Engine
  runs; ``precision="fp32"`` converts with FLOAT32 compute (CPU/GPU only). A quantized model
  exports as its scheme, with FLOAT16 compute.
* Batch: fixed when ``max_batch`` is 1, otherwise an enumerated set {1, ..., max_batch}. The
  Neural Engine takes enumerated shapes but not ranges, and listing every batch size lets the
  runtime send any batch up to ``max_batch`` without padding.
* Quantized layers are rebuilt from their decomposition (OUR tensors) as ``quantized_decomposed``
  ops, which the converter turns into Core ML's own (see :mod:`.coreml_linear`): int8 weights
  become ``constexpr_blockwise_shift_scale``, static activation scales ``quantize``/``dequantize``
  pairs. Dynamic (per-token) activation quantization and fp8 do not exist in Core ML: refused.

Core ML prediction needs macOS. On Linux nothing can run the program (coremltools has no MIL
interpreter), so :func:`write` re-loads the saved package and checks what it can: inputs and
outputs, that every op is an iOS 18 op, that attention is there, weight dtypes, that every int8
weight equals our quantized weight, and the file size. The results go to ``manifest.options``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError

MODEL_DIR = "model.mlpackage"
INPUT_NAME = "image"
MAX_ENUMERATED = 64  # enumerated batch sizes stay few; Core ML allows at most 128 shapes
ATTENTION_OPS = ("scaled_dot_product_attention",)
WEIGHT_MIN_ELEMENTS = 64  # smaller consts are shapes, axes and scalars, not weights


def _coremltools():
    # coremltools prints on import when it cannot load its macOS-only libraries; keep that quiet.
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import coremltools as ct
        except ImportError:
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError("the coreml format needs coremltools: "
                                          "pip install 'sapiens2-edge[coreml]'") from None
    return ct


# --- the torch program that gets converted ---------------------------------------------------------
def coreml_source(model):
    """A copy of ``model`` ready for torch.export -> Core ML: fp32 RoPE, float periods buffer,
    repeat-KV attention, quantized layers as :class:`~.coreml_linear.CoreMLLinear`. ``model`` is not changed."""
    import torch

    from ..models.backbone import Attention
    from ..quantization.linear import QuantLinear
    from ..quantization.model import set_module
    from .coreml_linear import CoreMLLinear

    src = copy.deepcopy(model).eval()
    src.set_rope_mode("fp32")
    rope = src.backbone.rope_embed
    rope.periods = rope.periods.to(torch.float32)  # Core ML has no bf16 (the frozen tables are used)
    for name, m in list(src.named_modules()):
        if isinstance(m, QuantLinear):
            set_module(src, name, CoreMLLinear(m.decompose(), name))
        elif isinstance(m, Attention):
            m.repeat_kv = True
    return src


def export_program(src, input_size, max_batch: int):
    """torch.export of the Core ML source model at ``input_size`` (batch dynamic up to max_batch)."""
    import torch

    from .onnx_export import frozen_rope

    x = torch.zeros(min(2, max_batch), 3, *input_size)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    with frozen_rope(src, input_size), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(src, (x,), dynamic_shapes=dynamic)
            return ep.run_decompositions({})
        except Exception as e:  # noqa: BLE001 - any tracing failure is an export failure
            raise ExportError(f"torch.export failed for the Core ML program: {e}") from e


def batch_shapes(ct, input_size, max_batch: int):
    h, w = input_size
    if max_batch == 1:
        return (1, 3, h, w)
    if max_batch > MAX_ENUMERATED:
        raise ConfigError(f"a Core ML artifact enumerates its batch sizes; max_batch={max_batch} is more than "
                          f"{MAX_ENUMERATED}; export with a smaller max_batch")
    return ct.EnumeratedShapes(shapes=[(b, 3, h, w) for b in range(1, max_batch + 1)],
                               default=(min(2, max_batch), 3, h, w))


# --- inspection of a saved package (works on Linux) ---------------------------------------------------
def load_program(path: Path):
    """The MIL program of a saved ``.mlpackage`` (spec + weight blobs; no Core ML runtime needed)."""
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto import load as milproto

    with contextlib.redirect_stderr(io.StringIO()):
        ml = ct.models.MLModel(str(path), skip_model_load=True)
    spec = ml.get_spec()
    return spec, milproto.load(spec, spec.specificationVersion, ml.weights_dir)


def _all_ops(block):
    for op in block.operations:
        yield op
        for b in op.blocks:
            yield from _all_ops(b)


def _features(features) -> list[dict[str, Any]]:
    out = []
    for f in features:
        arr = f.type.multiArrayType
        info = {"name": f.name, "shape": [int(d) for d in arr.shape]}
        if arr.HasField("enumeratedShapes"):
            shapes = [[int(d) for d in s.shape] for s in arr.enumeratedShapes.shapes]
            info["enumerated_batches"] = [s[0] for s in shapes]
            info["enumerated_rest"] = sorted({tuple(s[1:]) for s in shapes})
        out.append(info)
    return out


def inspect_package(path: Path) -> dict[str, Any]:
    """What the saved package holds: I/O, op types, weight dtypes, int8 weights, size."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    spec, prog = load_program(path)
    main = prog.functions["main"]
    ops = list(_all_ops(main))
    op_types = Counter(op.op_type for op in ops)
    opset = main.opset_version
    unsupported = sorted(t for t in op_types if not _is_core_op(SSAOpRegistry, t, opset))
    weights: Counter = Counter()
    for op in ops:
        if op.op_type == "const" and op.outputs[0].val is not None and np.size(op.outputs[0].val) >= WEIGHT_MIN_ELEMENTS:
            kind = str(np.asarray(op.outputs[0].val).dtype)
            weights["int4" if _builtin_name(op.outputs[0].dtype) == "int4" else kind] += 1
    constexprs = [op for op in ops if op.op_type.startswith("constexpr_") and hasattr(op, "data")]
    # the MIL type says int4 (the loaded values are held as int8 numpy arrays)
    int8 = [op for op in constexprs if _builtin_name(op.data.dtype) == "int8"]
    int4 = [op for op in constexprs if _builtin_name(op.data.dtype) == "int4"]
    size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return {
        "inputs": _features(spec.description.input), "outputs": _features(spec.description.output),
        "opset": getattr(opset, "name", str(opset)), "op_types": dict(sorted(op_types.items())), "unsupported_ops": unsupported,
        "attention": _attention_kind(op_types), "weight_dtypes": dict(sorted(weights.items())),
        "int8_weights": len(int8), "int4_weights": len(int4), "size_bytes": size, "_int8_ops": int8,
        "_int4_ops": int4,
    }


def _builtin_name(dtype) -> str:
    from coremltools.converters.mil.mil.types import builtin_to_string

    return builtin_to_string(dtype) or ""


def _is_core_op(registry, op_type: str, opset) -> bool:
    """A Core ML op of ``opset`` or older (not a frontend dialect or custom op)."""
    return any(version <= opset for version in registry.core_ops.get(op_type, {}))


def _attention_kind(op_types: Counter) -> str | None:
    if any(t in op_types for t in ATTENTION_OPS):
        return "scaled_dot_product_attention"
    if op_types.get("softmax") and (op_types.get("matmul") or op_types.get("einsum")):
        return "matmul+softmax"
    return None


def check_int8_weights(int8_ops, model) -> dict[str, Any]:
    """Every int8 constexpr weight of the program must be one of our QuantLinear int8 weights,
    bit for bit, with its per-channel scale (up to the fp16 rounding of FLOAT16 compute)."""
    from ..quantization.linear import QuantLinear

    ours = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.config.weight.dtype == "int8":
            ours.setdefault(m.weight.numpy().tobytes(), []).append((name, m.weight_scale.numpy()))
    matched, worst = 0, 0.0
    for op in int8_ops:
        data = np.asarray(op.data.val)
        hits = ours.get(data.tobytes())
        if not hits:
            raise ExportError(f"Core ML int8 weight {op.name} {data.shape} equals none of the model's int8 weights")
        name, scale = hits[0]
        theirs = np.asarray(op.scale.val, np.float64).reshape(-1)
        if theirs.shape != scale.shape and theirs.size != 1:
            raise ExportError(f"Core ML scale of {name} has shape {theirs.shape}, ours {scale.shape}")
        rel = float(np.max(np.abs(theirs - scale) / np.maximum(np.abs(scale), 1e-30)))
        worst = max(worst, rel)
        if rel > 2.0**-10:  # fp16 rounding is at most 2**-11 relative
            raise ExportError(f"Core ML scale of {name} differs from ours by {rel:.3g} (relative)")
        matched += 1
    expected = sum(len(v) for v in ours.values())
    if matched != expected:
        raise ExportError(f"the Core ML program carries {matched} int8 weights, the model {expected}")
    return {"int8_weights_equal_ours": matched, "int8_scale_max_rel_diff": worst}


def check_int4_weights(int4_ops, model) -> dict[str, Any]:
    """Every int4 constexpr weight of the program must be one of our int4 weights (unpacked), bit
    for bit, with exactly our float16 group scales, and every one of ours must be there."""
    from ..kernels.numerics import unpack_int4
    from ..quantization.linear import QuantLinear

    ours = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.config.weight.dtype == "int4":
            q = unpack_int4(m.weight).numpy()
            ours.setdefault((q.shape, q.tobytes()), []).append((name, m.weight_scale.numpy()))
    matched = 0
    for op in int4_ops:
        data = np.asarray(op.data.val).astype(np.int8)
        hits = ours.get((data.shape, data.tobytes()))
        if not hits:
            raise ExportError(f"Core ML int4 weight {op.name} {data.shape} equals none of the model's int4 weights")
        name, scale = hits[0]
        theirs = np.asarray(op.scale.val)
        if theirs.dtype != np.float16 or theirs.shape != scale.shape or not np.array_equal(theirs, scale):
            raise ExportError(f"Core ML scales of {name} ({theirs.dtype} {theirs.shape}) are not our float16 group "
                              f"scales {scale.shape}")
        if getattr(op, "offset", None) is not None and op.offset.val is not None and np.any(op.offset.val != 0):
            raise ExportError(f"Core ML int4 weight of {name} has a nonzero offset; ours is symmetric")
        matched += 1
    expected = sum(len(v) for v in ours.values())
    if matched != expected:
        raise ExportError(f"the Core ML program carries {matched} int4 weights, the model {expected}")
    return {"int4_weights_equal_ours": matched}


def check_package(path: Path, model, input_size, max_batch: int, names: list[str]) -> dict[str, Any]:
    """Inspect the saved package and raise ExportError on anything wrong; returns the findings."""
    info = inspect_package(path)
    int8_ops, int4_ops = info.pop("_int8_ops"), info.pop("_int4_ops")
    h, w = input_size
    want_in = [(INPUT_NAME, [b, 3, h, w]) for b in range(1, max_batch + 1)]
    got_in = info["inputs"]
    if [f["name"] for f in got_in] != [INPUT_NAME]:
        raise ExportError(f"Core ML inputs are {[f['name'] for f in got_in]}, expected [{INPUT_NAME!r}]")
    f = got_in[0]
    shapes = [[b, *rest] for b in f["enumerated_batches"] for rest in f["enumerated_rest"]] \
        if "enumerated_batches" in f else [f["shape"]]
    if sorted(shapes) != sorted(s for _, s in want_in):
        raise ExportError(f"Core ML input shapes {shapes} are not batch 1..{max_batch} of 3x{h}x{w}")
    if [f["name"] for f in info["outputs"]] != names:
        raise ExportError(f"Core ML outputs are {[f['name'] for f in info['outputs']]}, expected {names}")
    if info["unsupported_ops"]:
        raise ExportError(f"the Core ML program uses ops outside iOS 18: {info['unsupported_ops']}")
    if info["attention"] is None:
        raise ExportError("the Core ML program has no attention (neither scaled_dot_product_attention "
                          "nor matmul + softmax)")
    info.update(check_int8_weights(int8_ops, model))
    info.update(check_int4_weights(int4_ops, model))
    return info


# --- the exporter ------------------------------------------------------------------------------------
def compute_precision(ct, precision: str):
    return ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16


def export_coreml(model, out_dir: Path, input_size, max_batch: int, precision: str = "fp16") -> tuple[dict, dict]:
    """Write ``model.mlpackage``; returns ({file: role}, checks for the manifest)."""
    import torch

    from .onnx_export import output_names

    ct = _coremltools()
    from .coreml_linear import register_int4

    register_int4()
    names = output_names(model.task)
    shapes = batch_shapes(ct, input_size, max_batch)  # refuses a max_batch too large before any work
    src = coreml_source(model)
    ep = export_program(src, input_size, max_batch)
    # What was converted, checked against the model in torch (fp32): fp32 RoPE instead of bf16, and
    # for W8A8 the Core ML rounding of activations; Core ML's own fp16 arithmetic comes on top.
    x = torch.from_numpy(_sample(input_size, min(2, max_batch)))
    with torch.no_grad():
        ref, got = model(x), ep.module()(x)
    ref, got = (ref if isinstance(ref, tuple) else (ref,)), (got if isinstance(got, tuple) else (got,))
    source_rel = max(float((r - g).norm() / r.norm().clamp_min(1e-30)) for r, g in zip(ref, got, strict=True))
    path = out_dir / MODEL_DIR
    env = {"TQDM_DISABLE": "1"}  # coremltools draws progress bars for its passes
    with _env(env), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings(), _quiet_logger("coremltools"):
        warnings.simplefilter("ignore")
        try:
            ml = ct.convert(ep, inputs=[ct.TensorType(name=INPUT_NAME, shape=shapes)],
                            outputs=[ct.TensorType(name=n) for n in names], convert_to="mlprogram",
                            minimum_deployment_target=ct.target.iOS18,
                            compute_precision=compute_precision(ct, precision))
            ml.short_description = f"Sapiens2 {model.arch.name} {model.task or 'featmap'} (sapiens2-edge)"
            ml.save(str(path))
        except (ConfigError, ExportError):
            raise
        except Exception as e:  # noqa: BLE001 - any converter failure is an export failure
            raise ExportError(f"coremltools conversion failed for {model.arch.name} {model.task}: {e}") from e
    checks = check_package(path, model, input_size, max_batch, names)
    checks.update({"compute_precision": "float32" if precision == "fp32" else "float16",
                   "deployment_target": "iOS18", "rope_mode": "fp32 (Core ML has no bfloat16)",
                   "attention_path": "repeat_kv", "source_program_rel_l2": source_rel,
                   "prediction": "needs macOS; not run at export on this machine" if sys.platform != "darwin"
                   else "verified with Core ML at export"})
    files = {str(p.relative_to(out_dir)): "model_part" for p in sorted(path.rglob("*")) if p.is_file()}
    files[f"{MODEL_DIR}/Manifest.json"] = "model"
    return files, checks


def _sample(input_size, batch: int) -> np.ndarray:
    from . import verification_inputs

    return verification_inputs(input_size, batch=batch, seed=1)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """coremltools logs broadcast and version notes at WARNING while converting."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write(model, out_dir: Path, opts) -> dict[str, str]:
    files, checks = export_coreml(model, out_dir, opts.input_size, opts.max_batch, opts.precision)
    opts.notes["coreml"] = checks
    return files


def verifier(out_dir: Path, files: dict[str, str]):
    """Core ML runs only on macOS; elsewhere :func:`write` has checked the program instead."""
    if sys.platform != "darwin":
        return None
    from ..runtime.coreml_backend import CoreMLBackend

    return CoreMLBackend(out_dir / MODEL_DIR)
