"""The kernel switch: read once, overridable for a scope, a bad mode is a typed error, and the
modules choose their fused path at construction (with a per-module attribute to override it)."""

from __future__ import annotations

import pytest
import torch

from sapiens2_edge.errors import ConfigError
from sapiens2_edge.kernels import switch
from sapiens2_edge.models.backbone import Attention, RopeEmbedding


def test_environment_is_read_once(monkeypatch):
    monkeypatch.setattr(switch, "_current", None)
    monkeypatch.setenv(switch.ENV, "reference")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    first = switch.settings()
    assert (first.mode, first.interpret) == ("reference", True)
    monkeypatch.setenv(switch.ENV, "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert switch.settings() is first and switch.mode() == "reference" and switch.interpreting()


def test_bad_mode_is_a_config_error(monkeypatch):
    monkeypatch.setattr(switch, "_current", None)
    monkeypatch.setenv(switch.ENV, "fast")
    with pytest.raises(ConfigError, match=r"SAPIENS2_EDGE_KERNELS='fast' is not a kernel mode; expected one of auto, "
                                          r"triton, reference"):
        switch.settings()
    monkeypatch.delenv(switch.ENV)
    with pytest.raises(ConfigError, match="'cuda' is not a kernel mode"):
        with switch.override(mode="cuda"):
            pass


def test_override_is_scoped():
    before = switch.settings()
    with switch.override(mode="reference", interpret=True) as s:
        assert switch.settings() is s and (s.mode, s.interpret, s.triton) == ("reference", True, before.triton)
        assert not switch.use_triton("cuda") and not switch.fused_default()
    assert switch.settings() is before


def test_modes():
    with switch.override(mode="auto", triton=True):
        assert switch.fused_default() and switch.use_triton("cuda") and not switch.use_triton("cpu")
    with switch.override(mode="auto", triton=False):
        assert not switch.fused_default() and not switch.use_triton("cuda")
    with switch.override(mode="triton", triton=True, interpret=True):
        assert switch.use_triton("cpu")
    with switch.override(mode="triton", triton=False), pytest.raises(ConfigError, match="Triton is not installed"):
        switch.use_triton("cuda")


def _attention_call():
    attn = Attention(64, 4, 2).eval()
    sin, cos = RopeEmbedding(16)(3, 4)
    return attn, (torch.randn(1, 9 + 12, 64), (sin, cos, True))


def test_fused_path_is_chosen_at_construction():
    with switch.override(mode="reference"):
        attn, args = _attention_call()
    assert not attn.fused
    # forcing Triton later does not re-read anything for this module: it stays on the reference
    with switch.override(mode="triton", triton=True, interpret=False), torch.no_grad():
        attn(*args)
    with switch.override(mode="auto", triton=True):
        attn, args = _attention_call()
    assert attn.fused
    # the fused path is really taken: forced Triton on CPU without the interpreter says so
    with switch.override(mode="triton", triton=True, interpret=False), torch.no_grad():
        with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
            attn(*args)
        attn.fused = False  # the per-module override
        attn(*args)


def test_models_import_no_triton():
    import subprocess
    import sys

    code = ("import sys, sapiens2_edge.models.model, sapiens2_edge.quantization; "
            "m = sapiens2_edge.models.model; assert 'triton' not in sys.modules, 'triton imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
