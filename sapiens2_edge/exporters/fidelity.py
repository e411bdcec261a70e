"""What an export is checked against: the torch model's outputs, and for a quantized model the task
fidelity of the artifact and of the torch QuantizedModel against the float model."""

from __future__ import annotations

import hashlib
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Sequence

import numpy as np

from ..artifact import compare, verification_inputs
from ..heap import reuse_freed_pages

#: the torch forwards of the export running in this context: {key: (model, outputs)} (None outside one)
_FORWARDS: ContextVar[dict | None] = ContextVar("export_forwards", default=None)


@contextmanager
def shared_forwards() -> Iterator[None]:
    """Within the block, :func:`torch_outputs` computes each (model, form, input) once: an export's
    checks ask for the same forwards several times (the reference input is also the first fidelity
    input; the precision checks and the verification share a reference), and each is a full torch
    forward at the artifact's size (tens of seconds at 0.4b 1024x768). The outputs are let go at the end."""
    token = _FORWARDS.set({})
    try:
        yield
    finally:
        _FORWARDS.reset(token)


def _forward_key(model, x: np.ndarray) -> tuple:
    """What a torch model's outputs on ``x`` depend on that an export may change meanwhile: the model
    object, its RoPE mode and the kinds of its modules (an exporter's reference form swaps some)."""
    digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).hexdigest()
    kinds = hash(tuple(type(m) for m in model.modules()))
    return id(model), getattr(model, "rope_mode", None), kinds, x.shape, x.dtype.str, digest


def torch_outputs(model, x: np.ndarray, *, remember: bool = True) -> tuple[np.ndarray, ...]:
    """``model``'s outputs on ``x`` as float32 arrays (inside :func:`shared_forwards`, computed once
    per model, form and input unless ``remember`` is False)."""
    import torch

    seen = _FORWARDS.get() if remember else None
    key = _forward_key(model, x) if seen is not None else None
    if seen is not None and key in seen:
        return seen[key][1]
    with torch.inference_mode(), reuse_freed_pages(release=True):
        out = model(torch.from_numpy(x))
    got = tuple(o.float().numpy() for o in (out if isinstance(out, tuple) else (out,)))
    if seen is not None:
        for o in got:  # shared from now on: a caller that writes into one would change the others' copy
            o.setflags(write=False)
        seen[key] = (model, got)  # the model is held so that its id stays its own while the block lasts
    return got


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
        moved = torch_outputs(model, (x * (1 + SENSITIVITY_STEP)).astype(np.float32), remember=False)
        seen[key] = compare(ref, moved, names)["rel_l2"]
    return seen[key]


def rounds_activations(model) -> bool:
    """Whether ``model`` rounds activations (a layer's int8/fp8 inputs, int8 attention inputs or an
    int8 head's): then a tiny input change flips roundings that grow through the blocks."""
    from ..quantization.attention_inputs import quantized_attentions
    from ..quantization.head_int8 import quantized_head_layers

    quantized = getattr(model, "quantized_layers", None)
    if quantized is None:
        return False
    return (any(q.config.activation is not None for q in quantized().values()) or bool(quantized_attentions(model))
            or bool(quantized_head_layers(model)))


def export_tolerance(model, precision: str, tolerance_of=None) -> float:
    """The verification bound of an export of ``model`` at ``precision`` (``tolerance_of``: the
    exporter's own table, default the artifact's): a model that rounds activations gets at least the
    int8 bound, whatever its linears' scheme (int8-weight with int8 attention inputs, say)."""
    from ..artifact import tolerance_for

    limit = (tolerance_of or tolerance_for)(precision)
    return max(limit, tolerance_for("int8")) if rounds_activations(model) else limit


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
    if err <= limit or not rounds_activations(model):
        return limit, {}
    d = rounding_sensitivity(model, x, ref, names)
    bound = max(limit, min(SENSITIVITY_FACTOR * d, MAX_ROUNDING_BOUND))
    return bound, {"rounding_sensitivity": d, "recipe_tolerance": limit,
                   "tolerance_from": f"{SENSITIVITY_FACTOR:g} x the torch model's own output change under a "
                                     f"{SENSITIVITY_STEP:g} relative input change (at most {MAX_ROUNDING_BOUND:g})"}


def float_part_checks(model, opts, fmt: str, run_f32, run_bf16, why_not: str = "") -> dict[str, dict]:
    """{"f32": check, "bf16": check} of the float ops (attention, norms, head) of a quantized artifact
    run in f32 (``run_f32``) and, where this machine computes bf16 natively, in bf16 (``run_bf16``,
    None otherwise, ``why_not`` saying why).

    f32 must match the torch QuantizedModel within the recipe's tolerance (else the export fails).
    bf16 rounds the activations before they are quantized, so it flips int8 roundings: it ends as
    far from the recipe's exact outputs as the recipe is from the float model, yet no further from
    the float model. So with the float model at hand (``export(scheme=...)`` or ``float_model=``)
    bf16 passes when its distance to the float model is within the f32 artifact's and bf16's own
    tolerance added in quadrature; without it, when its distance to the QuantizedModel is within the
    recipe's and bf16's tolerances in quadrature (stricter). A bf16 that fails, or that could not be
    checked here, is recorded as such and the runtime keeps f32."""
    import math

    from ..artifact import reference_inputs, tolerance_for
    from ..errors import ExportError
    from ..spec import output_names

    names = list(output_names(model.task))
    x = reference_inputs(opts.input_size, opts.max_batch)
    ref = torch_outputs(model, x)
    a32 = run_f32(x)
    f32 = compare(ref, a32, names)
    limit, allowance = quantized_bound(model, x, ref, names, export_tolerance(model, opts.precision), f32["rel_l2"])
    if f32["rel_l2"] > limit:
        moved = (f"; the torch model itself moves by {allowance['rounding_sensitivity']:.3g} under a 1e-6 input change"
                 if allowance else "")
        raise ExportError(f"{fmt} {opts.precision} export does not match the torch QuantizedModel with f32 float "
                          f"ops: relative L2 {f32['rel_l2']:.3g} > {limit:g}{moved} ({f32['outputs']})")
    checked = {"f32": {"rel_l2": f32["rel_l2"], "tolerance": limit, "passed": True, "against": "torch QuantizedModel",
                       **allowance}}
    if run_bf16 is None:
        checked["bf16"] = {"passed": False, "not_checked": why_not}
        return checked
    got = run_bf16(x)
    if opts.float_model is not None:
        fref = torch_outputs(opts.float_model, x)
        base = compare(fref, a32, names)["rel_l2"]
        err, bound, against = compare(fref, got, names)["rel_l2"], math.hypot(base, tolerance_for("bf16")), "float model"
        checked["f32"]["rel_l2_vs_float"] = base
    else:
        err, bound = compare(ref, got, names)["rel_l2"], math.hypot(limit, tolerance_for("bf16"))
        against = "torch QuantizedModel"
    checked["bf16"] = {"rel_l2": err, "tolerance": bound, "passed": err <= bound, "against": against}
    return checked


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
