"""The trained tiny fixtures' fidelity with int8 attention inputs and an int8 head: our int8 static recipe
with ``attention="float"``, with ``attention="int8"`` (q, k, v rounded to int8 with per-tensor scales from the
calibration maxima), and with ``attention="int8", head="int8"`` (the head's transposed convolutions with
int8 weights and inputs), seg pixel agreement and pose displacement vs the float model on held-out images,
as tests/test_quantize_fidelity.py measures them (gates: >= 0.99, <= 0.5 px).

    python benchmarks/attention_int8_gates.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sapiens2_edge as s2e  # noqa: E402
from sapiens2_edge.quantization.evaluate import evaluate  # noqa: E402
from tests.fixtures.synthetic import VISIBLE_KEYPOINTS, make_people  # noqa: E402

DATA = ROOT / "tests" / "fixtures" / "data"
SIZE = (128, 96)


def main() -> None:
    calib = list(make_people(16, seed=1001, size=SIZE)[0])
    held_out = list(make_people(16, seed=2002, size=SIZE)[0])
    print("| fixture | int8 static | + int8 attention inputs | + int8 head |\n|---|---|---|---|")
    for task in ("seg", "pose"):
        model = s2e.load_model(DATA / f"trained_tiny_{task}.safetensors")
        kw = {"keypoints": VISIBLE_KEYPOINTS} if task == "pose" else {}
        key = "seg_agreement" if task == "seg" else "pose_mean_px"
        got = []
        for attention, head in (("float", "float"), ("int8", "float"), ("int8", "int8")):
            q, _ = s2e.quantize(model, "int8", calibration=calib, input_size=SIZE, activation_mode="static",
                                attention=attention, head=head, progress=False)
            got.append(evaluate(model, q, held_out, input_size=SIZE, samples=16, **kw)[key])
        print(f"| {task} ({key}) | " + " | ".join(f"{v:.4f}" for v in got) + " |")


if __name__ == "__main__":
    main()
