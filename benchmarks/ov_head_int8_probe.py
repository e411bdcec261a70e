"""What an int8 head would give our int8 OpenVINO artifact: NNCF's default post-training quantization
applied to the artifact's IR with every MatMul and the patch embedding left as they are (the backbone
is already our int8 recipe), so that it quantizes what NNCF's own int8 model has and ours keeps in bf16:
the head's transposed convolutions and convolutions. Both IRs compiled as the runtime compiles int8
artifacts (float parts in bf16), timed, and compared with the peers benchmark's torch fp32 outputs on
the same evaluation inputs. Not a product path: a measurement of whether the head belongs in int8.

    python benchmarks/ov_head_int8_probe.py /tmp/peers/w01/ours-ov-int8 --work /tmp/peers/w01

--work is the peers benchmark's folder for the size (its out-torch-fp32.npy holds torch fp32's outputs
for the same evaluation inputs, 4 at 512x384 by default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(core, xml: str, inputs, ref: np.ndarray, runs: int) -> dict:
    compiled = core.compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    got = np.concatenate([compiled(x)[0] for x in inputs]).astype(np.float64)
    compiled(inputs[0])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        compiled(inputs[0])
        times.append(time.perf_counter() - t)
    return {"median_s": float(np.median(times)), "rel_l2": float(np.linalg.norm(ref - got) / np.linalg.norm(ref)),
            "seg_agreement": float((ref.argmax(1) == got.argmax(1)).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path, help="an int8 OpenVINO artifact of the peers benchmark")
    p.add_argument("--work", type=Path, required=True, help="the peers benchmark's folder (out-torch-fp32.npy)")
    p.add_argument("--size", default="512x384")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--eval", type=int, default=4)
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args()
    import nncf
    import openvino as ov

    from benchmarks.bench_cpu_peers import calib_inputs, eval_inputs

    h, w = (int(v) for v in a.size.split("x"))
    sizes = SimpleNamespace(size=(h, w), calib=a.calib, eval=a.eval)
    core = ov.Core()
    src = str(a.artifact / "openvino" / "model.xml")
    t = time.time()
    quantized = nncf.quantize(core.read_model(src), nncf.Dataset(calib_inputs(sizes)), subset_size=a.calib,
                              ignored_scope=nncf.IgnoredScope(names=["node_conv2d/WithoutBiases"], types=["MatMul"],
                                                              validate=False))
    print(f"NNCF on the head: {time.time() - t:.1f} s")
    ref = np.load(a.work / "out-torch-fp32.npy").astype(np.float64)
    inputs = eval_inputs(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        head_xml = str(Path(tmp) / "head_int8.xml")
        ov.save_model(quantized, head_xml)
        for name, xml in (("ours (head in bf16)", src), ("ours + NNCF int8 head", head_xml)):
            r = measure(core, xml, inputs, ref, a.runs)
            print(f"{name}: median {r['median_s']:.3f} s, rel L2 vs torch fp32 {r['rel_l2']:.4f}, "
                  f"seg agreement {r['seg_agreement']:.4f}")


if __name__ == "__main__":
    main()
