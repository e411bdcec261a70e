"""OpenVINO IR export: the verified ONNX graph converted with ``openvino.convert_model``.

fp16 stores the weights in fp16 (``compress_to_fp16``); OpenVINO's CPU plugin decompresses them.
bf16 stores fp32 weights and computes in bf16 on CPUs with native bf16 (avx512_bf16 or AMX).
How the runtime compiles each artifact is recorded in the manifest
(``options["inference_precision"]``, see :mod:`sapiens2_edge.runtime.openvino_backend`): fp32 and
fp16 in f32 with OpenVINO's accuracy mode, bf16 in bf16. A quantized artifact keeps attention,
norms and the head in float; that float precision is chosen per CPU at load (bf16 where native,
else f32), so both are checked here against the torch QuantizedModel and recorded in the manifest.

fp32 and fp16 artifacts of a float model compute RoPE in fp32 (:func:`rope_mode`) and are verified against the torch
model with fp32 RoPE; the manifest records that mode and how far it is from the model's bf16 RoPE
(``fidelity["vs_rope_bf16"]``, torch against torch). The bf16 RoPE of the official numerics is a
chain of f32->bf16->f32 Converts, which OpenVINO does not keep on every CPU: on AMX Xeons the
f32 IR came out 2.1e-3 rel L2 from torch (over the 1e-3 bound) while the fp32-RoPE IR matched at
1.3e-6, and on AVX-512 CPUs without AMX both matched. A graph with no bf16 in it computes the same
on every CPU; the bf16-vs-fp32 RoPE distance is 2.5e-3 rel L2 (99.9 % seg agreement) on the trained
tiny fixture and 2e-6 on random weights, well inside what the bf16 and int8 artifacts are off by.

Quantized models go through the Q/DQ ONNX of :mod:`.onnx_quant`: ``convert_model`` turns the
weight DequantizeLinear into int8 constants + decompression and activation Q/DQ pairs into
FakeQuantize, so static int8 runs OpenVINO's int8 FullyConnected kernels (runtime precision i8 or
u8 by CPU, recorded at export). Weight-only layers keep int8 weights in memory; the runtime switches off
OpenVINO's own dynamic activation quantization so they compute as the recipe says. Dynamic
per-token int8 (the exact MatMulInteger form) runs as float GEMMs on the int8 weights: OpenVINO
has no per-token form; use ``activation_mode="static"`` for its int8 kernels. fp8 targets
TensorRT: export it as ONNX.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, ExportError
from .onnx_export import MODEL_FILE, export_onnx

IR_DIR = "openvino"
_POLICIES: dict[Path, dict] = {}  # artifact directory being written -> its policy, for ``verifier``


def rope_mode(model, precision: str) -> str:
    """fp32 for the artifacts OpenVINO runs in f32 (fp32, fp16): a graph without bf16 Converts,
    which OpenVINO handles differently per CPU; quantized and bf16 artifacts keep the model's mode."""
    float_model = not hasattr(model, "recipe_dict")
    return "fp32" if precision in ("fp32", "fp16") and float_model else model.rope_mode


def export_openvino(model, out_dir: Path, input_size: tuple[int, int], max_batch: int, opset: int = 18,
                    precision: str = "fp32") -> dict[str, str]:
    from ..runtime.openvino_backend import import_openvino

    ov = import_openvino()
    if precision == "fp8" or (precision == "mixed" and "fp8" in getattr(model, "layer_schemes", {}).values()):
        raise ConfigError("fp8 artifacts target TensorRT, which OpenVINO is not: export fp8 with format='onnx', "
                          "or quantize with scheme 'int8' for OpenVINO")
    if precision not in ("fp32", "fp16", "bf16", "int8-weight", "int4-weight", "int8", "mixed"):
        raise ConfigError(f"OpenVINO precision {precision!r} is not supported; expected fp32, fp16, bf16, "
                          "int8-weight, int4-weight, int8 or mixed")
    staging = out_dir / ".onnx"
    staging.mkdir()
    export_onnx(model, staging, input_size, max_batch, opset, "fp32" if precision in ("fp16", "bf16") else precision,
                for_openvino=True)
    try:
        converted = ov.convert_model(str(staging / MODEL_FILE))
        (out_dir / IR_DIR).mkdir()
        ov.save_model(converted, str(out_dir / IR_DIR / "model.xml"), compress_to_fp16=precision == "fp16")
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"OpenVINO conversion failed: {e}") from e
    finally:
        for p in sorted(staging.rglob("*"), reverse=True):
            p.unlink()
        staging.rmdir()
    return {f"{IR_DIR}/model.xml": "model", f"{IR_DIR}/model.bin": "weights_ir"}


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from ..runtime.openvino_backend import precision_policy

    files = export_openvino(model, out_dir, opts.input_size, opts.max_batch, opts.opset, opts.precision)
    xml = out_dir / IR_DIR / "model.xml"
    if hasattr(model, "recipe_dict"):
        from .onnx_quant import int8_dot_products
        from .quant_notes import describe

        policy = precision_policy(opts.precision, _check_float_precisions(model, xml, opts))
        info = describe(model, "openvino", opts.opset)
        info["runtime_precisions"] = _runner(xml, policy, opts.precision).matmul_precisions()
        signed, why = int8_dot_products()
        info["int8_gemm_weights"] = (f"signed, zero point 0 ({why}): OpenVINO's int8 FullyConnected" if signed else
                                     f"uint8 + 128 ({why}: u8 x s8 saturates; exact, OpenVINO decompresses them)")
        info["float_precision"] = {k: v for k, v in policy.items() if k != "fidelity"}
        opts.notes["quantization"] = info
    else:
        policy = precision_policy(opts.precision)
    opts.notes["inference_precision"] = policy
    _POLICIES[out_dir] = (policy, opts.precision)
    return files


def _runner(xml: Path, policy: dict, precision: str):
    from ..runtime.openvino_backend import F32, OpenVINOBackend, resolve_precision

    hint, mode, why = resolve_precision(policy, precision)
    return OpenVINOBackend(xml, inference_precision=hint, execution_mode=mode, reason=why,
                           verified_as=F32 if policy.get("mode") == "auto" else None)


def _check_float_precisions(model, xml: Path, opts) -> dict[str, dict]:
    """{inference precision: its check} for a quantized IR: f32 and, where this CPU computes it
    natively, bf16 (see :func:`.fidelity.float_part_checks`)."""
    from ..runtime.openvino_backend import BF16, F32, OpenVINOBackend, native_bf16
    from .fidelity import float_part_checks

    has, evidence = native_bf16()
    runner = OpenVINOBackend(xml, inference_precision=BF16, execution_mode=None) if has else None
    declined = runner is not None and runner.inference_precision != BF16
    run_bf16 = None if runner is None or declined else runner
    return float_part_checks(model, opts, "openvino", OpenVINOBackend(xml, inference_precision=F32, execution_mode=None),
                             run_bf16, "OpenVINO declined bf16" if declined else evidence)


def verifier(out_dir: Path, files: dict[str, str]):
    policy, precision = _POLICIES.pop(out_dir)
    # a quantized artifact is checked against the torch QuantizedModel with its float ops in f32 (its
    # bf16 was checked in write())
    return _runner(out_dir / IR_DIR / "model.xml", policy, precision).as_verified()
