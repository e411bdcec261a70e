"""Drawings that do not mislead: the RANDOM WEIGHTS banner, the seg legend, pose keypoints outside
the image."""

from __future__ import annotations

import numpy as np
import pytest

from sapiens2_edge.errors import ConfigError
from sapiens2_edge.tasks import AlbedoResult, NormalResult, PointmapResult, PoseResult, SegResult
from sapiens2_edge.tasks.draw import BANNER_COLOR, banner_height
from sapiens2_edge.tasks.seg import SEG_PALETTE, legend_entries

H, W = 360, 480
RIGHT_HAND, TORSO = 15, 22  # (255, 0, 0) and (14, 204, 0)


def seg_result() -> SegResult:
    labels = np.zeros((H, W), np.uint8)
    labels[:, : W // 2] = TORSO  # the person fills the left half
    labels[100:200, 50:150] = RIGHT_HAND
    return SegResult(labels)


def is_color(vis: np.ndarray, color) -> np.ndarray:
    return (vis == np.array(color, np.uint8)).all(-1)


def results() -> dict[str, object]:
    kps = np.full((1, 308, 2), 100.0, np.float32)
    return {
        "seg": seg_result(),
        "pose": PoseResult(np.array([[10, 10, 300, 300]], np.float32), kps, np.ones((1, 308), np.float32), (H, W)),
        "normal": NormalResult(np.zeros((H, W, 3), np.float32)),
        "pointmap": PointmapResult(np.ones((H, W, 3), np.float32), 1.0, 500.0),
        "albedo": AlbedoResult(np.full((H, W, 3), 0.5, np.float32)),
    }


@pytest.mark.parametrize("task", ["seg", "pose", "normal", "pointmap", "albedo"])
def test_random_weights_banner(task):
    r = results()[task]
    img = np.full((H, W, 3), 90, np.uint8)
    kw = {"legend": "none"} if task == "seg" else {}  # (the seg legend moves below the banner)
    plain = r.draw(img, **kw)
    assert "random_weights" not in r.to_dict()
    r.random_weights = True
    marked = r.draw(img, **kw)
    band = banner_height(H)
    assert marked.shape == plain.shape
    top = marked[:band]
    assert is_color(top, BANNER_COLOR).mean() > 0.5  # the red band ...
    assert (top.min(-1) > 200).sum() > 50  # ... with white text on it
    np.testing.assert_array_equal(marked[band:], plain[band:])  # the rest untouched
    np.testing.assert_array_equal(r.draw(img, random_weights=False, **kw), plain)  # the parameter wins
    assert r.to_dict()["random_weights"] is True
    r.random_weights = False
    np.testing.assert_array_equal(r.draw(img, random_weights=True, **kw), marked)


def test_seg_legend_inside_lists_present_classes_away_from_the_person():
    r = seg_result()
    img = np.zeros((H, W, 3), np.uint8)
    vis = r.draw(img)  # alpha 0.5: blended class colours are never the pure palette colour
    assert vis.shape == img.shape
    assert legend_entries(r.labels) == [("Torso", tuple(SEG_PALETTE[TORSO])), ("Right_Hand", (255, 0, 0))]
    for cls in (RIGHT_HAND, TORSO):
        ys, xs = np.nonzero(is_color(vis, SEG_PALETTE[cls]))
        assert len(xs) > 20, cls  # a swatch of the class colour ...
        assert xs.min() >= W // 2  # ... in the legend, on the empty right half, not over the person
    assert not is_color(vis, SEG_PALETTE[5]).any()  # Left_Foot is absent: no swatch
    none = r.draw(img, legend="none")
    assert not is_color(none, (255, 0, 0)).any()
    changed = (vis != none).any(-1)
    assert not changed[:, : W // 2].any() and changed[:, W // 2:].any()


def test_seg_legend_side_panel():
    r = seg_result()
    img = np.zeros((H, W, 3), np.uint8)
    vis = r.draw(img, legend="side")
    assert vis.shape[0] == H and vis.shape[1] > W
    np.testing.assert_array_equal(vis[:, :W], r.draw(img, legend="none"))
    panel = vis[:, W:]
    assert is_color(panel, (255, 0, 0)).sum() > 20 and is_color(panel, SEG_PALETTE[TORSO]).sum() > 20
    r.random_weights = True
    marked = r.draw(img, legend="side")
    assert is_color(marked[: banner_height(H)], BANNER_COLOR).mean() > 0.5
    assert is_color(marked[:, W:], (255, 0, 0)).sum() > 20  # the legend sits below the banner


def test_seg_legend_errors_and_small_images():
    r = seg_result()
    with pytest.raises(ConfigError, match=r"legend must be one of inside, side, none, got 'left'"):
        r.draw(np.zeros((H, W, 3), np.uint8), legend="left")
    tiny = SegResult(np.full((8, 6), RIGHT_HAND, np.uint8))
    img = np.zeros((8, 6, 3), np.uint8)
    np.testing.assert_array_equal(tiny.draw(img), tiny.draw(img, legend="none"))  # no room: left out
    assert tiny.draw(img, legend="side").shape == (8, 6, 3)


def test_seg_legend_truncates_to_the_rows_that_fit():
    labels = np.arange(29, dtype=np.uint8).repeat(10)[None].repeat(200, 0)[:, :290]  # every class
    vis = SegResult(labels[:, :290]).draw(np.zeros((200, 290, 3), np.uint8), legend="side")
    shown = [c for c in range(1, 29) if is_color(vis[:, 290:], SEG_PALETTE[c]).sum() > 10]
    assert 0 < len(shown) < 28  # 200 px hold 12 rows of 16 px: the rest is '+N more'


def test_pose_keypoints_outside_the_image_are_clipped_to_the_border():
    img = np.zeros((200, 300, 3), np.uint8)
    kps = np.zeros((1, 17, 2), np.float32)
    scores = np.zeros((1, 17), np.float32)
    kps[0, 0], scores[0, 0] = (150, 100), 0.9  # nose, inside
    kps[0, 1], scores[0, 1] = (5000, 100), 0.9  # left eye, far to the right (linked to the nose)
    kps[0, 2], scores[0, 2] = (-1e30, -7e29), 0.9  # right eye, absurdly far
    kps[0, 3], scores[0, 3] = (np.nan, 50), 0.9  # left ear, not finite
    r = PoseResult(np.array([[0, 0, 299, 199]], np.float32), kps, scores, (200, 300))
    vis = r.draw(img, boxes=False, radius=3)
    assert vis[100, 150].any()  # the nose
    assert vis[90:110, 285:300].any()  # the left eye's marker on the right border, at its row
    assert vis[:12, :12].any()  # the right eye's marker in the top-left corner
    assert not vis[100, 170:280].any()  # no link from the nose towards the far left eye
    assert vis[170:200, :150].any()  # the note "3 keypoints outside"
    inside_only = kps.copy()
    inside_only[0, 1:4] = 0
    plain = PoseResult(r.boxes, kps[:, :1].repeat(17, 1) * 0 + (150, 100), scores, (200, 300)).draw(
        img, boxes=False, radius=3)
    assert not plain[170:200, :150].any() and not plain[90:110, 285:300].any()
