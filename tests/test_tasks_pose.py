"""Pose: UDP crop geometry, flip test, UDP-DARK decoding and the end-to-end mapping (spec 2.1, 4f-4g)."""

import json

import cv2
import numpy as np
import pytest

from sapiens2_edge.errors import ConfigError, InvalidBoxError, InvalidImageError, InvalidTensorError
from sapiens2_edge.tasks import FLIP_INDICES, PoseResult, decode_heatmaps, get_pipeline, pose_demo_json
from sapiens2_edge.tasks.pose import (
    box_to_center_size,
    crop_person,
    flip_heatmaps,
    input_to_image,
    udp_warp_matrix,
    validate_boxes,
)
from sapiens2_edge.tasks.preprocess import denormalize

EPS32 = float(np.finfo(np.float32).eps)


# -- helpers (independent of the implementation) ------------------------------------------------
def udp_gaussian(h, w, points, sigma):
    """(K, h, w) unnormalised Gaussians (peak 1) centred at sub-pixel points (K, 2) = (x, y)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.asarray(points, np.float64)
    d2 = (xs[None] - pts[:, 0, None, None]) ** 2 + (ys[None] - pts[:, 1, None, None]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def expected_center_size(box, aspect, padding=1.25):
    x1, y1, x2, y2 = box
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > aspect * h:
        h = w / aspect
    else:
        w = aspect * h
    return ((x1 + x2) / 2, (y1 + y2) / 2), (w, h)


def reference_decode(hm, W, H):
    """Spec 2.1 decoding steps 1-3 written per channel with numpy only (no OpenCV). As in the reference
    decoder, the seven log values are read from the flattened edge-padded log maps of all channels, so a
    channel without a positive peak is stepped from (-1, -1) with values of the previous channel."""
    g = np.exp(-np.arange(-5, 6) ** 2 / (2 * 2.0**2))
    g /= g.sum()
    K, h, w = hm.shape
    kps, scores, logs = np.zeros((K, 2)), np.zeros(K), []
    for k in range(K):
        m = hm[k].astype(np.float64)
        p = np.pad(m, 5)
        p = np.apply_along_axis(lambda r: np.convolve(r, g, mode="same"), 0, p)
        p = np.apply_along_axis(lambda r: np.convolve(r, g, mode="same"), 1, p)[5:-5, 5:-5]
        p *= m.max() / p.max()
        logs.append(np.pad(np.log(np.clip(p, 0.001, 50)), 1, mode="edge"))
    flat = np.stack(logs).ravel()
    for k in range(K):
        m = hm[k]
        y, x = np.unravel_index(np.argmax(m), m.shape)
        scores[k] = m[y, x]
        if m[y, x] <= 0:
            x = y = -1

        def L(dy, dx, k=k, y=y, x=x):  # numpy's negative index wraps to the last channel
            return flat[k * (h + 2) * (w + 2) + (y + 1 + dy) * (w + 2) + x + 1 + dx]

        c = L(0, 0)
        gx, gy = (L(0, 1) - L(0, -1)) / 2, (L(1, 0) - L(-1, 0)) / 2
        dxx = L(0, 1) - 2 * c + L(0, -1)
        dyy = L(1, 0) - 2 * c + L(-1, 0)
        dxy = (L(1, 1) - L(0, 1) - L(1, 0) + 2 * c - L(0, -1) - L(-1, 0) + L(-1, -1)) / 2
        step = np.linalg.solve(np.array([[dxx, dxy], [dxy, dyy]]) + EPS32 * np.eye(2), [gx, gy])
        kps[k] = (x - step[0], y - step[1])
    return kps * [W / (w - 1), H / (h - 1)], scores


# -- boxes and crop ------------------------------------------------------------------------------
def test_center_size_hand_values():
    c, s = box_to_center_size(np.array([[10, 20, 50, 100], [0, 0, 200, 100]]), 0.75)
    np.testing.assert_allclose(c, [[30, 60], [100, 50]])
    # box 0: 50 x 100 after padding, 50 <= 0.75 * 100 -> w = 75
    # box 1: 250 x 125, 250 > 0.75 * 125 -> h = 250 / 0.75
    np.testing.assert_allclose(s, [[75, 100], [250, 250 / 0.75]])


@pytest.mark.parametrize("input_size", [(1024, 768), (128, 96), (256, 192)])
@pytest.mark.parametrize("box", [(10, 20, 50, 100), (-30, 5.5, 400.25, 90), (0, 0, 767, 1023)])
def test_udp_warp_sends_box_corners_to_crop_corners(box, input_size):
    H, W = input_size
    (cx, cy), (w, h) = expected_center_size(box, W / H)
    m = udp_warp_matrix((cx, cy), (w, h), input_size)
    corners = np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy + h / 2], [cx, cy]])
    mapped = corners @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, [[0, 0], [W - 1, H - 1], [(W - 1) / 2, (H - 1) / 2]], atol=1e-9)
    via_cv2 = cv2.transform(corners[None], m)[0]
    np.testing.assert_allclose(via_cv2, mapped[:, :2], atol=1e-6)


def test_udp_warp_1024x768_numbers():
    m = udp_warp_matrix((100, 200), (300, 400), (1024, 768))
    assert m[0, 0] == pytest.approx(767 / 300) and m[1, 1] == pytest.approx(1023 / 400)


def test_crop_samples_the_right_pixels():
    # image value = x coordinate: a linear ramp, which bicubic reproduces exactly up to rounding
    H0, W0 = 60, 200
    img = np.repeat(np.tile(np.arange(W0, dtype=np.uint8), (H0, 1))[:, :, None], 3, axis=2)
    center, size = (100.0, 30.0), (45.0, 60.0)  # scale (96-1)/45 > 1 -> bicubic
    crop = crop_person(img, center, size, (128, 96))
    assert crop.shape == (128, 96, 3) and crop.dtype == np.uint8
    u = np.arange(96)
    x_expected = u * size[0] / 95 + center[0] - size[0] / 2
    np.testing.assert_allclose(crop[64, 5:-5, 0], x_expected[5:-5], atol=0.51)
    # rows that map above the image (y < 0) are zero padding
    top_rows = int(np.floor((0 - (center[1] - size[1] / 2)) * 127 / size[1])) - 2
    assert (crop[:max(top_rows, 0)] == 0).all()


def test_crop_downscale_uses_area_rule():
    img = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    crop = crop_person(img, (150, 150), (240, 320), (128, 96))  # scale < 1
    m = udp_warp_matrix((150, 150), (240, 320), (128, 96))
    ref = cv2.warpAffine(img, m, (96, 128), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
    np.testing.assert_array_equal(crop, ref)


# -- decoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", [(95.3, 120.7), (40.25, 200.6), (150.9, 30.1), (96.0, 128.0), (20.5, 240.49)])
def test_udp_codec_round_trip(point):
    """Spec 4f: sigma-6 UDP Gaussian on a 192 x 256 map decodes to < 1e-3 heatmap px."""
    hm = udp_gaussian(256, 192, [point], 6.0)
    kps, scores = decode_heatmaps(hm, (1024, 768))
    in_hm_px = kps[0] * np.array([191 / 768, 255 / 1024])
    assert np.abs(in_hm_px - point).max() < 1e-3
    assert scores[0] == pytest.approx(hm.max())


def test_decode_matches_independent_reference():
    rng = np.random.default_rng(3)
    K, h, w = 12, 32, 24
    pts = np.stack([rng.uniform(0, w - 1, K), rng.uniform(0, h - 1, K)], 1)
    hm = udp_gaussian(h, w, pts, 1.5) * rng.uniform(0.2, 2.0, (K, 1, 1)).astype(np.float32)
    hm += rng.normal(0, 0.02, hm.shape).astype(np.float32)  # noise: not a clean Gaussian
    hm[3] = -np.abs(hm[3])  # no positive peak
    kps, scores = decode_heatmaps(hm, (128, 96))
    ref_kps, ref_scores = reference_decode(hm, 96, 128)
    np.testing.assert_allclose(kps, ref_kps, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    assert scores[3] <= 0  # no positive maximum: stepped from (-1, -1) heatmap px, as in the reference


def test_decode_all_negative_channel_is_stepped_from_minus_one_as_the_reference():
    """A channel whose values are all negative starts at (-1, -1) and still takes the Newton step. Its own
    log map is the constant log(0.001) (negative values clip), so only the reads left of and above the
    padded corner matter, and they come from the previous channel's last row: I(x-1) = I(x-1, y-1) =
    its (h-1, w-1) value a, I(y-1) = its (h-1, 0) value b, the rest c0 = log(0.001).
    With b = c0: gx = (c0 - a) / 2, dxx = a - c0, gy = dxy = dyy = 0, so x = -1 + 1/2, y = -1."""
    h, w = 6, 8
    prev = np.full((h, w), 1e-4, np.float32)
    prev[2, 3] = 1.0  # the peak
    prev[h - 1, w - 1] = 0.5  # a = log(0.5); b = log(1e-4 clipped to 0.001) = c0
    neg = -np.random.default_rng(0).uniform(0.1, 1.0, (h, w)).astype(np.float32)
    kps, scores = decode_heatmaps(np.stack([prev, neg]), (h - 1, w - 1), blur_kernel_size=1)  # no blur, unit scale
    a, c0 = np.log(0.5), np.log(0.001)
    assert scores[1] == neg.max()
    np.testing.assert_allclose(kps[1], [-1 + 0.5 * (a - c0) / (a - c0 + EPS32), -1.0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(kps[1], [-0.5, -1.0], atol=1e-6)
    # The blurred default: a constant channel blurs symmetrically, so a = b = c0 + d with d > 0, and the
    # step solves [[d, -d/2], [-d/2, d]] s = (-d/2, -d/2): s = (-1, -1), whatever d is: the all-negative
    # channel lands on (0, 0). Channel 0 reads from the last channel (numpy's wrap-around).
    kps, _ = decode_heatmaps(np.stack([neg, np.ones((h, w), np.float32)]), (4 * h, 4 * w))
    np.testing.assert_allclose(kps[0], [0.0, 0.0], atol=1e-5)
    # With nothing but the all-negative channel, every read is log(0.001): no step, (-1, -1) heatmap px.
    kps, _ = decode_heatmaps(neg[None], (h - 1, 2 * (w - 1)))
    np.testing.assert_allclose(kps[0], [-2.0, -1.0])


def test_decode_batched_and_zero_maps():
    hm = udp_gaussian(32, 24, [(5.3, 7.7), (12, 20)], 2.0)
    hm = np.concatenate([hm, np.zeros((1, 32, 24), np.float32)])
    single = decode_heatmaps(hm, (128, 96))
    batched = decode_heatmaps(np.stack([hm, hm]), (128, 96))
    assert batched[0].shape == (2, 3, 2) and batched[1].shape == (2, 3)
    np.testing.assert_array_equal(batched[0][1], single[0])
    assert np.isfinite(single[0]).all() and single[1][2] == 0


def test_decode_reports_input_pixels_with_the_w_over_w_minus_1_factor():
    # heatmap x -> input x is x * W / (w - 1) (not (W - 1) / (w - 1)): 17 -> 17 * 96 / 23
    hm = udp_gaussian(32, 24, [(17.0, 9.0)], 1.5)
    kps, _ = decode_heatmaps(hm, (128, 96))
    np.testing.assert_allclose(kps[0], [17 * 96 / 23, 9 * 128 / 31], atol=1e-3)
    assert abs(kps[0, 0] - 17 * 95 / 23) > 0.7


def test_decode_rejects_bad_shapes():
    with pytest.raises(InvalidTensorError, match=r"\(K, h, w\)"):
        decode_heatmaps(np.zeros((32, 24), np.float32))
    with pytest.raises(InvalidTensorError, match=r"h, w >= 2"):
        decode_heatmaps(np.zeros((3, 1, 24), np.float32))


# -- end to end ----------------------------------------------------------------------------------
class IdealPoseNet:
    """A fake network that 'sees' known image keypoints: for each crop it draws the UDP target
    heatmaps (Gaussians at u * (w-1) / (W-1), the training encoding), and for the mirrored
    second half of a flip-test batch it draws the mirrored, left/right-swapped targets."""

    def __init__(self, image_points, boxes, input_size, sigma=2.0, flip=True):
        self.points, self.boxes, self.input_size = image_points, boxes, input_size
        self.sigma, self.flip, self.calls = sigma, flip, 0

    def __call__(self, batch):
        self.calls += 1
        H, W = self.input_size
        h, w = H // 4, W // 4
        n = len(self.boxes)
        assert len(batch) == (2 * n if self.flip else n)
        out = []
        for i, box in enumerate(self.boxes):
            (cx, cy), (bw, bh) = expected_center_size(box, W / H)
            u = (self.points[i][:, 0] - cx + bw / 2) * (W - 1) / bw
            v = (self.points[i][:, 1] - cy + bh / 2) * (H - 1) / bh
            out.append(udp_gaussian(h, w, np.stack([u * (w - 1) / (W - 1), v * (h - 1) / (H - 1)], 1), self.sigma))
        if self.flip:
            for hm in out[:n]:
                out.append(hm[np.asarray(FLIP_INDICES), :, ::-1])
        return (np.stack(out),)


@pytest.mark.parametrize("flip_test", [False, True])
def test_end_to_end_recovers_image_keypoints(flip_test):
    """Crop with (W-1)/w_box, decode with W/(w-1), map back with w_box/W: the two mismatches
    cancel, so a UDP-encoded target comes back at the original image point (up to DARK error)."""
    rng = np.random.default_rng(7)
    input_size = (256, 192)  # 64 x 48 heatmaps: room to keep the targets off the edges
    img = np.zeros((240, 320, 3), np.uint8)
    boxes = np.array([[20.0, 30.0, 120.0, 220.0], [150.5, 10.25, 300.0, 120.0]])
    # keypoints inside the box's central 70 % (DARK is biased for peaks near a heatmap edge)
    points = [np.stack([rng.uniform(b[0], b[2], 308) * 0.7 + (b[0] + b[2]) * 0.15,
                        rng.uniform(b[1], b[3], 308) * 0.7 + (b[1] + b[3]) * 0.15], 1) for b in boxes]
    net = IdealPoseNet(points, boxes, input_size, flip=flip_test)
    pipe = get_pipeline("pose", input_size, flip_test=flip_test)
    (res,) = pipe([img], net, boxes=[boxes])
    assert net.calls == 1
    assert isinstance(res, PoseResult) and res.keypoints.shape == (2, 308, 2) and res.scores.shape == (2, 308)
    np.testing.assert_allclose(res.boxes, boxes, rtol=1e-6)
    for i in range(2):
        (_, _), (bw, _) = expected_center_size(boxes[i], 0.75)
        hm_px = bw / 47  # image pixels per heatmap pixel
        err = np.abs(res.keypoints[i] - points[i]).max()
        assert err < 1e-3 * hm_px, err
        assert (res.scores[i] > 0.9).all()


def test_input_to_image_is_the_demo_formula():
    # X = x_in / W * w_box + cx - w_box / 2 with W (768), not W - 1
    out = input_to_image(np.array([[768.0, 1024.0], [0.0, 0.0], [383.5, 511.5]]), (500, 400), (300, 400), (1024, 768))
    np.testing.assert_allclose(out, [[650, 600], [350, 200], [350 + 383.5 / 768 * 300, 200 + 511.5 / 1024 * 400]])
    # a crop pixel u maps back with u * w_box / (W - 1) only after the decoder's W / (w - 1):
    # crop pixel 767 reported as input pixel 768 -> the box's right edge
    u = 767.0
    x_in = u * 768 / 767
    assert input_to_image(np.array([[x_in, 0]]), (500, 400), (300, 400), (1024, 768))[0, 0] == pytest.approx(650)


def test_pose_on_content_blobs():
    """The pipeline's own crop and its inverse agree: a fake net that finds a bright blob in
    each crop (intensity centroid) reports it; the result lands on the blob in the image."""
    input_size = (128, 96)
    H, W = input_size
    img = np.zeros((200, 260, 3), np.float64)
    blobs = np.array([[120.3, 95.6], [205.7, 60.2]])
    ys, xs = np.mgrid[0:200, 0:260]
    for bx, by in blobs:
        img[..., 0] += 250 * np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * 4.0**2))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    boxes = np.array([[95.0, 60.0, 145.0, 130.0], [180.0, 25.0, 230.0, 95.0]])

    def net(batch):
        h, w = H // 4, W // 4
        out = []
        for x in batch:
            r = np.clip(denormalize(x)[..., 0], 0, None)
            r[r < 3] = 0
            yy, xx = np.mgrid[0:H, 0:W]
            cu, cv = (r * xx).sum() / r.sum(), (r * yy).sum() / r.sum()
            hm = udp_gaussian(h, w, [(cu * (w - 1) / (W - 1), cv * (h - 1) / (H - 1))], 2.0)
            out.append(np.repeat(hm, 308, axis=0))
        return (np.stack(out),)

    (res,) = get_pipeline("pose", input_size)([img], net, boxes=[boxes])
    np.testing.assert_allclose(res.keypoints[:, 0], blobs, atol=0.05)
    np.testing.assert_allclose(res.keypoints[:, 307], blobs, atol=0.05)


def _mirrored_fixed_net(input_size):
    """Fixed heatmaps whose keypoint k and its flip partner sit at mirrored x positions."""
    H, W = input_size
    h, w = H // 4, W // 4
    rng = np.random.default_rng(11)
    pts = np.zeros((308, 2))
    for k in range(308):
        f = FLIP_INDICES[k]
        if f == k:
            pts[k] = ((w - 1) / 2, rng.uniform(3, h - 4))
        elif k < f:
            pts[k] = (rng.uniform(2, (w - 1) / 2 - 2), rng.uniform(3, h - 4))
            pts[f] = (w - 1 - pts[k][0], pts[k][1])
    hm = udp_gaussian(h, w, pts, 1.5)
    return (lambda batch: (np.repeat(hm[None], len(batch), axis=0),)), hm


def test_flip_test_with_mirror_consistent_heatmaps_matches_no_flip():
    input_size = (128, 96)
    net, hm = _mirrored_fixed_net(input_size)
    img = np.random.default_rng(0).integers(0, 256, (150, 110, 3), dtype=np.uint8)
    with_flip = get_pipeline("pose", input_size, flip_test=True)([img], net)[0]
    without = get_pipeline("pose", input_size, flip_test=False)([img], net)[0]
    np.testing.assert_allclose(with_flip.keypoints, without.keypoints, atol=1e-3)
    np.testing.assert_allclose(with_flip.scores, without.scores, rtol=1e-5)
    # and the channel reorder matters: mirroring without swapping left/right would not agree
    wrong = (hm[None] + flip_heatmaps(hm[None], list(range(308)))) / 2
    right = (hm[None] + flip_heatmaps(hm[None])) / 2
    np.testing.assert_allclose(right, hm[None], atol=1e-6)
    assert np.abs(wrong - hm[None]).max() > 0.4


def test_flip_test_with_flip_equivariant_net_matches_no_flip():
    # a 'network' whose heatmaps are a function of the image only (block-averaged brightness),
    # so it commutes with mirroring; flip-averaging must then change nothing
    input_size = (128, 96)

    def net(batch):
        bright = batch.mean(axis=1)  # (B, H, W)
        small = np.stack([cv2.resize(b, (24, 32), interpolation=cv2.INTER_AREA) for b in bright])
        weights = np.array([1.0 + (k + FLIP_INDICES[k]) % 5 for k in range(308)], np.float32)  # symmetric per pair
        return (small[:, None] * weights[None, :, None, None] + 3.0,)

    img = np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    boxes = [[5, 5, 60, 80], [20, 10, 69, 89]]
    a = get_pipeline("pose", input_size, flip_test=True)([img], net, boxes=[boxes])[0]
    b = get_pipeline("pose", input_size, flip_test=False)([img], net, boxes=[boxes])[0]
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_preprocess_batch_layout():
    img = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    pipe = get_pipeline("pose", (128, 96))
    batch, meta = pipe.preprocess(img, [[1, 2, 30, 40], [5, 5, 20, 45]])
    assert batch.shape == (4, 3, 128, 96) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[2:], batch[:2, :, :, ::-1])
    assert meta["num_instances"] == 2 and meta["batch_size"] == 4
    batch1, meta1 = get_pipeline("pose", (128, 96), flip_test=False).preprocess(img)
    assert batch1.shape == (1, 3, 128, 96)
    np.testing.assert_array_equal(meta1["boxes"], [[0, 0, 39, 49]])  # whole image (0, 0, W-1, H-1)


def test_empty_boxes_give_no_instances_and_no_infer_call():
    def net(batch):
        raise AssertionError("must not be called")

    img = np.zeros((20, 20, 3), np.uint8)
    (res,) = get_pipeline("pose", (128, 96))([img], net, boxes=[np.zeros((0, 4))])
    assert res.keypoints.shape == (0, 308, 2) and res.boxes.shape == (0, 4) and len(res) == 0
    assert json.loads(res.to_json())["instances"] == []


# -- box validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("boxes,pattern", [
    ([[10, 10, 5, 20]], r"box 0 = \[10, 10, 5, 20\] is degenerate; expected x2 > x1 and y2 > y1"),
    ([[0, 0, 5, 5], [3, 4, 8, 4]], r"box 1 = \[3, 4, 8, 4\] is degenerate"),
    ([[0, np.nan, 5, 5]], r"box 0 = \[0, nan, 5, 5\] contains NaN or inf"),
    ([[0, 0, np.inf, 5]], r"contains NaN or inf"),
    ([[100, 10, 120, 20]], r"box 0 = \[100, 10, 120, 20\] lies entirely outside the 50 x 40 \(W x H\) image"),
    ([[-30, -30, -1, 10]], r"lies entirely outside"),
    ([[1, 2, 3]], r"\(n, 4\) array.*got shape \(1, 3\)"),
    ([[[1, 2, 3, 4]]], r"got shape \(1, 1, 4\)"),
    ([["a", 1, 2, 3]], r"boxes must be numbers"),
])
def test_bad_boxes(boxes, pattern):
    with pytest.raises(InvalidBoxError, match=pattern):
        validate_boxes(boxes, (40, 50))
    with pytest.raises(InvalidBoxError, match=pattern):
        get_pipeline("pose", (128, 96)).preprocess(np.zeros((40, 50, 3), np.uint8), boxes)


def test_acceptable_boxes():
    b = validate_boxes([[-10, -10, 10, 10, 0.9]], (40, 50))  # partly outside, with a score column
    np.testing.assert_array_equal(b, [[-10, -10, 10, 10]])
    np.testing.assert_array_equal(validate_boxes((1, 2, 3, 4), (40, 50)), [[1, 2, 3, 4]])
    assert validate_boxes([], (40, 50)).shape == (0, 4)


def test_boxes_list_must_match_images():
    pipe = get_pipeline("pose", (128, 96))
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InvalidBoxError, match="one entry .* per image; got 1 for 2 image"):
        pipe([img, img], lambda b: None, boxes=[None])


def test_one_pixel_image_without_box():
    with pytest.raises(InvalidImageError, match="too small for pose"):
        get_pipeline("pose", (128, 96)).preprocess(np.zeros((1, 1, 3), np.uint8))


def test_bad_heatmap_outputs():
    pipe = get_pipeline("pose", (128, 96))
    batch, meta = pipe.preprocess(np.zeros((30, 30, 3), np.uint8))
    with pytest.raises(InvalidTensorError, match="flip test needs 308"):
        pipe.postprocess((np.zeros((2, 17, 32, 24), np.float32),), meta)
    with pytest.raises(InvalidTensorError, match="leading batch dimension of 2"):
        pipe.postprocess((np.zeros((1, 308, 32, 24), np.float32),), meta)
    bad = np.zeros((2, 308, 32, 24), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidTensorError, match="NaN"):
        pipe.postprocess((bad,), meta)
    with pytest.raises(InvalidTensorError, match="expects 1 raw output"):
        pipe.postprocess((bad, bad), meta)


def test_17_keypoint_heatmaps_without_flip():
    pipe = get_pipeline("pose", (128, 96), flip_test=False)
    batch, meta = pipe.preprocess(np.zeros((30, 30, 3), np.uint8))
    res = pipe.postprocess((udp_gaussian(32, 24, [(10, 10)] * 17, 2.0)[None],), meta)
    assert res.keypoints.shape == (1, 17, 2)


def test_pose_options_validated():
    with pytest.raises(ConfigError, match="flip_test.*must be a bool"):
        get_pipeline("pose", flip_test="yes")
    with pytest.raises(ConfigError, match="blur_kernel_size must be a positive odd"):
        get_pipeline("pose", blur_kernel_size=4)
    with pytest.raises(ConfigError, match="bbox_padding must be positive"):
        get_pipeline("pose", bbox_padding=0.0)


# -- demo JSON -------------------------------------------------------------------------------------
def test_pose_demo_json_structure():
    r1 = PoseResult(np.array([[1, 2, 30, 40]], np.float32), np.full((1, 308, 2), 5, np.float32),
                    np.full((1, 308), 0.5, np.float32), (60, 50))
    r2 = PoseResult(np.zeros((0, 4), np.float32), np.zeros((0, 308, 2), np.float32), np.zeros((0, 308), np.float32), (70, 80))
    d = pose_demo_json([r1, r2], ["a.jpg", "b.jpg"], kpt_thr=0.3)
    d = json.loads(json.dumps(d))
    assert set(d) == {"video", "image_size", "num_keypoints", "kpt_thr_used", "frames"}
    assert d["video"] is None and d["image_size"] == [60, 50] and d["num_keypoints"] == 308
    assert d["kpt_thr_used"] == 0.3
    assert [f["image_name"] for f in d["frames"]] == ["a.jpg", "b.jpg"]
    inst = d["frames"][0]["instances"][0]
    assert set(inst) == {"bbox", "keypoints", "keypoint_scores"}
    assert inst["bbox"] == [1, 2, 30, 40] and len(inst["keypoints"]) == 308 and inst["keypoints"][0] == [5, 5]
    assert len(inst["keypoint_scores"]) == 308
    assert d["frames"][1]["instances"] == []
    with pytest.raises(ConfigError, match="one name per result"):
        pose_demo_json([r1], [])
