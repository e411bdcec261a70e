"""What int8 attention inputs would give our int8 OpenVINO artifact: FakeQuantize (symmetric int8, per
tensor, from the largest |x| over calibration inputs) put by hand on the q, k and v inputs of every
ScaledDotProductAttention of the artifact's IR, the pattern OpenVINO's low-precision path (and NNCF)
use; the IR with and without them compiled as the runtime compiles the artifact, timed, profiled by
layer, and compared with the outputs of the peers benchmark's torch fp32 row. Not a product path: a
measurement of whether attention in int8 is worth a place in the recipe.

    python benchmarks/ov_attention_int8_probe.py ARTIFACT_DIR --size 1024x768 --work /tmp/peers/w04

--work is the peers benchmark's folder for this size (its out-torch-fp32.npy holds torch fp32's
outputs for the same evaluation inputs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def attention_input_maxima(core, xml: Path, config: dict, inputs) -> np.ndarray:
    """max |x| of inputs 0, 1, 2 (q, k, v) of each ScaledDotProductAttention, over ``inputs``."""
    probe = core.read_model(str(xml))
    sdpa = [n for n in probe.get_ops() if n.get_type_name() == "ScaledDotProductAttention"]
    probe.add_outputs([n.input_value(i) for n in sdpa for i in range(3)])
    compiled = core.compile_model(probe, "CPU", config)
    amax = np.zeros(3 * len(sdpa))
    for x in inputs:
        r = compiled(x)
        for i in range(len(amax)):
            amax[i] = max(amax[i], float(np.abs(r[compiled.outputs[1 + i]]).max()))
    return amax


def with_int8_attention_inputs(core, xml: Path, amax: np.ndarray, out: Path) -> None:
    import openvino as ov
    import openvino.opset13 as ops

    m = core.read_model(str(xml))
    sdpa = [n for n in m.get_ops() if n.get_type_name() == "ScaledDotProductAttention"]
    for j, n in enumerate(sdpa):
        for i in range(3):
            lo, hi = (ops.constant(np.array(v, np.float32)) for v in (-amax[3 * j + i], amax[3 * j + i]))
            n.input(i).replace_source_output(ops.fake_quantize(n.input_value(i), lo, hi, lo, hi, 255).output(0))
    m.validate_nodes_and_infer_types()
    ov.save_model(m, str(out), compress_to_fp16=False)


def measure(core, xml: Path, config: dict, xs, runs: int) -> tuple[np.ndarray, float, dict]:
    """Outputs for ``xs``, median wall time and per-layer-kind counters (ms per run; the attention's
    fused layers as "attention [kernel]")."""
    from benchmarks.ov_layer_profile import attention_layers

    compiled = core.compile_model(str(xml), "CPU", {**config, "PERF_COUNT": True})
    attention = attention_layers(compiled)
    req = compiled.create_infer_request()
    got = np.concatenate([req.infer({0: x})[compiled.outputs[0]].copy() for x in xs])
    walls, layers = [], defaultdict(float)
    for _ in range(runs):
        t = time.perf_counter()
        req.infer({0: xs[0]})
        walls.append(time.perf_counter() - t)
        for p in req.profiling_info:
            kind = "attention" if p.node_name in attention else p.node_type
            layers[f"{kind} [{p.exec_type}]"] += p.real_time.total_seconds() * 1e3 / runs
    return got, float(np.median(walls)), layers


def main(argv=None) -> None:
    import openvino as ov

    import benchmarks.bench_cpu_peers as peers
    from benchmarks.ov_layer_profile import compile_as_runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--size", default="1024x768")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--calib", type=int, default=4)
    p.add_argument("--eval", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    a.size = tuple(int(v) for v in a.size.split("x"))
    _, compiled, how = compile_as_runtime(a.artifact)
    config = {"PERFORMANCE_HINT": "LATENCY", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
              "INFERENCE_PRECISION_HINT": compiled.get_property("INFERENCE_PRECISION_HINT")}
    del compiled
    core, xml = ov.Core(), a.artifact / "openvino" / "model.xml"
    amax = attention_input_maxima(core, xml, config, peers.calib_inputs(a))
    ref = np.load(a.work / "out-torch-fp32.npy").astype(np.float64)
    xs = peers.eval_inputs(a)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "model.xml"
        with_int8_attention_inputs(core, xml, amax, probe)
        rows = [("as exported", *measure(core, xml, config, xs, a.runs)),
                ("int8 q, k, v", *measure(core, probe, config, xs, a.runs))]
    print(f"{a.artifact} compiled {how}; q/k/v ranges from {a.calib} calibration inputs\n")
    print("| IR | median (s) | rel L2 vs torch fp32 | seg agreement | attention kernels (ms) | all counters (ms) |")
    print("|---|---|---|---|---|---|")
    for name, got, wall, layers in rows:
        rel = np.linalg.norm(ref - got) / np.linalg.norm(ref)
        agree = (ref.argmax(1) == got.argmax(1)).mean()
        attention = sum(v for k, v in layers.items() if k.startswith("attention"))
        print(f"| {name} | {wall:.3f} | {rel:.4f} | {100 * agree:.1f} % | {attention:.0f} | {sum(layers.values()):.0f} |")
    base, probe_out = rows[0][1], rows[1][1]
    print(f"\nint8 q, k, v vs as exported: rel L2 {np.linalg.norm(base - probe_out) / np.linalg.norm(base):.2e}")
    for name, _, _, layers in rows:
        top = sorted(layers.items(), key=lambda kv: -kv[1])[:4]
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in top))


if __name__ == "__main__":
    main()
