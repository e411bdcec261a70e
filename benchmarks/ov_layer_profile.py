"""Where an OpenVINO artifact spends its time: OpenVINO's per-layer counters (PERF_COUNT), summed by
layer type and by the kernel that ran it (exec type), for the artifact compiled as the runtime
compiles it (its manifest's precision policy on this CPU).

    python benchmarks/ov_layer_profile.py ARTIFACT_DIR [--runs 5] [--json out.json]
    python benchmarks/ov_layer_profile.py PEER.xml --size 512x384    # an IR of ours or not (NNCF's), as
                                                                      # OpenVINO compiles it by default

Attention is reported on its own: the compiled layers that hold the ScaledDotProductAttention /
Softmax of the IR (OpenVINO fuses each block's attention into one Snippets Subgraph or a
ScaledDotProductAttention node, so the scores are never written to memory as a tensor of their
own). "reference" exec types are OpenVINO's slow generic kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compile_as_runtime(root: Path):
    import openvino as ov

    from sapiens2_edge.artifact import read_manifest
    from sapiens2_edge.runtime.openvino_backend import resolve_precision

    m = read_manifest(root)
    hint, mode, why = resolve_precision(m.options.get("inference_precision"), m.precision)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True,
              "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0, **({"EXECUTION_MODE_HINT": mode} if mode else {})}
    compiled = ov.Core().compile_model(str(root / "openvino" / "model.xml"), "CPU", config)
    return m, compiled, f"{hint}{', ' + mode.lower() if mode else ''} ({why})"


def compile_with_defaults(xml: Path):
    """A peer's IR (no manifest) compiled as a user would: OpenVINO's defaults plus the counters."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    prec = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return compiled, f"{prec} (OpenVINO's defaults)"


def attention_layers(compiled) -> set[str]:
    """Names of the compiled layers that carry the IR's attention (SDPA / Softmax)."""
    names = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        original = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind == "ScaledDotProductAttention" or "ScaledDotProductAttention" in original or "Softmax" in original:
            names.add(op.get_friendly_name())
    return names


def profile(root: Path, runs: int, size: tuple[int, int] | None = None) -> dict:
    import time

    import numpy as np

    if root.suffix == ".xml":
        compiled, how = compile_with_defaults(root)
        precision, input_size = "peer IR", size
    else:
        m, compiled, how = compile_as_runtime(root)
        precision, input_size = m.precision, m.input_size
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, *input_size)).astype(np.float32)
    req.infer({0: x})  # warm-up
    attention = attention_layers(compiled)
    by_type: dict[str, float] = defaultdict(float)
    by_exec: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        req.infer({0: x})
        walls.append(time.perf_counter() - t)
        for p in req.profiling_info:
            us = p.real_time.total_seconds() * 1e6
            if us <= 0:
                continue
            kind = "Attention (" + p.node_type + ")" if p.node_name in attention else p.node_type
            by_type[kind] += us / runs
            by_exec[f"{kind} [{p.exec_type}]"] += us / runs
            counts[f"{kind} [{p.exec_type}]"] += 1
    total = sum(by_type.values())
    return {"artifact": str(root), "precision": precision, "compiled_as": how, "wall_median_s": float(np.median(walls)),
            "counted_ms": total / 1e3,
            "by_type": sorted(((k, v / 1e3, v / total) for k, v in by_type.items()), key=lambda r: -r[1]),
            "by_exec": sorted(((k, v / 1e3, v / total, counts[k] // runs) for k, v in by_exec.items()),
                              key=lambda r: -r[1])}


def share_table(columns: list[str], rows: list[tuple], top: int) -> list[str]:
    """Markdown lines of ``rows`` (name, ms, share[, count]), slowest first, those past ``top`` summed in one."""
    def line(name, ms, share, *count) -> str:
        return "| " + " | ".join([str(name), *map(str, count), f"{ms:.1f}", f"{100 * share:.1f} %"]) + " |"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [line(*r[:2], r[2], *r[3:]) for r in rows[:top]]
    rest = rows[top:]
    if rest:
        sums = [sum(x[i] for x in rest) for i in range(1, len(rest[0]))]
        lines.append(line(f"(other {len(rest)})", *sums))
    return lines


def markdown(r: dict, top: int = 14) -> str:
    lines = [f"`{Path(r['artifact']).name}` ({r['precision']}, compiled {r['compiled_as']}): wall median "
             f"{r['wall_median_s']:.3f} s, counters sum {r['counted_ms']:.0f} ms", ""]
    return "\n".join(lines + share_table(["layer type [kernel]", "layers", "ms", "share"], r["by_exec"], top))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--size", default="512x384", help="input size HxW for an .xml (an artifact says its own)")
    a = p.parse_args()
    r = profile(a.artifact, a.runs, tuple(int(v) for v in a.size.split("x")))
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    print(markdown(r))


if __name__ == "__main__":
    main()
