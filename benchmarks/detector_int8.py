"""Does int8 keep the person detector's fidelity? ONNX Runtime static QDQ (per-channel int8
weights, uint8 activations) of RTMDet against its fp32 graph, on synthetic multi-person images.

Random weights with untouched BatchNorm give a network whose output ignores the image (int8 then
looks fine and says nothing), so ``--bn-from-data`` (default) first sets every BatchNorm's
statistics from 6 synthetic images. Calibration: 8 other images; evaluation: 6 more.

    python benchmarks/detector_int8.py --model m      # RTMDet-m (the official detector's shape)
    python benchmarks/detector_int8.py --model tiny   # the tests' tiny detector
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from sapiens2_edge.detection.config import RTMDetConfig
from sapiens2_edge.detection.export import DetectorGraph
from sapiens2_edge.detection.model import RTMDet, rtmdet_m
from sapiens2_edge.tasks.detection_processing import decode_detections, prepare_input
from tests.fixtures.synthetic import make_people

TINY = RTMDetConfig(widen_factor=0.125, deepen_factor=0.33, neck_in_channels=(32, 64, 128), neck_out_channels=16,
                    feat_channels=16)


def images(n: int, seed: int) -> list[np.ndarray]:
    """640 x 480 frames of three synthetic people side by side."""
    return [np.concatenate(list(make_people(3, seed + s, size=(480, 212))[0]), axis=1) for s in range(n)]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("m", "tiny"), default="m")
    ap.add_argument("--no-bn-from-data", dest="bn", action="store_false")
    args = ap.parse_args()
    model = rtmdet_m(seed=0) if args.model == "m" else RTMDet(TINY).eval()
    if args.bn:
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None  # cumulative average over the images
                mod.reset_running_stats()
        model.train()
        with torch.no_grad():
            for im in images(6, 200):
                model(torch.from_numpy(prepare_input(im)[0][None]))
        model.eval()
    tmp = Path(tempfile.mkdtemp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DetectorGraph(model), (torch.zeros(1, 3, 640, 640),), str(tmp / "f.onnx"), dynamo=False,
                          opset_version=17, input_names=["image"])
    calib = iter([{"image": prepare_input(im)[0][None]} for im in images(8, 100)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(calib, None)
    quant_pre_process(str(tmp / "f.onnx"), str(tmp / "pre.onnx"))
    quantize_static(str(tmp / "pre.onnx"), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    f32, int8 = (ort.InferenceSession(str(tmp / n), providers=["CPUExecutionProvider"]) for n in ("f.onnx", "q.onnx"))
    for im in images(6, 0):
        x, box = prepare_input(im)
        a, b = f32.run(None, {"image": x[None]}), int8.run(None, {"image": x[None]})
        rel = max(np.linalg.norm(u - v) / np.linalg.norm(u) for u, v in zip(a, b, strict=True))
        da, db = (decode_detections([o[0] for o in r[:3]], [o[0] for o in r[3:]], (8, 16, 32), box) for r in (a, b))
        k = min(10, len(da[0]), len(db[0]))
        matched = float(iou(da[0][:k], db[0][:k]).max(1).mean()) if k else float("nan")
        print(f"rel L2 {rel:.3g}  top-10 boxes: mean best IoU {matched:.3f}, max score diff "
              f"{np.abs(da[1][:k] - db[1][:k]).max() if k else float('nan'):.3g}")


if __name__ == "__main__":
    main()
