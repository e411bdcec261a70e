"""RTMDet-m, the official person detector network: its checkpoint keys, shapes and parameter
count, derived here by hand from mmdetection's CSPNeXt / CSPNeXtPAFPN / RTMDetSepBNHead and the
rtmdet_m config (deepen 0.67, widen 0.75; neck 192/384/768 -> 192 with 2 CSP blocks; head 192
channels, 2 stacked convs, 1 class)."""

from __future__ import annotations

import pytest
import torch

from sapiens2_edge.detection.config import RTMDetConfig
from sapiens2_edge.detection.model import RTMDet, rtmdet_m

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_module_keys(prefix: str) -> list[str]:
    return [f"{prefix}.conv.weight"] + [f"{prefix}.bn.{b}" for b in BN]


def csp_keys(prefix: str, blocks: int, attention: bool) -> list[str]:
    keys = []
    for name in ("main_conv", "short_conv", "final_conv"):
        keys += conv_module_keys(f"{prefix}.{name}")
    for j in range(blocks):
        keys += conv_module_keys(f"{prefix}.blocks.{j}.conv1")
        keys += conv_module_keys(f"{prefix}.blocks.{j}.conv2.depthwise_conv")
        keys += conv_module_keys(f"{prefix}.blocks.{j}.conv2.pointwise_conv")
    if attention:
        keys += [f"{prefix}.attention.fc.weight", f"{prefix}.attention.fc.bias"]
    return keys


def official_keys() -> set[str]:
    keys = []
    for i in range(3):
        keys += conv_module_keys(f"backbone.stem.{i}")
    # stage blocks: max(round(n * 0.67), 1) for n = 3, 6, 6, 3 -> 2, 4, 4, 2; SPP in stage 4 only
    for s, blocks in zip((1, 2, 3, 4), (2, 4, 4, 2), strict=True):
        keys += conv_module_keys(f"backbone.stage{s}.0")
        csp_index = 1
        if s == 4:
            keys += conv_module_keys("backbone.stage4.1.conv1") + conv_module_keys("backbone.stage4.1.conv2")
            csp_index = 2
        keys += csp_keys(f"backbone.stage{s}.{csp_index}", blocks, attention=True)
    for i in range(2):
        keys += conv_module_keys(f"neck.reduce_layers.{i}") + conv_module_keys(f"neck.downsamples.{i}")
        keys += csp_keys(f"neck.top_down_blocks.{i}", 2, False) + csp_keys(f"neck.bottom_up_blocks.{i}", 2, False)
    for i in range(3):
        keys += conv_module_keys(f"neck.out_convs.{i}")
        for branch in ("cls_convs", "reg_convs"):
            keys += conv_module_keys(f"bbox_head.{branch}.{i}.0") + conv_module_keys(f"bbox_head.{branch}.{i}.1")
        keys += [f"bbox_head.rtm_cls.{i}.weight", f"bbox_head.rtm_cls.{i}.bias",
                 f"bbox_head.rtm_reg.{i}.weight", f"bbox_head.rtm_reg.{i}.bias"]
    assert len(keys) == len(set(keys))
    return set(keys)


def conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k + 2 * cout  # conv without bias + BN weight and bias


def block(c: int) -> int:  # CSPNeXtBlock, expansion 1: 3x3 conv, depthwise 5x5, pointwise 1x1
    return conv_bn(c, c, 3) + conv_bn(c, c, 5, groups=c) + conv_bn(c, c, 1)


def csp(cin: int, cout: int, n: int, attention: bool) -> int:
    mid = cout // 2  # expand_ratio 0.5
    fc = (2 * mid) ** 2 + 2 * mid if attention else 0
    return 2 * conv_bn(cin, mid, 1) + conv_bn(2 * mid, cout, 1) + n * block(mid) + fc


def expected_parameters(num_classes: int) -> dict[str, int]:
    stem = conv_bn(3, 24, 3) + conv_bn(24, 24, 3) + conv_bn(24, 48, 3)  # int(64 * 0.75 // 2) = 24
    stages = sum(conv_bn(cin, cout, 3) + csp(cout, cout, n, True)
                 for cin, cout, n in ((48, 96, 2), (96, 192, 4), (192, 384, 4), (384, 768, 2)))
    spp = conv_bn(768, 384, 1) + conv_bn(384 * 4, 768, 1)  # pools 5, 9, 13 concatenated with the input
    neck = (conv_bn(768, 384, 1) + conv_bn(384, 192, 1) + csp(768, 384, 2, False) + csp(384, 192, 2, False)
            + conv_bn(192, 192, 3) + conv_bn(384, 384, 3) + csp(384, 384, 2, False) + csp(768, 768, 2, False)
            + conv_bn(192, 192, 3) + conv_bn(384, 192, 3) + conv_bn(768, 192, 3))
    shared_convs = 2 * 2 * 192 * 192 * 9  # cls / reg x 2 stacked convs, counted once (shared by the levels)
    separate_bns = 2 * 2 * 3 * 2 * 192
    preds = 3 * ((192 * num_classes + num_classes) + (192 * 4 + 4))
    return {"backbone": stem + stages + spp, "neck": neck, "bbox_head": shared_convs + separate_bns + preds}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared parameters once


@pytest.fixture(scope="module")
def model() -> RTMDet:
    return rtmdet_m(seed=0)


def test_state_dict_keys_are_the_official_ones(model):
    keys = set(model.state_dict())
    assert keys == official_keys()
    assert len(keys) == 692  # 57 + 43 + 12 ConvModules x 6 keys, 4 attention fc x 2, 3 x 2 pred convs x 2


def test_shapes_of_hand_checked_keys(model):
    sd = model.state_dict()
    assert tuple(sd["backbone.stem.0.conv.weight"].shape) == (24, 3, 3, 3)
    assert tuple(sd["backbone.stage1.1.blocks.0.conv2.depthwise_conv.conv.weight"].shape) == (48, 1, 5, 5)
    assert tuple(sd["backbone.stage4.1.conv2.conv.weight"].shape) == (768, 1536, 1, 1)
    assert tuple(sd["backbone.stage4.2.attention.fc.weight"].shape) == (768, 768, 1, 1)
    assert tuple(sd["neck.top_down_blocks.0.main_conv.conv.weight"].shape) == (192, 768, 1, 1)
    assert tuple(sd["neck.bottom_up_blocks.1.final_conv.conv.weight"].shape) == (768, 768, 1, 1)
    assert tuple(sd["neck.out_convs.2.conv.weight"].shape) == (192, 768, 3, 3)
    assert tuple(sd["bbox_head.rtm_cls.0.weight"].shape) == (1, 192, 1, 1)
    assert tuple(sd["bbox_head.rtm_reg.2.weight"].shape) == (4, 192, 1, 1)


def test_parameter_count_per_module(model):
    expected = expected_parameters(num_classes=1)
    got = {name: count(getattr(model, name)) for name in expected}
    assert got == expected
    assert count(model) == sum(expected.values()) == 24_663_447


def test_80_class_variant_matches_the_published_size():
    # mmdetection's model zoo lists RTMDet-m (80 COCO classes) at 24.71 M parameters
    with torch.device("meta"):
        m80 = RTMDet(RTMDetConfig(num_classes=80))
    assert count(m80) == sum(expected_parameters(80).values())
    assert abs(count(m80) / 1e6 - 24.71) < 0.005


def test_head_convs_are_shared_and_bns_separate(model):
    head = model.bbox_head
    for branch in (head.cls_convs, head.reg_convs):
        for i in range(2):
            assert branch[1][i].conv.weight is branch[0][i].conv.weight
            assert branch[2][i].conv.weight is branch[0][i].conv.weight
            assert branch[1][i].bn is not branch[0][i].bn


def test_batchnorm_settings_follow_the_config(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 57 + 43 + 12
    assert {m.eps for m in bns} == {1e-5}  # SyncBN without eps -> mmcv's default 1e-5


def test_output_shapes_at_640(model):
    with torch.no_grad():
        cls_scores, bbox_preds = model(torch.randn(2, 3, 640, 640))
    assert [tuple(c.shape) for c in cls_scores] == [(2, 1, 80, 80), (2, 1, 40, 40), (2, 1, 20, 20)]
    assert [tuple(b.shape) for b in bbox_preds] == [(2, 4, 80, 80), (2, 4, 40, 40), (2, 4, 20, 20)]


def test_regression_is_scaled_by_the_stride_and_exp_only_when_configured():
    for exp in (False, True):
        torch.manual_seed(0)
        m = RTMDet(RTMDetConfig(exp_on_reg=exp)).eval()
        with torch.no_grad():
            for conv in m.bbox_head.rtm_reg:
                conv.weight.zero_()
                conv.bias.fill_(0.5)
            _, bbox_preds = m(torch.randn(1, 3, 64, 64))
        for pred, stride in zip(bbox_preds, (8, 16, 32), strict=True):
            value = torch.exp(torch.tensor(0.5)).item() if exp else 0.5
            torch.testing.assert_close(pred, torch.full_like(pred, value * stride))
