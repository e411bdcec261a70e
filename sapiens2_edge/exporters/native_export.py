"""``format="native"``: ``weights.safetensors`` in the layout the C++ engine (``sapiens2_edge._native``)
reads - the official tensor names, float32 (or float16 / bfloat16 with ``precision="fp16"`` /
``"bf16"``), or for a quantized model the quantized-checkpoint layout (int8 / fp16 linear weights +
``weight_scale``). A bf16 artifact runs bf16 GEMMs (oneDNN) where the CPU computes bf16 natively, and
is verified as it will run on the exporting machine.

The file is self-describing: ``sapiens2_edge.arch`` / ``.head`` / ``.rope_mode`` metadata (and the
recipe for quantized models), so the engine can also open it without the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

WEIGHTS = "weights.safetensors"
PRECISIONS = ("fp32", "fp16", "bf16")


def check_weight_only(model) -> None:
    """The engine runs quantized layers whose decomposition has float activations (int8 / fp16
    weights with their scales); a layer that quantizes its input is refused."""
    from ..quantization.linear import QuantLinear

    bad = sorted({m.scheme for m in model.modules() if isinstance(m, QuantLinear) and m.decompose().act_dtype})
    if bad:
        raise ConfigError(f"the native engine runs weight-only schemes (float, fp16, int8-weight); this model uses "
                          f"{', '.join(bad)}, which quantize activations - export it to onnx or openvino")


def weights_and_metadata(model, precision: str = "fp32") -> tuple[dict, dict[str, str]]:
    """(tensors under their file names, safetensors metadata) for ``model``; ``precision`` applies
    to float models (a quantized model is written as it is stored)."""
    import torch

    from .._version import __version__
    from ..quantization.model import QuantizedModel
    from ..quantization.serialize import FORMAT, KEY_ARCH, KEY_FORMAT, KEY_HEAD, KEY_RECIPE, KEY_VERSION

    meta = {
        KEY_ARCH: json.dumps(model.arch.to_dict(), sort_keys=True),
        KEY_HEAD: json.dumps(model.head_spec.to_dict() if model.head_spec is not None else None, sort_keys=True),
        KEY_VERSION: __version__,
        "sapiens2_edge.rope_mode": model.rope_mode,
    }
    if isinstance(model, QuantizedModel):
        check_weight_only(model)
        meta.update({KEY_FORMAT: FORMAT, KEY_RECIPE: json.dumps(model.recipe_dict(), sort_keys=True)})
        sd = model.official_state_dict()
        return {k: v.detach().contiguous() for k, v in sd.items()}, meta
    if precision not in PRECISIONS:
        raise ConfigError(f"native precision {precision!r} is not supported; expected one of {PRECISIONS} "
                          "(quantize to int8-weight first for int8 weights)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    tensors = {k: (v if k.endswith("rope_embed.periods") else v.to(dtype)).detach().contiguous()
               for k, v in model.official_state_dict().items()}
    return tensors, meta


def write(model, out_dir: Path, opts) -> dict[str, str]:
    from ..models.checkpoint import write_tensors

    tensors, meta = weights_and_metadata(model, opts.precision)
    write_tensors(tensors, Path(out_dir) / WEIGHTS, metadata=meta)
    return {WEIGHTS: "model"}


def verifier(out_dir: Path, files: dict[str, str]):
    """The engine as the runtime will open this artifact here: bf16-stored weights with bf16 GEMMs
    where the runtime would choose them."""
    from ..runtime.native_backend import NativeBackend, resolve_native_precision

    backend = NativeBackend(Path(out_dir) / WEIGHTS)
    if backend.engine.weight_format == "bfloat16":
        precision, why = resolve_native_precision("bf16")
        if precision == "bf16":
            return NativeBackend(Path(out_dir) / WEIGHTS, precision=precision, reason=why)
    return backend
