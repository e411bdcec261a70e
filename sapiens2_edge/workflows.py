"""The library side of the ``sapiens2-edge`` commands that chain several steps: describe a
checkpoint, quantize and save one with its fidelity report, export with a quantization scheme.

The CLI parses arguments, calls these and prints what they return; the demo chain uses them too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

QUANT_SCHEMES = ("int8-weight", "int8", "fp8")
"""The schemes ``export(scheme=...)`` quantizes with before exporting."""
FLOAT_SCHEMES = ("fp32", "fp16")


def checkpoint_info(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds, from its safetensors header alone (no weights are read)."""
    from .models.arch import backbone_shapes, count_params, head_shapes
    from .models.checkpoint import header_summary, resolve_checkpoint
    from .models.layout import describe_checkpoint
    from .models.random_init import is_random_checkpoint

    path = resolve_checkpoint(checkpoint)
    header, layout, arch, head, _, _ = describe_checkpoint(path)
    summary = header_summary(header)
    gqa = [i for i, kv in enumerate(arch.kv_heads) if kv < arch.num_heads]
    return {
        "path": str(path), "layout": layout, "task": head.task if head else None, "arch": arch.name,
        "embed_dim": arch.embed_dim, "depth": arch.depth, "heads": arch.num_heads, "head_dim": arch.head_dim,
        "gqa_blocks": f"{gqa[0]}..{gqa[-1]} ({arch.kv_heads[gqa[0]]} kv heads)" if gqa else "none",
        "tokenizer_4k": arch.tokenizer_depth, "ffn_hidden": arch.ffn_hidden,
        "input_size": list(head.input_size) if head and head.input_size else None,
        "parameters": summary["num_parameters"], "backbone_parameters": count_params(backbone_shapes(arch)),
        "head_parameters": count_params(head_shapes(head, arch.input_multiple)) if head else 0,
        "tensors": summary["num_tensors"], "dtypes": summary["dtypes"], "file_size": summary["file_size"],
        "random_weights": is_random_checkpoint(header.metadata),
    }


def quantize_and_save(model: Any, scheme: str, calibration: Any, path: str | os.PathLike, *, held_out: Any,
                      held_out_source: str, input_size: Sequence[int] | None = None, calibration_size: int = 32,
                      eval_samples: int = 16, report_path: str | os.PathLike | None = None,
                      progress: bool | None = None, **options: Any) -> tuple[Any, Any]:
    """Quantize ``model`` (loaded, or anything ``load_model`` accepts) on ``calibration``, measure its
    task fidelity against the float model on ``held_out`` when the scheme did not already, and save it
    to ``path`` (and the report's JSON to ``report_path``). ``options`` go to ``quantize`` (e.g.
    ``activation_mode``, ``budget``). Returns (QuantizedModel, QuantReport)."""
    from . import load_model
    from .quantization import quantize, save_quantized
    from .quantization.evaluate import evaluate

    model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    size = tuple(input_size or model.input_size)
    if progress is not None:
        options["progress"] = progress
    qmodel, report = quantize(model, scheme, calibration=calibration, input_size=size,
                              calibration_size=calibration_size, **options)
    if not report.fidelity:
        report.fidelity = evaluate(model, qmodel, held_out, input_size=size, samples=eval_samples)
    report.fidelity["evaluated_on"] = held_out_source
    save_quantized(qmodel, Path(path), report=report)
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(report.to_json())
    return qmodel, report
