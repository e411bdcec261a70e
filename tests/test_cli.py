"""The ``sapiens2-edge`` commands, run in-process through typer's runner and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError
from tests.fixtures.tiny import TINY, save, tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {t: save(tiny_model(t), d / f"tiny_{t}.safetensors") for t in ("seg", "pose", "normal")}


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (120, 90, 3)), ("b.png", (64, 130, 3))):
        cv2.imwrite(str(d / name), rng.integers(0, 256, shape, dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    return d


def test_info_table_and_json(ckpts):
    res = runner.invoke(app, ["info", str(ckpts["seg"])])
    assert res.exit_code == 0, res.output
    for text in ("task", "seg", "8..9 (2 kv heads)", "322", "F32: 321, BF16: 1"):
        assert text in res.output
    res = runner.invoke(app, ["info", str(ckpts["pose"]), "--json"])
    data = json.loads(res.output)
    assert data["task"] == "pose" and data["depth"] == 18 and data["tensors"] == 322
    assert data["parameters"] == sum(p.numel() for p in tiny_model("pose").official_state_dict().values())


def test_info_reads_no_weights(ckpts, monkeypatch):
    import sapiens2_edge.models.safetensors_io as ck

    monkeypatch.setattr(ck, "read_tensors", lambda *a, **k: pytest.fail("info read weights"))
    assert runner.invoke(app, ["info", str(ckpts["normal"])]).exit_code == 0


def test_info_corrupt_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    res = runner.invoke(app, ["info", str(bad)])
    assert res.exit_code == 2 and "CorruptCheckpointError" in res.output


def test_predict_folder_seg(ckpts, images, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(ckpts["seg"]), "--input", str(images), "--output", str(out),
                              "--input-size", "128x96"])
    assert res.exit_code == 0, res.output
    assert "2 image(s)" in res.output
    for stem, shape in (("a", (120, 90)), ("b", (64, 130))):
        assert np.load(out / f"{stem}_labels.npy").shape == shape
        assert cv2.imread(str(out / f"{stem}.png")).shape[:2] == shape
        assert json.loads((out / f"{stem}.json").read_text())


def test_predict_pose_with_boxes(ckpts, images, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[5, 5, 60, 100], [20, 10, 80, 110]]}))
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(ckpts["pose"]), "-i", str(images), "-o", str(out),
                              "--boxes", str(boxes), "--input-size", "128x96"])
    assert res.exit_code == 0, res.output
    demo = json.loads((out / "keypoints.json").read_text())
    assert demo["num_keypoints"] == 308 and [f["image_name"] for f in demo["frames"]] == ["a.jpg", "b.png"]
    a, b = demo["frames"]
    assert [i["bbox"] for i in a["instances"]] == [[5, 5, 60, 100], [20, 10, 80, 110]]
    assert b["instances"][0]["bbox"] == [0, 0, 129, 63]  # whole image when no box
    assert len(a["instances"][0]["keypoints"]) == 308 and len(a["instances"][0]["keypoint_scores"]) == 308


@pytest.mark.parametrize("args,msg", [
    (["--input", "missing.jpg"], "does not exist"),
    (["--input", "EMPTY"], "no images"),
    (["--input", "IMAGES", "--boxes", "BOXES"], "only used by pose models"),
    (["--input", "IMAGES", "--input-size", "big"], "must look like 1024x768"),
])
def test_predict_errors(ckpts, images, tmp_path, args, msg):
    (tmp_path / "empty").mkdir()
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[0, 0, 10, 10]]}))
    args = [{"EMPTY": str(tmp_path / "empty"), "IMAGES": str(images), "BOXES": str(boxes)}.get(a, a) for a in args]
    res = runner.invoke(app, ["predict", str(ckpts["seg"]), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and msg in res.output, res.output


@pytest.mark.slow  # onnx export and two bench processes: minutes on a small machine
def test_demo_runs_the_whole_chain_on_real_weights(tmp_path, monkeypatch):
    root = tmp_path / "host"
    save(tiny_model("seg"), root / "seg" / "sapiens2_0.4b_seg.safetensors")
    monkeypatch.setenv("SAPIENS_CHECKPOINT_ROOT", str(root))
    out = tmp_path / "d"
    res = runner.invoke(app, ["demo", "--output", str(out), "--input-size", "128x96", "--runs", "1", "--scheme", "int8"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "real weights" in text and "RANDOM" not in text and "int8: asked for" in text
    for stage in ("[1/5] load", "[2/5] quantize: int8", "[3/5] export", "[4/5] predict", "[5/5] bench"):
        assert stage in text, stage
    assert (out / "model_int8.safetensors").exists() and (out / "predictions" / "astronaut_labels.npy").exists()
    manifest = json.loads(next(out.glob("*-int8/manifest.json")).read_text())
    assert manifest["precision"] == "int8" and manifest["input_size"] == [128, 96]
    rows = json.loads((out / "bench" / "bench.json").read_text())["rows"]
    assert [r["artifact"] for r in rows][0] == "torch-fp32-eager" and len(rows) == 2
    assert rows[1]["speedup"] > 0 and f"for torch fp32 eager = {rows[1]['speedup']:.2f}x the speed" in text


@pytest.mark.slow  # onnx export: a minute or more on a small machine
def test_demo_random_weights_announced(tmp_path, monkeypatch):
    import sapiens2_edge.demo as demo

    monkeypatch.setenv("SAPIENS_CHECKPOINT_ROOT", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    # the random default is a 0.1b at 512x384; a tiny architecture keeps the test fast
    monkeypatch.setattr(demo, "RANDOM_DEFAULT", (TINY, (64, 48)))
    res = runner.invoke(app, ["demo", "--task", "pose", "--output", str(tmp_path / "d"), "--scheme", "int8-weight",
                              "--format", "onnx", "--no-bench"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "RANDOM WEIGHTS" in text and "the predictions are noise" in text and "[5/5]" not in text
    assert "input 64x48" in text and json.loads(next((tmp_path / "d").glob("*/manifest.json")).read_text())[
        "input_size"] == [64, 48]  # the random default's size, not the model's 1024x768
    assert json.loads((tmp_path / "d" / "predictions" / "keypoints.json").read_text())["num_keypoints"] == 308


def test_calibration_views_are_distinct_rgb_crops():
    from sapiens2_edge.demo import calibration_views

    img = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    views = calibration_views(img, 5)
    assert len(views) == 5 and views[0] is img
    assert all(v.dtype == np.uint8 and v.ndim == 3 and 36 <= v.shape[0] <= 60 for v in views)
    assert len({v.tobytes() for v in views}) == 5
    with pytest.raises(ConfigError, match="RGB uint8 image"):
        calibration_views(img[..., 0], 3)


def test_demo_unknown_task(tmp_path):
    res = runner.invoke(app, ["demo", "--task", "depth", "--output", str(tmp_path)])
    assert res.exit_code == 2 and "'depth' is not one of 'pose', 'seg', 'normal', 'pointmap', 'albedo'" in res.output


def test_console_script_runs(ckpts):
    res = subprocess.run([sys.executable, "-m", "sapiens2_edge.cli", "info", str(ckpts["seg"]), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["task"] == "seg"


def _sparse_official_file(path, arch_name: str, task: str, dtype: str = "BF16"):
    """A full-size official-layout file whose data region is a sparse hole: only the header is real."""
    import struct

    from sapiens2_edge.models.arch import PRESETS, backbone_shapes, default_head_spec, head_shapes

    arch = PRESETS[arch_name]
    shapes = {f"backbone.{k}": v for k, v in backbone_shapes(arch).items()}
    shapes.update({f"decode_head.{k}": v for k, v in head_shapes(default_head_spec(task, arch)).items()})
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def test_info_on_full_size_official_layout(tmp_path):
    path = _sparse_official_file(tmp_path / "sapiens2_0.4b_seg.safetensors", "sapiens2_0.4b", "seg")
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["arch"] == "sapiens2_0.4b" and data["task"] == "seg" and data["depth"] == 24
    assert data["backbone_parameters"] == 395_450_384 and data["gqa_blocks"] == "8..15 (8 kv heads)"
    assert data["tensors"] == 414 + 10 and data["dtypes"] == {"BF16": 424}


def test_hf_lookup_with_default_cache_settings(tmp_path, monkeypatch):
    """No HF_* variables set: huggingface_hub's own defaults are read (a lazy submodule there)."""
    from sapiens2_edge.errors import CheckpointNotFoundError
    from sapiens2_edge.models.checkpoint import resolve_checkpoint
    from sapiens2_edge.runtime.torch_backend import default_checkpoint

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAPIENS_CHECKPOINT_ROOT", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match="facebook/sapiens2-seg-9b"):
        resolve_checkpoint("facebook/sapiens2-seg-9b")
    assert default_checkpoint("seg", "9b") is None
