"""The C++ pre- and post-processing (sapiens2_edge._native.tasks) against sapiens2_edge.tasks.

Resampling is held against OpenCV itself (what the Python pipelines call), pipelines end to end
against the Python pipelines on the same random images and raw outputs.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sapiens2_edge._native import tasks as nt

from sapiens2_edge.errors import ConfigError, ImageNotFoundError, InvalidBoxError, InvalidImageError, InvalidTensorError
from sapiens2_edge.tasks import FLIP_INDICES, Letterbox, decode_heatmaps, get_pipeline
from sapiens2_edge.tasks.dense import normalize_normals
from sapiens2_edge.tasks.pose import box_to_center_size, crop_person, flip_heatmaps
from sapiens2_edge.tasks.preprocess import normalize
from sapiens2_edge.tasks.seg import logits_to_labels, resize_bilinear

INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
SIZES = [(37, 53, 100, 71), (100, 80, 37, 29), (64, 48, 32, 24), (33, 47, 33, 47), (20, 30, 60, 90),
         (120, 90, 50, 40), (50, 60, 70, 20), (7, 5, 3, 11), (1, 9, 4, 4)]


def _image(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def _close_u8(got: np.ndarray, ref: np.ndarray, max_frac: float) -> None:
    """At most one grey level apart everywhere and different on at most ``max_frac`` of the values."""
    assert got.shape == ref.shape and got.dtype == np.uint8
    d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    assert d.max() <= 1, d.max()
    assert (d > 0).mean() <= max_frac, (d > 0).mean()


# -- resampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("interp", list(INTERP))
def test_resize_u8_matches_opencv(size, interp):
    h, w, oh, ow = size
    rng = np.random.default_rng(h * 1000 + w)
    for c in (1, 3):
        img = _image(rng, h, w, c)
        ref = cv2.resize(img, (ow, oh), interpolation=INTERP[interp]).reshape(oh, ow, c)
        # Measured: area exact; linear and cubic <= 0.4 % of values one level off (ties that OpenCV's
        # vector loop and scalar tail round differently; up to a fifth of a tiny 4 x 4 output).
        frac = 0.0 if interp == "area" else (0.01 if oh * ow >= 100 else 1.0)
        _close_u8(nt.resize(img, oh, ow, interp), ref, frac)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_float_matches_opencv(size, channels):
    h, w, oh, ow = size
    x = np.random.default_rng(7).normal(size=(h, w, channels)).astype(np.float32)
    ref = resize_bilinear(x, (oh, ow)).reshape(oh, ow, channels)
    np.testing.assert_allclose(nt.resize_linear(x, oh, ow), ref, rtol=0, atol=1e-4)


def test_resize_hand_values():
    """2 x 2 -> 4 x 4 bilinear with half-pixel centres and edge clamping."""
    x = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)
    got = nt.resize_linear(x, 4, 4)[..., 0]
    row = np.array([0.0, 1.0, 3.0, 4.0])
    np.testing.assert_allclose(got, np.stack([row, row + 2, row + 6, row + 8]), atol=1e-6)


BOXES = [((100, 80), [10, 20, 60, 90]), ((300, 200), [5, 5, 190, 290]), ((30, 40), [2, 3, 20, 25]),
         ((50, 60), [-10, -5, 70, 40]), ((20, 20), [-3, -2, 15, 18]), ((9, 13), [0, 0, 12, 8])]


@pytest.mark.parametrize("image_size,box", BOXES)
def test_crop_person_matches_python(image_size, box):
    """The UDP crop (warpAffine, linear when shrinking, cubic when enlarging, zero border)."""
    rng = np.random.default_rng(sum(box) + 1000)
    img = _image(rng, *image_size)
    for H, W in ((64, 48), (96, 64)):
        c, s = box_to_center_size(np.array([box], float), W / H)
        ref = crop_person(img, c[0], s[0], (H, W))
        _close_u8(nt.crop_person(img, list(c[0]), list(s[0]), H, W), ref, 0.005)


def test_normalize_matches_python():
    img = _image(np.random.default_rng(3), 13, 17)
    np.testing.assert_allclose(nt.normalize(img), normalize(img), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ksize,sigma", [(3, 0.8), (3, 0.0), (5, 0.0), (11, 0.0), (7, 1.5)])
def test_gaussian_blur_matches_opencv(ksize, sigma):
    x = np.random.default_rng(ksize).normal(size=(19, 23, 3)).astype(np.float32)
    ref = cv2.GaussianBlur(x, (ksize, ksize), sigma)
    np.testing.assert_allclose(nt.gaussian_blur(x, ksize, sigma), ref, rtol=0, atol=1e-5)


# -- letterbox ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orig", [(37, 53), (100, 80), (64, 48), (5, 200), (200, 5), (1, 1)])
def test_letterbox_matches_python(orig):
    canvas = (64, 48)
    lb = Letterbox.fit(orig, canvas)
    d = nt.letterbox_fit(*orig, *canvas)
    assert d == {"scale": lb.scale, "new_size": lb.new_size, "top": lb.top, "bottom": lb.bottom, "left": lb.left,
                 "right": lb.right, "original_size": orig, "canvas_size": canvas}
    rng = np.random.default_rng(orig[0])
    img = _image(rng, *orig)
    _close_u8(nt.letterbox_apply(img, *canvas), lb.apply(img), 0.01)
    x = rng.normal(size=(*canvas, 3)).astype(np.float32)
    np.testing.assert_allclose(nt.letterbox_invert(x, *orig), lb.invert(x), rtol=0, atol=1e-4)


def test_letterbox_round_trip():
    """Letterboxing an image whose aspect matches and inverting the canvas gives the image back."""
    x = np.random.default_rng(5).normal(size=(64, 20, 3)).astype(np.float32)
    canvas = np.zeros((64, 48, 3), np.float32)
    lb = nt.letterbox_fit(64, 20, 64, 48)
    assert (lb["left"], lb["right"], lb["scale"]) == (14, 14, 1.0)
    canvas[:, 14:34] = x
    np.testing.assert_array_equal(nt.letterbox_invert(canvas, 64, 20), x)
    img = _image(np.random.default_rng(6), 64, 20)
    back = nt.letterbox_apply(img, 64, 48)
    np.testing.assert_array_equal(back[:, 14:34], img)
    assert not back[:, :14].any() and not back[:, 34:].any()


def test_letterbox_too_elongated():
    with pytest.raises(InvalidImageError, match="too elongated to letterbox into 64 x 48"):
        nt.letterbox_fit(1, 5000, 64, 48)


# -- heatmaps -------------------------------------------------------------------------------------------
def _heatmaps(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(-1, w, k), rng.uniform(-1, h, k)
    hm = np.exp(-((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2) / (2 * 2.0**2))
    hm = hm * rng.uniform(0.2, 1.5, (k, 1, 1)) + rng.normal(0, 0.01, (k, h, w))
    hm[: k // 8] = -np.abs(hm[: k // 8])  # channels without a positive peak
    return hm.astype(np.float32)


@pytest.mark.parametrize("shape", [(308, 16, 12), (17, 64, 48), (5, 2, 2), (9, 11, 7)])
@pytest.mark.parametrize("blur", [11, 3])
def test_decode_heatmaps_matches_python(shape, blur):
    k, h, w = shape
    hm = _heatmaps(np.random.default_rng(k + h), k, h, w)
    ref_k, ref_s = decode_heatmaps(hm, (4 * h, 4 * w), blur)
    got_k, got_s = nt.decode_heatmaps(hm, 4 * w, 4 * h, blur)
    np.testing.assert_array_equal(got_s, ref_s)
    np.testing.assert_allclose(got_k, ref_k, rtol=0, atol=1e-3)


def test_decode_heatmaps_known_subpixel_peak():
    """A Gaussian sampled around (x, y) = (5.3, 3.6) decodes to that point (DARK is exact for a Gaussian
    up to the blur); scaled by W / (w - 1) to input pixels."""
    h, w = 9, 12
    ys, xs = np.mgrid[0:h, 0:w]
    hm = np.exp(-((xs - 5.3) ** 2 + (ys - 3.6) ** 2) / (2 * 1.5**2)).astype(np.float32)[None]
    kps, scores = nt.decode_heatmaps(hm, w - 1, h - 1, 1)  # kernel 1: no blur, unit scale
    np.testing.assert_allclose(kps[0], [5.3, 3.6], atol=2e-3)
    assert scores[0] == hm.max()
    kps, _ = nt.decode_heatmaps(-hm, 2 * (w - 1), h - 1, 11)  # no positive peak: (-1, -1) heatmap px
    np.testing.assert_allclose(kps[0], [-2.0, -1.0])


def test_flip_heatmaps_matches_python():
    hm = np.random.default_rng(1).normal(size=(2, len(FLIP_INDICES), 3, 5)).astype(np.float32)
    np.testing.assert_array_equal(nt.flip_heatmaps(hm), flip_heatmaps(hm))


def test_logits_to_labels_matches_python_away_from_ties():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(29, 12, 9)).astype(np.float32)
    size = (50, 37)
    ref = logits_to_labels(logits, size)
    got = nt.logits_to_labels(logits, *size)
    planes = np.sort(np.stack([resize_bilinear(p, size) for p in logits]), axis=0)
    clear = planes[-1] - planes[-2] > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], ref[clear])


def test_normalize_normals_matches_python():
    n = np.random.default_rng(4).normal(size=(3, 7, 5)).astype(np.float32)
    n[:, 0, 0] = 0
    np.testing.assert_allclose(nt.normalize_normals(n), normalize_normals(n), rtol=0, atol=1e-6)


# -- pipelines end to end ----------------------------------------------------------------------------------
INPUT = (64, 48)


def _pipelines(task: str, **options):
    py = get_pipeline(task, input_size=INPUT, **options)
    return py, nt.Pipeline(json.dumps(py.config()))


def _raw_outputs(task: str, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    H, W = INPUT
    if task == "pose":
        return [_heatmaps(rng, batch * len(FLIP_INDICES), H // 4, W // 4).reshape(batch, -1, H // 4, W // 4)]
    if task == "seg":
        return [rng.normal(size=(1, 29, H // 4, W // 4)).astype(np.float32)]
    out = [rng.normal(size=(1, 3, H, W)).astype(np.float32)]
    return out + [np.array([[0.8]], np.float32)] if task == "pointmap" else out


@pytest.mark.parametrize("image_size", [(50, 70), (120, 31)])
@pytest.mark.parametrize("task", ["seg", "normal", "pointmap", "albedo"])
def test_dense_and_seg_pipelines_match_python(task, image_size):
    rng = np.random.default_rng(image_size[0])
    img = _image(rng, *image_size)
    py, cc = _pipelines(task)
    assert cc.task == task and cc.input_size == INPUT
    ref_batch, ref_meta = py.preprocess(img)
    batch, meta = cc.preprocess(img)
    assert batch.shape == ref_batch.shape and meta.batch_size == ref_meta["batch_size"]
    # one grey level is 1/std ~ 0.0175 after normalisation
    assert np.abs(batch - ref_batch).max() <= 1.01 / 57.12
    outs = _raw_outputs(task, 1, rng)
    ref = py.postprocess(tuple(outs), ref_meta)
    got = cc.postprocess(outs, meta)
    if task == "seg":
        assert (got["labels"] == ref.labels).mean() > 0.999
    else:
        key = {"normal": "normal", "pointmap": "points", "albedo": "albedo"}[task]
        np.testing.assert_allclose(got[key], getattr(ref, key), rtol=0, atol=1e-4)
    if task == "pointmap":
        assert got["scale"] == pytest.approx(ref.scale) and got["focal_length"] == pytest.approx(ref.focal_length)
    summary, ref_summary = json.loads(got["json"]), ref.to_dict()
    assert summary.keys() == ref_summary.keys()
    if task != "seg":
        np.testing.assert_allclose(summary["stats"]["mean"], ref_summary["stats"]["mean"], atol=1e-5)


@pytest.mark.parametrize("flip_test", [True, False])
def test_pose_pipeline_matches_python(flip_test):
    rng = np.random.default_rng(11)
    img = _image(rng, 90, 70)
    boxes = np.array([[5, 10, 40, 80, 0.5], [20, 5, 69, 60, 0.9]], float)  # 5th column: a score, ignored
    py, cc = _pipelines("pose", flip_test=flip_test)
    ref_batch, ref_meta = py.preprocess(img, boxes)
    batch, meta = cc.preprocess(img, boxes)
    assert batch.shape == ref_batch.shape == (4 if flip_test else 2, 3, *INPUT)
    assert np.abs(batch - ref_batch).max() <= 1.01 / 57.12
    np.testing.assert_allclose(meta.centers, ref_meta["centers"])
    np.testing.assert_allclose(meta.sizes, ref_meta["sizes"])
    outs = _raw_outputs("pose", len(batch), rng)
    ref = py.postprocess(tuple(outs), ref_meta)
    got = cc.postprocess(outs, meta)
    np.testing.assert_array_equal(got["scores"], ref.scores)
    # One heatmap pixel spans ~4.5 image pixels here, and float32 blur rounding (1e-7) moves a few
    # ill-conditioned DARK steps by ~1e-3 heatmap px: all within 1e-2 image px, nearly all within 1e-3.
    err = np.abs(got["keypoints"] - ref.keypoints)
    assert err.max() < 1e-2 and (err < 1e-3).mean() > 0.99
    np.testing.assert_array_equal(got["boxes"], ref.boxes)
    summary, ref_summary = json.loads(got["json"]), ref.to_dict()
    assert summary["image_size"] == ref_summary["image_size"] and summary["num_keypoints"] == 308
    assert summary["instances"][1]["bbox"] == ref_summary["instances"][1]["bbox"]
    assert summary["instances"][0]["keypoint_scores"] == ref_summary["instances"][0]["keypoint_scores"]
    np.testing.assert_allclose(summary["instances"][0]["keypoints"], ref_summary["instances"][0]["keypoints"], atol=1e-2)


def test_pose_whole_image_default_box():
    img = _image(np.random.default_rng(12), 40, 30)
    py, cc = _pipelines("pose")
    _, ref_meta = py.preprocess(img)
    _, meta = cc.preprocess(img)
    assert meta.num_instances == 1 and meta.batch_size == 2
    np.testing.assert_allclose(meta.sizes, ref_meta["sizes"])


# -- image files --------------------------------------------------------------------------------------------
def test_read_ppm_pgm_and_npy(tmp_path):
    rng = np.random.default_rng(8)
    img = _image(rng, 5, 7)
    (tmp_path / "a.ppm").write_bytes(b"P6\n# a comment\n7 5\n255\n" + img.tobytes())
    np.testing.assert_array_equal(nt.read_image(str(tmp_path / "a.ppm")), img)
    grey = img[..., 0]
    (tmp_path / "g.pgm").write_bytes(b"P5 7 5 255\n" + grey.tobytes())
    np.testing.assert_array_equal(nt.read_image(str(tmp_path / "g.pgm")), np.repeat(grey[..., None], 3, 2))
    for arr in (img, grey, np.concatenate([img, grey[..., None]], 2)):
        np.save(tmp_path / "x.npy", arr)
        np.testing.assert_array_equal(nt.read_image(str(tmp_path / "x.npy")), img if arr.ndim == 3 else
                                      np.repeat(grey[..., None], 3, 2))
    nt.write_npy(str(tmp_path / "f.npy"), img.astype(np.float32) / 3)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), img.astype(np.float32) / 3)


BAD_PPM = [
    (b"P3\n1 1\n255\n1 2 3", "magic number P6"),
    (b"P6\n2 2\n255\n" + bytes(11), "pixel data is truncated"),
    (b"P6\n2 2", "header is truncated"),
    (b"P6\n2 x\n255\n", "expected a decimal number"),
    (b"P6\n1 1\n65535\n" + bytes(6), "only 8-bit files"),
    (b"P6\n0 4\n255\n", "is empty"),
    (b"P6\n40000 2\n255\n", "is too large"),
]


@pytest.mark.parametrize("data,message", BAD_PPM)
def test_bad_ppm_is_rejected(data, message):
    with pytest.raises(InvalidImageError, match=message):
        nt.decode_ppm(data)


def test_bad_image_files_are_rejected(tmp_path):
    with pytest.raises(ImageNotFoundError, match="image file not found"):
        nt.read_image(str(tmp_path / "missing.ppm"))
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(InvalidImageError, match="image path is not a file"):
        nt.read_image(str(tmp_path / "dir.npy"))
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InvalidImageError, match="supports binary PPM/PGM"):
        nt.read_image(str(tmp_path / "a.jpg"))
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidImageError, match="expected a uint8 RGB image"):
        nt.read_image(str(tmp_path / "f.npy"))
    np.save(tmp_path / "c2.npy", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InvalidImageError, match=r"has 2 channels \(shape \(4, 4, 2\)\)"):
        nt.read_image(str(tmp_path / "c2.npy"))
    np.save(tmp_path / "e.npy", np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InvalidImageError, match=r"is empty \(H x W = 0 x 4\)"):
        nt.read_image(str(tmp_path / "e.npy"))
    np.save(tmp_path / "d4.npy", np.zeros((2, 2, 3, 1), np.uint8))
    with pytest.raises(InvalidImageError, match=r"got an array of shape \(2, 2, 3, 1\)"):
        nt.read_image(str(tmp_path / "d4.npy"))
    np.save(tmp_path / "ok.npy", np.zeros((4, 4, 3), np.uint8))
    good = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(good[:-5])
    with pytest.raises(InvalidImageError, match="data is truncated"):
        nt.read_image(str(tmp_path / "t.npy"))
    (tmp_path / "h.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr'")
    with pytest.raises(InvalidImageError, match="truncated or oversized header"):
        nt.read_image(str(tmp_path / "h.npy"))


def test_pipeline_errors():
    py, cc = _pipelines("pose")
    img = _image(np.random.default_rng(9), 20, 30)
    with pytest.raises(InvalidBoxError, match=r"box 0 = \[5, 5, 3, 9\] is degenerate"):
        cc.preprocess(img, np.array([[5, 5, 3, 9]], float))
    with pytest.raises(InvalidBoxError, match="lies entirely outside the 30 x 20"):
        cc.preprocess(img, np.array([[40, 5, 50, 9]], float))
    with pytest.raises(InvalidBoxError, match="contains NaN or inf"):
        cc.preprocess(img, np.array([[np.nan, 5, 50, 9]], float))
    with pytest.raises(InvalidImageError, match="has 2 channels"):
        cc.preprocess(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InvalidImageError, match="is empty"):
        cc.preprocess(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InvalidImageError, match="too small for pose"):
        cc.preprocess(np.zeros((1, 1, 3), np.uint8))
    _, meta = cc.preprocess(img)
    with pytest.raises(InvalidTensorError, match=r"expects 1 raw output\(s\) \('heatmaps',\), got 2 arrays"):
        cc.postprocess([np.zeros((2, 308, 4, 4), np.float32)] * 2, meta)
    with pytest.raises(InvalidTensorError, match="expected a leading batch dimension of 2"):
        cc.postprocess([np.zeros((3, 308, 4, 4), np.float32)], meta)
    with pytest.raises(InvalidTensorError, match="flip test needs 308 keypoint heatmaps"):
        cc.postprocess([np.zeros((2, 17, 4, 4), np.float32)], meta)
    with pytest.raises(InvalidTensorError, match="contains NaN or inf"):
        cc.postprocess([np.full((2, 308, 4, 4), np.nan, np.float32)], meta)
    seg = nt.Pipeline(json.dumps(get_pipeline("seg", input_size=INPUT).config()))
    with pytest.raises(ConfigError, match="boxes are only used by the pose task"):
        seg.preprocess(img, np.array([[0, 0, 5, 5]], float))
    _, smeta = seg.preprocess(img)
    with pytest.raises(InvalidTensorError, match="at most 256 classes"):
        seg.postprocess([np.zeros((1, 300, 4, 4), np.float32)], smeta)
    pm = nt.Pipeline(json.dumps(get_pipeline("pointmap", input_size=INPUT).config()))
    _, pmeta = pm.preprocess(img)
    with pytest.raises(InvalidTensorError, match="pointmap scale is 0"):
        pm.postprocess([np.zeros((1, 3, *INPUT), np.float32), np.zeros((1, 1), np.float32)], pmeta)
    with pytest.raises(InvalidTensorError, match=r"expected \(1, 3, 64, 48\)"):
        pm.postprocess([np.zeros((1, 3, 8, 8), np.float32), np.ones((1, 1), np.float32)], pmeta)


@pytest.mark.parametrize("config,message", [
    ('{"task": "depth", "input_size": [64, 48]}', "unknown task 'depth'"),
    ('{"task": "seg", "input_size": [1, 48]}', "input_size must be two integers"),
    ('{"task": "seg"}', "input_size"),
    ('{"task": "pose", "input_size": [64, 48], "blur_kernel_size": 4}', "blur_kernel_size must be a positive odd"),
    ('{"task": "pose", "input_size": [64, 48], "bbox_padding": -1}', "bbox_padding must be positive"),
    ('{"task": "seg", "input_size": [64, 48], "channel_order": "BGR"}', "channel_order"),
    ('{"task": "seg", "input_size": [64, 48], "mean": [1, 2]}', "list of 3 numbers"),
    ('{"task": "seg", "input_size": [64, 48]', "invalid preprocessing config JSON"),
])
def test_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        nt.Pipeline(config)


def test_config_from_manifest(tmp_path):
    cfg = get_pipeline("pose", input_size=INPUT, flip_test=False, blur_kernel_size=5).config()
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "native", "preprocessing": cfg}))
    p = nt.Pipeline.from_manifest(str(tmp_path))
    assert (p.task, p.input_size, p.flip_test, p.blur_kernel_size, p.bbox_padding) == ("pose", INPUT, False, 5, 1.25)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "native", "preprocessing": {}}))
    with pytest.raises(ConfigError, match="has no 'preprocessing' settings"):
        nt.Pipeline.from_manifest(str(tmp_path))
