"""Segmentation: stretch pre-processing, bilinear (align_corners=False) logit resize, argmax."""

import json

import numpy as np
import pytest

from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.tasks import MEAN, SEG_CLASSES, STD, SegResult, get_pipeline
from sapiens2_edge.tasks.seg import logits_to_labels, resize_bilinear


def bilinear_reference(x, size):
    """torch.nn.functional.interpolate(mode='bilinear', align_corners=False), in numpy (float64)."""
    h, w = size
    H, W = x.shape[:2]

    def axis(out, inp):
        src = np.maximum((np.arange(out) + 0.5) * (inp / out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), inp - 1)
        i1 = np.minimum(i0 + 1, inp - 1)
        return i0, i1, src - i0

    y0, y1, ly = axis(h, H)
    x0, x1, lx = axis(w, W)
    x = x.astype(np.float64).reshape(H, W, -1)
    rows = x[y0] * (1 - ly)[:, None, None] + x[y1] * ly[:, None, None]
    out = rows[:, x0] * (1 - lx)[None, :, None] + rows[:, x1] * lx[None, :, None]
    return out


@pytest.mark.parametrize("src,dst", [((32, 24), (97, 61)), ((128, 96), (61, 97)), ((128, 96), (64, 48)),
                                     ((128, 96), (300, 7)), ((10, 10), (3, 3)), ((16, 12), (1, 1))])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_bilinear_matches_align_corners_false(src, dst, channels):
    x = np.random.default_rng(0).normal(size=(*src, channels)).astype(np.float32)
    out = resize_bilinear(x, dst).reshape(*dst, channels)
    np.testing.assert_allclose(out, bilinear_reference(x, dst), atol=1e-6)


def test_half_and_half_logits_split_at_the_middle():
    # class 4 on the left half, class 9 on the right half of a 128 x 96 logit map
    logits = np.zeros((1, 29, 128, 96), np.float32)
    logits[0, 4, :, :48] = 1
    logits[0, 9, :, 48:] = 1
    pipe = get_pipeline("seg", (128, 96))
    for h0, w0 in [(50, 40), (300, 222), (7, 10)]:  # even widths: no exact ties
        _, meta = pipe.preprocess(np.zeros((h0, w0, 3), np.uint8))
        res = pipe.postprocess((logits,), meta)
        assert res.labels.shape == (h0, w0) and res.labels.dtype == np.uint8
        # independent rule: output column X samples source x = (X + .5) * 96 / w0 - .5; the
        # interpolated weight of the right half exceeds 1/2 exactly when X + .5 > w0 / 2
        expected = np.where(np.arange(w0) >= w0 // 2, 9, 4)
        np.testing.assert_array_equal(res.labels, np.tile(expected, (h0, 1)))


def test_block_logits_upscaled_and_downscaled():
    # 4 x 3 blocks of classes, each 32 x 32 network pixels; an integer-ratio resize keeps block
    # centres; check the label at each block centre of the original image
    classes = np.arange(12).reshape(4, 3) + 5
    logits = np.full((1, 29, 128, 96), -1.0, np.float32)
    for by in range(4):
        for bx in range(3):
            logits[0, classes[by, bx], by * 32:(by + 1) * 32, bx * 32:(bx + 1) * 32] = 2.0
    pipe = get_pipeline("seg", (128, 96))
    for h0, w0 in [(64, 48), (512, 384), (130, 99)]:
        _, meta = pipe.preprocess(np.zeros((h0, w0, 3), np.uint8))
        labels = pipe.postprocess((logits,), meta).labels
        for by in range(4):
            for bx in range(3):
                y, x = int((by + 0.5) * h0 / 4), int((bx + 0.5) * w0 / 3)
                assert labels[y, x] == classes[by, bx]


@pytest.mark.parametrize("classes", [29, 30])
@pytest.mark.parametrize("size", [(77, 51), (200, 150), (128, 96)])
def test_labels_equal_argmax_of_reference_resize(size, classes):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(classes, 32, 24)).astype(np.float32)
    labels = logits_to_labels(logits, size)
    ref = bilinear_reference(logits.transpose(1, 2, 0), size)
    ref_labels = ref.argmax(-1)
    differ = labels != ref_labels
    if differ.any():  # only acceptable at numerical near-ties
        top2 = np.sort(ref, axis=-1)[..., -2:]
        assert (top2[..., 1] - top2[..., 0])[differ].max() < 1e-5


def test_ties_go_to_the_lower_class():
    logits = np.zeros((29, 4, 4), np.float32)
    logits[[3, 7, 20]] = 1.0
    assert (logits_to_labels(logits, (6, 6)) == 3).all()


def test_preprocess_constant_image():
    pipe = get_pipeline("seg", (128, 96))
    for shape in [(40, 30, 3), (400, 300, 3)]:  # INTER_CUBIC and INTER_AREA
        batch, meta = pipe.preprocess(np.full(shape, (10, 100, 200), np.uint8))
        assert batch.shape == (1, 3, 128, 96) and batch.dtype == np.float32
        np.testing.assert_allclose(batch[0, :, 60, 40], (np.array([10, 100, 200]) - MEAN) / STD, rtol=1e-6)
        assert np.ptp(batch[0], axis=(1, 2)).max() == 0
        assert meta["image_size"] == shape[:2]


def test_seg_result_helpers():
    labels = np.array([[0, 0, 15], [22, 15, 0]], np.uint8)
    r = SegResult(labels)
    assert r.class_names == SEG_CLASSES and r.image_size == (2, 3)
    np.testing.assert_array_equal(r.foreground, labels > 0)
    np.testing.assert_array_equal(r.mask("Right_Hand", 22), np.isin(labels, [15, 22]))
    d = json.loads(r.to_json())
    assert d["class_pixel_counts"] == {"Background": 3, "Right_Hand": 2, "Torso": 1}
    assert d["foreground_fraction"] == pytest.approx(0.5)
    assert set(r.arrays()) == {"labels"}


def test_seg_errors():
    pipe = get_pipeline("seg", (128, 96))
    batch, meta = pipe.preprocess(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ConfigError, match="boxes are only used by the pose task"):
        pipe.preprocess(np.zeros((10, 10, 3), np.uint8), boxes=[[0, 0, 5, 5]])
    with pytest.raises(InvalidTensorError, match="at most 256 classes"):
        pipe.postprocess((np.zeros((1, 29, 128), np.float32),), meta)
    with pytest.raises(InvalidTensorError, match="leading batch dimension of 1"):
        pipe.postprocess((np.zeros((2, 29, 128, 96), np.float32),), meta)
