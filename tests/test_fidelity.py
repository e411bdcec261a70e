"""Fidelity metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from sapiens2_edge.quantization.fidelity import output_error, task_fidelity


def test_output_error_hand_computed():
    ref = (np.array([3.0, 4.0]),)
    test = (np.array([3.0, 3.0]),)
    e = output_error(ref, test)
    assert e["sqnr_db"] == pytest.approx(10 * np.log10(25 / 1))
    assert e["rel_l2"] == pytest.approx(1 / 5)
    assert e["cosine"] == pytest.approx((9 + 12) / (5 * np.sqrt(18)))
    assert output_error(ref, ref)["sqnr_db"] == float("inf")


def test_seg_agreement_and_miou():
    a = np.zeros((1, 3, 2, 2), np.float32)
    a[0, 0] = 1  # all class 0
    b = a.copy()
    b[0, 0, 0, 0], b[0, 2, 0, 0] = 0, 2  # one pixel becomes class 2
    f = task_fidelity("seg", (a,), (b,), (2, 2))
    assert f["seg_agreement"] == 0.75
    assert f["seg_miou"] == pytest.approx((3 / 4 + 0 / 1) / 2)  # class 0: 3/4, class 2: 0/1


def _gaussian(h, w, x, y, sigma=2.0):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_pose_displacement_in_input_pixels():
    h, w = 32, 24  # heatmaps of a 128x96 input: 1 heatmap px = 96/23 input px in x, 128/31 in y
    ref = np.stack([_gaussian(h, w, 10, 12), _gaussian(h, w, 5, 20)])[None]
    test = np.stack([_gaussian(h, w, 11, 12), _gaussian(h, w, 5, 20)])[None]
    f = task_fidelity("pose", (ref,), (test,), (128, 96))
    assert f["pose_keypoints"] == 2
    assert f["pose_mean_px"] == pytest.approx((96 / 23) / 2, abs=1e-2)
    assert f["pose_max_px"] == pytest.approx(96 / 23, abs=1e-2)
    assert f["pose_pck_1px"] == 0.5


def test_normal_angle_and_pointmap_and_albedo():
    n = np.zeros((1, 3, 1, 2), np.float32)
    n[0, 2] = 1
    m = n.copy()
    m[0, 0, 0, 1] = 1  # second pixel tilted 45 degrees (unnormalised on purpose)
    f = task_fidelity("normal", (n,), (m * 3,), (1, 2))
    assert f["normal_mean_deg"] == pytest.approx(22.5)
    pm = np.ones((2, 3, 1, 1), np.float32)
    f = task_fidelity("pointmap", (pm, np.array([[1.0], [2.0]])), (pm, np.array([[1.0], [4.0]])), (1, 1))
    # metric points: sample 2 is 0.5 in the reference and 0.25 in the test
    assert f["pointmap_rel_l1"] == pytest.approx((0.25 * 3 / 6) / (4.5 / 6))
    assert f["scale_rel_err"] == pytest.approx((0 + 1.0) / 2)
    a = np.full((1, 3, 2, 2), 0.5, np.float32)
    assert task_fidelity("albedo", (a,), (a + 0.1,), (2, 2))["albedo_psnr_db"] == pytest.approx(20.0)
