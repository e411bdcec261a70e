"""What an export is checked against: the torch model's outputs, and for a quantized model the task
fidelity of the artifact and of the torch QuantizedModel against the float model."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any, Sequence

import numpy as np

from ..artifact import compare, verification_inputs


def torch_outputs(model, x: np.ndarray) -> tuple[np.ndarray, ...]:
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return tuple(o.float().numpy() for o in (out if isinstance(out, tuple) else (out,)))


#: the relative input change whose effect on a quantized model's own outputs measures how far float
#: rounding alone moves them (static int8 activations round at fixed steps: a change below one
#: step flips the roundings it straddles, and the flips grow through the blocks)
SENSITIVITY_STEP = 1e-6
#: an artifact may sit this many times that movement from torch: two independent rounding paths
#: (torch's and the runtime's float summation orders) are ~sqrt(2) of it apart; the rest is margin
SENSITIVITY_FACTOR = 2.0
#: the allowance never exceeds this (a model moving more under rounding cannot be verified usefully)
MAX_ROUNDING_BOUND = 0.2


#: model -> {digest of (x, ref): sensitivity}: an OpenVINO export checks its f32 run twice (its own
#: precision check, then the general verification), the torch forward behind it is paid once
_MEASURED: "weakref.WeakKeyDictionary[Any, dict[str, float]]" = weakref.WeakKeyDictionary()


def rounding_sensitivity(model, x: np.ndarray, ref: Sequence[np.ndarray], names: Sequence[str]) -> float:
    """Relative L2 between ``model``'s outputs ``ref`` on ``x`` and on ``x * (1 + SENSITIVITY_STEP)``
    (measured once per model, input and reference)."""
    digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16)
    for r in ref:
        digest.update(np.ascontiguousarray(r).tobytes())
    seen = _MEASURED.setdefault(model, {})
    key = digest.hexdigest()
    if key not in seen:
        moved = torch_outputs(model, (x * (1 + SENSITIVITY_STEP)).astype(np.float32))
        seen[key] = compare(ref, moved, names)["rel_l2"]
    return seen[key]


def quantized_bound(model, x: np.ndarray, ref: Sequence[np.ndarray], names: Sequence[str], limit: float,
                    err: float) -> tuple[float, dict[str, Any]]:
    """(bound, record) for an artifact at relative L2 ``err`` from ``ref`` (``model``'s outputs on ``x``).

    ``limit`` is the precision's bound, measured on models whose int8 roundings are stable. Where
    ``err`` exceeds it and the model quantizes activations, the bound becomes the model's own
    rounding sensitivity times :data:`SENSITIVITY_FACTOR` (at most :data:`MAX_ROUNDING_BOUND`) if
    that is larger: measured on 0.4b with random weights at 1024x768, a 1e-6 input change moves
    the torch int8 QuantizedModel by 3.4e-2 rel L2, and OpenVINO's f32 run sits 5.3e-2 from it,
    while export faults (a wrong scale, a missing bias) are far above both. Without the excess
    nothing is measured (the record is empty)."""
    quantized = getattr(model, "quantized_layers", None)
    if err <= limit or quantized is None or not any(q.config.activation is not None for q in quantized().values()):
        return limit, {}
    d = rounding_sensitivity(model, x, ref, names)
    bound = max(limit, min(SENSITIVITY_FACTOR * d, MAX_ROUNDING_BOUND))
    return bound, {"rounding_sensitivity": d, "recipe_tolerance": limit,
                   "tolerance_from": f"{SENSITIVITY_FACTOR:g} x the torch model's own output change under a "
                                     f"{SENSITIVITY_STEP:g} relative input change (at most {MAX_ROUNDING_BOUND:g})"}


def check_runner(model, runner, x: np.ndarray, ref: Sequence[np.ndarray], names: Sequence[str],
                 tolerance: float, form: str | None = None) -> dict[str, Any]:
    """The manifest's fidelity entry: ``runner`` (the fresh artifact) against torch on ``x`` (``form``:
    how the exporter changed the torch model the reference came from, if it did)."""
    result = compare(ref, runner(x), names)
    kind = f"torch {model.scheme} QuantizedModel (same recipe)" if hasattr(model, "recipe_dict") else "torch fp32"
    rope = f", RoPE {model.rope_mode}" if getattr(model, "rope_mode", None) else ""
    result.update({"reference": f"{kind} eager{rope}{', ' + form if form else ''}", "tolerance": tolerance,
                   "inputs": f"verification_inputs({list(x.shape[2:])}, batch={len(x)}, seed=0)"})
    return result


def float_fidelity(model, runner, size, max_batch: int, float_model, fidelity_data=None, fidelity_keypoints=None,
                   report=None) -> dict[str, Any]:
    """Task fidelity against the float model of the artifact and of the torch QuantizedModel, on
    the same inputs (the quantization report's metrics, see quantization.fidelity)."""
    import torch

    from ..quantization.evaluate import as_batches
    from ..quantization.fidelity import task_fidelity

    if fidelity_data is None:
        data = [torch.from_numpy(verification_inputs(size, batch=1, seed=s)) for s in range(4)]
        where = f"verification_inputs({list(size)}, seed=0..3)"
    else:
        data, where = fidelity_data, "fidelity_data"
    batches = as_batches(data, model.task, size, samples=64, batch_size=max_batch)
    parts: dict[str, list] = {"float": [], "torch": [], "artifact": []}
    for b in batches:
        x = b.numpy()
        parts["float"].append(torch_outputs(float_model, x))
        parts["torch"].append(torch_outputs(model, x))
        parts["artifact"].append(tuple(np.asarray(o) for o in runner(x)))
    out = {k: tuple(np.concatenate(p) for p in zip(*v, strict=True)) for k, v in parts.items()}
    kp = fidelity_keypoints
    return {"artifact": task_fidelity(model.task, out["float"], out["artifact"], size, keypoints=kp),
            "torch_quantized": task_fidelity(model.task, out["float"], out["torch"], size, keypoints=kp),
            "inputs": where, "samples": batches.num_samples}
