"""Mixed precision: per-layer sensitivity, then the cheapest assignment that meets a budget.

1. Sensitivity: quantize one layer at a time (everything else float) and measure the task
   fidelity of the whole model on calibration data against the float outputs.
2. Order the layers from most to least sensitive. Keeping the k most sensitive layers at the
   fallback precision (float by default) and quantizing the rest gives a family of assignments
   whose size grows and whose error shrinks with k; a binary search finds the smallest k that
   meets every fidelity constraint, then the size constraints are checked. This is the greedy
   knapsack solution under the usual additive-error assumption, verified on the real mixed
   model at every step rather than trusted.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, replace
from typing import Callable

from ..errors import ConfigError, QuantizationError
from ..spec import NUM_PREFIX_TOKENS
from .calibration import progress as progress_bar
from .config import layer_config
from .convert import apply, plan_layers
from .evaluate import as_batches, run_outputs
from .fidelity import output_error, task_fidelity
from .linear import QuantLinear
from .model import candidate_linears, float_copy, set_module, state_bytes
from .schemes import name_of

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt,
                                                    "<": operator.lt}
_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")
SIZE_METRICS = ("size", "size_mb")  # size: fraction of the float model's bytes; size_mb: megabytes


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    value: float

    def ok(self, measured: float) -> bool:
        return _OPS[self.op](measured, self.value)

    @property
    def higher_is_better(self) -> bool:
        return self.op in (">=", ">")

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_budget(text: str, task: str | None) -> list[Constraint]:
    """``"seg_agreement>=0.995, size<=0.3"`` -> constraints; metric names are those of
    :func:`.fidelity.task_fidelity` for the task plus ``size`` / ``size_mb``."""
    allowed = set(SIZE_METRICS) | set(output_error((1.0,), (1.0,)))
    allowed |= {"seg": {"seg_agreement", "seg_miou"},
                "pose": {"pose_mean_px", "pose_p95_px", "pose_max_px", "pose_pck_1px", "pose_pck_2px"},
                "normal": {"normal_mean_deg", "normal_p95_deg"}, "pointmap": {"pointmap_rel_l1", "scale_rel_err"},
                "albedo": {"albedo_psnr_db"}}.get(task, set())
    out = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = _CONSTRAINT.match(part)
        if not m:
            raise ConfigError(f"cannot read budget {part!r}; expected METRIC>=VALUE or METRIC<=VALUE, "
                              "e.g. 'seg_agreement>=0.995' or 'size<=0.3'")
        metric, op, value = m.group(1), m.group(2), float(m.group(3))
        if metric not in allowed:
            raise ConfigError(f"unknown budget metric {metric!r} for a {task} model; expected one of "
                              f"{', '.join(sorted(allowed))}")
        out.append(Constraint(metric, op, value))
    if not out:
        raise ConfigError("the budget is empty; expected e.g. 'seg_agreement>=0.995' or 'size<=0.3'")
    return out


def _score(fid: dict, c: Constraint) -> float:
    """Larger = better for constraint ``c``."""
    return fid[c.metric] if c.higher_is_better else -fid[c.metric]


def layer_sensitivity(model, batches, reference, scheme: str, layers: list[str], prefix_tokens: int = NUM_PREFIX_TOKENS,
                      show: bool | None = False) -> dict[str, dict]:
    """Fidelity of the model with only ``layer`` quantized (dynamic activations, no smoothing),
    for every layer: one forward pass over ``batches`` per layer, the layer swapped in place."""
    base = float_copy(model).eval()
    modules = dict(base.named_modules())
    cfg = layer_config(scheme)
    size = tuple(batches.input_size)
    out = {}
    for name in progress_bar(layers, len(layers), "sensitivity", show):
        original = modules[name]
        set_module(base, name, QuantLinear.from_float(original, cfg, prefix_tokens))
        try:
            out[name] = task_fidelity(model.task, reference, run_outputs(base, batches, show=False), size)
        finally:
            set_module(base, name, original)
    return out


def search_mixed(model, config, recipe, calibration, *, kernel: str = "auto", progress: bool | None = None):
    """Quantize with ``config.default`` everywhere ``config.budget`` allows, ``config.fallback``
    where it does not (``config``: a :class:`~.schemes.Mixed` with a budget; ``recipe``: the
    request to record; ``calibration``: a :class:`~.schemes.Calibration`).

    Returns ``(qmodel, report)``; ``report.fidelity`` holds the measured metrics and
    ``report.recipe['search']`` the sensitivity ranking and the chosen k.
    """
    if calibration.data is None:
        raise QuantizationError("a budget-driven mixed search needs calibration data (calibration=...)")
    budget, scheme, fallback = config.budget, config.default.name, name_of(config.fallback)
    constraints = parse_budget(budget, model.task)
    fidelity_c = [c for c in constraints if c.metric not in SIZE_METRICS]
    size_c = [c for c in constraints if c.metric in SIZE_METRICS]
    input_size = tuple(calibration.input_size or model.input_size)
    batches = as_batches(calibration.data, model.task, input_size, config.search_samples, calibration.batch_size)
    calib_size = tuple(calibration.calibration_input_size or input_size)  # each candidate calibrates at this size
    calib_batches = batches if calib_size == input_size else as_batches(
        calibration.data, model.task, calib_size, config.search_samples, calibration.batch_size)
    reference = run_outputs(model, batches, "float", False)
    float_bytes = state_bytes(model)
    candidates = candidate_linears(model)
    layers = list(plan_layers(replace(config, budget=None), recipe, candidates))

    primary = fidelity_c[0] if fidelity_c else Constraint("sqnr_db", ">=", float("-inf"))
    sens = layer_sensitivity(model, batches, reference, scheme, layers, recipe.prefix_tokens, progress)
    order = sorted(layers, key=lambda n: _score(sens[n], primary))  # most damaging first

    def build(k: int):
        if k == len(order) and fallback == "float":  # nothing quantized: the float model itself
            fid = task_fidelity(model.task, reference, reference, input_size)
            fid.update(size=1.0, size_mb=float_bytes / 1e6)
            return None, None, fid
        mixed = replace(config, budget=None, layers={n: config.fallback for n in order[:k]})
        record = replace(recipe, layer_schemes={n: fallback for n in order[:k]})
        qm, rep = apply(model, plan_layers(mixed, record, candidates), replace(calibration, data=calib_batches),
                        recipe=record, kernel=kernel, progress=False)
        fid = task_fidelity(model.task, reference, run_outputs(qm, batches, show=False), input_size)
        fid["size"] = state_bytes(qm) / float_bytes
        fid["size_mb"] = state_bytes(qm) / 1e6
        return qm, rep, fid

    def meets(fid, cs) -> bool:
        return all(c.ok(fid[c.metric]) for c in cs)

    cache: dict[int, tuple] = {}

    def at(k: int):
        if k not in cache:
            cache[k] = build(k)
        return cache[k]

    lo, hi = 0, len(order)
    if not meets(at(hi)[2], fidelity_c):
        best = at(hi)[2]
        raise QuantizationError(
            f"no assignment meets {', '.join(map(str, fidelity_c))}: even with all {len(order)} layers at "
            f"{fallback}, {', '.join(f'{c.metric}={best[c.metric]:.6g}' for c in fidelity_c)}; most sensitive "
            f"layers: {', '.join(order[:5])}")
    while lo < hi:  # smallest k meeting the fidelity constraints
        mid = (lo + hi) // 2
        if meets(at(mid)[2], fidelity_c):
            hi = mid
        else:
            lo = mid + 1
    qmodel, report, fid = at(lo)
    if qmodel is None:
        worst = at(lo - 1)[2] if lo > 0 else fid
        raise QuantizationError(
            f"no assignment meets {', '.join(map(str, fidelity_c))} with any layer quantized to {scheme}: the best "
            f"reachable with one layer quantized ({order[-1]}) is "
            f"{', '.join(f'{c.metric}={worst[c.metric]:.6g}' for c in fidelity_c)}; relax the budget or use "
            "fallback='fp16'")
    if not meets(fid, size_c):
        raise QuantizationError(
            f"no assignment meets {budget!r}: the fidelity constraints need the {lo} most sensitive layers at "
            f"{fallback} ({', '.join(order[:min(lo, 5)])}{' ...' if lo > 5 else ''}), which gives "
            f"size={fid['size']:.4g} ({fid['size_mb']:.3g} MB); the best reachable size is "
            f"{at(0)[2]['size']:.4g} with {', '.join(f'{c.metric}={at(0)[2][c.metric]:.6g}' for c in fidelity_c)}")
    report.fidelity = {**fid, "samples": batches.num_samples, "budget": budget}
    report.recipe["search"] = {
        "budget": budget, "scheme": scheme, "fallback": fallback, "kept_at_fallback": order[:lo],
        "sensitivity": {n: {primary.metric: sens[n][primary.metric]} for n in order},
        "evaluated_k": sorted(cache),
    }
    report.notes.append(f"mixed search: {lo} of {len(order)} layers kept at {fallback} to meet {budget}")
    return qmodel, report
