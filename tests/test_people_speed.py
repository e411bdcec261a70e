"""Speed per person count: decoding a subset of the 308 keypoints (exactly the full decoding's
values for those keypoints) and the bench's people-count table (shape only, no timing asserts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.bench import PEOPLE_COUNTS, decode_rows, people_boxes, people_report, people_rows
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.runtime.detectors import FixedBoxes
from sapiens2_edge.tasks.heatmaps import decode_heatmaps
from sapiens2_edge.tasks.keypoints import COCO17_FROM_308, KEYPOINT_NAMES, keypoint_subset
from tests.fixtures.tiny import INPUT, tiny_model

RNG = np.random.default_rng(5)


def heatmaps_with_empty_channels() -> np.ndarray:
    hm = RNG.standard_normal((308, 32, 24)).astype(np.float32)
    empty = [0, 5, 41, 62, 100, 307]  # no positive maximum: the reference's step reads the channel before
    hm[empty] = -np.abs(hm[empty])
    return hm


@pytest.mark.parametrize("subset", [list(COCO17_FROM_308), [0, 5, 41, 62, 100, 307], [307, 0, 1], [62, 62], []])
def test_subset_decode_equals_those_channels_of_the_full_decode(subset):
    hm = heatmaps_with_empty_channels()
    full_k, full_s = decode_heatmaps(hm, INPUT)
    k, s = decode_heatmaps(hm, INPUT, keypoints=subset)
    np.testing.assert_array_equal(k, full_k[subset])
    np.testing.assert_array_equal(s, full_s[subset])
    batch_k, _ = decode_heatmaps(np.stack([hm, hm[::-1]]), INPUT, keypoints=subset)
    np.testing.assert_array_equal(batch_k[1], decode_heatmaps(hm[::-1], INPUT)[0][subset])


def test_subset_decode_refuses_bad_indices():
    with pytest.raises(InvalidTensorError, match=r"keypoints must be channel indices in 0..307, got \[308\]"):
        decode_heatmaps(heatmaps_with_empty_channels(), INPUT, keypoints=[308])


def test_keypoint_subsets_by_name():
    assert keypoint_subset("coco17") == COCO17_FROM_308 and keypoint_subset(None) is None
    assert keypoint_subset([KEYPOINT_NAMES[62], 41]) == (62, 41)
    with pytest.raises(ConfigError, match="'elbow' is neither one of the 308 keypoint names"):
        keypoint_subset(["elbow"])
    with pytest.raises(ConfigError, match="an empty list decodes nothing"):
        keypoint_subset([])


def test_predictor_subset_equals_the_full_result_exactly():
    model = tiny_model("pose")
    image = RNG.integers(0, 256, (150, 180, 3), dtype=np.uint8)
    boxes = [[5, 5, 80, 140], [90, 10, 175, 145], [20, 30, 160, 120]]
    full = s2e.Predictor(model, input_size=INPUT)(image, boxes=boxes)
    coco = s2e.Predictor(model, input_size=INPUT, keypoints="coco17")(image, boxes=boxes)
    np.testing.assert_array_equal(coco.keypoints, full.keypoints[:, list(COCO17_FROM_308)])
    np.testing.assert_array_equal(coco.scores, full.scores[:, list(COCO17_FROM_308)])
    names = s2e.Predictor(model, input_size=INPUT, keypoints=[KEYPOINT_NAMES[300], KEYPOINT_NAMES[3]], flip_test=False)
    unflipped = s2e.Predictor(model, input_size=INPUT, flip_test=False)(image, boxes=boxes)
    np.testing.assert_array_equal(names(image, boxes=boxes).keypoints, unflipped.keypoints[:, [300, 3]])
    with pytest.raises(ConfigError, match="keypoints= chooses pose keypoints to decode; this is a seg model"):
        s2e.Predictor(tiny_model("seg"), input_size=INPUT, keypoints="coco17")


def test_people_table_and_decoding_rows():
    pred = s2e.Predictor(tiny_model("pose"), input_size=INPUT, detector=FixedBoxes([[0, 0, 10, 10]]))
    rows = people_rows(pred, PEOPLE_COUNTS, warmup=0, runs=1)
    assert [r["people"] for r in rows] == [1, 2, 4, 8] and [r["crops"] for r in rows] == [2, 4, 8, 16]
    assert all(r["keypoints"] == 308 and r["detector"] == "FixedBoxes" and r["median_s"] > 0 for r in rows)
    assert pred.detector.calls == 4 and isinstance(pred.detector, FixedBoxes)  # its own detector ran, and is back
    dec = decode_rows(pred, "coco17", warmup=0, runs=1)
    assert [(r["decode"], r["keypoints"]) for r in dec] == [("all 308", 308), ("subset coco17", 17)]
    assert dec[0]["vs_all"] == 1.0
    text = people_report(rows, dec, "cmd")
    assert text.count("\n| ") == 4 + 2 + 2 and "| 8 | 16 |" in text
    assert len(people_boxes(8, (720, 1280))) == 8 and people_boxes(3, (720, 1280))[2, 2] < 1280


def test_bench_people_cli(tmp_path):
    root = s2e.export(tiny_model("pose"), tmp_path / "pose", format="torch", input_size=INPUT)
    out = CliRunner().invoke(app, ["bench", str(root), "--people", "--runs", "1", "--warmup", "0", "--keypoints",
                                   f"{KEYPOINT_NAMES[0]},{KEYPOINT_NAMES[9]}", "--detector", "none",
                                   "--output-dir", str(tmp_path / "b"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "b" / "people.json").read_text())
    assert [r["people"] for r in data["people"]] == [1, 2, 4, 8] and data["decode"][1]["keypoints"] == 2
    assert "load average" in (tmp_path / "b" / "people.md").read_text()
    out = CliRunner().invoke(app, ["bench", str(root), str(root), "--people"])
    assert out.exit_code == 2 and "bench --people times one pose model, got 2" in out.output
