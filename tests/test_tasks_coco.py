"""COCO keypoint results from a PoseResult: COCO-17 and COCO-WholeBody-133."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sapiens2_edge.errors import ConfigError
from sapiens2_edge.tasks import PoseResult
from sapiens2_edge.tasks.keypoints import (
    COCO17_NAMES,
    KEYPOINT_NAMES,
    WHOLEBODY133_FROM_308,
    WHOLEBODY_PARTS,
)

# COCO-WholeBody's own names for its hands (mmpose's dataset meta): root, then finger 1..4, base to tip.
FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def hand_names(side: str) -> list[str]:
    return [f"{side}_hand_root"] + [f"{side}_{f}{i}" for f in FINGERS for i in (1, 2, 3, 4)]


def pose_result() -> PoseResult:
    n, k = 2, 308
    kps = np.stack([np.arange(k) * 2.0 + 1000 * p for p in range(n)])[..., None].repeat(2, -1)
    kps[..., 1] += 0.5  # y = x + 0.5: each keypoint's coordinates say which index it came from
    scores = np.linspace(0.1, 0.9, n * k).reshape(n, k)
    boxes = np.array([[10, 20, 110, 220], [5, 5, 50, 80]], np.float32)
    return PoseResult(boxes, kps.astype(np.float32), scores.astype(np.float32), (300, 400))


def source(x: float) -> int:
    return int(round((x % 1000) / 2))


def test_mapping_indices_against_names():
    assert len(WHOLEBODY133_FROM_308) == 133
    assert KEYPOINT_NAMES.index("left_wrist") == 62 and KEYPOINT_NAMES.index("right_wrist") == 41
    body = [KEYPOINT_NAMES[i] for i in WHOLEBODY133_FROM_308[:17]]
    assert body == list(COCO17_NAMES) and body[9:11] == ["left_wrist", "right_wrist"]
    assert WHOLEBODY133_FROM_308[9] == 62 and WHOLEBODY133_FROM_308[10] == 41
    assert [KEYPOINT_NAMES[i] for i in WHOLEBODY133_FROM_308[17:23]] == [
        "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
    for side, part in (("left", "lefthand"), ("right", "righthand")):
        got = [KEYPOINT_NAMES[i] for i in WHOLEBODY133_FROM_308[WHOLEBODY_PARTS[part].start:WHOLEBODY_PARTS[part].stop]]
        want = [n.replace("_hand_root", "_wrist").replace("1", "_third_joint") for n in hand_names(side)]
        assert got == want
    assert WHOLEBODY133_FROM_308[91] == 62 and WHOLEBODY133_FROM_308[112] == 41  # hand roots: the wrists
    face = WHOLEBODY133_FROM_308[23:91]
    assert sum(i is not None for i in face) == 18
    named = {j: KEYPOINT_NAMES[i] for j, i in enumerate(face) if i is not None}
    assert named[8] == "tip_of_chin" and named[30] == "tip_of_nose"
    assert named[36] == "r_outer_end_of_upper_lash_line" and named[45] == "l_outer_end_of_upper_lash_line"
    assert named[48] == "r_outer_corner_of_mouth" and named[54] == "l_outer_corner_of_mouth"
    # mirror symmetry: 300-W pairs (36, 45), (39, 42), (48, 54), (31, 35), (60, 64) map to 308 flip pairs
    from sapiens2_edge.tasks.keypoints import FLIP_INDICES

    for a, b in ((36, 45), (39, 42), (48, 54), (31, 35), (60, 64)):
        assert FLIP_INDICES[face[a]] == face[b]


def test_coco17_entries():
    r = pose_result()
    entries = r.to_coco(image_id=139)
    assert len(entries) == 2
    e = entries[0]
    assert set(e) == {"image_id", "category_id", "bbox", "keypoints", "score"}
    assert e["image_id"] == 139 and e["category_id"] == 1 and e["bbox"] == [10.0, 20.0, 100.0, 200.0]
    trip = np.array(e["keypoints"]).reshape(17, 3)
    assert [KEYPOINT_NAMES[source(x)] for x in trip[:, 0]] == list(COCO17_NAMES)
    np.testing.assert_allclose(trip[:, 1], trip[:, 0] + 0.5)
    idx = [source(x) for x in trip[:, 0]]
    np.testing.assert_allclose(trip[:, 2], r.scores[0, idx], rtol=1e-6)  # v = the keypoint score
    assert e["score"] == pytest.approx(float(np.mean(r.scores[0, idx])), rel=1e-6)
    assert entries[1]["keypoints"][0] == pytest.approx(1000.0)  # the second person's nose
    assert json.loads(json.dumps(entries)) == entries
    assert r.to_coco(5, category_id=3)[0]["category_id"] == 3


def test_wholebody_entries():
    r = pose_result()
    (e, _) = r.to_coco(image_id=7, format="wholebody133")
    sizes = {"keypoints": 17, "foot_kpts": 6, "face_kpts": 68, "lefthand_kpts": 21, "righthand_kpts": 21}
    for key, n in sizes.items():
        assert len(e[key]) == 3 * n, key
    left = np.array(e["lefthand_kpts"]).reshape(21, 3)
    assert KEYPOINT_NAMES[source(left[0, 0])] == "left_wrist" and KEYPOINT_NAMES[source(left[4, 0])] == "left_thumb4"
    face = np.array(e["face_kpts"]).reshape(68, 3)
    assert (face[0] == 0).all() and (face[17] == 0).all()  # jaw and eyebrow points: no counterpart
    assert KEYPOINT_NAMES[source(face[8, 0])] == "tip_of_chin" and face[8, 2] > 0
    mapped = [i for i in WHOLEBODY133_FROM_308 if i is not None]
    assert e["score"] == pytest.approx(float(np.mean(r.scores[0, mapped])), rel=1e-6)


def test_to_coco_errors():
    r = pose_result()
    with pytest.raises(ConfigError, match=r"unknown COCO format 'coco18'; expected one of coco17, wholebody133"):
        r.to_coco(1, format="coco18")
    with pytest.raises(ConfigError, match=r"image_id must be an integer \(COCO ids are integers\), got 'a.jpg'"):
        r.to_coco("a.jpg")
    small = PoseResult(r.boxes, r.keypoints[:, :5], r.scores[:, :5], r.image_size)
    with pytest.raises(ConfigError, match=r"needs a 308-keypoint result \(or 17 for coco17\), this one has 5"):
        small.to_coco(1)
    k17 = PoseResult(r.boxes, r.keypoints[:, :17], r.scores[:, :17], r.image_size)
    assert np.array(k17.to_coco(1)[0]["keypoints"]).reshape(17, 3)[3, 0] == pytest.approx(6.0)
    empty = PoseResult(np.zeros((0, 4), np.float32), np.zeros((0, 308, 2), np.float32), np.zeros((0, 308), np.float32),
                       (10, 10))
    assert empty.to_coco(1) == []


def test_run_predictions_writes_coco_keypoints(tmp_path):
    import cv2

    from sapiens2_edge.runtime.outputs import run_predictions

    class Fake:
        task = "pose"

        def __call__(self, image, boxes=None):
            h, w = image.shape[:2]
            return PoseResult(np.array([[0, 0, w - 1, h - 1]], np.float32), np.full((1, 308, 2), 3.0, np.float32),
                              np.full((1, 308), 0.5, np.float32), (h, w))

    paths = []
    for name in ("000000000139.jpg", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((20, 30, 3), np.uint8))
        paths.append(tmp_path / name)
    run_predictions(Fake(), paths, tmp_path / "out")
    coco = json.loads((tmp_path / "out" / "coco_keypoints.json").read_text())
    assert [e["image_id"] for e in coco] == [139, 1]  # the COCO file number, else the position
    assert len(coco[0]["keypoints"]) == 51 and coco[0]["score"] == pytest.approx(0.5)
    assert coco[1]["bbox"] == [0.0, 0.0, 29.0, 19.0]
