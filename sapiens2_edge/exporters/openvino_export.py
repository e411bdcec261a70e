"""OpenVINO IR export: the verified ONNX graph converted with ``openvino.convert_model``.

fp16 stores the weights in fp16 (``compress_to_fp16``); OpenVINO's CPU plugin decompresses them
and picks its own inference precision.

Quantized models go through the Q/DQ ONNX of :mod:`.onnx_quant`: ``convert_model`` turns the
weight DequantizeLinear into int8 constants + decompression and activation Q/DQ pairs into
FakeQuantize, so static int8 runs OpenVINO's int8 FullyConnected kernels (runtime precision i8,
checked at export). Weight-only layers keep int8 weights in memory; the runtime switches off
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


def export_openvino(model, out_dir: Path, input_size: tuple[int, int], max_batch: int, opset: int = 18,
                    precision: str = "fp32") -> dict[str, str]:
    from ..runtime.openvino_backend import import_openvino

    ov = import_openvino()
    if precision == "fp8" or (precision == "mixed" and "fp8" in getattr(model, "layer_schemes", {}).values()):
        raise ConfigError("fp8 artifacts target TensorRT, which OpenVINO is not: export fp8 with format='onnx', "
                          "or quantize with scheme 'int8' for OpenVINO")
    if precision not in ("fp32", "fp16", "int8-weight", "int8", "mixed"):
        raise ConfigError(f"OpenVINO precision {precision!r} is not supported; expected fp32, fp16, int8-weight, "
                          "int8 or mixed")
    staging = out_dir / ".onnx"
    staging.mkdir()
    export_onnx(model, staging, input_size, max_batch, opset, "fp32" if precision == "fp16" else precision)
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
    files = export_openvino(model, out_dir, opts.input_size, opts.max_batch, opts.opset, opts.precision)
    if hasattr(model, "recipe_dict"):
        from ..runtime.openvino_backend import OpenVINOBackend
        from .onnx_quant import describe

        info = describe(model, "openvino", opts.opset)
        info["runtime_precisions"] = OpenVINOBackend(out_dir / IR_DIR / "model.xml").matmul_precisions()
        opts.notes["quantization"] = info
    return files


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.openvino_backend import OpenVINOBackend

    return OpenVINOBackend(out_dir / IR_DIR / "model.xml")
