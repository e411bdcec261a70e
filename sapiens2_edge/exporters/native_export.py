"""``format="native"``: ``weights.safetensors`` in the layout the C++ engine (``sapiens2_edge._native``)
reads - the official tensor names, float32 (or float16 / bfloat16 with ``precision="fp16"`` /
``"bf16"``), or for a quantized model the quantized-checkpoint layout (int8 / fp16 linear weights +
``weight_scale``; int8 (W8A8) layers also their ``input_scale``, and ``sapiens2_edge.native_activations``
says how each quantizes its input). A bf16 artifact runs bf16 GEMMs (oneDNN) where the CPU computes bf16 natively, and
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
KEY_ACTIVATIONS = "sapiens2_edge.native_activations"
ENGINE_KINDS = ("int8-weight/none", "fp16-weight", "int8/static", "int8/dynamic")


def native_activations(model, state_dict: dict) -> dict[str, dict]:
    """What the engine needs to know of each layer that quantizes its input, keyed by the layer's
    name in the file: ``{"dtype": "int8", "mode": "static"|"dynamic", "prefix_tokens": n}``.
    Layers the engine cannot run (fp8 or int4 weights, fp8 activations) are refused."""
    from ..quantization.linear import QuantLinear

    names = {t.data_ptr(): k[: -len(".weight")] for k, t in state_dict.items() if k.endswith(".weight")}
    out, bad = {}, set()
    for m in model.modules():
        if not isinstance(m, QuantLinear):
            continue
        d = m.decompose()
        if d.kind not in ENGINE_KINDS:
            bad.add(f"{m.scheme} ({d.kind})")
        elif d.act_dtype is not None:
            out[names[m.weight.data_ptr()]] = {"dtype": d.act_dtype, "mode": d.act_mode,
                                               "prefix_tokens": int(d.prefix_tokens if d.act_mode == "static" else 0)}
    if bad:
        raise ConfigError(f"the native engine runs float, fp16, int8-weight and int8 (W8A8: int8 weights and "
                          f"activations) layers; this model uses {', '.join(sorted(bad))} - export it to onnx or "
                          "openvino")
    return out


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
        sd = model.official_state_dict()
        acts = native_activations(model, sd)
        meta.update({KEY_FORMAT: FORMAT, KEY_RECIPE: json.dumps(model.recipe_dict(), sort_keys=True)})
        if acts:
            meta[KEY_ACTIVATIONS] = json.dumps(acts, sort_keys=True)
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
    if KEY_ACTIVATIONS in meta:  # int8 (W8A8): may its float parts run in bf16 where the CPU has it?
        opts.notes["float_precision"] = _check_float_precisions(model, Path(out_dir) / WEIGHTS, opts)
    return {WEIGHTS: "model"}


def _check_float_precisions(model, weights: Path, opts) -> dict[str, dict]:
    """The engine's float parts (attention, norms, head; the int8 layers are the same either way) in
    f32 and, where oneDNN computes bf16 natively here, in bf16 (:func:`.fidelity.float_part_checks`)."""
    from ..runtime.native_backend import NativeBackend, onednn_status
    from .fidelity import float_part_checks

    usable, native_bf16, text = onednn_status()
    run_bf16 = NativeBackend(weights, precision="bf16") if usable and native_bf16 else None
    why = text if not usable else f"{text} would emulate bf16 on this CPU"
    return float_part_checks(model, opts, "native", NativeBackend(weights), run_bf16, why)


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
