"""Scale-out on a local Ray cluster (this machine only: ``address="local"``, 2 CPUs, a small object
store, no dashboard, one actor): every image and video frame exactly once in the Parquet output,
rows equal to the single-process Predictor bit for bit, the corrupt image reported and skipped,
a rerun after an interrupted job writing only the missing rows, and ``predict --ray``."""

from __future__ import annotations

import logging
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from sapiens2_edge.cli import app
from sapiens2_edge.scale import decode_row, predict_dataset
from sapiens2_edge.scale.sources import list_inputs
from tests.fixtures.scale import VIDEO_FRAMES, artifact, detector, image_folder, reference


@pytest.fixture(scope="module")
def cluster():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def read_rows(out) -> list[dict]:
    return [r for f in sorted(out.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def check_against_reference(rows, task, ref, bad):
    keys = Counter((r["path"], r["frame"]) for r in rows)
    assert set(keys) == set(ref) | {(bad, 0)} and set(keys.values()) == {1}  # every input exactly once
    for r in rows:
        if r["path"] == bad:
            assert r["error"].startswith("InvalidImageError: cannot decode image file")
            continue
        assert r["error"] == ""
        got = decode_row(task, r)
        for name, value in ref[(r["path"], r["frame"])].items():
            assert np.array_equal(got[name], value) and got[name].dtype == value.dtype, (r["path"], name)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-small")
    folder = image_folder(root / "imgs", 10)
    return root, folder, artifact("seg", root)


def test_predict_ray_command_seg(cluster, small):
    root, folder, art = small
    out = root / "out"
    res = CliRunner().invoke(app, ["predict", art, "--input", str(folder), "--output", str(out), "--ray",
                                   "--concurrency", "1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the console wraps long lines
    assert "20 row(s) written (19 ok, 1 failed)" in text and "rows/s" in text and "actor-" in text
    assert f"failed: {folder.resolve() / 'bad.jpg'} frame 0: InvalidImageError" in text
    check_against_reference(read_rows(out), "seg", reference(art, "seg", folder), str(folder.resolve() / "bad.jpg"))
    res = CliRunner().invoke(app, ["predict", art, "-i", str(folder / "*.png"), "-o", str(out), "--ray", "--json"])
    assert res.exit_code == 0, res.output
    assert '"rows": 0' in res.output and '"skipped": 5' in res.output  # all written already


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-big")
    folder = image_folder(root / "imgs", 200)
    art = artifact("pose", root)
    return root, folder, art, reference(art, "pose", folder)


@pytest.mark.slow
def test_pose_200_images_and_a_video_bit_for_bit(cluster, big):
    root, folder, art, ref = big
    out = root / "full"
    summary = predict_dataset(folder, art, out, detector=detector("pose"), batch_size=4, concurrency=1,
                              progress=False)
    bad = str(folder.resolve() / "bad.jpg")
    assert (summary.inputs, summary.skipped, summary.rows, summary.ok) == (202, 0, 201 + VIDEO_FRAMES, 200 + VIDEO_FRAMES)
    assert [(p, f) for p, f, _ in summary.failures] == [(bad, 0)] and summary.duplicates == 0
    assert len(summary.workers) == 1 and sum(n for n, _ in summary.workers.values()) == summary.rows
    check_against_reference(read_rows(out), "pose", ref, bad)


@pytest.mark.slow
def test_rerun_after_an_interrupted_job_writes_only_the_missing_rows(cluster, big):
    root, folder, art, ref = big
    out = root / "resumed"
    video = str(folder.resolve() / "clips" / "walk.avi")
    inputs = [p for p in list_inputs(folder) if p != video]  # 200 images and bad.jpg
    first = predict_dataset(inputs[:120] + [video], art, out, detector=detector("pose"), batch_size=4,
                            progress=False)
    # What a killed job leaves: the video's last frames missing, a file cut off in the middle of writing.
    for f in out.glob("*.parquet"):
        table = pq.read_table(f)
        rows = zip(table["path"].to_pylist(), table["frame"].to_pylist(), strict=True)
        keep = [not (p == video and fr >= 4) for p, fr in rows]
        pq.write_table(table.filter(keep), f)
    victim = next(iter(sorted(out.glob("*.parquet"))))
    shutil.copy(victim, out / "cut.parquet")
    (out / "cut.parquet").write_bytes((out / "cut.parquet").read_bytes()[:200])
    before = {f: f.read_bytes() for f in out.glob("*.parquet") if f.name != "cut.parquet"}
    second = predict_dataset(folder, art, out, detector=detector("pose"), batch_size=4, progress=False)
    assert all(f.read_bytes() == data for f, data in before.items())  # nothing written is rewritten
    new = [r for f in sorted(set(out.glob("*.parquet")) - set(before)) for r in pq.read_table(f).to_pylist()]
    expected = {(p, 0) for p in inputs[120:]} | {(video, f) for f in range(4, VIDEO_FRAMES)}
    assert sorted((r["path"], r["frame"]) for r in new) == sorted(expected)
    assert first.rows == 120 + VIDEO_FRAMES and second.rows == len(expected) and second.skipped == 120
    assert (out / "cut.parquet.partial").exists()
    check_against_reference(read_rows(out), "pose", ref, str(folder.resolve() / "bad.jpg"))
    third = predict_dataset(folder, art, out, detector=detector("pose"), progress=False)
    assert (third.rows, third.skipped) == (0, 202)
