"""What an export is checked against: the torch model's outputs, and for a quantized model the task
fidelity of the artifact and of the torch QuantizedModel against the float model."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..artifact import compare, verification_inputs


def torch_outputs(model, x: np.ndarray) -> tuple[np.ndarray, ...]:
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return tuple(o.float().numpy() for o in (out if isinstance(out, tuple) else (out,)))


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
