"""Normal, pointmap and albedo post-processing (spec 2.3-2.5 and section 3)."""

import json

import numpy as np
import pytest

from sapiens2_edge.errors import InvalidTensorError
from sapiens2_edge.tasks import AlbedoResult, NormalResult, PointmapResult, get_pipeline
from sapiens2_edge.tasks.dense import divide_by_scale, normalize_normals

from .test_tasks_seg import bilinear_reference


def _run(task, image_shape, outputs, input_size=(128, 96)):
    pipe = get_pipeline(task, input_size)
    batch, meta = pipe.preprocess(np.zeros(image_shape, np.uint8))
    assert batch.shape == (1, 3, *input_size)
    return pipe.postprocess(outputs, meta), meta


def _gauss_blur_reference(x, passes=4, sigma=0.8):
    """3 x 3 Gaussian (weights from the formula), reflect-101 borders, ``passes`` times."""
    k = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma**2))
    k /= k.sum()
    x = x.astype(np.float64)
    for _ in range(passes):
        for axis in (0, 1):
            p = np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)], mode="reflect")
            n = x.shape[axis]
            x = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(3))
    return x


# -- normal ----------------------------------------------------------------------------------
def test_normals_become_unit_vectors_and_zero_stays_zero():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(1, 3, 128, 96)).astype(np.float32) * 7
    raw[0, :, 10, 20] = 0  # a zero vector: the 1e-8 clamp keeps it at zero, no NaN
    raw[0, :, 11, 20] = (1e-9, 0, 0)  # below the clamp: divided by 1e-8, not normalised
    res, _ = _run("normal", (128, 96, 3), (raw,))  # scale 1, no padding: pixel grid unchanged
    assert isinstance(res, NormalResult) and res.normal.shape == (128, 96, 3) and res.normal.dtype == np.float32
    norms = np.linalg.norm(res.normal, axis=-1)
    mask = np.ones_like(norms, bool)
    mask[10:12, 20] = False
    np.testing.assert_allclose(norms[mask], 1.0, atol=1e-6)
    np.testing.assert_array_equal(res.normal[10, 20], 0)
    np.testing.assert_allclose(res.normal[11, 20], (0.1, 0, 0), rtol=1e-5)
    # direction preserved
    v = raw[0, :, 5, 5]
    np.testing.assert_allclose(res.normal[5, 5], v / np.linalg.norm(v), rtol=1e-5)


def test_normal_crop_and_resize_without_renormalisation():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(1, 3, 128, 96)).astype(np.float32)
    res, meta = _run("normal", (200, 100, 3), (raw,))  # scale 0.64 -> 128 x 64 region, pad 16 + 16
    lb = meta["letterbox"]
    assert (lb.left, lb.right, lb.top, lb.bottom) == (16, 16, 0, 0)
    unit = raw[0] / np.linalg.norm(raw[0], axis=0, keepdims=True)
    expected = bilinear_reference(unit.transpose(1, 2, 0)[:, 16:80], (200, 100))
    np.testing.assert_allclose(res.normal, expected, atol=1e-5)
    assert np.linalg.norm(res.normal, axis=-1).min() < 0.99  # bilinear blends are not re-normalised


def test_normalize_normals_batched():
    x = np.zeros((2, 3, 2, 2), np.float32)
    x[0, 2] = 5
    x[1, 0] = -0.5
    y = normalize_normals(x)
    np.testing.assert_allclose(y[0, 2], 1)
    np.testing.assert_allclose(y[1, 0], -1)


# -- pointmap ------------------------------------------------------------------------------------
def test_divide_by_scale_per_sample():
    pm = np.ones((2, 3, 4, 4), np.float32)
    pm[1] *= 3
    out = divide_by_scale(pm, np.array([[2.0], [0.5]], np.float32))
    np.testing.assert_allclose(out[0], 0.5)
    np.testing.assert_allclose(out[1], 6.0)
    with pytest.raises(InvalidTensorError, match="scale is 0"):
        divide_by_scale(pm, np.array([[1.0], [0.0]]))
    with pytest.raises(InvalidTensorError, match=r"shape \(B, 1\)"):
        divide_by_scale(pm, np.ones((2, 2)))


def test_pointmap_batch_of_two_with_different_scales():
    # two images through one infer call: each sample must be divided by its own scale
    pipe = get_pipeline("pointmap", (128, 96))
    imgs = [np.zeros((64, 48, 3), np.uint8), np.zeros((128, 96, 3), np.uint8)]
    calls = []

    def infer(batch):
        calls.append(len(batch))
        pm = np.ones((len(batch), 3, 128, 96), np.float32)
        pm[:, 2] = 10.0
        return pm, np.array([[2.0], [5.0]], np.float32)[: len(batch)]

    r0, r1 = pipe(imgs, infer, batch_size=2)
    assert calls == [2]
    assert isinstance(r0, PointmapResult) and r0.points.shape == (64, 48, 3) and r1.points.shape == (128, 96, 3)
    np.testing.assert_allclose(r0.depth, 5.0, rtol=1e-6)
    np.testing.assert_allclose(r1.depth, 2.0, rtol=1e-6)
    np.testing.assert_allclose(r1.points[..., 0], 0.2, rtol=1e-6)
    assert (r0.scale, r1.scale) == (2.0, 5.0)
    # focal length: input width / s / letterbox factor (64 x 48 -> factor 2; 128 x 96 -> 1)
    assert r0.focal_length == pytest.approx(96 / 2.0 / 2.0)
    assert r1.focal_length == pytest.approx(96 / 5.0)


def test_pointmap_upsampling_blurs_before_resize():
    rng = np.random.default_rng(2)
    pm = rng.normal(size=(1, 3, 128, 96)).astype(np.float32)
    res, meta = _run("pointmap", (300, 150, 3), (pm, np.array([[4.0]], np.float32)))
    lb = meta["letterbox"]
    region = (pm[0] / 4.0).transpose(1, 2, 0)[lb.top:128 - lb.bottom, lb.left:96 - lb.right]
    assert region.shape[:2] == lb.new_size == (128, 64)
    expected = bilinear_reference(_gauss_blur_reference(region), (300, 150))
    np.testing.assert_allclose(res.points, expected, atol=1e-5)
    unblurred = bilinear_reference(region, (300, 150))
    assert np.abs(res.points - unblurred).max() > 0.1  # the blur really happened


def test_pointmap_downsampling_does_not_blur():
    rng = np.random.default_rng(3)
    pm = rng.normal(size=(1, 3, 128, 96)).astype(np.float32)
    res, meta = _run("pointmap", (50, 30, 3), (pm, np.array([[-2.0]], np.float32)))  # negative s is allowed
    lb = meta["letterbox"]
    region = (pm[0] / -2.0).transpose(1, 2, 0)[lb.top:128 - lb.bottom, lb.left:96 - lb.right]
    np.testing.assert_allclose(res.points, bilinear_reference(region, (50, 30)), atol=1e-5)
    assert res.focal_length == pytest.approx(96 / -2.0 / lb.scale)


def test_pointmap_output_checks():
    pipe = get_pipeline("pointmap", (128, 96))
    _, meta = pipe.preprocess(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(InvalidTensorError, match="expects 2 raw output"):
        pipe.postprocess((np.zeros((1, 3, 128, 96), np.float32),), meta)
    with pytest.raises(InvalidTensorError, match=r"expected \(1, 3, 128, 96\)"):
        pipe.postprocess((np.zeros((1, 3, 64, 48), np.float32), np.ones((1, 1), np.float32)), meta)
    with pytest.raises(InvalidTensorError, match="scale is 0"):
        pipe.postprocess((np.zeros((1, 3, 128, 96), np.float32), np.zeros((1, 1), np.float32)), meta)


# -- albedo --------------------------------------------------------------------------------------
def test_albedo_clamps_then_resizes():
    rng = np.random.default_rng(4)
    raw = rng.uniform(-1, 2, size=(1, 3, 128, 96)).astype(np.float32)
    res, _ = _run("albedo", (128, 96, 3), (raw,))
    assert isinstance(res, AlbedoResult)
    np.testing.assert_array_equal(res.albedo, np.clip(raw[0], 0, 1).transpose(1, 2, 0))
    res2, meta = _run("albedo", (77, 200, 3), (raw,))
    lb = meta["letterbox"]
    region = np.clip(raw[0], 0, 1).transpose(1, 2, 0)[lb.top:128 - lb.bottom, lb.left:96 - lb.right]
    np.testing.assert_allclose(res2.albedo, bilinear_reference(region, (77, 200)), atol=1e-6)
    assert res2.albedo.min() >= 0 and res2.albedo.max() <= 1


# -- summaries -----------------------------------------------------------------------------------
def test_dense_json_summaries_are_small():
    rng = np.random.default_rng(5)
    res, _ = _run("pointmap", (400, 300, 3), (rng.normal(size=(1, 3, 128, 96)).astype(np.float32), np.ones((1, 1), np.float32)))
    text = res.to_json()
    assert len(text) < 2000
    d = json.loads(text)
    assert d["shape"] == [400, 300, 3] and d["scale"] == 1.0 and len(d["stats"]["mean"]) == 3
    assert set(res.arrays()) == {"points", "depth"}
    np.testing.assert_array_equal(res.arrays()["depth"], res.points[..., 2])
