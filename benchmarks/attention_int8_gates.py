"""The trained tiny fixtures' fidelity gates with int8 attention inputs emulated in torch: our int8
static model, then the same with q, k and v fake-quantized (symmetric int8, per tensor, one range per
attention call from max |x| over the calibration images) at every attention. Seg pixel agreement and
pose displacement vs the float model, as tests/test_quantize_fidelity.py measures them. A measurement
for deciding whether int8 attention belongs in the recipe, not a product path.

    python benchmarks/attention_int8_gates.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sapiens2_edge as s2e  # noqa: E402
import sapiens2_edge.models.backbone as backbone  # noqa: E402
from sapiens2_edge.quantization.evaluate import as_batches, evaluate, run_outputs  # noqa: E402
from tests.fixtures.synthetic import VISIBLE_KEYPOINTS, make_people  # noqa: E402

DATA = ROOT / "tests" / "fixtures" / "data"
SIZE = (128, 96)


class Int8Attention:
    """Patches the backbone's attention; inside ``run(model)`` calls it passes through, observes or
    fake-quantizes q, k, v (``mode``: "off" / "observe" / "quantize"; other models' calls pass through)."""

    def __init__(self):
        self.mode, self.active, self.call, self.amax = "off", False, 0, {}
        self.sdpa = backbone.F.scaled_dot_product_attention

    def __enter__(self):
        backbone.F.scaled_dot_product_attention = self.attention
        return self

    def __exit__(self, *exc):
        backbone.F.scaled_dot_product_attention = self.sdpa

    @staticmethod
    def fake_int8(t, amax: float):
        s = amax / 127.0
        return (t / s).round().clamp(-127, 127) * s

    def attention(self, q, k, v, *args, **kw):
        i, self.call = self.call, self.call + 1
        if self.active and self.mode == "observe":
            m = self.amax.setdefault(i, [0.0, 0.0, 0.0])
            for j, t in enumerate((q, k, v)):
                m[j] = max(m[j], float(t.abs().max()))
        elif self.active and self.mode == "quantize":
            q, k, v = (self.fake_int8(t, a) for t, a in zip((q, k, v), self.amax[i], strict=True))
        return self.sdpa(q, k, v, *args, **kw)

    def run(self, model):
        def forward(batch):
            self.call, self.active = 0, True
            try:
                return model(batch)
            finally:
                self.active = False
        return forward


def main() -> None:
    calib = list(make_people(16, seed=1001, size=SIZE)[0])
    held_out = list(make_people(16, seed=2002, size=SIZE)[0])
    print("| fixture | int8 static | + int8 q, k, v (per tensor) |\n|---|---|---|")
    for task in ("seg", "pose"):
        model = s2e.load_model(DATA / f"trained_tiny_{task}.safetensors")
        q, _ = s2e.quantize(model, "int8", calibration=calib, input_size=SIZE, activation_mode="static",
                            progress=False)
        kw = {"keypoints": VISIBLE_KEYPOINTS} if task == "pose" else {}
        key = "seg_agreement" if task == "seg" else "pose_mean_px"
        with Int8Attention() as att:
            base = evaluate(model, att.run(q), held_out, input_size=SIZE, samples=16, **kw)[key]
            att.mode = "observe"
            run_outputs(att.run(q), as_batches(calib, task, SIZE, 16), show=False)
            att.mode = "quantize"
            quant = evaluate(model, att.run(q), held_out, input_size=SIZE, samples=16, **kw)[key]
        print(f"| {task} ({key}) | {base:.4f} | {quant:.4f} |")


if __name__ == "__main__":
    main()
