"""bf16 inference of checkpoints in torch (``Predictor(..., precision="bf16")``): its fidelity against
the fp32 model on the trained fixtures, the choice of ``auto``, OpenVINO's attention kernel under it,
and every refusal a user can meet."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.artifact import TOLERANCE, read_manifest
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ArtifactError, ConfigError
from sapiens2_edge.models import bf16 as bf16_forwards
from sapiens2_edge.quantization.fidelity import task_fidelity
from sapiens2_edge.runtime import torch_backend
from sapiens2_edge.runtime.torch_backend import TorchBackend
from sapiens2_edge.scale.batch import PredictorFactory
from sapiens2_edge.tasks import get_pipeline
from tests.fixtures.gates import HELD_OUT_SEED, SIZE
from tests.fixtures.synthetic import VISIBLE_KEYPOINTS, make_people
from tests.fixtures.tiny import INPUT, tiny_model

DATA = Path(__file__).parent / "fixtures" / "data"
NATIVE = (True, "this CPU has avx512_bf16")
NOT_NATIVE = (False, "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)")


@pytest.fixture
def native_bf16(monkeypatch):
    """A CPU taken as computing bf16 natively (torch emulates it elsewhere: the same values, slower)."""
    monkeypatch.setattr(torch_backend, "bf16_flags", lambda: NATIVE)
    monkeypatch.setattr(bf16_forwards, "bf16_flags", lambda cpuinfo=None: NATIVE)


def held_out_batch(task: str) -> np.ndarray:
    pipe = get_pipeline(task, input_size=SIZE, **({"flip_test": False} if task == "pose" else {}))
    images = make_people(16, seed=HELD_OUT_SEED, size=SIZE)[0]
    return np.concatenate([pipe.preprocess(im)[0] for im in images])


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_bf16_keeps_the_int8_gates_on_the_trained_fixtures(task, native_bf16):
    """Measured: seg agreement 0.999 (rel L2 4.1e-3), pose mean displacement 0.15 px (rel L2 6.7e-3);
    the gates are the int8 ones (>= 99 %, <= 0.5 px), and bf16 must really have run (not fp32)."""
    model = s2e.load_model(DATA / f"trained_tiny_{task}.safetensors")
    x = held_out_batch(task)
    ref = TorchBackend(model, "cpu")(x)
    got = TorchBackend(model, "cpu", precision="bf16")(x)
    rel = np.linalg.norm(got[0] - ref[0]) / np.linalg.norm(ref[0])
    assert 1e-4 < rel < 2e-2
    fid = task_fidelity(task, ref, got, SIZE, keypoints=VISIBLE_KEYPOINTS if task == "pose" else None)
    if task == "seg":
        assert fid["seg_agreement"] >= 0.99, fid
    else:
        assert fid["pose_mean_px"] <= 0.5, fid


def test_bf16_long_attentions_go_to_openvino_and_give_torchs_bf16_outputs(native_bf16, monkeypatch):
    ova = pytest.importorskip("sapiens2_edge.kernels.openvino_attention")
    pytest.importorskip("openvino")
    model = tiny_model("seg")
    x = np.random.default_rng(0).standard_normal((2, 3, *INPUT)).astype(np.float32)
    monkeypatch.setattr(ova, "available", lambda: False)
    plain = TorchBackend(model, "cpu", precision="bf16")
    assert "OpenVINO" not in plain.describe() and "bf16 autocast" in plain.describe()
    want = plain(x)
    monkeypatch.setattr(ova, "available", lambda: True)
    monkeypatch.setattr(ova, "MIN_TOKENS", 1)  # the tiny model's 57 tokens count as long
    calls = []
    call = ova.OpenVINOAttention.__call__
    monkeypatch.setattr(ova.OpenVINOAttention, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    fast = TorchBackend(model, "cpu", precision="bf16")
    assert "long attentions on OpenVINO's bf16 kernel" in fast.describe()
    got = fast(x)
    assert len(calls) == len(model.backbone.blocks)
    assert all(m.product is None for m in model.modules() if hasattr(m, "product"))  # restored after the call
    ref = TorchBackend(model, "cpu")(x)
    for g, w, r in zip(got, want, ref, strict=True):  # both bf16 roundings, the same distance from fp32
        assert np.linalg.norm(g - w) / np.linalg.norm(r) < 2e-2
    fast(x)  # the graph of that shape is compiled once and kept
    assert len(fast._attention._requests) == 1


def test_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(bf16_forwards, "bf16_flags", lambda cpuinfo=None: NATIVE)
    monkeypatch.setattr(torch_backend, "bf16_flags", lambda: NATIVE)
    assert torch_backend.resolve_precision("auto", cpu) == ("bf16", "auto: this CPU has avx512_bf16")
    monkeypatch.setattr(bf16_forwards, "bf16_flags", lambda cpuinfo=None: NOT_NATIVE)
    assert torch_backend.resolve_precision("auto", cpu) == ("fp32", f"auto: {NOT_NATIVE[1]}")
    assert torch_backend.resolve_precision("fp32", cpu) == ("fp32", "asked for")
    assert torch_backend.resolve_precision("auto", torch.device("cuda")) == ("fp32", "auto: fp32 on cuda")


def test_bf16_is_refused_where_torch_would_emulate_it(monkeypatch):
    monkeypatch.setattr(torch_backend, "bf16_flags", lambda: NOT_NATIVE)
    with pytest.raises(ConfigError, match=r"precision='bf16' runs slower than fp32 on this CPU: this CPU has no native "
                                          r"bf16 .*use precision='fp32' \(or 'auto'"):
        TorchBackend(tiny_model("seg"), "cpu", precision="bf16")


def test_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match="precision 'fp16' is not one a checkpoint runs at in torch; expected one of "
                                          "auto, fp32, bf16"):
        s2e.Predictor(tiny_model("seg"), precision="fp16")


def test_predictor_runs_a_checkpoint_in_bf16_and_says_why(native_bf16):
    pred = s2e.Predictor(tiny_model("seg"), precision="auto", device="cpu", input_size=INPUT)
    assert pred.backend_reason == "auto: a checkpoint runs on torch; bf16: auto: this CPU has avx512_bf16"
    assert pred.runner.precision == "bf16"
    image = np.random.default_rng(1).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    assert np.mean(pred(image).labels == s2e.Predictor(tiny_model("seg"), input_size=INPUT)(image).labels) > 0.9
    assert s2e.Predictor(tiny_model("seg"), input_size=INPUT).backend_reason == "auto: a checkpoint runs on torch"


def test_precision_with_an_artifact_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")  # an export's file: the folder is an artifact
    with pytest.raises(ConfigError, match="precision='bf16' chooses how torch runs a checkpoint; an artifact runs at "
                                          "the precision it was exported for"):
        s2e.Predictor(tmp_path, precision="bf16")


def test_cli_predict_precision(tmp_path, native_bf16):
    ckpt = tmp_path / "seg.safetensors"
    from tests.fixtures.tiny import save

    save(tiny_model("seg"), ckpt)
    images = tmp_path / "in"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((96, 80, 3), np.uint8)).save(images / "a.png")
    r = CliRunner().invoke(app, ["predict", str(ckpt), "-i", str(images), "-o", str(tmp_path / "out"),
                                 "--precision", "bf16", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "bf16: asked for" in r.output and "eager bf16 autocast" in r.output
    artifact = tmp_path / "art"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(b"")
    r = CliRunner().invoke(app, ["predict", str(artifact), "-i", str(images), "-o", str(tmp_path / "o2"),
                                 "--precision", "bf16"])
    assert r.exit_code != 0 and "chooses how torch runs a checkpoint" in r.output


def test_the_scale_out_factory_carries_the_precision(tmp_path, native_bf16):
    ckpt = tmp_path / "seg.safetensors"
    from tests.fixtures.tiny import save

    save(tiny_model("seg"), ckpt)
    factory = pickle.loads(pickle.dumps(PredictorFactory(str(ckpt), precision="bf16", device="cpu")))
    assert factory().runner.precision == "bf16"
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "model.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="precision='bf16' chooses how torch runs a checkpoint"):
        PredictorFactory(str(tmp_path / "art"), precision="bf16")  # in the driver, not in every worker


def test_a_bf16_torch_program_computes_the_eager_bf16_forward(tmp_path):
    """``export --format torch --scheme bf16``: the program records the autocast region and holds the GEMM
    weights in bf16; it gives the eager bf16 outputs bit for bit (without OpenVINO's attention), verifies
    within the bf16 bound against fp32, and its archive passes the loader's checks."""
    model = tiny_model("seg")
    root = s2e.export(model, tmp_path / "pt2", format="torch", precision="bf16", input_size=INPUT, max_batch=2)
    manifest = read_manifest(root)
    assert manifest.precision == "bf16" and "bf16 autocast, float32 outputs" in manifest.options["torch"]["program"]
    assert 1e-4 < manifest.fidelity["rel_l2"] <= manifest.fidelity["tolerance"] == TOLERANCE["bf16"]
    pred = s2e.Predictor(root)
    x = np.random.default_rng(3).standard_normal((2, 3, *INPUT)).astype(np.float32)
    got = pred.runner(x)
    with torch.inference_mode(), bf16_forwards.bf16_autocast("cpu"):
        want = model(torch.from_numpy(x)).float().numpy()
    assert got[0].dtype == np.float32
    np.testing.assert_array_equal(got[0], want)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the exported model's own weights are back
    fp32 = s2e.export(model, tmp_path / "fp32", format="torch", input_size=INPUT, max_batch=2)
    gemm = sum(p.numel() for m in model.modules() if type(m) in bf16_forwards.GEMM_LAYERS for p in m.parameters())
    saved = tensor_bytes(fp32 / "model.pt2") - tensor_bytes(root / "model.pt2")
    assert saved == pytest.approx(2 * gemm, rel=0.02)  # the GEMM weights in bf16: two bytes less each


def tensor_bytes(pt2: Path) -> int:
    """The bytes of a program's weights and constants (the graph's JSON aside)."""
    import zipfile

    with zipfile.ZipFile(pt2) as z:
        return sum(i.file_size for i in z.infolist() if "/data/weights/" in i.filename or "/data/constants/" in i.filename)


def test_a_planted_call_inside_the_autocast_region_is_refused(tmp_path):
    from tests.test_robustness_artifacts import rehash, rewrite_pt2

    root = s2e.export(tiny_model("seg"), tmp_path / "pt2", format="torch", precision="bf16", input_size=INPUT,
                      max_batch=1)

    def plant(entries):
        name = next(n for n in entries if n.endswith("models/model.json"))
        assert b"wrap_with_autocast" in entries[name]
        entries[name] = entries[name].replace(b'"torch.ops.aten.silu.default"', b'"torch.os.system"')
    rewrite_pt2(root / "model.pt2", plant)
    rehash(root, "model.pt2")
    with pytest.raises(ArtifactError, match="calls 'torch.os.system', which is not a torch operator"):
        s2e.Predictor(root)


def test_cli_exports_a_bf16_torch_program(tmp_path):
    ckpt = tmp_path / "seg.safetensors"
    from tests.fixtures.tiny import save

    save(tiny_model("seg"), ckpt)
    r = CliRunner().invoke(app, ["export", str(ckpt), "--format", "torch", "--scheme", "bf16", "--output",
                                 str(tmp_path / "art"), "--input-size", f"{INPUT[0]}x{INPUT[1]}", "--max-batch", "1"])
    assert r.exit_code == 0, r.output
    assert read_manifest(tmp_path / "art").precision == "bf16"


@pytest.mark.parametrize("task, arch", [("seg", None), ("pose", None), ("normal", None), ("pointmap", None),
                                        ("albedo", None), (None, None), ("seg", "4k")])
def test_a_model_the_backend_owns_keeps_its_gemm_weights_in_bf16_with_the_same_outputs(task, arch, native_bf16):
    from tests.fixtures.tiny import INPUT_4K, TINY, TINY_4K, input_size

    spec, size = (TINY_4K, INPUT_4K) if arch == "4k" else (TINY, input_size(task))
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    shared = TorchBackend(tiny_model(task, arch=spec), "cpu", precision="bf16")
    owned = TorchBackend(tiny_model(task, arch=spec), "cpu", precision="bf16", owns_model=True)
    assert not shared.weights_in_bf16 and owned.weights_in_bf16
    assert "GEMM weights stored in bf16" in owned.describe() and "stored" not in shared.describe()
    for m in owned.model.modules():
        if type(m) in bf16_forwards.GEMM_LAYERS:
            assert m.weight.dtype == torch.bfloat16 and (m.bias is None or m.bias.dtype == torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in shared.model.parameters())
    for a, b in zip(shared(x), owned(x), strict=True):  # autocast rounds the float32 weights the same way per call
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_path_is_owned_and_a_users_model_is_left_as_it_is(tmp_path, native_bf16):
    from tests.fixtures.tiny import save

    model = tiny_model("seg")
    save(model, tmp_path / "seg.safetensors")
    assert s2e.Predictor(tmp_path / "seg.safetensors", precision="bf16").runner.weights_in_bf16
    pred = s2e.Predictor(model, precision="bf16")
    assert not pred.runner.weights_in_bf16 and all(p.dtype == torch.float32 for p in model.parameters())
    freed = bf16_forwards.store_gemm_weights_in_bf16_(model)
    gemm = sum(p.numel() for m in model.modules() if type(m) in bf16_forwards.GEMM_LAYERS for p in m.parameters())
    assert freed == 2 * gemm and bf16_forwards.store_gemm_weights_in_bf16_(model) == 0  # once


def test_storing_in_bf16_lets_each_float32_tensor_go_before_the_next_copy(monkeypatch):
    """The load of a bf16 checkpoint peaks at the float32 model plus one layer's copy, not plus a bf16
    copy of every layer: when each bf16 copy is made, no float32 parameter already replaced is alive."""
    import gc
    import weakref

    model = tiny_model("seg")
    originals = [weakref.ref(p) for _, _, p in bf16_forwards._float32_gemm_params(model)]
    replaced_alive: list[int] = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and args[0] is torch.bfloat16:
            gc.collect()
            attached = {id(p) for p in model.parameters()}
            replaced_alive.append(sum(1 for r in originals if (p := r()) is not None and id(p) not in attached))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    bf16_forwards.store_gemm_weights_in_bf16_(model)
    assert len(replaced_alive) == len(originals) > 10 and max(replaced_alive) == 0


def test_a_quantized_checkpoint_runs_its_float_parts_in_bf16(native_bf16):
    """int8-weight layers keep their own kernel; what stays float (attention, norms, head) runs in bf16,
    within the bf16 bound of the same model with fp32 float parts (measured 2.3e-2 on this tiny model)."""
    from sapiens2_edge.quantization import quantize

    qmodel, _ = quantize(tiny_model("seg"), "int8-weight", progress=False)
    x = np.random.default_rng(4).standard_normal((1, 3, *INPUT)).astype(np.float32)
    ref = TorchBackend(qmodel, "cpu")(x)[0]
    runner = TorchBackend(qmodel, "cpu", precision="bf16", owns_model=True)
    got = runner(x)[0]
    assert 1e-4 < np.linalg.norm(got - ref) / np.linalg.norm(ref) < TOLERANCE["bf16"]
    assert all(q.weight.dtype == torch.int8 for q in qmodel.quantized_layers().values())  # untouched
