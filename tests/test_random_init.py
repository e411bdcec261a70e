"""Random checkpoints in the official layout (``init-random``): they load like released ones,
say they are random, and the seed makes them reproducible."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sapiens2_edge import load_model
from sapiens2_edge.cli import app
from sapiens2_edge.errors import ConfigError, InputSizeError
from sapiens2_edge.models.checkpoint import read_header, read_tensors
from sapiens2_edge.models.random_init import (
    RANDOM_WEIGHTS_KEY,
    random_model,
    write_random_checkpoint,
)
from sapiens2_edge.workflows import checkpoint_info
from tests.fixtures.tiny import POINTMAP_INPUT, TINY, save, tiny_model


@pytest.mark.parametrize("task", ["pose", "seg", "normal", "pointmap", "albedo", None])
def test_round_trip_through_load_model(tmp_path, task):
    size = POINTMAP_INPUT if task == "pointmap" else (128, 96)
    path = write_random_checkpoint(tmp_path / "r.safetensors", TINY, task, input_size=size, seed=3)
    model = load_model(path)
    ref = random_model(TINY, task, input_size=size, seed=3)  # the same weights, built in memory
    assert model.task == task and model.pretrained is False and ref.pretrained is False
    got, want = model.official_state_dict(), ref.official_state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    meta = read_header(path).metadata
    assert meta[RANDOM_WEIGHTS_KEY] == "true" and meta["sapiens2_edge.seed"] == "3"
    assert meta["sapiens2_edge.task"] == (task or "none")
    if task == "pointmap":
        assert model.input_size == POINTMAP_INPUT


def test_released_layout_checkpoints_still_load_as_pretrained(tmp_path):
    path = save(tiny_model("seg"), tmp_path / "real.safetensors")
    assert load_model(path).pretrained is True
    assert checkpoint_info(path)["random_weights"] is False


def test_seed_makes_it_reproducible(tmp_path):
    a = write_random_checkpoint(tmp_path / "a.safetensors", TINY, "seg", seed=7)
    b = write_random_checkpoint(tmp_path / "b.safetensors", TINY, "seg", seed=7)
    c = write_random_checkpoint(tmp_path / "c.safetensors", TINY, "seg", seed=8)
    ta, tb, tc = read_tensors(a), read_tensors(b), read_tensors(c)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # (safetensors orders metadata freely)
    assert not torch.equal(ta["backbone.patch_embed.projection.weight"], tc["backbone.patch_embed.projection.weight"])


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_files(tmp_path, dtype, torch_dtype):
    path = write_random_checkpoint(tmp_path / "h.safetensors", TINY, "pose", dtype=dtype)
    stored = read_tensors(path)
    ref = random_model(TINY, "pose").official_state_dict()
    assert stored["backbone.rope_embed.periods"].dtype == torch.bfloat16  # as in the released files
    w = "decode_head.conv_pose.weight"
    assert stored[w].dtype == torch_dtype and torch.equal(stored[w], ref[w].to(torch_dtype))
    loaded = load_model(path).official_state_dict()
    assert torch.equal(loaded[w], ref[w].to(torch_dtype).float())


@pytest.mark.parametrize("kwargs,error,msg", [
    ({"arch": "9b"}, ConfigError, r"unknown preset '9b'; expected one of 0.1b, 0.4b"),
    ({"task": "depth"}, ConfigError, r"unknown task 'depth'; expected one of pose, seg, normal, pointmap, albedo, "
                                     r"or none \(a pretrain backbone\)"),
    ({"dtype": "int8"}, ConfigError, r"unknown checkpoint dtype 'int8'; expected one of fp32, bf16, fp16"),
    ({"input_size": (100, 96)}, InputSizeError, r"input size 100x96 is not a multiple of 16 in both sides"),
    ({"input_size": (1, 96)}, ConfigError, r"input_size must be two integers \(H, W\) of at least 2"),
    ({"seed": -1}, ConfigError, r"seed must be an integer in \[0, 2\*\*63\), got -1"),
])
def test_bad_arguments_are_typed_errors(tmp_path, kwargs, error, msg):
    args = {"arch": TINY, "task": "seg", **kwargs}
    with pytest.raises(error, match=msg):
        write_random_checkpoint(tmp_path / "x.safetensors", args.pop("arch"), args.pop("task"), **args)
    assert not (tmp_path / "x.safetensors").exists()


def test_path_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"must end in \.safetensors, got '.*x\.pt'"):
        write_random_checkpoint(tmp_path / "x.pt", TINY, "seg")
    path = write_random_checkpoint(tmp_path / "x.safetensors", TINY, "seg", seed=1)
    with pytest.raises(ConfigError, match=r"already exists; pass overwrite=True \(CLI: --overwrite\)"):
        write_random_checkpoint(path, TINY, "seg", seed=2)
    write_random_checkpoint(path, TINY, "seg", seed=2, overwrite=True)
    assert read_header(path).metadata["sapiens2_edge.seed"] == "2"


def test_cli_init_random_then_info(tmp_path):
    runner = CliRunner()
    out = tmp_path / "seg.safetensors"
    res = runner.invoke(app, ["init-random", str(out), "--arch", "0.1b", "--task", "seg", "--dtype", "bf16",
                              "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert "RANDOM WEIGHTS" in res.output
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["arch"] == "sapiens2_0.1b" and data["task"] == "seg" and data["random_weights"] is True
    assert data["parameters"] == sum(t.numel() for t in read_tensors(out).values())
    res = runner.invoke(app, ["init-random", str(tmp_path / "p.safetensors"), "--task", "depth"])
    assert res.exit_code == 2 and "'--task': 'depth' is not one of" in res.output
