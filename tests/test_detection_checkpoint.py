"""The detector's checkpoints: the one-time .pth -> safetensors conversion through the restricted
unpickler (refusing code, tolerating metadata without running it), and strict safetensors loading."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.cli import app
from sapiens2_edge.detection.checkpoint import convert_checkpoint, load_detector
from sapiens2_edge.detection.model import rtmdet_m
from sapiens2_edge.errors import CheckpointError, CheckpointNotFoundError, ConfigError, StateDictMismatchError
from sapiens2_edge.models.safetensors_header import read_header
from sapiens2_edge.models.safetensors_io import write_tensors

META = {"epoch": 235, "iter": 100000, "dataset_meta": {"classes": ("person",), "palette": [(220, 20, 60)]},
        "mmengine_version": "0.7.1", "config": "model = dict(type='RTMDet')", "seed": None, "lr": 0.004}


@pytest.fixture(scope="module")
def trained():
    """RTMDet-m with non-trivial BN statistics (so that buffers take part in the round trip)."""
    m = rtmdet_m(seed=1)
    with torch.no_grad():
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.num_batches_tracked.fill_(1234)
    return m


@pytest.fixture(scope="module")
def official_pth(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "rtmdet_m.pth"
    torch.save({"meta": META, "state_dict": trained.state_dict()}, path)
    return path


def test_round_trip_gives_identical_tensors(trained, official_pth, tmp_path):
    out = convert_checkpoint(official_pth, tmp_path / "rtmdet_m.safetensors")
    assert read_header(out).metadata["sapiens2_edge.detector"] == "rtmdet_m"
    loaded = load_detector(out)
    ref = trained.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = trained.eval()(x), loaded(x)
    for p, q in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert torch.equal(p, q)
    assert loaded.pretrained and loaded.source == str(out)


def test_public_face_and_cli(official_pth, tmp_path):
    out = tmp_path / "det.safetensors"
    result = CliRunner().invoke(app, ["convert", str(official_pth), str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and out.is_file()
    assert isinstance(s2e.load_detector(out), torch.nn.Module)
    again = CliRunner().invoke(app, ["convert", str(official_pth), str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_top_level_state_dict_and_wrapper_prefixes(trained, tmp_path):
    pth = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, pth)
    loaded = load_detector(convert_checkpoint(pth, tmp_path / "plain.safetensors"))
    assert torch.equal(loaded.state_dict()["neck.out_convs.2.conv.weight"],
                       trained.state_dict()["neck.out_convs.2.conv.weight"])


def test_numpy_metadata_is_tolerated_and_never_called(trained, tmp_path):
    marker = tmp_path / "numpy_was_called.npy"

    class SavesAFile:
        def __reduce__(self):  # GLOBAL numpy.save: a metadata module, so it becomes a placeholder
            return (np.save, (str(marker), np.zeros(2)))

    pth = tmp_path / "with_numpy.pth"
    meta = {**META, "scalar": np.float64(0.5), "array": np.arange(3), "trap": SavesAFile()}
    torch.save({"meta": meta, "state_dict": trained.state_dict()}, pth)
    out = convert_checkpoint(pth, tmp_path / "with_numpy.safetensors")
    assert out.is_file() and not marker.exists()


@pytest.mark.parametrize("where", ["meta", "state_dict"])
@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_pickle_is_refused_before_running(trained, tmp_path, where, zipped):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    sd = dict(trained.state_dict())
    payload = {"meta": META, "state_dict": sd}
    if where == "meta":
        payload["meta"] = {"x": Evil()}
    else:
        sd["backbone.stem.0.conv.weight"] = Evil()
    pth = tmp_path / "evil.pth"
    torch.save(payload, pth, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(pth, tmp_path / "evil.safetensors")
    assert "system" in str(e.value)  # names the refused global (posix.system / nt.system)
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


def test_mismatched_state_dicts_are_named(trained, tmp_path):
    sd = dict(trained.state_dict())
    del sd["bbox_head.rtm_cls.1.bias"]
    sd["bbox_head.rtm_obj.0.weight"] = torch.zeros(1, 192, 1, 1)
    sd["bbox_head.rtm_cls.0.weight"] = torch.zeros(80, 192, 1, 1)  # an 80-class COCO head
    pth = tmp_path / "coco.pth"
    torch.save({"state_dict": sd}, pth)
    with pytest.raises(StateDictMismatchError) as e:
        convert_checkpoint(pth, tmp_path / "coco.safetensors")
    msg = str(e.value)
    assert "missing tensors: 'bbox_head.rtm_cls.1.bias'" in msg
    assert "unexpected tensors: 'bbox_head.rtm_obj.0.weight'" in msg
    assert "bbox_head.rtm_cls.0.weight: file has (80, 192, 1, 1), expected (1, 192, 1, 1)" in msg


def test_unshared_head_convs_are_refused(trained, tmp_path):
    sd = {k: v.clone() for k, v in trained.state_dict().items()}
    sd["bbox_head.reg_convs.2.1.conv.weight"] += 1
    path = write_tensors(sd, tmp_path / "unshared.safetensors")
    with pytest.raises(StateDictMismatchError, match=r"shares its head convs.*'bbox_head.reg_convs.2.1.conv.weight'"):
        load_detector(path)


def test_load_detector_checks_shapes_and_dtypes_from_the_header(trained, tmp_path):
    sd = dict(trained.state_dict())
    sd["neck.out_convs.0.conv.weight"] = torch.zeros(192, 192, 1, 1)
    with pytest.raises(StateDictMismatchError, match=r"neck.out_convs.0.conv.weight: file has \(192, 192, 1, 1\), "
                                                     r"expected \(192, 192, 3, 3\)"):
        load_detector(write_tensors(sd, tmp_path / "bad.safetensors"))
    sd = dict(trained.state_dict())
    sd["backbone.stem.0.conv.weight"] = sd["backbone.stem.0.conv.weight"].to(torch.int32)
    with pytest.raises(StateDictMismatchError, match=r"backbone.stem.0.conv.weight \(I32\)"):
        load_detector(write_tensors(sd, tmp_path / "int.safetensors"))


def test_pickles_are_never_loaded_and_bad_paths_are_named(official_pth, tmp_path):
    with pytest.raises(CheckpointError, match=r"pickle-based.*sapiens2-edge convert"):
        load_detector(official_pth)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint file at"):
        convert_checkpoint(tmp_path / "absent.pth", tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="must be a .safetensors file"):
        convert_checkpoint(official_pth, tmp_path / "x.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        convert_checkpoint(garbage, tmp_path / "g.safetensors")
    empty = tmp_path / "empty.pth"
    torch.save({"meta": META}, empty)
    with pytest.raises(CheckpointError, match="holds no state dict|not tensors"):
        convert_checkpoint(empty, tmp_path / "e.safetensors")
