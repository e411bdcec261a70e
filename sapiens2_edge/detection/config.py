"""The facts of the official person detector (spec 2.1 "Person detector"): RTMDet-m as mmdetection
configures it, re-configured for one class, with the demo's pre- and post-processing settings.

Torch-free. The architecture numbers come from mmdetection's ``rtmdet_l_8xb32-300e_coco.py`` with the
``rtmdet_m`` overrides (deepen 0.67, widen 0.75, neck 192/384/768 -> 192 with 2 CSP blocks, head 192
channels, no exp on the box regression) and the demo's person config (1 class, top 1000 per level,
score 0.05, no internal NMS, at most 100 boxes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RTMDetConfig:
    """One RTMDet variant. The defaults are the official RTMDet-m person detector."""

    deepen_factor: float = 0.67
    widen_factor: float = 0.75
    #: CSPNeXt P5 stages: (in, out, blocks, add_identity, use_spp) before the width / depth factors
    arch: tuple[tuple[int, int, int, bool, bool], ...] = (
        (64, 128, 3, True, False), (128, 256, 6, True, False),
        (256, 512, 6, True, False), (512, 1024, 3, False, True),
    )
    expand_ratio: float = 0.5
    spp_kernel_sizes: tuple[int, ...] = (5, 9, 13)
    block_kernel_size: int = 5  # the depthwise conv of each CSPNeXt block
    neck_in_channels: tuple[int, ...] = (192, 384, 768)
    neck_out_channels: int = 192
    neck_csp_blocks: int = 2
    num_classes: int = 1
    feat_channels: int = 192
    stacked_convs: int = 2
    exp_on_reg: bool = False
    strides: tuple[int, ...] = (8, 16, 32)
    # The config sets norm_cfg=dict(type='SyncBN') without eps, so mmcv's build_norm_layer gives
    # eps 1e-5 (not the class defaults' 1e-3); momentum only matters in training.
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


#: Network input (H, W): keep-ratio resize into it, then pad (bottom / right).
INPUT_SIZE: tuple[int, int] = (640, 640)
PAD_VALUE = 114
#: Applied to the BGR image (mmdet's data preprocessor with bgr_to_rgb=False).
MEAN_BGR: tuple[float, float, float] = (103.53, 116.28, 123.675)
STD_BGR: tuple[float, float, float] = (57.375, 57.12, 58.395)

#: Detector test settings (the demo's person config).
NMS_PRE = 1000
SCORE_THR = 0.05
MAX_PER_IMG = 100
MIN_BBOX_SIZE = 0.0  # boxes need width and height > this (after rescaling to the original image)

#: The demo's own filtering (``--bbox-thr``, ``--nms-thr``) and the person class id.
BBOX_THR = 0.3
NMS_THR = 0.3
PERSON_LABEL = 0

#: safetensors metadata written by ``convert``: which detector a file holds.
DETECTOR_METADATA_KEY = "sapiens2_edge.detector"
DETECTOR_NAME = "rtmdet_m"

__all__ = [
    "RTMDetConfig", "INPUT_SIZE", "PAD_VALUE", "MEAN_BGR", "STD_BGR", "NMS_PRE", "SCORE_THR",
    "MAX_PER_IMG", "MIN_BBOX_SIZE", "BBOX_THR", "NMS_THR", "PERSON_LABEL", "DETECTOR_METADATA_KEY",
    "DETECTOR_NAME",
]
