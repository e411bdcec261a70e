"""Every mistake a user can make on the command line ends in one typed line, exit code != 0, no
traceback, and (where the mistake can be seen up front) before any slow work starts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import sapiens2_edge
from sapiens2_edge.artifact.formats import ALL_SCHEMES, FORMATS
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError
from sapiens2_edge.runtime.opener import BACKENDS
from sapiens2_edge.spec import TASKS
from sapiens2_edge.workflows import FLOAT_SCHEMES, check_scheme_format
from tests.fixtures.tiny import save, tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    seg, pose = save(tiny_model("seg"), d / "seg.safetensors"), save(tiny_model("pose"), d / "pose.safetensors")
    q, _ = sapiens2_edge.quantize(tiny_model("seg"), scheme="int8-weight", progress=False)
    native = sapiens2_edge.export(q, d / "native", format="native", input_size=(64, 48), max_batch=1)
    images = d / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8))
    (images / "b.jpg").write_bytes(b"not a jpeg at all")  # a corrupt image between good ones
    cv2.imwrite(str(images / "c.png"), np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    boxes = d / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[10, 10, 5, 5]]}))
    return {"SEG": str(seg), "POSE": str(pose), "NATIVE": str(native), "IMAGES": str(images), "BOXES": str(boxes),
            "OUT": str(d / "out"), "A": str(images / "a.jpg")}


def _one_line_error(res, typed: str, text: str, alone: bool = True) -> None:
    """Exit code != 0, no traceback, one ``error:`` line, the last (``alone``: the only line)."""
    lines = res.output.strip().splitlines()
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output, res.output
    assert [i for i, line in enumerate(lines) if line.startswith("error:")] == [len(lines) - 1], res.output
    assert len(lines) == 1 or not alone, res.output
    assert lines[-1].startswith(f"error: {typed}: "), lines[-1]
    assert text in lines[-1], lines[-1]


MISTAKES = [
    # unknown choices: the message lists the ones that exist (from the registries)
    (["export", "SEG", "--format", "tflite", "-o", "OUT"], "BadParameter",
     "'tflite' is not one of " + ", ".join(repr(f) for f in FORMATS)),
    (["quantize", "SEG", "--scheme", "int4", "--calib", "IMAGES", "-o", "OUT"], "BadParameter",
     "'int4' is not one of " + ", ".join(repr(s) for s in ALL_SCHEMES)),
    (["predict", "NATIVE", "-i", "A", "-o", "OUT", "--backend", "tensorrt"], "BadParameter",
     "'tensorrt' is not one of " + ", ".join(repr(b) for b in BACKENDS)),
    (["demo", "--task", "depth", "--output", "OUT"], "BadParameter",
     "'depth' is not one of " + ", ".join(repr(t) for t in TASKS)),
    (["demo", "--format", "tflite", "--output", "OUT"], "BadParameter", "'tflite' is not one of 'auto', 'onnx'"),
    # scheme x format: refused before quantizing, the working alternative named
    (["export", "SEG", "--format", "native", "--scheme", "fp8", "--calib", "IMAGES", "-o", "OUT"], "ConfigError",
     "a native artifact cannot carry scheme fp8 (native takes fp16, int8-weight, int8, mixed): use --scheme "
     "int8-weight with --format native, or --format onnx / torch for fp8"),
    (["export", "SEG", "--format", "native", "--scheme", "int4-weight", "-o", "OUT"], "ConfigError",
     "a native artifact cannot carry scheme int4-weight (native takes fp16, int8-weight, int8, mixed)"),
    (["export", "SEG", "--format", "executorch", "--scheme", "int8", "--calib", "IMAGES", "-o", "OUT"], "ConfigError",
     "a executorch artifact quantizes activations at run time (per token) and cannot carry the calibrated static "
     "ranges of --activations static: use --activations dynamic with --format executorch, or --format onnx / "
     "openvino / coreml / torch / native / ort for static int8"),
    (["export", "SEG", "--format", "openvino", "--scheme", "fp8", "--calib", "IMAGES", "-o", "OUT"], "ConfigError",
     "use --scheme int8-weight with --format openvino, or --format onnx / torch for fp8"),
    (["export", "SEG", "--format", "onnx", "--scheme", "int8", "-o", "OUT"], "ConfigError",
     "needs calibration images: pass --calib DIR"),
    (["export", "SEG", "--format", "openvino", "--scheme", "int8-weight", "--attention", "int8", "-o", "OUT"],
     "ConfigError", "--attention int8 reads the q, k, v ranges from calibration images: pass --calib DIR"),
    (["export", "SEG", "--format", "openvino", "--attention", "int8", "-o", "OUT"], "ConfigError",
     "--attention int8 is part of a quantization recipe: pass --scheme (e.g. int8), not a float export"),
    (["export", "SEG", "--format", "openvino", "--scheme", "bf16", "--attention", "int8", "-o", "OUT"],
     "ConfigError", "--attention int8 is part of a quantization recipe: pass --scheme (e.g. int8), not --scheme bf16"),
    (["export", "SEG", "--format", "openvino", "--scheme", "int8-weight", "--head", "int8", "-o", "OUT"],
     "ConfigError", "--head int8 reads the head's input ranges from calibration images: pass --calib DIR"),
    (["export", "SEG", "--format", "onnx", "--head", "int8", "-o", "OUT"], "ConfigError",
     "--head int8 is part of a quantization recipe: pass --scheme (e.g. int8), not a float export"),
    (["export", "SEG", "--format", "coreml", "--scheme", "int8", "--head", "int8", "--calib", "IMAGES", "-o", "OUT"],
     "ConfigError", "--head int8 exports to onnx, openvino, torch, native, ort; the coreml format has no int8 head"),
    (["export", "SEG", "--format", "openvino", "--graph", "standard", "-o", "OUT"], "ConfigError",
     "--graph chooses the form of an ONNX graph (onnx, ort); the openvino format has no such choice"),
    (["export", "SEG", "--format", "onnx", "--calib-input-size", "64x48", "-o", "OUT"], "ConfigError",
     "--calib-input-size sets the input of the calibration forwards, and this export runs none (they need --calib DIR"),
    (["quantize", "SEG", "--calib", "IMAGES", "-o", "OUT", "--calib-input-size", "half"], "ConfigError",
     "--calib-input-size must look like 1024x768 (H x W), got 'half'"),
    (["quantize", "SEG", "--calib", "IMAGES", "-o", "OUT", "--activation-mode", "static", "--calib-input-size",
      "60x40"], "InputSizeError", "calibration_input_size: input size 60x40 is not a positive multiple of 16", False),
    # devices
    (["predict", "NATIVE", "-i", "A", "-o", "OUT", "--device", "tpu"], "ConfigError",
     "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["predict", "NATIVE", "-i", "A", "-o", "OUT", "--device", "cuda"], "BackendUnavailableError",
     "--device cuda: no CUDA device is available on this machine"),
    # counts
    (["bench", "NATIVE", "--runs", "0"], "ConfigError", "--runs must be at least 1 (the timed runs per row), got 0"),
    (["bench", "NATIVE", "--warmup", "-1"], "ConfigError", "--warmup must be 0 or more, got -1"),
    (["demo", "--runs", "0", "--output", "OUT"], "ConfigError", "--runs must be at least 1"),
    # square brackets in a message are printed as they are, not read as markup
    (["predict", "POSE", "-i", "A", "-o", "OUT", "--boxes", "BOXES", "--input-size", "128x96", "--fail-fast"],
     "InvalidBoxError", "expected x2 > x1 and y2 > y1 ([x1, y1, x2, y2] order)", False),
    (["predict", "NATIVE", "-i", "IMAGES", "-o", "OUT", "--fail-fast"], "InvalidImageError", "b.jpg", False),
    (["info", "OUT/missing.safetensors"], "CheckpointNotFoundError", "missing.safetensors"),
]


@pytest.mark.parametrize("argv,typed,text,up_front", [(*m, True)[:4] for m in MISTAKES],
                         ids=[" ".join(m[0][:3]) for m in MISTAKES])
def test_mistake_is_one_typed_line(files, monkeypatch, argv, typed, text, up_front):
    import sapiens2_edge.loading
    import sapiens2_edge.workflows

    def no_work(*a, **k):
        raise AssertionError("a mistake that can be seen up front started the slow work")
    if up_front:  # the mistake is refused before any model is loaded or quantized
        monkeypatch.setattr(sapiens2_edge.loading, "load_model", no_work)
        monkeypatch.setattr(sapiens2_edge.workflows, "quantize_and_save", no_work)
    monkeypatch.setattr(sapiens2_edge.workflows, "cuda_devices", lambda: (0, "torch"))
    args = [files.get(a, a.replace("OUT", files["OUT"])) for a in argv]
    _one_line_error(runner.invoke(app, args), typed, text, alone=up_front)


def test_unexpected_failure_is_one_line_too(files, monkeypatch):
    import sapiens2_edge.runtime.verify as verify

    def boom(*a, **k):
        raise RuntimeError("Device with \"CUDA\" name is not registered [GPU]")
    monkeypatch.setattr(verify, "verify_artifact", boom)
    monkeypatch.setattr("sapiens2_edge.runtime.verify_artifact", boom)
    res = runner.invoke(app, ["verify", files["NATIVE"]])
    _one_line_error(res, "RuntimeError", 'Device with "CUDA" name is not registered [GPU] (an unexpected failure; '
                                         "SAPIENS2_EDGE_DEBUG=1 shows the traceback)")


def test_missing_package_names_the_extra(monkeypatch, files):
    import sapiens2_edge.runtime.verify as verify

    def missing(*a, **k):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    monkeypatch.setattr("sapiens2_edge.runtime.verify_artifact", missing)
    assert verify  # the module the CLI reads verify_artifact from
    _one_line_error(runner.invoke(app, ["verify", files["NATIVE"]]), "BackendUnavailableError",
                    'needs onnxruntime, which is not installed: pip install "sapiens2-edge[onnx]"')


def test_folder_run_reports_a_bad_image_and_goes_on(files, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(app, ["predict", files["SEG"], "-i", files["IMAGES"], "-o", str(out), "--input-size", "64x48"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "2 image(s) ok, 1 failed" in text and "skipped b.jpg: InvalidImageError: cannot decode image file" in text
    assert "failed: " in text and "b.jpg" in text.split("failed: ")[-1]
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "c.png"]
    assert np.load(out / "c_labels.npy").shape == (50, 70)


def test_predict_json(files, tmp_path):
    res = runner.invoke(app, ["predict", files["NATIVE"], "-i", files["IMAGES"], "-o", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] == 2 and data["backend"] == "native" and data["task"] == "seg"
    assert [f["image"].endswith("b.jpg") for f in data["failed"]] == [True]
    assert data["failed"][0]["error"].startswith("error: InvalidImageError: ")


def test_verify_and_info_json(files):
    res = runner.invoke(app, ["verify", files["NATIVE"], "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["passed"] is True and data["backend"] == "native" and set(data["outputs"]) == {"logits"}
    res = runner.invoke(app, ["info", files["NATIVE"], "--json"])
    info = json.loads(res.stdout)
    assert info["artifact"] == "native int8-weight" and info["input_size"] == "64x48" and info["task"] == "seg"
    assert info["runs_on"].startswith("native")


def test_bench_json_and_its_rows(files, tmp_path):
    res = runner.invoke(app, ["bench", files["NATIVE"], "--runs", "2", "--no-baseline", "--json",
                              "--output-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert len(rows) == 1 and rows[0]["count"] == 2 and rows[0]["backend"] == "native"
    assert rows[0]["artifact"] == "native (native int8-weight)"  # the scheme from the manifest, not "fp32"
    assert rows[0]["min_s"] <= rows[0]["median_s"] <= rows[0]["max_s"]


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"sapiens2-edge {sapiens2_edge.__version__}"


@pytest.mark.parametrize("command,option,names", [
    ("export", "format", list(FORMATS)),
    ("export", "scheme", [*FLOAT_SCHEMES, "int8-weight", "int4-weight", "int8", "fp8"]),
    ("predict", "backend", list(BACKENDS)), ("verify", "backend", list(BACKENDS)), ("bench", "backend", list(BACKENDS)),
    ("quantize", "scheme", list(ALL_SCHEMES)), ("demo", "task", list(TASKS)), ("demo", "format", ["auto", *FORMATS]),
    ("init-random", "task", [*TASKS, "none"]), ("export", "attention", ["float", "int8"]),
    ("export", "graph", ["auto", "onnxruntime", "standard"]),
    ("quantize", "attention", ["float", "int8"]),
])
def test_choices_come_from_the_registries(command, option, names):
    # the refusal of a bogus value lists the choices the parser has: exactly the registry's
    required = {"export": ["X", "-o", "Y"], "predict": ["X", "-i", "Y", "-o", "Z"], "verify": ["X"],
                "bench": ["X"], "quantize": ["X", "--calib", "Y", "-o", "Z"], "demo": [], "init-random": ["X"]}
    res = runner.invoke(app, [command, *required[command], f"--{option}", "bogus"])
    listed = ", ".join(repr(n) for n in names)
    assert res.exit_code == 2 and f"'bogus' is not one of {listed}." in res.output, res.output
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0 and names[0] in res.output


def test_cli_registries_match_the_library():
    from sapiens2_edge.cli import Activations, AttentionInputs, Dtype
    from sapiens2_edge.models.random_init import CHECKPOINT_DTYPES
    from sapiens2_edge.quantization import SCHEMES
    from sapiens2_edge.quantization.config import ACT_MODES, ATTENTION_MODES

    assert ALL_SCHEMES == SCHEMES
    assert {a.value for a in Activations} == set(ACT_MODES)
    assert tuple(a.value for a in AttentionInputs) == ATTENTION_MODES
    assert {d.value for d in Dtype} == set(CHECKPOINT_DTYPES)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("scheme", [*FLOAT_SCHEMES, *ALL_SCHEMES])
def test_scheme_format_check_follows_the_registry(scheme, fmt):
    f = FORMATS[fmt]
    takes = f.precisions if scheme in FLOAT_SCHEMES else f.schemes
    if scheme in takes:
        check_scheme_format(scheme, fmt)
        return
    with pytest.raises(ConfigError, match=f"a {fmt} artifact cannot carry scheme {scheme}") as info:
        check_scheme_format(scheme, fmt)
    alternative = str(info.value).split("use --scheme ")[1].split()[0]
    check_scheme_format(alternative, fmt)  # the alternative it names works
    for other in str(info.value).split("--format ")[-1].split(" for ")[0].split(" / "):
        if other != fmt:
            check_scheme_format(scheme, other)  # and so do the formats it names


def test_export_passes_every_flag_on_with_a_quantizing_scheme(files, monkeypatch):
    """--scheme int8 with --detector and --graph: the export call gets the scheme's work and the
    detector and graph form too (the call is stopped there: what it was given is the subject)."""
    import sapiens2_edge

    given = {}

    def fake_export(model, out, **kwargs):
        given.update(kwargs)
        raise ConfigError("stopped at the export call")
    monkeypatch.setattr(sapiens2_edge, "export", fake_export)
    res = runner.invoke(app, ["export", files["POSE"], "--format", "onnx", "--scheme", "int8", "--calib", files["IMAGES"],
                              "--detector", files["OUT"], "--graph", "standard", "-o", files["OUT"] + "/pose"])
    _one_line_error(res, "ConfigError", "stopped at the export call", alone=False)  # after the progress lines
    assert given["scheme"] == "int8" and given["detector"] == Path(files["OUT"]) and given["graph"] == "standard"
    assert given["calibration"] and "precision" not in given
