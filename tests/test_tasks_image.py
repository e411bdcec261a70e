"""load_image: accepted inputs, conversion policy and every error a user can hit."""

import cv2
import numpy as np
import pytest
from PIL import Image

from sapiens2_edge.errors import InvalidImageError
from sapiens2_edge.tasks import MAX_PIXELS, MAX_SIDE, load_image


def _rgb(h=7, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_array_passes_through_unchanged():
    img = _rgb()
    out = load_image(img)
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)


def test_non_contiguous_view_becomes_contiguous():
    img = _rgb(8, 9)
    view = img[:, ::-2]
    out = load_image(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 1)])
def test_grayscale_is_replicated_to_rgb(shape):
    gray = np.arange(24, dtype=np.uint8).reshape(shape)
    out = load_image(gray)
    assert out.shape == (6, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray.reshape(6, 4))


def test_rgba_drops_alpha():
    rgba = np.random.default_rng(1).integers(0, 256, size=(4, 3, 4), dtype=np.uint8)
    out = load_image(rgba)
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_five_channels_rejected():
    with pytest.raises(InvalidImageError, match="5 channels"):
        load_image(np.zeros((4, 4, 5), np.uint8))


def test_wrong_rank_rejected():
    with pytest.raises(InvalidImageError, match=r"shape \(2, 4, 4, 3\)"):
        load_image(np.zeros((2, 4, 4, 3), np.uint8))


def test_float_dtype_rejected_with_conversion_hint():
    with pytest.raises(InvalidImageError, match=r"expected a uint8 RGB image.*got dtype float32.*astype\(np.uint8\)") as e:
        load_image(np.zeros((4, 4, 3), np.float32))
    assert "NaN" not in str(e.value)


def test_float_with_nan_mentions_nan():
    a = np.zeros((4, 4, 3), np.float64)
    a[1, 1, 1] = np.nan
    with pytest.raises(InvalidImageError, match="NaN"):
        load_image(a)


def test_uint16_rejected():
    with pytest.raises(InvalidImageError, match="uint16"):
        load_image(np.zeros((4, 4, 3), np.uint16))


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (0, 0)])
def test_empty_rejected(shape):
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(np.zeros(shape, np.uint8))


def test_side_over_limit_rejected():
    with pytest.raises(InvalidImageError, match=str(MAX_SIDE)):
        load_image(np.zeros((1, MAX_SIDE + 1, 3), np.uint8))


def test_pixel_count_over_limit_rejected():
    # a broadcast view: 20000 x 20000 pixels without allocating them
    big = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))
    assert 20000 < MAX_SIDE and 20000 * 20000 > MAX_PIXELS
    with pytest.raises(InvalidImageError, match=f"too large.*{MAX_PIXELS}"):
        load_image(big)


@pytest.mark.parametrize("bad", [[[1, 2, 3]], None, 3.5, b"\x89PNG"])
def test_non_image_types_rejected(bad):
    with pytest.raises(InvalidImageError, match="expected an image as a file path, a PIL image or a numpy"):
        load_image(bad)


def test_reads_file_as_rgb(tmp_path):
    img = _rgb(9, 11)
    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(load_image(path), img)
    np.testing.assert_array_equal(load_image(str(path)), img)


def test_reads_non_ascii_path(tmp_path):
    img = _rgb(3, 4)
    path = tmp_path / "bild_äöü.png"
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    buf.tofile(str(path))
    np.testing.assert_array_equal(load_image(path), img)


def test_grayscale_file_becomes_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "g.png"
    cv2.imwrite(str(path), gray)
    out = load_image(path)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[:, :, 2], gray)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(InvalidImageError, match="not found.*nope.jpg"):
        load_image(path)


def test_undecodable_file_names_the_path(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not an image")
    with pytest.raises(InvalidImageError, match="cannot decode.*broken.png"):
        load_image(str(path))


def test_directory_rejected(tmp_path):
    with pytest.raises(InvalidImageError, match="not a file"):
        load_image(tmp_path)


def test_pil_images_converted_to_rgb():
    img = _rgb(5, 6)
    np.testing.assert_array_equal(load_image(Image.fromarray(img)), img)
    gray = Image.fromarray(img[:, :, 0])
    assert load_image(gray).shape == (5, 6, 3)
    rgba = Image.fromarray(np.dstack([img, np.full((5, 6), 7, np.uint8)]), "RGBA")
    np.testing.assert_array_equal(load_image(rgba), img)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        load_image(np.zeros((3, 3, 2), np.uint8))
