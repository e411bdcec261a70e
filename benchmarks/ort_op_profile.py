"""Where an ONNX artifact spends its time on ONNX Runtime: the profiler's kernel times, summed by operator
type and by what the operators are there for, for the session our runtime opens (its options, 2 threads or
--threads), on one random input of the artifact's size.

    python benchmarks/ort_op_profile.py ARTIFACT_DIR [--runs 3] [--threads 2] [--json out.json]

Roles are read from the graph ONNX Runtime runs (saved after its optimizations): "int8 GEMM"
(MatMulIntegerToFloat / MatMulInteger), "attention" (MultiHeadAttention), "convolution" (the head),
"RoPE" (the bf16 roundings, the half swap and the products and sums between them), "activation
quantization" (Clip / QuantizeLinear and the per-row rescale of the prefix tokens before a GEMM), "GEMM
rescale + bias" (the per-row rescale and bias add after one), "RMSNorm" (Pow / ReduceMean / Sqrt /
Reciprocal and their products); the rest by operator type.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEMMS = {"MatMulIntegerToFloat", "MatMulInteger", "MatMul", "Gemm", "MatMulNBits", "FusedMatMul"}
NORM = {"Pow", "ReduceMean", "Sqrt", "Reciprocal"}


def roles(graph) -> dict[str, str]:
    """Node name -> role (see the module docstring)."""
    producer = {o: n for n in graph.node for o in n.output}

    def made_by(n, kinds) -> bool:
        return any(i in producer and producer[i].op_type in kinds for i in n.input)

    out = {}
    for n in graph.node:
        op = n.op_type
        if op in GEMMS:
            role = "int8 GEMM" if "Integer" in op else op
        elif op == "MultiHeadAttention":
            role = "attention"
        elif op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
            role = "convolution"
        elif op == "Cast" or (op in ("Mul", "Add", "Split", "Concat", "Gather") and made_by(n, {"Cast", "Split"})):
            role = "RoPE"
        elif op in ("Clip", "QuantizeLinear") or (op == "Mul" and made_by(n, {"Concat"}) and not made_by(n, GEMMS)):
            role = "activation quantization"
        elif op in ("Mul", "Add") and made_by(n, GEMMS | {"Mul"}) and any(
                producer[i].op_type in GEMMS or made_by(producer[i], GEMMS) for i in n.input if i in producer):
            role = "GEMM rescale + bias"
        elif op in NORM or (op == "Mul" and made_by(n, {"Reciprocal", "Mul"}) and any(
                producer[i].op_type == "Reciprocal" or made_by(producer[i], {"Reciprocal"})
                for i in n.input if i in producer)):
            role = "RMSNorm"
        else:
            role = op
        out[n.name] = role
    return out


def profile(root: Path, runs: int, threads: int) -> dict:
    import numpy as np
    import onnx

    from sapiens2_edge.artifact import read_manifest
    from sapiens2_edge.runtime.onnxruntime_backend import import_ort, session_options

    ort = import_ort()
    m = read_manifest(root)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(root / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, *m.input_size)).astype(np.float32)
        name = session.get_inputs()[0].name
        session.run(None, {name: x})  # warm-up (profiled too: dropped below by run count)
        walls = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, {name: x})
            walls.append(time.perf_counter() - t)
        events = json.loads(Path(session.end_profiling()).read_text())
        role_of = roles(onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False).graph)
    by_op: dict[str, float] = defaultdict(float)
    by_role: dict[str, float] = defaultdict(float)
    nodes: Counter = Counter()
    calls = runs + 1
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node, op = e["name"][:-len("_kernel_time")], e["args"]["op_name"]
        by_op[op] += e["dur"] / calls
        by_role[role_of.get(node, op)] += e["dur"] / calls
        nodes[op] += 1
    total = sum(by_op.values())
    return {"artifact": str(root), "precision": m.precision, "input_size": list(m.input_size), "threads": threads,
            "onnxruntime": ort.__version__, "wall_median_s": float(np.median(walls)), "counted_ms": total / 1e3,
            "by_role": sorted(((k, v / 1e3, v / total) for k, v in by_role.items()), key=lambda r: -r[1]),
            "by_op": sorted(((k, v / 1e3, v / total, nodes[k] // calls) for k, v in by_op.items()),
                            key=lambda r: -r[1])}


def markdown(r: dict, top: int = 12) -> str:
    from ov_layer_profile import share_table

    size = "x".join(map(str, r["input_size"]))
    lines = [f"`{Path(r['artifact']).name}` ({r['precision']}, {size}, onnxruntime {r['onnxruntime']}, "
             f"{r['threads']} threads): wall median {r['wall_median_s']:.3f} s, kernels sum {r['counted_ms']:.0f} ms", ""]
    lines += share_table(["role", "ms", "share"], r["by_role"], top) + [""]
    return "\n".join(lines + share_table(["operator", "nodes", "ms", "share"], r["by_op"], top))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    r = profile(a.artifact, a.runs, a.threads)
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    print(markdown(r))


if __name__ == "__main__":
    main()
