"""Which of a dense head's 3x3 convolutions can run in int8: on the trained normal fixture (tests/fixtures), the
mean angle between the float model's normals and those of the int8 static model (backbone) with each head
convolution in int8 alone, with all of them, and with the upsampling ones only (the recipe's ``head="int8"``),
over the people's pixels of held-out synthetic images, and each model's angle to the true normals.

    python benchmarks/head_int8_layers.py [--images 16]

Every variant starts from one ``quantize(..., "int8", activation_mode="static", head="int8")`` of the fixture
with every 3x3 convolution in int8 (the recipe's layer list widened for the probe); the convolutions left
float get the float model's modules back.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = (128, 96)


def main() -> None:
    import sapiens2_edge as s2e
    from sapiens2_edge.quantization import head_int8, quantize
    from tests.fixtures.synthetic import make_people, normal_angles, surface_normals

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    a = ap.parse_args()
    model = s2e.load_model(ROOT / "tests" / "fixtures" / "data" / "trained_tiny_normal.safetensors").eval()
    calib = list(make_people(16, seed=1001, size=SIZE)[0])
    images, labels, _, _ = make_people(a.images, seed=2002, size=SIZE)
    truth = surface_normals(labels)
    predict = lambda m: np.stack([r.normal for r in s2e.Predictor(m, input_size=SIZE)(list(images))])  # noqa: E731
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)  # noqa: E731
    angle = lambda p, q: float(normal_angles(p, unit(q), labels).mean())  # noqa: E731 - q as the reference
    ref = predict(model)
    every = [n for n, m in model.named_modules() if n.startswith("decode_head.") and getattr(m, "kernel_size", None) == (3, 3)]
    with mock.patch.object(head_int8, "head_layer_names", lambda m: every):
        q_all, _ = quantize(model, "int8", calibration=calib, input_size=SIZE, activation_mode="static", head="int8",
                            progress=False)
    recipe = head_int8.dense_conv_names(model)
    variants = [(f"{n} alone", [n]) for n in every]
    variants += [("all 3x3 convolutions", every), (f"the recipe's {len(recipe)} (upsampling)", recipe), ("none", [])]
    print(f"float model to the true normals: {angle(ref, truth):.3f} deg\n")
    print("| head convolutions in int8 | to the float model (deg) | to the true normals (deg) |")
    print("|---|---|---|")
    for name, int8 in variants:
        m = copy.deepcopy(q_all)
        for n in every:
            if n not in int8:
                parent, _, leaf = n.rpartition(".")
                setattr(m.get_submodule(parent), leaf, copy.deepcopy(model.get_submodule(n)))
        got = predict(m)
        print(f"| {name} | {angle(ref, got):.3f} | {angle(got, truth):.3f} |", flush=True)


if __name__ == "__main__":
    main()
