"""Hostile images and person boxes: typed errors with messages that say what was wrong, image
sizes checked from the file header before decoding, a box-count limit, crops run in chunks so
memory stays flat in the number of boxes."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from sapiens2_edge.errors import ConfigError, InvalidBoxError, InvalidImageError
from sapiens2_edge.runtime.predictor import Predictor
from sapiens2_edge.tasks import get_pipeline, load_image
from sapiens2_edge.tasks.image import header_size
from sapiens2_edge.tasks.pose import CROP_BATCH, MAX_BOXES, validate_boxes
from tests.fixtures.tiny import INPUT, tiny_model

ROOT = Path(__file__).resolve().parents[1]
H, W = INPUT


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb(path: Path) -> Path:
    """A 15 KB PNG declaring 17000 x 17000 RGB pixels (867 MB once decoded)."""
    row = b"\0" + b"\0" * (17000 * 3)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(300)) + comp.flush()
    path.write_bytes(_png(17000, 17000, idat))
    return path


# -- image files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".ppm"])
def test_header_size_agrees_with_the_decoder(ext):
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    fmt, size = header_size(buf.tobytes())
    assert fmt and size == cv2.imdecode(buf, cv2.IMREAD_COLOR).shape[:2] == (37, 53)


def test_progressive_jpeg_with_exif_segment_before_the_frame(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    b = buf.tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"Exif\0" + bytes(4995)
    path = tmp_path / "exif.jpg"
    path.write_bytes(b[:2] + app1 + b[2:])
    assert header_size(path.read_bytes()) == ("JPEG", (20, 30))
    assert load_image(path).shape == (20, 30, 3)


def test_png_bomb_refused_from_its_header(tmp_path):
    path = _bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 20_000
    with pytest.raises(InvalidImageError, match=r"image '.*bomb.png' \(PNG header\) is too large \(H x W = 17000 x "
                                                r"17000\); the limit is 32768 pixels per side and 268435456 pixels"):
        load_image(path)


def test_png_bomb_costs_no_memory(tmp_path):
    path = _bomb(tmp_path / "bomb.png")
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from sapiens2_edge.tasks.image import load_image
from sapiens2_edge.errors import InvalidImageError
def hwm():  # peak RSS of this process image (ru_maxrss would include the parent's, kept over exec)
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) / 1024
base = hwm()
try:
    load_image({str(path)!r})
except InvalidImageError as e:
    print("refused", e)
print("grew", hwm() - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "refused" in out and "too large" in out, out
    assert float(out.split("grew")[-1]) < 100, out


def test_jpeg_frame_header_declaring_a_huge_image(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    b = bytearray(buf.tobytes())
    sof = b.find(b"\xff\xc0")
    b[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    path = tmp_path / "big.jpg"
    path.write_bytes(bytes(b))
    with pytest.raises(InvalidImageError, match=r"\(JPEG header\) is too large \(H x W = 60000 x 60000\)"):
        load_image(path)


@pytest.mark.parametrize("data,pattern", [
    (b"v/1\x01" + bytes(100), r"not a format this SDK reads \(expected JPEG, PNG, BMP, GIF, WebP, TIFF, PNM"),
    (b"\x89PNG\r\n\x1a\n" + bytes(4), r"its PNG header is corrupt or truncated \(no image size found\)"),
    (b"\xff\xd8\xff\xe0\x00\x01", r"its JPEG header is corrupt or truncated"),
    (_png(0, 5, zlib.compress(b"")), r"is empty \(H x W = 5 x 0\)"),
])
def test_bad_image_headers(tmp_path, data, pattern):
    path = tmp_path / "x.img"
    path.write_bytes(data)
    with pytest.raises(InvalidImageError, match=pattern):
        load_image(path)


# -- boxes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("boxes,pattern", [
    ([[0.0, 0.0, 1e308, 1e308]], r"box 0 = \[0, 0, 1e\+308, 1e\+308\] has a coordinate beyond \+-1\.67772e\+07 "
                                 r"pixels; expected pixel coordinates of the 50 x 40 \(W x H\) image"),
    ([[-1e100, -1e100, 1e100, 1e100]], r"has a coordinate beyond"),
    ([[0, 0, 10**400, 10]], r"boxes must be numbers in an \(n, 4\) array of \[x1, y1, x2, y2\]; int too large"),
    ([[10, 10, 10 + 1e-9, 20]], r"is 1e-09 x 10 pixels; expected a width and height of at least 0\.001 pixels"),
])
def test_boxes_that_would_overflow_the_crop(boxes, pattern):
    with pytest.raises(InvalidBoxError, match=pattern):
        validate_boxes(boxes, (40, 50))


def _heatmaps(batch):
    hm = np.zeros((len(batch), 308, H // 4, W // 4), np.float32)
    hm[:, :, 10, 8] = 1.0
    return (hm,)


def test_box_count_limit_names_the_limit_and_how_to_raise_it():
    img = np.zeros((60, 80, 3), np.uint8)
    boxes = [[1, 1, 30, 40]] * (MAX_BOXES + 1)
    with pytest.raises(InvalidBoxError, match=r"got 101 boxes for one image; at most max_boxes=100 are accepted per "
                                              r"image. Raise the limit with Predictor\(\.\.\., max_boxes=N\)"):
        get_pipeline("pose", INPUT)([img], _heatmaps, boxes=[boxes])
    (res,) = get_pipeline("pose", INPUT, max_boxes=200, flip_test=False)([img], _heatmaps, boxes=[boxes])
    assert res.keypoints.shape == (101, 308, 2) and np.isfinite(res.keypoints).all()
    with pytest.raises(ConfigError, match="max_boxes must be a positive integer, got 0"):
        get_pipeline("pose", INPUT, max_boxes=0)


def test_predictor_max_boxes():
    pred = Predictor(tiny_model("pose"), backend="torch", input_size=INPUT, max_boxes=2)
    img = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(InvalidBoxError, match="got 3 boxes for one image; at most max_boxes=2"):
        pred(img, boxes=[[1, 1, 30, 40]] * 3)
    assert len(pred(img, boxes=[[1, 1, 30, 40]] * 2)) == 2


def test_crops_run_in_chunks_with_the_same_results():
    """20 boxes with the flip test: every network call holds at most CROP_BATCH crops, and the
    keypoints equal those of running each box on its own."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    x1 = rng.uniform(0, 60, 20)
    y1 = rng.uniform(0, 40, 20)
    boxes = np.stack([x1, y1, x1 + rng.uniform(10, 50, 20), y1 + rng.uniform(10, 40, 20)], 1)
    calls = []

    def net(batch):  # heatmaps that depend on the crop, so a mixed-up chunk would show
        calls.append(len(batch))
        hm = np.zeros((len(batch), 308, H // 4, W // 4), np.float32)
        for i, crop in enumerate(batch):
            hm[i, :, int(abs(crop[0].mean()) * 7) % (H // 4), int(abs(crop[1].mean()) * 5) % (W // 4)] = 1.0
        return (hm,)

    pipe = get_pipeline("pose", INPUT)
    (res,) = pipe([img], net, boxes=[boxes])
    assert max(calls) <= CROP_BATCH and sum(calls) == 40
    for i, box in enumerate(boxes):
        (one,) = pipe([img], net, boxes=[box[None]])
        np.testing.assert_array_equal(res.keypoints[i], one.keypoints[0])
        np.testing.assert_array_equal(res.scores[i], one.scores[0])
    np.testing.assert_array_equal(res.boxes, boxes.astype(np.float32))


def test_memory_stays_flat_in_the_number_of_boxes():
    img = np.zeros((200, 200, 3), np.uint8)
    pipe = get_pipeline("pose", INPUT)

    def peak(n: int) -> int:
        tracemalloc.start()
        (res,) = pipe([img], _heatmaps, boxes=[[[10, 10, 150, 180]] * n], batch_size=1 << 30)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert res.keypoints.shape == (n, 308, 2)
        return top

    small, large = peak(8), peak(64)
    assert large < 2 * small, f"peak traced memory: 8 boxes {small / 2**20:.1f} MB, 64 boxes {large / 2**20:.1f} MB"
