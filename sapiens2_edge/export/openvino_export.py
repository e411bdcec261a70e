"""OpenVINO IR export: the verified ONNX graph converted with ``openvino.convert_model``.

fp16 stores the weights in fp16 (``compress_to_fp16``); OpenVINO's CPU plugin decompresses them
and picks its own inference precision.
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
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"OpenVINO precision {precision!r} is not supported here; expected 'fp32' or 'fp16'")
    staging = out_dir / ".onnx"
    staging.mkdir()
    export_onnx(model, staging, input_size, max_batch, opset, "fp32")
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
    return export_openvino(model, out_dir, opts.input_size, opts.max_batch, opts.opset, opts.precision)


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.openvino_backend import OpenVINOBackend

    return OpenVINOBackend(out_dir / IR_DIR / "model.xml")
