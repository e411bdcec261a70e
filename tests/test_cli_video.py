"""``sapiens2-edge predict --input clip.avi``: an annotated video with the same frame count and one
JSON line per frame; the flags that cannot go together end in one typed line."""

from __future__ import annotations

import json

import cv2
from typer.testing import CliRunner

from sapiens2_edge.cli import app
from tests.fixtures.tiny import save, tiny_model
from tests.test_stream import N_FRAMES, frame_at, write_video

runner = CliRunner()


def test_predict_video_writes_every_frame(tmp_path):
    ckpt = save(tiny_model("pose"), tmp_path / "pose.safetensors")
    clip = write_video(tmp_path / "clip.avi", [frame_at(t) for t in range(N_FRAMES)])
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(ckpt), "--input", clip, "--output", str(out), "--json",
                              "--input-size", "128x96"])  # the tiny model's size (its default is 1024x768)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["frames"] == summary["written"] == N_FRAMES and summary["dropped"] == 0
    video = cv2.VideoCapture(summary["video"])
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    video.release()
    lines = (out / "clip.jsonl").read_text().splitlines()
    assert len(lines) == N_FRAMES
    first = json.loads(lines[0])
    assert first["frame_index"] == 0 and len(first["instances"]) == 1  # no detector: the whole frame


def test_predict_needs_one_source(tmp_path):
    ckpt = save(tiny_model("pose"), tmp_path / "pose.safetensors")
    for args in ([], ["--input", "x.avi", "--camera", "0"]):
        res = runner.invoke(app, ["predict", str(ckpt), "--output", str(tmp_path / "o"), *args])
        assert res.exit_code != 0
        assert "exactly one of --input" in res.output and "Traceback" not in res.output


def test_predict_video_refuses_boxes(tmp_path):
    ckpt = save(tiny_model("pose"), tmp_path / "pose.safetensors")
    boxes = tmp_path / "boxes.json"
    boxes.write_text("{}")
    res = runner.invoke(app, ["predict", str(ckpt), "--input", str(tmp_path / "clip.mp4"), "--boxes", str(boxes),
                              "--output", str(tmp_path / "o")])
    assert res.exit_code != 0 and "for a video or camera use --detector" in res.output
