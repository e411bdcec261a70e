"""Artifacts are data: opening one never runs code, never reads outside it, and fails typed.

Tampered artifacts (a pickled payload in a torch program, paths out of the artifact, symbolic
links, bad schema fields, a graph that does not match the manifest, a corrupt model or reference)
are refused with an ArtifactError that says what is wrong. The same bad manifests are refused by
the Python reader and the C++ engine. Exports never lose data: ``overwrite`` replaces only an
artifact, concurrent exports to one path cannot both succeed, and a killed export leaves the old
artifact or the new one, never a partial one. A seeded mutation fuzzer checks that every outcome
is typed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sapiens2_edge as s2e
from sapiens2_edge.artifact import read_manifest
from sapiens2_edge.errors import ArtifactError
from sapiens2_edge.exporters import export
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.model import build_model
from sapiens2_edge.runtime.verify import verify_artifact
from tests.fixtures.tiny import HEADS, INPUT

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "scripts" / "fuzz_artifacts.py"
MICRO = ArchSpec(64, 2, 4, (4, 4), 256, name="micro")  # a 2-block backbone: exports in seconds
IMAGE = np.random.default_rng(0).integers(0, 255, (150, 110, 3), dtype=np.uint8)


def micro(seed: int = 0):
    return build_model(MICRO, head=HEADS["seg"], seed=seed)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    base = tmp_path_factory.mktemp("bases")
    model = micro()
    return {fmt: export(model, base / fmt, format=fmt, input_size=INPUT, max_batch=2, verify=False)
            for fmt in ("native", "onnx", "torch")}


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_manifest(root: Path, change) -> None:
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def rehash(root: Path, rel: str) -> None:
    """Rewrite the manifest entry of ``rel`` to match the file (what whoever tampers with it does)."""
    data = (root / rel).read_bytes()
    edit_manifest(root, lambda m: m["files"][rel].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data)))


class Payload:
    """Unpickling it writes a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def rewrite_pt2(path: Path, change) -> None:
    """Rewrite the zip ``path`` with ``change({name: bytes})`` applied to its entries."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    change(entries)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _entry(entries: dict, suffix: str) -> str:
    return next(n for n in entries if n.endswith(suffix))


# --- code execution --------------------------------------------------------------------------------------
def test_payload_is_live(tmp_path):
    """The payload the tests below plant does run when unpickled."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "ran"


def _plant_pickled_weight(entries: dict, marker: Path) -> None:
    config_name = _entry(entries, "data/weights/model_weights_config.json")
    config = json.loads(entries[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    entries[config_name] = json.dumps(config).encode()
    entries[_entry(entries, "data/weights/" + first["path_name"])] = pickle.dumps(Payload(marker))


def _plant_sample_inputs(entries: dict, marker: Path) -> None:
    entries[_entry(entries, "data/sample_inputs/model.pt")] = pickle.dumps(Payload(marker))


def _plant_guards(entries: dict, marker: Path) -> None:
    name = _entry(entries, "models/model.json")
    program = json.loads(entries[name])
    program["guards_code"] = [f"open({str(marker)!r}, 'w').write('ran')"]
    entries[name] = json.dumps(program).encode()


def _plant_sym_expr(entries: dict, marker: Path) -> None:
    name = _entry(entries, "models/model.json")
    text = entries[name].decode()
    evil = f"__import__('builtins').exec(\\\"open({str(marker)!r}, 'w').write('ran')\\\")"
    entries[name] = text.replace("Symbol('s77', positive=True, integer=True)", evil, 1).encode()


def _plant_target(entries: dict, marker: Path) -> None:
    name = _entry(entries, "models/model.json")
    entries[name] = entries[name].replace(b'"torch.ops.aten.silu.default"', b'"torch.os.system"')


def _plant_higher_order(entries: dict, marker: Path) -> None:
    """A higher-order op other than the bf16 programs' autocast region (those run subgraphs of their own)."""
    name = _entry(entries, "models/model.json")
    entries[name] = entries[name].replace(b'"torch.ops.aten.silu.default"', b'"torch.ops.higher_order.invoke_subgraph"')


def _plant_aoti(entries: dict, marker: Path) -> None:
    entries["model/data/aotinductor/model/model.so"] = b"\x7fELF"


@pytest.mark.parametrize("plant, message", [
    (_plant_pickled_weight, "marks a tensor as pickled"),
    (_plant_sample_inputs, "holds sample inputs that are not plain tensors"),
    (_plant_guards, "carries guard code, which torch runs with exec"),
    (_plant_sym_expr, "which is not arithmetic on shape symbols"),
    (_plant_target, "calls 'torch.os.system', which is not a torch operator"),
    (_plant_higher_order, "calls 'torch.ops.higher_order.invoke_subgraph', which is not a torch operator"),
    (_plant_aoti, "holds 'data/aotinductor/model/model.so', which a torch.export program of a model does not"),
])
def test_pt2_payload_is_refused_and_never_runs(bases, tmp_path, plant, message):
    root = copy_of(bases["torch"], tmp_path / "evil")
    marker = tmp_path / "ran"
    rewrite_pt2(root / "model.pt2", lambda entries: plant(entries, marker))
    rehash(root, "model.pt2")  # the same party writes the manifest: its checksum does not help
    with pytest.raises(ArtifactError, match=f"model.pt2 .*{message}.*artifacts hold no pickled objects or code"):
        s2e.Predictor(root)
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(root)
    proc = subprocess.run([sys.executable, "-m", "sapiens2_edge.cli", "verify", str(root)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode != 0 and message.split(",")[0][:30] in " ".join((proc.stdout + proc.stderr).split())
    assert not marker.exists()


def _central_directory_field(data: bytearray, offset: int, value: int) -> None:
    """Set the byte at ``offset`` of every central-directory header of the zip held in ``data``."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + offset] = value
        at = data.find(b"PK\x01\x02", at + 4)


@pytest.mark.parametrize("offset, value, message", [
    (6, 198, "it is not a zip archive \\(zip file version 19.8\\)"),  # version needed to extract
    (10, 99, "is a corrupt torch.export archive: .*compression"),  # an unknown compression method
    (10, 8, "is a corrupt torch.export archive: "),  # stored bytes read as deflate
])
def test_pt2_zip_fields_zipfile_cannot_read_are_typed(bases, tmp_path, offset, value, message):
    root = copy_of(bases["torch"], tmp_path / "a")
    data = bytearray((root / "model.pt2").read_bytes())
    _central_directory_field(data, offset, value)
    (root / "model.pt2").write_bytes(bytes(data))
    rehash(root, "model.pt2")
    with pytest.raises(ArtifactError, match=f"model.pt2.*{message}|{message}"):
        s2e.Predictor(root)


def test_clean_torch_artifact_passes_the_archive_check(bases):
    assert verify_artifact(bases["torch"])["passed"]


# --- paths -------------------------------------------------------------------------------------------------
def _list_model_as(root: Path, name: str, rel: str = "model.onnx") -> None:
    edit_manifest(root, lambda m: m["files"].__setitem__(name, m["files"].pop(rel)))


@pytest.mark.parametrize("fmt, rel", [("onnx", "model.onnx"), ("torch", "model.pt2")])
def test_model_outside_the_artifact_is_refused(bases, tmp_path, fmt, rel):
    root = copy_of(bases[fmt], tmp_path / "a")
    (tmp_path / "x").mkdir()
    shutil.copy(root / rel, tmp_path / "x" / rel)
    _list_model_as(root, f"../x/{rel}", rel)
    with pytest.raises(ArtifactError, match=rf"the file name '../x/{rel}' has an empty, '.' or '..' part"):
        s2e.Predictor(root)
    edit_manifest(root, lambda m: m["files"].__setitem__(str(tmp_path / "x" / rel), m["files"].pop(f"../x/{rel}")))
    with pytest.raises(ArtifactError, match="is an absolute path; an artifact lists its files as relative paths"):
        s2e.Predictor(root)


def test_onnx_external_data_outside_the_artifact_is_refused(bases, tmp_path):
    """A graph whose weights point out of the artifact ('../secret.bin'): the runtime refuses, typed."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    root = copy_of(bases["onnx"], tmp_path / "a")
    model = onnx.load(root / "model.onnx")
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="data.bin", size_threshold=4096)
    onnx.save(model, root / "model.onnx")
    os.rename(root / "data.bin", tmp_path / "secret.bin")
    model = onnx.load(root / "model.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    (root / "model.onnx").write_bytes(model.SerializeToString())
    rehash(root, "model.onnx")
    with pytest.raises(ArtifactError, match="cannot load .*model.onnx as an ONNX model: .*escapes model directory"):
        s2e.Predictor(root, backend="onnxruntime")


def test_listed_system_file_is_neither_read_nor_sized(bases, tmp_path):
    root = copy_of(bases["onnx"], tmp_path / "a")
    _list_model_as(root, "/etc/passwd")
    with pytest.raises(ArtifactError, match="'/etc/passwd' is an absolute path") as info:
        s2e.Predictor(root)
    assert "bytes" not in str(info.value)  # nothing about the file's size leaks


@pytest.mark.parametrize("rel", ["model.onnx", "manifest.json", "reference.npz"])
def test_symbolic_links_out_of_the_artifact_are_refused(bases, tmp_path, rel):
    root = copy_of(bases["onnx"], tmp_path / "a")
    shutil.copy(root / rel, tmp_path / rel)
    (root / rel).unlink()
    os.symlink(tmp_path / rel, root / rel)
    with pytest.raises(ArtifactError, match=f"{rel} is a symbolic link; the .* must be .*inside"):
        s2e.Predictor(root)


def test_native_artifact_without_manifest_is_not_a_checkpoint(bases, tmp_path):
    root = copy_of(bases["native"], tmp_path / "a")
    (root / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="holds artifact files but has no manifest.json; an artifact is the "
                                            "complete directory an export wrote"):
        s2e.Predictor(root)
    with pytest.raises(ArtifactError, match="holds artifact files but has no manifest.json"):
        s2e.Predictor(root, backend="torch")


# --- schema ------------------------------------------------------------------------------------------------
def _deep(n: int):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


BAD_MANIFESTS = {  # field changes -> what the Python reader says
    "schema_true": ({"schema_version": True}, "schema_version must be an integer from 1, got True"),
    "schema_negative": ({"schema_version": -5}, "schema_version must be an integer from 1, got -5"),
    "schema_newer": ({"schema_version": 99}, "uses manifest schema 99, newer than this SDK's 1"),
    "max_batch_null": ({"max_batch": None}, r"max_batch must be an integer in 1..1024, got None"),
    "max_batch_str": ({"max_batch": "2"}, r"max_batch must be an integer in 1..1024, got '2'"),
    "max_batch_float": ({"max_batch": 2.5}, r"max_batch must be an integer in 1..1024, got 2.5"),
    "max_batch_zero": ({"max_batch": 0}, r"max_batch must be an integer in 1..1024, got 0"),
    "files_list": ({"files": []}, "files must be a JSON object, got \\[\\]"),
    "files_entry": ({"files": {"weights.safetensors": 3}}, r"files\['weights.safetensors'\] must be an object"),
    "deep": ({"preprocessing": "DEEP"}, "is not valid JSON|nests JSON deeper than 64 levels"),
    "nested_70": ({"preprocessing": {"a": _deep(70)}}, "nests JSON deeper than 64 levels"),
    "input_size": ({"input_size": [100, 96]}, r"input_size: input size 100x96 is not a positive multiple of 16"),
    "input_size_type": ({"input_size": "128x96"}, r"input_size must be \[H, W\] \(two integers\), got '128x96'"),
    "format": ({"format": "tflite"}, "has unknown format 'tflite'"),
    "rope": ({"rope_mode": "fp64"}, "rope_mode must be 'bf16' or 'fp32'"),
    "no_input_size": ({"input_size": "DELETE"}, r"lacks the fields \['input_size'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_refused_by_python_and_the_engine(bases, tmp_path, case):
    """One schema: the Python reader and the C++ engine refuse the same manifests, both typed."""
    from sapiens2_edge.runtime.native_backend import NativeBackend

    change, message = BAD_MANIFESTS[case]
    root = copy_of(bases["native"], tmp_path / "a")
    text = json.dumps({k: v for k, v in {**json.loads((root / "manifest.json").read_text()), **change}.items()
                       if v != "DELETE"})
    (root / "manifest.json").write_text(text.replace('"DEEP"', "[" * 5000 + "]" * 5000))  # too deep to dump
    with pytest.raises(ArtifactError, match=message):
        read_manifest(root)
    with pytest.raises(ArtifactError):
        NativeBackend(root)
    with pytest.raises(ArtifactError, match=message):
        s2e.Predictor(root, backend="native")


def test_the_engine_refuses_paths_out_of_the_artifact(bases, tmp_path):
    from sapiens2_edge.runtime.native_backend import NativeBackend

    root = copy_of(bases["native"], tmp_path / "a")
    _list_model_as(root, "../a/weights.safetensors", "weights.safetensors")
    with pytest.raises(ArtifactError, match="has an empty, '.' or '..' part"):
        read_manifest(root)
    with pytest.raises(ArtifactError, match="leaves the artifact directory"):
        NativeBackend(root)


# --- graphs, models and references that do not match ---------------------------------------------------------
def test_input_size_must_match_the_graph(bases, tmp_path):
    for fmt in ("onnx", "torch"):
        root = copy_of(bases[fmt], tmp_path / fmt)
        edit_manifest(root, lambda m: m.update(input_size=[256, 192]))
        with pytest.raises(ArtifactError, match=r"takes inputs of height 128, but the manifest says input_size "
                                                r"\[256, 192\]"):
            s2e.Predictor(root)


def test_corrupt_onnx_model_is_a_typed_error(bases, tmp_path):
    root = copy_of(bases["onnx"], tmp_path / "a")
    (root / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    rehash(root, "model.onnx")
    with pytest.raises(ArtifactError, match="cannot load .*model.onnx as an ONNX model: .*re-export the artifact"):
        s2e.Predictor(root)


def test_bad_reference_is_a_typed_error(bases, tmp_path):
    root = copy_of(bases["onnx"], tmp_path / "a")
    (root / "reference.npz").write_bytes(b"PK\x03\x04 not a zip")
    rehash(root, "reference.npz")
    with pytest.raises(ArtifactError, match="cannot read the reference outputs .*reference.npz"):
        verify_artifact(root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a .npy whose header numpy's parser chokes on
        z.writestr("logits.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4', (" + b" " * 5 + b"\n")
    (root / "reference.npz").write_bytes(buf.getvalue())
    rehash(root, "reference.npz")
    with pytest.raises(ArtifactError, match="cannot read the reference outputs .*reference.npz"):
        verify_artifact(root)
    buf = io.BytesIO()
    np.savez(buf, logits=np.zeros((1, 2, 3, 4), np.float32))
    (root / "reference.npz").write_bytes(buf.getvalue())
    rehash(root, "reference.npz")
    with pytest.raises(ArtifactError, match="the stored reference output 'logits' has shape \\(1, 2, 3, 4\\)"):
        verify_artifact(root)


# --- exports never lose data ------------------------------------------------------------------------------------
def _no_leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_overwrite_replaces_only_an_artifact(bases, tmp_path, monkeypatch):
    import sapiens2_edge.exporters.native_export as native_export

    monkeypatch.setattr(native_export, "write", lambda *a, **k: pytest.fail("the build started"))
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("print('keep me')")
    with pytest.raises(ArtifactError, match=r"src is not a valid artifact \(.*has no manifest.json.*\): overwrite=True"
                                            " replaces only an artifact directory"):
        export(micro(), source, format="native", input_size=INPUT, overwrite=True)
    assert (source / "train.py").read_text() == "print('keep me')"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="file is not a directory: overwrite=True replaces only"):
        export(micro(), tmp_path / "file", format="native", input_size=INPUT, overwrite=True)
    monkeypatch.chdir(source)
    with pytest.raises(ArtifactError, match="src is not a valid artifact"):
        export(micro(), ".", format="native", input_size=INPUT, overwrite=True)
    with pytest.raises(ArtifactError, match="src already exists; pass overwrite=True"):
        export(micro(), ".", format="native", input_size=INPUT)
    kept = copy_of(bases["native"], tmp_path / "kept")
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match=r"holds files its manifest does not list \(notes.txt\), which would be lost"):
        export(micro(), kept, format="native", input_size=INPUT, overwrite=True)
    assert (kept / "notes.txt").read_text() == "mine"
    assert _no_leftovers(tmp_path, "src") == [] and _no_leftovers(tmp_path, "kept") == []


@pytest.mark.parametrize("exchange", [True, False])
def test_overwrite_swaps_in_one_step_and_follows_the_umask(tmp_path, monkeypatch, exchange):
    import sapiens2_edge.artifact.destination as dest

    if not exchange:  # a system without renameat2: two renames
        monkeypatch.setattr(dest, "_renameat2", lambda *a: False)
    out = export(micro(1), tmp_path / "out", format="native", input_size=INPUT)
    old = (out / "weights.safetensors").read_bytes()
    mask = os.umask(0o027)
    try:
        export(micro(2), out, format="native", input_size=INPUT, overwrite=True)
    finally:
        os.umask(mask)
    assert (out / "weights.safetensors").read_bytes() != old
    read_manifest(out)
    assert out.stat().st_mode & 0o777 == 0o750
    assert _no_leftovers(tmp_path, "out") == []


def test_leftovers_of_a_killed_export_are_recovered(bases, tmp_path):
    out = copy_of(bases["native"], tmp_path / "out")
    os.rename(out, tmp_path / ".out.old")  # killed after the old artifact was renamed away (two-rename systems)
    stale = tmp_path / ".out.tmp-999999999-dead"  # a build of a process that no longer exists
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"partial")
    export(micro(3), out, format="native", input_size=INPUT, overwrite=True)
    read_manifest(out)
    assert _no_leftovers(tmp_path, "out") == []


KILLED_CHILD = """
import sys
from sapiens2_edge.exporters import export
from tests.test_robustness_artifacts import micro, INPUT
out = sys.argv[1]
models = [micro(1), micro(2)]
print("ready", flush=True)
i = 0
while True:
    export(models[i % 2], out, format="native", input_size=INPUT, overwrite=True, verify=False)
    i += 1
"""


def _which_model(out: Path) -> int:
    """Which of micro(1..3) the artifact at ``out`` holds (its weights compared tensor by tensor)."""
    from safetensors.torch import load_file

    stored = load_file(out / "weights.safetensors")
    for seed in (1, 2, 3):
        ref = micro(seed).official_state_dict()
        if all(torch_equal(stored[k], v) for k, v in ref.items()):
            return seed
    raise AssertionError(f"{out} holds weights of none of the exported models")


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a.float() == b.float()).all())


def _kill_during_exports(tmp_path: Path, kills: int, seed: int) -> None:
    out = tmp_path / "out"
    export(micro(1), out, format="native", input_size=INPUT, verify=False)
    rng = random.Random(seed)
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(out)], stdout=subprocess.PIPE, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        read_manifest(out)  # the old artifact or a new complete one: every checksum holds
        assert _which_model(out) in (1, 2)
    export(micro(3), out, format="native", input_size=INPUT, overwrite=True, verify=False)
    read_manifest(out)
    assert _which_model(out) == 3
    assert _no_leftovers(tmp_path, "out") == []


def test_kill_during_export_leaves_old_or_new(tmp_path):
    _kill_during_exports(tmp_path, kills=2, seed=0)


@pytest.mark.slow
def test_kill_during_export_leaves_old_or_new_many(tmp_path):
    _kill_during_exports(tmp_path, kills=20, seed=1)


CONCURRENT_CHILD = """
import sys, time
from sapiens2_edge.errors import Sapiens2EdgeError
from sapiens2_edge.exporters import export
from tests.test_robustness_artifacts import micro, INPUT
out, seed, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
model = micro(seed)
time.sleep(max(0.0, go - time.time()))
try:
    export(model, out, format="native", input_size=INPUT, verify=False)
    print("won")
except Sapiens2EdgeError as e:
    print("refused", type(e).__name__, e)
"""


def test_concurrent_exports_to_one_path_one_wins(tmp_path):
    out = tmp_path / "out"
    go = time.time() + 8.0  # both children start exporting at this moment, after their imports
    children = [subprocess.Popen([sys.executable, "-c", CONCURRENT_CHILD, str(out), str(seed), str(go)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}) for seed in (1, 2)]
    results = [c.communicate(timeout=300)[0].strip() for c in children]
    assert sorted(r.split()[0] for r in results) == ["refused", "won"], results
    refused = next(r for r in results if r.startswith("refused"))
    assert "ArtifactError" in refused and ("already exists" in refused or "another export to" in refused), refused
    read_manifest(out)
    assert _no_leftovers(tmp_path, "out") == []


# --- fuzzing ------------------------------------------------------------------------------------------------------
def _fuzz(tmp_path: Path, cases: int, seed: int, formats: str) -> dict:
    proc = subprocess.run([sys.executable, str(FUZZ), "--cases", str(cases), "--seed", str(seed), "--work",
                           str(tmp_path), "--formats", formats], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(report["outcomes"].values()) == cases and "untyped" not in report["outcomes"]
    return report


def test_fuzz_artifacts_quick(tmp_path):
    report = _fuzz(tmp_path, 300, seed=0, formats="native")
    assert report["outcomes"].get("ArtifactError", 0) > 50  # the mutations reach the checks


@pytest.mark.slow  # CI's share; longer runs: python scripts/fuzz_artifacts.py --cases 20000 --seed S --work DIR
def test_fuzz_artifacts_full(tmp_path):
    report = _fuzz(tmp_path, 2500, seed=1, formats="native,onnx,torch,openvino")
    assert len(report["per_kind"]) >= 10

