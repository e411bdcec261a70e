"""ONNX Runtime mobile: the ORT-format model (``model.ort``) and the operator list of a minimal build.

The verified ONNX graph of :mod:`.onnx_export` (fp32, or the Q/DQ graph of our own scales,
:mod:`.onnx_quant`) is optimized once, here, as ONNX Runtime's converter
(``python -m onnxruntime.tools.convert_onnx_models_to_ort``) does it: level "all", optimization
style "Fixed", target ARM (the x86-only NCHWc layout transformer is off and int8 Q/DQ fusions may
use signed int8), and saved in the ORT flatbuffer format. A mobile build then runs that graph as it
is saved. ``required_operators.config`` lists the operators (per domain and opset) the saved graph
uses: pass it to ORT's ``build.py --minimal_build --include_ops_by_config`` for a minimal runtime.
The conversion is written out (not the converter's script) so our session settings apply: a
weight-only int8 or int4 layer computes in fp32 (MatMulNBits accuracy level 1), as the recipe says;
int4-weight layers stay ``com.microsoft`` MatMulNBits holding our packed nibbles and group scales.
A recipe with ``float_storage="fp16"`` (a size-bound model) keeps its float16 tensors (head, patch
embedding, norms, int4 group scales) float16 in the saved file, each behind its Cast: the two passes
that would fold them into float32 copies (ConstantFolding, FuseFp16InitializerToFp32NodeTransformer)
are off for that conversion. The outputs are bit-identical; the Casts run at each inference (about
5 % of the latency at 0.1b 512x384 here), for a file ~0.76x the size.

Limits: fp8 layers (E4M3 targets TensorRT; ORT mobile has no fp8 kernels) are refused, and so is
fp16: the conversion optimizes for the CPU it runs on, and this one's ONNX Runtime has no fp16
kernels, so it inserts fp32 casts and folds them into fp32 weights (the fp16 file came out larger
than the fp32 one); an fp16 ORT model must be converted on an ARM machine with fp16 kernels. The
flatbuffer holds at most 2 GiB (no external data), so fp32 0.4b fits and 1b does not (an int8
scheme does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError, ExportError
from .onnx_export import MODEL_FILE, export_onnx

ORT_FILE = "model.ort"
CONFIG_FILE = "required_operators.config"
PRECISIONS = ("fp32", "int8-weight", "int4-weight", "int8", "mixed")
FLATBUFFER_LIMIT = 2**31 - 64 * 2**20  # ORT-format files are one flatbuffer (< 2 GiB); room for the graph
#: the converter's session settings for an ARM target (onnxruntime.tools.convert_onnx_models_to_ort)
CONVERTER = {"optimization_level": "all", "optimization_style": "Fixed", "target_platform": "arm",
             "disabled_optimizers": ["NchwcTransformer"]}
#: the passes that turn a Cast of a float16 initializer into a float32 copy of it
FOLDS_FLOAT16 = ["ConstantFolding", "FuseFp16InitializerToFp32NodeTransformer"]


def check_model(model, precision: str) -> None:
    """Refuse what an ORT mobile artifact cannot carry, before any work."""
    from ..quantization.linear import QuantLinear

    if precision not in PRECISIONS:
        raise ConfigError(f"ort precision {precision!r} is not supported; the ort format carries "
                          f"{', '.join(PRECISIONS)} (fp16: converted on this CPU, whose ONNX Runtime has no fp16 "
                          "kernels, the graph would compute and store fp32; fp8 targets TensorRT: export either "
                          "with format='onnx')")
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.config.weight.dtype == "fp8":
            raise ConfigError(f"layer {name} is fp8 (E4M3), which ONNX Runtime mobile cannot run (no fp8 kernels; "
                              f"the ort format carries {', '.join(PRECISIONS)} layers): quantize it with int8 or "
                              "int8-weight, or export fp8 with format='onnx' for TensorRT")
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if n_bytes > FLATBUFFER_LIMIT:
        raise ConfigError(f"{model.arch.name} in {precision} holds {n_bytes / 2**30:.1f} GiB of weights; an ORT-format "
                          "model is one flatbuffer of at most 2 GiB (no external data): quantize it (int8-weight or "
                          "int8), or use format='onnx'")


def session_options():
    """The converter's session options (see CONVERTER), saving the optimized graph as ORT format."""
    from ..runtime.onnxruntime_backend import import_ort
    from ..runtime.onnxruntime_backend import session_options as runtime_options

    ort = import_ort()
    so = runtime_options(1)  # our settings (MatMulNBits accuracy level), one thread: nothing runs
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.qdqisint8allowed", "1")  # what the converter sets for ARM
    so.add_session_config_entry("session.save_model_format", "ORT")
    return so


def convert(onnx_path: Path, ort_path: Path, config_path: Path, keep_float16: bool = False) -> dict:
    """``onnx_path`` -> ``ort_path`` (+ the minimal build's operator config); returns notes for the manifest.
    keep_float16: leave the graph's float16 initializers (behind their Casts) unfolded."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    from ..runtime.onnxruntime_backend import import_ort

    ort = import_ort()
    so = session_options()
    so.optimized_model_filepath = str(ort_path)
    converter = {**CONVERTER, "disabled_optimizers": CONVERTER["disabled_optimizers"] + (FOLDS_FLOAT16 if keep_float16 else [])}
    try:
        ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=converter["disabled_optimizers"])
        create_config_from_models([ort_path], config_path, False)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types
        raise ExportError(f"ONNX Runtime could not convert the ONNX graph to ORT format: {e}") from e
    notes = {"converter": {**converter, "onnxruntime": ort.__version__}, "operators": read_config(config_path)}
    if keep_float16:
        notes["float16_initializers"] = "kept float16 behind Casts (float_storage fp16), cast at each inference"
    return notes


def read_config(path: Path) -> dict[str, list[str]]:
    """{"domain;opset": [ops]} from a required_operators.config (its comment lines skipped)."""
    ops: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            domain, opset, names = line.split(";", 2)
            ops[f"{domain};{opset}"] = sorted(names.split(","))
    return ops


def export_ort(model, out_dir: Path, input_size: tuple[int, int], max_batch: int, opset: int = 18,
               precision: str = "fp32", graph: str = "auto") -> tuple[dict[str, str], dict]:
    from ..quantization.model import stores_float16

    check_model(model, precision)
    staging = out_dir / ".onnx"
    staging.mkdir()
    try:
        export_onnx(model, staging, input_size, max_batch, opset, precision, graph=graph)
        notes = convert(staging / MODEL_FILE, out_dir / ORT_FILE, out_dir / CONFIG_FILE, stores_float16(model))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {ORT_FILE: "model", CONFIG_FILE: "operators"}, notes


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from .onnxruntime_graph import record_graph_form

    files, notes = export_ort(model, out_dir, opts.input_size, opts.max_batch, opts.opset, opts.precision,
                              record_graph_form(model, opts))
    opts.notes["ort_mobile"] = notes
    if opts.precision not in ("fp32", "fp16") or hasattr(model, "recipe_dict"):
        from .quant_notes import describe

        opts.notes["quantization"] = describe(model, "ort", opts.opset)
    return files


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(out_dir / ORT_FILE, providers=["CPUExecutionProvider"])
