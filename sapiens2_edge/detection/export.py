"""The person detector as the exporters see a model: :class:`DetectorGraph` wraps an
:class:`~sapiens2_edge.detection.RTMDet` with flat outputs (class logits per level, then box
distances per level: the graph's outputs ``cls_8 ... box_32``) and the attributes ``export``
reads from a Sapiens2 model (task, arch, input size), so the same exporters, verification and
artifact layer serve it.

int8: not offered. Measured with ONNX Runtime static QDQ (per-channel int8 weights, uint8
activations, 8 calibration images of synthetic people) against the fp32 graph on 6 other synthetic
images, with BatchNorm statistics taken from synthetic images so that the random network's output
depends on its input: RTMDet-m's raw outputs moved by a relative L2 of 1.2-3.6 (tiny test detector
1.0-2.2) and its top-10 boxes matched the float ones with a mean IoU of at most 0.015 (tiny: 0.13);
``benchmarks/detector_int8.py`` repeats it.
(With untouched BatchNorm the random network's output ignores the image, and int8 looks fine,
rel L2 4e-3, which says nothing.) Without trained weights int8 shows no sign of keeping the
detector's fidelity, so it is refused (:data:`INT8_REFUSAL`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputSizeError
from ..spec import DETECTION_TASK, DETECTOR_INPUT_SIZE
from ..tasks.detection_processing import MEAN_BGR, PAD_VALUE, STD_BGR
from .config import DETECTOR_NAME, RTMDetConfig
from .model import RTMDet

#: Why ``export(detector, scheme=...)`` is refused (the measurement is in the module docstring).
INT8_REFUSAL = ("the person detector exports in float only (fp32, or fp16 for onnx/openvino): int8 (ONNX Runtime "
                "static QDQ, per-channel) moved RTMDet-m's raw outputs by a relative L2 of 1.2-3.6 and its top boxes "
                "matched the float ones with IoU < 0.02 on synthetic images, so it does not keep the float detector's "
                "fidelity; drop scheme= / use precision='fp32'")
#: Float precisions a detector artifact may have, per format.
PRECISIONS = {"onnx": ("fp32", "fp16"), "openvino": ("fp32", "fp16"), "torch": ("fp32",)}
STRIDE_MULTIPLE = 32


@dataclass(frozen=True)
class DetectorArch:
    """What the manifest's ``arch`` says of a detector: its name and configuration."""

    cfg: RTMDetConfig

    @property
    def name(self) -> str:
        return DETECTOR_NAME if self.cfg == RTMDetConfig() else "rtmdet"

    def to_dict(self) -> dict[str, Any]:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()}
        d["arch"] = [list(stage) for stage in self.cfg.arch]
        return {"name": self.name, "family": "rtmdet", **d}


class DetectorGraph(nn.Module):
    """``RTMDet`` with the flat outputs an exported graph has; what ``export`` takes for a detector."""

    task = DETECTION_TASK
    head_spec = None
    rope_mode = None

    def __init__(self, detector: RTMDet) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.arch = DetectorArch(detector.cfg)
        self.input_size = DETECTOR_INPUT_SIZE
        self.pretrained = bool(getattr(detector, "pretrained", False))

    def check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % STRIDE_MULTIPLE or w % STRIDE_MULTIPLE or h < STRIDE_MULTIPLE or w < STRIDE_MULTIPLE:
            raise InputSizeError(f"the detector takes inputs whose sides are positive multiples of {STRIDE_MULTIPLE} "
                                 f"(its coarsest stride), got {h}x{w}; the official input is 640x640")

    def preprocessing(self, input_size: tuple[int, int]) -> dict[str, Any]:
        """The manifest's ``preprocessing``: the detector's input pipeline (spec 2.1)."""
        return {"task": DETECTION_TASK, "input_size": list(input_size), "resize": "keep-ratio into input_size",
                "pad": "bottom/right", "pad_value": PAD_VALUE, "channels": "BGR", "mean": list(MEAN_BGR),
                "std": list(STD_BGR)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls_scores, bbox_preds = self.detector(x)
        return (*cls_scores, *bbox_preds)


def as_graph(model: Any) -> Any:
    """``model`` as export takes it: an RTMDet becomes its :class:`DetectorGraph`; anything else is
    returned as is."""
    return DetectorGraph(model) if isinstance(model, RTMDet) else model


__all__ = ["DetectorArch", "DetectorGraph", "INT8_REFUSAL", "PRECISIONS", "as_graph"]
