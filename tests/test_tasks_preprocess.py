"""Normalisation, stretch resize and letterbox geometry (spec section 3, test 4e)."""

import math

import cv2
import numpy as np
import pytest

from sapiens2_edge.errors import InvalidImageError
from sapiens2_edge.tasks import MEAN, STD, get_pipeline
from sapiens2_edge.tasks.preprocess import Letterbox, denormalize, normalize, stretch_resize


def test_normalisation_constants_and_layout():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = (255, 0, 0)  # pure red at (0, 0)
    img[1, 2] = (10, 20, 30)
    x = normalize(img)
    assert x.shape == (3, 2, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    # channel 0 is R (RGB order), 0-255 scale, no /255
    assert x[0, 0, 0] == pytest.approx((255 - 123.675) / 58.395, rel=1e-6)
    assert x[1, 0, 0] == pytest.approx(-116.28 / 57.12, rel=1e-6)
    assert x[2, 0, 0] == pytest.approx(-103.53 / 57.375, rel=1e-6)
    assert x[:, 1, 2] == pytest.approx([(10 - 123.675) / 58.395, (20 - 116.28) / 57.12, (30 - 103.53) / 57.375], rel=1e-6)
    np.testing.assert_allclose(denormalize(x), img, atol=1e-4)


def test_config_records_the_constants():
    cfg = get_pipeline("seg", (128, 96)).config()
    assert cfg["mean"] == [123.675, 116.28, 103.53]
    assert cfg["std"] == [58.395, 57.12, 57.375]
    assert cfg["input_size"] == [128, 96] and cfg["channel_order"] == "RGB"


def test_stretch_picks_interpolation_by_width_only():
    rng = np.random.default_rng(0)
    tall_narrow = rng.integers(0, 256, (300, 50, 3), dtype=np.uint8)  # height shrinks, width grows
    np.testing.assert_array_equal(stretch_resize(tall_narrow, (128, 96)),
                                  cv2.resize(tall_narrow, (96, 128), interpolation=cv2.INTER_CUBIC))
    short_wide = rng.integers(0, 256, (40, 200, 3), dtype=np.uint8)  # height grows, width shrinks
    np.testing.assert_array_equal(stretch_resize(short_wide, (128, 96)),
                                  cv2.resize(short_wide, (96, 128), interpolation=cv2.INTER_AREA))


SIZES = [(97, 61), (61, 97), (100, 3), (3, 100), (128, 96), (1024, 768), (2001, 1499), (5, 5), (1, 1)]
INPUTS = [(128, 96), (1024, 768)]


@pytest.mark.parametrize("input_size", INPUTS)
@pytest.mark.parametrize("size", SIZES)
def test_letterbox_arithmetic(size, input_size):
    h0, w0 = size
    H, W = input_size
    lb = Letterbox.fit(size, input_size)
    # independent arithmetic
    s = min(W / w0, H / h0)
    nh, nw = math.floor(h0 * s), math.floor(w0 * s)
    assert lb.new_size == (nh, nw)
    assert lb.top + lb.bottom == H - nh and lb.left + lb.right == W - nw
    assert lb.top == (H - nh) // 2 and lb.left == (W - nw) // 2
    assert lb.bottom - lb.top in (0, 1) and lb.right - lb.left in (0, 1)

    img = np.random.default_rng(1).integers(1, 256, (h0, w0, 3), dtype=np.uint8)
    canvas = lb.apply(img)
    assert canvas.shape == (H, W, 3)
    region = lb.crop(canvas)
    assert region.shape == (nh, nw, 3)  # exactly the resized size
    assert (region > 0).all()  # the image is inside (all its pixels are >= 1)...
    mask = np.ones((H, W), bool)
    mask[lb.top:H - lb.bottom, lb.left:W - lb.right] = False
    assert (canvas[mask] == 0).all()  # ...and everything else is zero padding
    assert lb.invert(canvas).shape == (h0, w0, 3)


@pytest.mark.parametrize("size", [(64, 96), (61, 96), (128, 45), (128, 96), (33, 96)])
def test_unletterbox_identity_when_no_resize(size):
    # scale is exactly 1: the round trip must give back the original pixels bit for bit,
    # wherever the odd padding row/column goes
    lb = Letterbox.fit(size, (128, 96))
    assert lb.scale == 1.0
    img = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    back = lb.invert(lb.apply(img))
    np.testing.assert_array_equal(back, img)


@pytest.mark.parametrize("size", [(97, 61), (100, 3), (3, 100), (1500, 1000)])
@pytest.mark.parametrize("input_size", INPUTS)
def test_unletterbox_constant_image(size, input_size):
    # bilinear resizing keeps a constant exactly: the original grid and values come back
    lb = Letterbox.fit(size, input_size)
    img = np.full((*size, 3), (17, 130, 250), np.uint8)
    canvas = lb.apply(img).astype(np.float32)
    back = lb.invert(canvas)
    assert back.shape == (*size, 3)
    np.testing.assert_allclose(back, img.astype(np.float32), atol=1e-4)


def test_padding_is_zero_before_normalisation():
    pipe = get_pipeline("normal", (128, 96))
    batch, meta = pipe.preprocess(np.full((64, 96, 3), 200, np.uint8))
    lb = meta["letterbox"]
    assert (lb.top, lb.bottom) == (32, 32)
    pad_value = -MEAN / STD
    np.testing.assert_allclose(batch[0, :, 0, 0], pad_value, rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, -1, -1], pad_value, rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, 64, 50], (200 - MEAN) / STD, rtol=1e-6)


def test_too_elongated_image_rejected():
    with pytest.raises(InvalidImageError, match="too elongated"):
        Letterbox.fit((1, 10000), (128, 96))
