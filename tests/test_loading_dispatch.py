"""``sapiens2_edge.load_model`` dispatches on the header: quantized checkpoints to the quantization
loader, float ones to ``models.loading``, which loads float checkpoints only (models never import
quantization)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import CheckpointNotFoundError, ConfigError
from sapiens2_edge.loading import load_model
from sapiens2_edge.models.layout import QUANTIZED_METADATA_KEY, is_quantized_header
from sapiens2_edge.models.loading import load_model as load_float_model
from sapiens2_edge.models.model import Sapiens2Model
from sapiens2_edge.models.safetensors_header import read_header
from sapiens2_edge.quantization import QuantizedModel, is_quantized_checkpoint, quantize, save_quantized
from sapiens2_edge.quantization.serialize import KEY_RECIPE
from tests.fixtures.tiny import save, tiny_model

MODELS = Path(__file__).resolve().parents[1] / "sapiens2_edge" / "models"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dispatch")
    seg = tiny_model("seg")
    q, _ = quantize(seg, "int8-weight")
    return save(seg, tmp / "float.safetensors"), save_quantized(q, tmp / "q.safetensors")


def test_public_load_model_is_the_dispatcher():
    assert s2e.load_model is load_model


def test_float_checkpoint_loads_through_both(files):
    float_path, _ = files
    a, b = load_model(float_path), load_float_model(float_path)
    assert type(a) is Sapiens2Model and type(b) is Sapiens2Model and a.task == b.task == "seg"
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_quantized_checkpoint_loads_through_the_public_loader(files):
    _, q_path = files
    model = load_model(q_path, task="seg")
    assert isinstance(model, QuantizedModel) and model.scheme == "int8-weight"


def test_models_loader_refuses_a_quantized_checkpoint_and_points_at_the_public_one(files):
    _, q_path = files
    with pytest.raises(ConfigError, match=r"is a quantized checkpoint; sapiens2_edge\.models\.loading\.load_model "
                                          r"loads float checkpoints only: use sapiens2_edge\.load_model"):
        load_float_model(q_path)


def test_quantized_detection_agrees_with_the_quantization_loader(files):
    float_path, q_path = files
    assert QUANTIZED_METADATA_KEY == KEY_RECIPE
    for path, quantized in ((float_path, False), (q_path, True)):
        assert is_quantized_header(read_header(path)) is quantized
        assert is_quantized_checkpoint(path) is quantized


def test_unknown_task_is_refused_before_the_file_is_looked_for(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'depth'; expected one of pose, seg, normal, pointmap, albedo"):
        load_model(tmp_path / "missing.safetensors", task="depth")
    with pytest.raises(CheckpointNotFoundError):
        load_model(tmp_path / "missing.safetensors", task="seg")


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions, as absolute names."""
    package = "sapiens2_edge.models"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.py")), ids=lambda p: p.name)
def test_models_never_import_quantization_or_exporters(path):
    bad = sorted(m for m in _imported_modules(path)
                 if m.startswith(("sapiens2_edge.quantization", "sapiens2_edge.exporters", "sapiens2_edge.runtime",
                                  "sapiens2_edge.loading")))
    assert not bad, f"{path.name} imports {bad}"
