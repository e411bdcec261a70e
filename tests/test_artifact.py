"""The torch-free artifact layer: the FORMATS registry, manifest and reference checks, what
``export`` refuses before doing any work, ``export(scheme=...)``, and the layer rules of
runtime/ and artifact/."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.artifact import (
    FORMATS,
    Manifest,
    check_export_request,
    compare_fingerprints,
    load_reference,
    read_manifest,
    save_reference,
)
from sapiens2_edge.errors import ArtifactError, ConfigError, UnknownSchemeError
from tests.fixtures.no_torch import run_without_torch
from tests.fixtures.tiny import INPUT, tiny_model

PACKAGE = Path(s2e.__file__).parent


# --- the registry -----------------------------------------------------------------------------------------
def test_formats_registry_is_the_one_source():
    from sapiens2_edge.artifact.formats import ALL_SCHEMES
    from sapiens2_edge.exporters import EXPORTERS
    from sapiens2_edge.quantization.config import SCHEMES
    from sapiens2_edge.runtime.opener import BACKENDS, OPENERS

    assert set(EXPORTERS) == set(FORMATS)
    assert {b for f in FORMATS.values() for b in f.backends} <= set(OPENERS) and BACKENDS == ("auto", *OPENERS)
    assert set(ALL_SCHEMES) == set(SCHEMES)
    for f in FORMATS.values():
        assert set(f.schemes) <= set(SCHEMES) and f.default_precision in f.precisions and f.files
    coreml = FORMATS["coreml"]
    assert coreml.writes("model.mlpackage/Manifest.json") and not coreml.writes("model.mlpackage.bak")


def test_unknown_export_option_is_named_with_the_allowed_ones(tmp_path):
    model = tiny_model("seg")
    with pytest.raises(ConfigError, match="unknown export option 'opst' for format 'onnx'; its options are opset, graph, "
                                          "float_model, fidelity_data, fidelity_keypoints, report"):
        s2e.export(model, tmp_path / "a", format="onnx", opst=23)
    with pytest.raises(ConfigError, match="unknown export options 'opset', 'foo' for format 'native'; its options "
                                          "are float_model, fidelity_data"):
        s2e.export(model, tmp_path / "b", format="native", opset=23, foo=1)
    assert not any(tmp_path.iterdir())


def test_precision_and_scheme_checked_against_the_format(tmp_path, monkeypatch):
    import sapiens2_edge.quantization.api as qapi

    monkeypatch.setattr(qapi, "quantize", lambda *a, **k: pytest.fail("quantized before the format check"))
    model = tiny_model("seg")
    with pytest.raises(ConfigError, match="native precision 'int8' is not supported; expected one of fp32, fp16"):
        s2e.export(model, tmp_path / "a", format="native", precision="int8")
    with pytest.raises(ConfigError, match="a openvino artifact cannot carry quantization scheme 'fp8'; openvino "
                                          "supports the schemes fp16, int8-weight, int4-weight, int8, mixed"):
        s2e.export(model, tmp_path / "b", format="openvino", scheme="fp8")
    with pytest.raises(ConfigError, match="native supports the schemes fp16, int8-weight, int8, mixed"):
        s2e.export(model, tmp_path / "c", format="native", scheme="fp8")
    with pytest.raises(UnknownSchemeError, match="unknown quantization scheme 'int4'; expected one of fp16, "):
        s2e.export(model, tmp_path / "d", scheme="int4")
    with pytest.raises(ConfigError, match="pass scheme= .* or precision=, not both"):
        s2e.export(model, tmp_path / "e", scheme="int8", precision="fp16")
    with pytest.raises(ConfigError, match="calibration= and quantize_options= configure the quantization that "
                                          "scheme= asks for"):
        s2e.export(model, tmp_path / "f", calibration=[np.zeros((64, 48, 3), np.uint8)])
    with pytest.raises(ConfigError, match="scheme= takes a scheme name .* got int"):
        s2e.export(model, tmp_path / "g", scheme=8)
    assert not any(tmp_path.iterdir())
    assert check_export_request("onnx", ["opset"], "fp8", "fp8").name == "onnx"


def test_export_with_scheme_quantizes_first(tmp_path):
    model = tiny_model("seg", seed=4)
    root = s2e.export(model, tmp_path / "w8", format="onnx", scheme="int8-weight", input_size=INPUT, max_batch=2)
    m = read_manifest(root)
    assert m.precision == "int8-weight" and m.quantization["scheme"] == "int8-weight"
    assert m.options["opset"] == 18 and m.fidelity["rel_l2"] <= 1e-3
    assert set(m.fidelity["vs_float"]) >= {"artifact", "torch_quantized"}  # the float model it came from


# --- manifest and reference --------------------------------------------------------------------------------
def test_reference_round_trip_and_errors(tmp_path):
    out = np.random.default_rng(0).standard_normal((2, 3, 200, 130)).astype(np.float32)
    rel = save_reference(tmp_path, ["logits"], [out])
    stored = load_reference(tmp_path, rel, ["logits"])
    assert stored[0].shape == (2, 3, 67, 44)  # every 3rd pixel: at most ~64 per side
    ok = compare_fingerprints(stored, [out], ["logits"], tolerance=0.0)
    assert ok["passed"] and ok["rel_l2"] == 0.0
    bad = compare_fingerprints(stored, [out + 1], ["logits"], tolerance=1e-3)
    assert not bad["passed"] and bad["outputs"]["logits"]["max_abs"] == pytest.approx(1.0)
    with pytest.raises(ArtifactError, match="carries no reference outputs .reference.npz.; re-export it"):
        load_reference(tmp_path, None, ["logits"])
    with pytest.raises(ArtifactError, match=r"lacks reference outputs \['scale'\]; re-export the artifact"):
        load_reference(tmp_path, rel, ["logits", "scale"])


def test_manifest_validation(tmp_path):
    m = Manifest(format="onnx", task="seg", arch={}, head=None, input_size=[128, 96], max_batch=1, precision="fp32",
                 rope_mode="bf16", preprocessing={}, outputs=["logits"])
    assert Manifest.from_dict(__import__("json").loads(m.to_json())) == m
    with pytest.raises(ArtifactError, match="has unknown format 'tflite'; expected one of"):
        Manifest.from_dict({**m.__dict__, "format": "tflite"})
    with pytest.raises(ArtifactError, match=r"lacks the fields \['outputs'\]"):
        Manifest.from_dict({k: v for k, v in m.__dict__.items() if k != "outputs"})
    with pytest.raises(ArtifactError, match="lists no model file"):
        m.require_file("model", tmp_path)
    with pytest.raises(ArtifactError, match="is not an artifact directory: it has no manifest.json"):
        read_manifest(tmp_path)


# --- layers -----------------------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Every sapiens2_edge module ``path`` imports, at module level or inside functions."""
    package = "sapiens2_edge." + ".".join(path.relative_to(PACKAGE).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sapiens2_edge")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                if node.module:
                    found.add(f"{base}.{node.module}")
                else:  # from .. import x: x is a module
                    found |= {f"{base}.{a.name}" for a in node.names}
            elif (node.module or "").startswith("sapiens2_edge"):
                found.add(node.module)
    return found


@pytest.mark.parametrize("layer", ["runtime", "artifact"])
def test_runtime_and_artifact_import_no_exporters_or_models(layer):
    # errors, spec, cpu_features, heap: dependency-free leaves (typed errors, model facts, CPU flags, the C heap)
    allowed = {"artifact": ("errors", "spec", "artifact"),
               "runtime": ("errors", "spec", "cpu_features", "heap", "tasks", "artifact", "runtime",
                           "_native")}  # _native: the C++ engine
    for path in sorted((PACKAGE / layer).glob("*.py")):
        extra = ("models", "quantization", "loading", "detection") if path.name == "torch_backend.py" else ()
        for module in _imports(path):
            top = module.split(".")[1] if module.count(".") else ""
            assert top in (*allowed[layer], *extra), f"{path.name} imports {module}"


def test_runtime_and_artifact_import_without_torch():
    proc = run_without_torch("import sapiens2_edge.artifact, sapiens2_edge.runtime\n"
                             "from sapiens2_edge.runtime import Predictor, verify_artifact, open_artifact\n"
                             "import sapiens2_edge.runtime.predictor, sapiens2_edge.runtime.verify\n"
                             "print('ok', len(sapiens2_edge.artifact.FORMATS))\n")
    assert proc.returncode == 0 and f"ok {len(FORMATS)}" in proc.stdout, proc.stderr[-2000:]
