"""One OpenVINO IR compiled with several CPU configurations, timed interleaved in one process, and
each configuration's output compared with ours (what ``OpenVINOBackend`` compiles an fp32 artifact
with). Answers "is our runtime configuration what costs the time?" without a second IR in the way.

    python benchmarks/ov_compile_configs.py ARTIFACT_DIR [--runs 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "openvino defaults": {},
    "ours (f32, accuracy, no dynamic quantization)": {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY",
                                                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "f32, no dynamic quantization": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "f32, accuracy": {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"},
}


def main(argv=None) -> None:
    import openvino as ov

    from sapiens2_edge.artifact import read_manifest, verification_inputs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--runs", type=int, default=8)
    a = p.parse_args(argv)
    m = read_manifest(a.artifact)
    x = verification_inputs(tuple(m.input_size), 1, seed=0)
    core = ov.Core()
    compiled, outs, times = {}, {}, {}
    for name, config in CONFIGS.items():
        c = core.compile_model(str(a.artifact / "openvino" / "model.xml"), "CPU", {"PERFORMANCE_HINT": "LATENCY", **config})
        req = c.create_infer_request()
        outs[name] = np.array(req.infer({0: x})[c.outputs[0]])  # also the warm-up
        compiled[name], times[name] = (c, req), []
        print(f"{name}: inference precision {c.get_property('INFERENCE_PRECISION_HINT')}, "
              f"{c.get_property('EXECUTION_MODE_HINT')}, dynamic quantization group "
              f"{c.get_property('DYNAMIC_QUANTIZATION_GROUP_SIZE')}", flush=True)
    for _ in range(a.runs):
        for name, (_, req) in compiled.items():
            start = time.perf_counter()
            req.infer({0: x})
            times[name].append(time.perf_counter() - start)
    ref = outs["ours (f32, accuracy, no dynamic quantization)"]
    print("\n| configuration | median (s) | min (s) | rel L2 vs ours |\n|---|---|---|---|")
    for name in CONFIGS:
        rel = np.linalg.norm(outs[name] - ref) / np.linalg.norm(ref)
        print(f"| {name} | {np.median(times[name]):.3f} | {min(times[name]):.3f} | {rel:.2e} |")


if __name__ == "__main__":
    main()
