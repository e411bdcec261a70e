"""The facts of the official person detector (spec 2.1 "Person detector"): RTMDet-m as mmdetection
configures it, re-configured for one class, with the demo's pre- and post-processing settings.

Torch-free. The architecture numbers come from mmdetection's ``rtmdet_l_8xb32-300e_coco.py`` with the
``rtmdet_m`` overrides (deepen 0.67, widen 0.75, neck 192/384/768 -> 192 with 2 CSP blocks, head 192
channels, no exp on the box regression) and the demo's person config (1 class, top 1000 per level,
score 0.05, no internal NMS, at most 100 boxes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tasks.detection_processing import (  # noqa: F401 - re-exported
    BBOX_THR,
    INPUT_SIZE,
    MAX_PER_IMG,
    MEAN_BGR,
    MIN_BBOX_SIZE,
    NMS_PRE,
    NMS_THR,
    PAD_VALUE,
    PERSON_LABEL,
    SCORE_THR,
    STD_BGR,
)


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


# The pre/post-processing settings live with the torch-free processing (tasks.detection_processing).
#: safetensors metadata written by ``convert``: which detector a file holds.
DETECTOR_METADATA_KEY = "sapiens2_edge.detector"
DETECTOR_NAME = "rtmdet_m"

__all__ = [
    "RTMDetConfig", "INPUT_SIZE", "PAD_VALUE", "MEAN_BGR", "STD_BGR", "NMS_PRE", "SCORE_THR",
    "MAX_PER_IMG", "MIN_BBOX_SIZE", "BBOX_THR", "NMS_THR", "PERSON_LABEL", "DETECTOR_METADATA_KEY",
    "DETECTOR_NAME",
]
