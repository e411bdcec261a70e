"""The core install (no torch) has a command line: info, predict, verify and bench work on a
native artifact, and every command that needs torch says which extra installs it."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import sapiens2_edge as s2e
from tests.fixtures.no_torch import run_without_torch
from tests.fixtures.tiny import save, tiny_model

RUN = ("import json, sys, typer.main\n"
       "from sapiens2_edge.cli import app\n"
       "command = typer.main.get_command(app)\n"
       "def run(*args):\n"
       "    print('>>>', args[0], flush=True)\n"
       "    print('<<< code', command.main(list(args), standalone_mode=False), flush=True)\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("no_torch")
    q, _ = s2e.quantize(tiny_model("seg"), scheme="int8-weight", progress=False)
    native = s2e.export(q, d / "native", format="native", input_size=(64, 48), max_batch=1)
    cv2.imwrite(str(d / "a.png"), np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    return {"native": native, "ckpt": save(tiny_model("seg"), d / "seg.safetensors"), "dir": d}


def _sections(stdout: str) -> dict[str, tuple[str, int]]:
    """{command: (what it printed, exit code)} from the child's stdout."""
    out = {}
    for block in stdout.split(">>> ")[1:]:
        name, _, rest = block.partition("\n")
        text, _, code = rest.rpartition("<<< code ")
        out[name] = (text, int(code.strip()))
    return out


def test_artifact_commands_work_without_torch(files):
    d, native = files["dir"], files["native"]
    res = run_without_torch(RUN + f"run('info', {str(native)!r}, '--json')\n"
                            f"run('predict', {str(native)!r}, '-i', {str(d / 'a.png')!r}, '-o', {str(d / 'o')!r}, "
                            "'--json')\n"
                            f"run('verify', {str(native)!r}, '--json')\n"
                            f"run('bench', {str(native)!r}, '--runs', '1', '--json', '--output-dir', "
                            f"{str(d / 'b')!r})\n")
    assert res.returncode == 0, res.stderr
    got = _sections(res.stdout)
    assert {name: code for name, (_, code) in got.items()} == {"info": 0, "predict": 0, "verify": 0, "bench": 0}
    assert json.loads(got["info"][0])["artifact"] == "native int8-weight"
    assert json.loads(got["predict"][0])["ok"] == 1 and np.load(d / "o" / "a_labels.npy").shape == (40, 30)
    assert json.loads(got["verify"][0])["passed"] is True
    rows = json.loads(got["bench"][0])["rows"]
    assert [r["backend"] for r in rows] == ["native"]  # no torch baseline without torch, and it says so:
    assert 'no torch fp32 eager baseline row (pip install "sapiens2-edge[torch]" to add it)' in res.stderr


def test_torch_commands_name_the_extra(files):
    d, ckpt = files["dir"], str(files["ckpt"])
    res = run_without_torch(RUN + f"run('quantize', {ckpt!r}, '--calib', {str(d)!r}, '-o', {str(d / 'q')!r})\n"
                            f"run('export', {ckpt!r}, '-o', {str(d / 'e')!r})\n"
                            f"run('demo', '--output', {str(d / 'd')!r})\n"
                            f"run('predict', {ckpt!r}, '-i', {str(d / 'a.png')!r}, '-o', {str(d / 'p')!r})\n"
                            f"run('init-random', {str(d / 'r.safetensors')!r})\n"
                            "try:\n"
                            f"    import sapiens2_edge as s2e; s2e.load_model({ckpt!r})\n"
                            "except s2e.errors.BackendUnavailableError as e:\n"
                            "    print('>>> load_model'); print(e); print('<<< code 2')\n")
    assert res.returncode == 0, res.stderr
    assert {name: code for name, (_, code) in _sections(res.stdout).items()} == dict.fromkeys(
        ("quantize", "export", "demo", "predict", "init-random", "load_model"), 2)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        'error: BackendUnavailableError: quantize needs torch, which is not installed: pip install "sapiens2-edge[torch]"',
        'error: BackendUnavailableError: export needs torch, which is not installed: pip install "sapiens2-edge[export]"',
        "error: BackendUnavailableError: the demo (it loads, quantizes and exports a torch model) needs torch, which "
        'is not installed: pip install "sapiens2-edge[export]"',
        "error: BackendUnavailableError: predict with a checkpoint (it runs in PyTorch; an exported artifact runs "
        'without it) needs torch, which is not installed: pip install "sapiens2-edge[torch]"',
        'error: BackendUnavailableError: init-random needs torch, which is not installed: pip install "sapiens2-edge[torch]"',
    ]
    assert 'load_model builds a PyTorch model and needs torch, which is not installed: pip install "sapiens2-edge[torch]"' \
        in _sections(res.stdout)["load_model"][0]
    assert "Traceback" not in res.stderr


def test_checkpoint_info_works_without_torch(files):
    """info reads the safetensors header alone, so the core install describes checkpoints too."""
    ckpt = str(files["ckpt"])
    res = run_without_torch(RUN + f"run('info', {ckpt!r}, '--json')\n")
    assert res.returncode == 0, res.stderr
    out, code = _sections(res.stdout)["info"]
    assert code == 0 and json.loads(out)["parameters"] > 0
