"""ONNX export through ``torch.onnx.export(dynamo=True)`` (the legacy exporter cannot export RMSNorm).

One fixed input size and a dynamic batch dimension. The RoPE tables of that grid are frozen into
the graph as constants; the reference's bf16 rounding of q/k becomes Cast nodes. fp16 converts the
fp32 graph with ONNX Runtime's float16 tool, keeping fp32 inputs/outputs and the bf16 casts.
Quantized models (int8 / fp8 QuantLinears) export as Q/DQ graphs from the recipe's own scales,
see :mod:`.onnx_quant`. Float tensors that hold float16 values (int4 group scales, and what a recipe's
``float_storage="fp16"`` rounded) are stored as float16 behind a Cast (:func:`store_float16`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path
from typing import Iterator

from .. import spec
from ..errors import ConfigError, ExportError

OPSETS = (18, 23)
PRECISIONS = ("fp32", "fp16", "int8-weight", "int4-weight", "int8", "fp8", "mixed")
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_LIMIT = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph


@contextlib.contextmanager
def frozen_rope(model, input_size) -> Iterator[None]:
    """Freeze the RoPE tables of ``input_size``'s grid for the duration of an export (a model
    without RoPE, the person detector, has none to freeze)."""
    rope = getattr(getattr(model, "backbone", None), "rope_embed", None)
    if rope is None:
        yield
        return
    rope.freeze(*model.arch.grid(input_size))
    try:
        yield
    finally:
        rope.frozen = None
        for name in ("frozen_sin", "frozen_cos"):
            rope._buffers.pop(name, None)


_RULES_LOCK = threading.RLock()


@contextlib.contextmanager
def without_multi_output_rewrites() -> Iterator[None]:
    """Run the exporter's graph optimizer without its rewrite rules whose pattern has several output
    nodes (today ``SlicesSplit``). onnxscript matches those by trying every combination of candidate
    nodes, rebuilding an op index of the whole graph per try: quadratic in the number of Slice nodes.
    Quantized graphs carry two Slices per linear (prefix tokens apart), so this one rule took 33 of the
    37 s of a tiny int8 model's optimization and grows with the square of depth; on our graphs it never
    fires (same operators with and without it, checked by tests/test_export_quantized.py). The optimizer reads its
    rule list when it runs, so the list is swapped for the export and restored after; where onnxscript
    has no such list, nothing changes."""
    try:
        import onnxscript.rewriter as rewriter
    except ImportError:  # pragma: no cover - the ONNX export needs onnxscript
        yield
        return
    with _RULES_LOCK:
        rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
        if rules is None:
            yield
            return
        rewriter._DEFAULT_REWRITE_RULES = type(rules)(r for r in rules if _single_output(r))
        try:
            yield
        finally:
            rewriter._DEFAULT_REWRITE_RULES = rules


def _single_output(rule) -> bool:
    pattern = getattr(rule, "_target_pattern", None)
    return getattr(pattern, "has_single_output_node", True)


def output_names(task: str | None) -> list[str]:
    """The graph's output names (the specification's, as a list)."""
    return list(spec.output_names(task))


def export_onnx(model, out_dir: Path, input_size: tuple[int, int], max_batch: int, opset: int = 18,
                precision: str = "fp32", for_openvino: bool = False, graph: str = "standard") -> dict[str, str]:
    """Write ``model.onnx`` (+ ``model.onnx.data`` past 2 GB) into ``out_dir``; returns {file: role}.
    ``for_openvino``: the graph OpenVINO converts (int8 GEMM weights signed, see onnx_quant; the SwiGLU's
    gate and up projections as two GEMMs, see gate_split). ``graph``: "onnxruntime" shapes the graph for
    ONNX Runtime (see onnxruntime_graph; gate and up as two GEMMs too), "standard" writes standard
    operators as torch.onnx does."""
    import torch

    from ..quantization.model import stores_float16
    from .onnxruntime_graph import graph_form, onnxruntime_graph
    from .onnxruntime_graph import translation as attention_translation

    if opset not in OPSETS:
        raise ConfigError(f"unsupported opset {opset}; expected one of {OPSETS} (23 adds native RMSNormalization)")
    if precision not in PRECISIONS:
        raise ConfigError(f"ONNX precision {precision!r} is not supported; expected one of {', '.join(PRECISIONS)}")
    graph = graph_form(model, graph)
    from .gate_split import split_gate_projections
    from .onnx_quant import (
        export_attention_inputs,
        export_head,
        export_modules,
        int8_dot_products,
        needed_opset,
        openvino_module,
        translation_table,
    )
    from .prefix_split import split_prefix_rows

    opset = needed_opset(model, opset)
    split_gates = for_openvino or graph == "onnxruntime"  # see gate_split
    path = out_dir / MODEL_FILE
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = n_bytes > EXTERNAL_DATA_LIMIT
    x = torch.zeros(min(2, max_batch), 3, *input_size)
    # A batch range of one value is no range: torch.export wants a static dimension then.
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    # The exporter narrates its passes on stdout and warns about torchvision ops we never use.
    with frozen_rope(model, input_size), export_modules(model, openvino_module if for_openvino else None), \
            export_attention_inputs(model), export_head(model, not for_openvino or int8_dot_products()[0]), \
            (split_gate_projections(model) if split_gates else contextlib.nullcontext()), \
            (split_prefix_rows(model) if for_openvino else contextlib.nullcontext()), onnxruntime_graph(model, graph), \
            warnings.catch_warnings(), torch.no_grad(), \
            contextlib.redirect_stdout(io.StringIO()), without_multi_output_rewrites():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, opset_version=opset,
                              input_names=["image"], output_names=output_names(model.task),
                              dynamic_shapes=dynamic, external_data=external, verbose=False,
                              custom_translation_table={**translation_table(opset), **attention_translation()})
        except Exception as e:  # noqa: BLE001 - surface any exporter failure as ours
            raise ExportError(f"torch.onnx.export failed for {model.arch.name} {model.task}: {e}") from e
    if precision == "fp16":
        _convert_fp16(path, external)
    elif precision == "int4-weight" or stores_float16(model):
        store_float16(path, external)
    files = {MODEL_FILE: "model"}
    data = out_dir / f"{MODEL_FILE}.data"
    if data.exists():
        files[data.name] = "external_data"
    return files


def _convert_fp16(path: Path, external: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    # Casts to bf16 emulate the reference RoPE rounding; keep them (and the I/O) in float32.
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=["Cast"])
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(fp16, str(path), save_as_external_data=external, location=data.name if external else None)


def store_float16(path: Path, external: bool) -> None:
    """Store the float32 initializers whose values are float16 values (a recipe's ``float_storage="fp16"``:
    head, patch embedding, norms; and the int4 group scales, float16 by construction) as float16, each
    read through a Cast to float32: the graph computes the same numbers from half the bytes. MatMulNBits
    binds its scales to the activations' type (T1), hence the Cast there too; ONNX Runtime folds every
    such Cast at load, so the session runs the float32 graph it ran before. The nodes' debug metadata
    goes too (a size-bound artifact)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) > 1:
            value = numpy_helper.to_array(init)
            half = value.astype(np.float16)
            if np.array_equal(half.astype(np.float32), value):
                kept.append(numpy_helper.from_array(half, f"{init.name}__fp16"))
                casts.append(onnx.helper.make_node("Cast", [kept[-1].name], [init.name], to=onnx.TensorProto.FLOAT,
                                                   name=f"{init.name}__to_fp32"))
                continue
        kept.append(init)
    for node in graph.node:  # the exporter's source locations per node: ~2.6 MB on every model size
        del node.metadata_props[:]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(model, str(path), save_as_external_data=external, location=data.name if external else None)


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from .onnxruntime_graph import record_graph_form
    from .quant_notes import describe

    files = export_onnx(model, out_dir, opts.input_size, opts.max_batch, opts.opset, opts.precision,
                        graph=record_graph_form(model, opts))
    if opts.precision not in ("fp32", "fp16") or hasattr(model, "recipe_dict"):
        opts.notes["quantization"] = describe(model, "onnx", opts.opset)
    return files


def verifier(out_dir: Path, files: dict[str, str]):
    from ..runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(out_dir / MODEL_FILE, providers=["CPUExecutionProvider"])
