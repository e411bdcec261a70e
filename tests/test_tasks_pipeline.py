"""get_pipeline, the end-to-end call, and the result types' arrays / JSON / drawing."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from sapiens2_edge.errors import ConfigError, InvalidImageError, InvalidTensorError
from sapiens2_edge.tasks import (
    TASKS,
    AlbedoResult,
    NormalResult,
    PointmapResult,
    PoseResult,
    SegResult,
    get_pipeline,
)

H, W = 128, 96


def fake_infer(task):
    """Deterministic raw outputs of the right shapes for ``task`` at 128 x 96."""

    def infer(batch):
        b = len(batch)
        rng = np.random.default_rng(b)
        if task == "pose":
            hm = np.zeros((b, 308, H // 4, W // 4), np.float32)
            hm[:, :, 10:14, 8:12] = rng.uniform(0.5, 1, (b, 308, 1, 1))
            return (hm,)
        if task == "seg":
            return (rng.normal(size=(b, 29, H, W)).astype(np.float32),)
        dense = rng.normal(size=(b, 3, H, W)).astype(np.float32)
        if task == "pointmap":
            dense[:, 2] = np.abs(dense[:, 2]) + 1
            return dense, np.full((b, 1), 1.5, np.float32)
        return (dense,)

    return infer


RESULT_TYPES = {"pose": PoseResult, "seg": SegResult, "normal": NormalResult, "pointmap": PointmapResult,
                "albedo": AlbedoResult}


def test_tasks_tuple():
    assert TASKS == ("pose", "seg", "normal", "pointmap", "albedo")


def test_get_pipeline_attributes_and_defaults():
    for task in TASKS:
        p = get_pipeline(task)
        assert p.task == task and p.input_size == (1024, 768)
    assert get_pipeline("seg", input_size=[256, 192]).input_size == (256, 192)
    assert get_pipeline("pose").flip_test is True


def test_get_pipeline_errors():
    with pytest.raises(ConfigError, match="unknown task 'depth'; expected one of pose, seg, normal, pointmap, albedo"):
        get_pipeline("depth")
    with pytest.raises(ConfigError, match=r"input_size must be two integers \(H, W\)"):
        get_pipeline("seg", input_size=(1024,))
    with pytest.raises(ConfigError, match="input_size must be two integers"):
        get_pipeline("seg", input_size=(1024.0, 768))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['flip_test'\] for task 'seg'; accepted options: none"):
        get_pipeline("seg", flip_test=True)
    with pytest.raises(ConfigError, match="accepted options: bbox_padding, blur_kernel_size, flip_test"):
        get_pipeline("pose", flip=True)


@pytest.mark.parametrize("task", TASKS)
def test_end_to_end_every_task(task, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    pipe = get_pipeline(task, (H, W))
    results = pipe([img, path, Image.fromarray(img)], fake_infer(task))
    assert len(results) == 3
    for r in results:
        assert isinstance(r, RESULT_TYPES[task])
        assert tuple(r.image_size) == (70, 50)
        # arrays: numpy, at the original size
        arrays = r.arrays()
        assert arrays and all(isinstance(a, np.ndarray) for a in arrays.values())
        # json
        d = json.loads(r.to_json())
        assert d["task"] == task and d["image_size"] == [70, 50]
        assert d == json.loads(json.dumps(r.to_dict()))
        # drawing: RGB uint8 of the image's shape
        for src in (img, path):
            vis = r.draw(src)
            assert vis.dtype == np.uint8 and vis.shape == img.shape
    # the path and the PIL image give the same result as the array
    for name, a in results[0].arrays().items():
        np.testing.assert_array_equal(a, results[1].arrays()[name])
        np.testing.assert_array_equal(a, results[2].arrays()[name])


@pytest.mark.parametrize("task", TASKS)
def test_batch_size_groups_images_without_changing_results(task):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (40 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8) for i in range(5)]
    calls = []

    def infer(batch):
        calls.append(len(batch))
        outs = fake_infer(task)(batch[:1])
        return tuple(np.repeat(o, len(batch), axis=0) for o in outs)  # same output per sample

    one = get_pipeline(task, (H, W))(imgs, infer)
    n_per_image = 2 if task == "pose" else 1  # pose: crop + flipped crop
    assert calls == [n_per_image] * 5
    calls.clear()
    grouped = get_pipeline(task, (H, W))(imgs, infer, batch_size=2 * n_per_image)
    assert calls == [2 * n_per_image, 2 * n_per_image, n_per_image]
    for a, b in zip(one, grouped, strict=True):
        for name in a.arrays():
            np.testing.assert_array_equal(a.arrays()[name], b.arrays()[name])


def test_batch_size_splits_a_large_image():
    calls = []

    def infer(batch):
        calls.append(len(batch))
        return fake_infer("pose")(batch)

    img = np.zeros((100, 100, 3), np.uint8)
    boxes = [[0, 0, 50, 50], [10, 10, 60, 90], [40, 40, 99, 99]]
    (res,) = get_pipeline("pose", (H, W))([img], infer, boxes=[boxes], batch_size=4)
    assert calls == [4, 2] and res.keypoints.shape == (3, 308, 2)


def test_single_image_and_4d_array_inputs():
    img = np.zeros((20, 30, 3), np.uint8)
    pipe = get_pipeline("seg", (H, W))
    assert len(pipe(img, fake_infer("seg"))) == 1
    assert len(pipe(np.stack([img, img, img]), fake_infer("seg"))) == 3


def test_infer_with_wrong_batch_dimension():
    pipe = get_pipeline("seg", (H, W))
    with pytest.raises(InvalidTensorError, match="leading batch dimension of 1"):
        pipe([np.zeros((20, 30, 3), np.uint8)], lambda b: (np.zeros((3, 29, H, W), np.float32),))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        pipe([np.zeros((20, 30, 3), np.uint8)], fake_infer("seg"), batch_size=0)


def test_bad_image_in_a_list_is_reported():
    pipe = get_pipeline("normal", (H, W))
    with pytest.raises(InvalidImageError, match="got dtype float32"):
        pipe([np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.float32)], fake_infer("normal"))


def test_draw_refuses_a_different_image_size():
    r = SegResult(np.zeros((10, 12), np.uint8))
    with pytest.raises(InvalidImageError, match=r"image is 11 x 12 \(H x W\) but the result is for a 10 x 12 image"):
        r.draw(np.zeros((11, 12, 3), np.uint8))


def test_pose_draw_marks_confident_keypoints_only():
    img = np.zeros((200, 200, 3), np.uint8)
    kps = np.full((1, 308, 2), -1000, np.float32)
    scores = np.zeros((1, 308), np.float32)
    kps[0, 0] = (50, 60)
    scores[0, 0] = 0.9  # nose: drawn
    kps[0, 5] = (150, 160)
    scores[0, 5] = 0.2  # left shoulder: below 0.3, not drawn
    r = PoseResult(np.array([[10, 10, 190, 190]], np.float32), kps, scores, (200, 200))
    vis = r.draw(img)
    assert vis[60, 50].any() and not vis[160, 150].any()
    assert vis[10, 100].any()  # the box's top edge
    assert not r.draw(img, kpt_thr=0.95)[60, 50].any()
    k17, s17 = r.to_coco17()
    assert k17.shape == (1, 17, 2) and s17[0, 0] == pytest.approx(0.9)


def test_seg_draw_blends_palette():
    labels = np.zeros((4, 4), np.uint8)
    labels[:2] = 15  # Right_Hand (255, 0, 0)
    img = np.full((4, 4, 3), 100, np.uint8)
    vis = SegResult(labels).draw(img, alpha=0.5)
    np.testing.assert_allclose(vis[0, 0], [178, 50, 50], atol=1)
    np.testing.assert_allclose(vis[3, 3], [75, 75, 75], atol=1)
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        SegResult(labels).draw(img, alpha=2.0)


def test_dense_draw_values():
    n = np.zeros((2, 2, 3), np.float32)
    n[0, 0] = (1, -1, 0)
    vis = NormalResult(n).draw(np.zeros((2, 2, 3), np.uint8))
    np.testing.assert_array_equal(vis[0, 0], [255, 0, 127])
    a = np.array([[[0, 0.5, 1.0]]], np.float32)
    np.testing.assert_array_equal(AlbedoResult(a).draw(np.zeros((1, 1, 3), np.uint8))[0, 0], [0, 128, 255])
    pts = np.zeros((2, 3, 3), np.float32)
    pts[..., 2] = [[1, 2, 4], [8, -1, np.inf]]
    depth_vis = PointmapResult(pts, 1.0, 100.0).draw(np.zeros((2, 3, 3), np.uint8))
    assert (depth_vis[1, 1] == 0).all() and (depth_vis[1, 2] == 0).all()  # invalid depth is black
    assert depth_vis[0, 0].sum() > depth_vis[1, 0].sum()  # near is brighter than far (inferno)


def test_tasks_import_without_torch():
    import subprocess
    import sys

    code = "import sys, sapiens2_edge.tasks; assert 'torch' not in sys.modules, 'tasks imported torch'"
    from pathlib import Path

    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
