"""Task fidelity of mobile artifacts against the float model, on the trained tiny fixtures.

Random full-size weights exaggerate quantization error (a random network has no margin), so what a
scheme costs a task is measured here: each trained fixture (seg, pose; tests/fixtures/data) is
quantized, exported to each FORMAT:SCHEME row, and the artifact (through its runtime) and the torch
QuantizedModel are compared with the float model on 16 fresh synthetic images (seed 20000, 128x96):
seg agreement / mIoU, pose PCK@2px and mean displacement, output SQNR.

    python benchmarks/mobile_fixture_fidelity.py --rows executorch:int8,executorch:int4-weight,ort:int4-weight
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZE = (128, 96)


def _metrics(task: str, r: dict) -> str:
    if task == "seg":
        return f"seg agreement {r['seg_agreement']:.4f}, mIoU {r['seg_miou']:.3f}"
    return f"PCK@2px {r['pose_pck_2px']:.4f}, mean {r['pose_mean_px']:.3f} px"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="executorch:int8,executorch:int8-weight,executorch:int4-weight,ort:int8-weight,"
                                     "ort:int4-weight,litert:int8-weight")
    p.add_argument("--tasks", default="seg,pose")
    p.add_argument("--float-storage", default="fp32", choices=("fp32", "fp16"),
                   help="store what stays float (head, patch embedding, norms) as float16: the size-bound recipe")
    a = p.parse_args(argv)

    import sapiens2_edge as s2e
    from sapiens2_edge.exporters import read_manifest
    from tests.fixtures.synthetic import make_people

    images = list(make_people(16, 20_000, SIZE)[0])  # uint8 RGB, preprocessed as the task's pipeline does
    work = Path(tempfile.mkdtemp(prefix="s2e_mobile_fid_"))
    print(f"`python benchmarks/mobile_fixture_fidelity.py {' '.join(argv or sys.argv[1:])}`\n")
    print("| fixture | format | scheme | artifact vs float | torch QuantizedModel vs float | artifact output SQNR "
          "(dB) | verified at export (rel L2 / tol) |")
    print("|---|---|---|---|---|---|---|")
    for task in a.tasks.split(","):
        model = s2e.load_model(ROOT / "tests/fixtures/data" / f"trained_tiny_{task}.safetensors")
        for row in a.rows.split(","):
            fmt, scheme = row.split(":")
            q, _ = s2e.quantize(model, scheme, progress=False, float_storage=a.float_storage)
            out = s2e.export(q, work / f"{task}-{fmt}-{scheme}", format=fmt, input_size=SIZE, max_batch=1,
                             float_model=model, fidelity_data=images)
            fid = read_manifest(out).fidelity
            art, tq = fid["vs_float"]["artifact"], fid["vs_float"]["torch_quantized"]
            label = scheme + (", float_storage fp16" if a.float_storage == "fp16" else "")
            print(f"| {task} | {fmt} | {label} | {_metrics(task, art)} | {_metrics(task, tq)} | {art['sqnr_db']:.2f} | "
                  f"{fid['rel_l2']:.2e} / {fid['tolerance']:g} |", flush=True)


if __name__ == "__main__":
    main()
