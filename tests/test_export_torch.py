"""The ``torch`` export format (torch.export ``model.pt2``, AOTInductor on CUDA) and its runtime backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sapiens2_edge as s2e  # noqa: E402
from sapiens2_edge.errors import ArtifactError, ChecksumError, ConfigError, InputSizeError  # noqa: E402
from sapiens2_edge.exporters import export, read_manifest, verification_inputs  # noqa: E402
from sapiens2_edge.models.arch import ArchSpec  # noqa: E402
from sapiens2_edge.models.model import build_model  # noqa: E402
from sapiens2_edge.runtime import open_artifact  # noqa: E402
from sapiens2_edge.runtime.torch_backend import ExportedProgramBackend, open_runner  # noqa: E402
from tests.fixtures.tiny import HEADS, INPUT, save  # noqa: E402

# Three blocks, the middle one grouped-query (2 kv heads for 4 query heads): small and still GQA.
ARCH = ArchSpec(64, 3, 4, (4, 2, 4), 256, name="tiny-gqa3")
IMAGE = np.random.default_rng(3).integers(0, 256, (150, 110, 3), dtype=np.uint8)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def torch_run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def model():
    return build_model(ARCH, head=HEADS["seg"], seed=4)


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory):
    return export(model, tmp_path_factory.mktemp("t") / "seg-torch", format="torch", input_size=INPUT, max_batch=3)


def test_manifest_files_and_fidelity(artifact):
    m = read_manifest(artifact)
    assert (m.format, m.task, m.input_size, m.max_batch, m.rope_mode) == ("torch", "seg", [128, 96], 3, "bf16")
    files = {"model.pt2": "model", "reference.npz": "reference"}
    if torch.cuda.is_available():
        files["model_aoti.pt2"] = "aoti_package"
    assert {k: v["role"] for k, v in m.files.items()} == files
    assert m.fidelity["rel_l2"] <= 1e-4
    aoti = m.options["torch"]["aoti"]
    assert aoti.startswith("built for") if torch.cuda.is_available() else aoti.startswith("not built: no CUDA")


def test_predictor_matches_the_model(artifact, model):
    pred = s2e.Predictor(artifact, device="cpu")
    assert pred.backend == "torch" and "torch.export program (model.pt2) on cpu" in pred.runner.describe()
    x = verification_inputs(INPUT, batch=3, seed=7)  # other inputs than the export's verification
    got = pred.runner(x)
    assert len(got) == 1 and got[0].shape == (3, 29, 128, 96)
    assert rel_l2(torch_run(model, x), got[0]) <= 1e-4
    ref = s2e.Predictor(model, backend="torch", device="cpu", input_size=INPUT)
    assert np.array_equal(pred(IMAGE).labels, ref(IMAGE).labels)


def test_batch_limits(artifact, model):
    runner = open_artifact(artifact, "torch", device="cpu")[1]
    one = verification_inputs(INPUT, batch=1, seed=2)
    assert rel_l2(torch_run(model, one), runner(one)[0]) <= 1e-4  # the dynamic batch reaches 1
    with pytest.raises(InputSizeError, match="a batch of 4 is larger than the 3 this artifact was exported for"):
        runner(verification_inputs(INPUT, batch=4))


@pytest.mark.parametrize("scheme,opts", [("int8-weight", {}), ("int8", {}),
                                         ("int8", {"activation_mode": "static", "attention": "int8"})],
                         ids=["int8-weight", "int8", "int8-static-attention"])
def test_quantized_models_export(model, scheme, opts, tmp_path):
    """Static activations make torch.export write arithmetic on the symbolic batch (tokens per image
    times the batch) that the artifact check must accept; int8 attention inputs export as torch ops."""
    calib = [torch.from_numpy(verification_inputs(INPUT, 2, seed=s)) for s in range(2)]
    qmodel, _ = s2e.quantize(model, scheme, calibration=calib, input_size=INPUT, progress=False, **opts)
    root = export(qmodel, tmp_path / scheme, format="torch", input_size=INPUT, max_batch=2)
    m = read_manifest(root)
    assert m.precision == scheme and m.fidelity["rel_l2"] <= 1e-4  # against the quantized torch model
    program = torch.export.load(str(root / "model.pt2"))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    if scheme == "int8":  # W8A8 keeps the int8 GEMM as an aten op
        assert "aten._int_mm.default" in targets
    else:
        assert not any("_int_mm" in t for t in targets)
    x = verification_inputs(INPUT, batch=2, seed=9)
    assert rel_l2(torch_run(qmodel, x), open_artifact(root, device="cpu")[1](x)[0]) <= 1e-4


def test_cli_export_and_verify(model, tmp_path):
    from typer.testing import CliRunner

    from sapiens2_edge.cli import app

    ckpt = save(model, tmp_path / "seg.safetensors")
    out = tmp_path / "cli-torch"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "torch", "--output", str(out),
                                   "--input-size", "128x96", "--max-batch", "2"])
    assert res.exit_code == 0, res.output
    assert "(torch fp32, 128x96" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["verify", str(out)])
    assert res.exit_code == 0 and "passed" in res.output, res.output


def test_error_paths(artifact, model, tmp_path):
    with pytest.raises(ConfigError, match="torch export precision 'fp16' is not supported"):
        export(model, tmp_path / "fp16", format="torch", input_size=INPUT, precision="fp16")
    assert not (tmp_path / "fp16").exists()
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a torch.export archive")
    with pytest.raises(ArtifactError, match="cannot load the torch.export program .*garbage.pt2"):
        ExportedProgramBackend(garbage, device="cpu")
    manifest = read_manifest(artifact)
    manifest.format = "onnx"
    with pytest.raises(ConfigError, match="the torch backend opens torch artifacts here, not 'onnx' ones"):
        open_runner(artifact, manifest, "cpu", 1)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA device"):
            s2e.Predictor(artifact, device="cuda")
    altered = tmp_path / "altered"
    import shutil

    shutil.copytree(artifact, altered)
    data = bytearray((altered / "model.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (altered / "model.pt2").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="model.pt2 does not match its sha256"):
        s2e.Predictor(altered)


@cuda
@pytest.mark.gpu
def test_aoti_package_on_cuda(artifact, model):
    m = read_manifest(artifact)
    assert m.options["torch"]["aoti_fidelity"]["rel_l2"] <= 1e-3
    pred = s2e.Predictor(artifact, device="cuda")
    assert "AOTInductor package (model_aoti.pt2) on cuda" in pred.runner.describe()
    x = verification_inputs(INPUT, batch=2, seed=7)
    assert rel_l2(torch_run(model, x), pred.runner(x)[0]) <= 1e-3
    assert json.loads((artifact / "manifest.json").read_text())["files"]["model_aoti.pt2"]["size"] > 0
