"""The scale-out batch callable without a cluster: the factory pickles, a dict of numpy arrays in
(decoded images or paths, a video expanding into frames) gives rows equal to the single-process
Predictor, a bad input becomes an error row, the rows round-trip through Arrow/Parquet, and the
Ray-only parts say what to install."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from sapiens2_edge.errors import BackendUnavailableError, ConfigError
from sapiens2_edge.scale import BatchPredictor, PredictorFactory, RayBatchPredictor, columns, decode_row
from sapiens2_edge.scale.sources import list_inputs, plan, written_keys
from tests.fixtures.scale import VIDEO_FRAMES, artifact, detector, image_folder, reference


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    folder = image_folder(root / "imgs", 6)
    arts = {t: artifact(t, root) for t in ("pose", "seg", "normal", "pointmap")}
    return root, folder, arts


def rows_of(out: dict[str, np.ndarray]) -> list[dict]:
    n = len(out["path"])
    return [{k: v[i] for k, v in out.items()} for i in range(n)]


# Pose and seg results here do not depend on how images are batched; the native engine's float
# dense maps do in the last bits (other GEMM blocking), so those are compared at batch_size=1.
@pytest.mark.parametrize("task, batch_size", [("pose", 4), ("seg", 4), ("normal", 1), ("pointmap", 1)])
def test_batch_of_paths_equals_the_predictor(data, task, batch_size):
    _, folder, arts = data
    factory = PredictorFactory(arts[task], detector=detector(task), batch_size=batch_size)
    factory = pickle.loads(pickle.dumps(factory))
    udf = BatchPredictor(factory)
    paths = list_inputs(folder)
    out = udf({"path": np.array(paths), "frame": np.zeros(len(paths), np.int64)})
    assert set(out) == set(columns(task))
    rows = rows_of(out)
    assert len(rows) == len(paths) - 1 + VIDEO_FRAMES  # the video expanded into its frames
    ref = reference(arts[task], task, folder)
    bad = [r for r in rows if r["error"]]
    assert [r["path"] for r in bad] == [str(folder.resolve() / "bad.jpg")]
    assert bad[0]["error"].startswith("InvalidImageError: cannot decode image file")
    good = {(r["path"], int(r["frame"])): decode_row(task, r) for r in rows if not r["error"]}
    assert set(good) == set(ref)
    for key, arrays in ref.items():
        assert set(good[key]) == set(arrays), key
        for name, value in arrays.items():
            assert np.array_equal(good[key][name], value), (key, name)  # bit for bit
            assert good[key][name].dtype == value.dtype


def test_batch_of_decoded_images_and_a_refused_one(data):
    _, folder, arts = data
    udf = BatchPredictor(PredictorFactory(arts["seg"], batch_size=2))
    images = np.empty(3, dtype=object)
    images[:] = [np.zeros((40, 30, 3), np.uint8), np.zeros((40, 30), np.float32), np.full((50, 20, 3), 9, np.uint8)]
    rows = rows_of(udf({"image": images}))
    assert [bool(r["error"]) for r in rows] == [False, True, False]
    assert rows[1]["error"].startswith("InvalidImageError: ") and "float32" in rows[1]["error"]
    assert decode_row("seg", rows[2])["labels"].shape == (50, 20)
    with pytest.raises(ConfigError, match="'image' or a 'path' column"):
        udf({"pixels": images})


def test_arrow_rows_keep_plain_parquet_types(data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, folder, arts = data
    udf = RayBatchPredictor(PredictorFactory(arts["pose"], detector=detector("pose"), batch_size=2))
    paths = [p for p in list_inputs(folder) if p.endswith(".png")]
    tables = list(udf({"path": np.array(paths)}))
    assert len(paths) == 3 and [t.num_rows for t in tables] == [2, 1]  # one table per Predictor call
    table = pa.concat_tables(tables)
    assert table.schema.field("keypoints").type == pa.list_(pa.float32())
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet").to_pylist()
    ref = reference(arts["pose"], "pose", folder)
    for row in back:
        got = decode_row("pose", row)
        assert got["keypoints"].shape == (2, 308, 2)
        assert np.array_equal(got["keypoints"], ref[(row["path"], 0)]["keypoints"])
    assert written_keys(tmp_path) == {p: {0} for p in paths}


def test_factory_refuses_what_cannot_travel():
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        PredictorFactory("a", batch_size=0)
    with pytest.raises(ConfigError, match="opened again in every worker"):
        PredictorFactory(object())


def test_sources_and_resume_plan(data, tmp_path):
    _, folder, _ = data
    files = list_inputs(folder)
    assert len(files) == 6 + 1 + 1 and files == sorted(files)
    assert list_inputs(str(folder / "*.png")) == [f for f in files if f.endswith(".png")]
    assert list_inputs([folder / "img0000.jpg", str(folder / "img0000.jpg")]) == [str(folder / "img0000.jpg")]
    with pytest.raises(ConfigError, match="matches no files"):
        list_inputs(str(folder / "*.gif"))
    with pytest.raises(ConfigError, match="does not exist"):
        list_inputs(tmp_path / "nothing")
    video = str(folder / "clips" / "walk.avi")
    rows, skipped = plan(files, {files[0]: {0}, video: {0, 1}})
    assert skipped == 1 and [r["path"] for r in rows] == files[1:]
    assert next(r for r in rows if r["path"] == video)["skip_frames"] == [0, 1]
    rows, skipped = plan([video], {video: set(range(VIDEO_FRAMES))})
    assert (rows, skipped) == ([], 1)  # every frame the header announces is written


def test_truncated_parquet_file_counts_as_missing(tmp_path):
    (tmp_path / "part-0.parquet").write_bytes(b"PAR1 cut short")
    assert written_keys(tmp_path) == {}
    assert (tmp_path / "part-0.parquet.partial").exists() and not (tmp_path / "part-0.parquet").exists()


def test_without_ray_the_error_names_the_extra(monkeypatch, data):
    from sapiens2_edge.scale import predict_dataset

    monkeypatch.setitem(sys.modules, "ray", None)
    _, folder, arts = data
    with pytest.raises(BackendUnavailableError, match=r"pip install 'sapiens2-edge\[ray\]'"):
        predict_dataset(folder, arts["seg"], data[0] / "out")


@pytest.mark.parametrize("args, text", [
    (["--address", "auto"], "--address configure the Ray path; add --ray (or drop them)"),
    (["--concurrency", "2", "--gpus-per-actor", "1"], "--concurrency, --gpus-per-actor configure the Ray path"),
    (["--ray", "--fail-fast"], "--fail-fast does not apply to --ray: every failure is recorded as a row"),
    (["--ray", "--boxes", "b.json"], "--boxes is not read on the Ray path; use --detector"),
    (["--ray", "--concurrency", "0"], "--concurrency must be a positive integer, got 0"),
])
def test_predict_ray_option_mistakes(data, args, text, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    _, folder, arts = data
    res = CliRunner().invoke(app, ["predict", arts["seg"], "-i", str(folder), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    line = " ".join(res.output.split())
    assert line.startswith("error: ConfigError: ") and text in line, line
    assert not (tmp_path / "o").exists()  # refused before any work


def test_predict_ray_refuses_a_camera(data, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    res = CliRunner().invoke(app, ["predict", data[2]["seg"], "--camera", "0", "-o", str(tmp_path), "--ray"])
    assert res.exit_code == 2 and "error: ConfigError: --ray predicts files" in " ".join(res.output.split())
