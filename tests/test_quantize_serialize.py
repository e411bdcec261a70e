"""Quantized checkpoints: bit-exact round trip, layout, metadata, size, strict loading."""

from __future__ import annotations

import json

import pytest
import torch

from sapiens2_edge.errors import CheckpointError, StateDictMismatchError, TaskMismatchError
from sapiens2_edge.models.arch import ArchSpec
from sapiens2_edge.models.checkpoint import read_header, read_tensors, write_tensors
from sapiens2_edge.models.model import build_model
from sapiens2_edge.quantization import QuantizedModel, is_quantized_checkpoint, load_quantized, quantize, save_quantized
from tests.fixtures.tiny import INPUT, save, tiny_model


def _data(seed, n=1, b=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, *INPUT, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg")


CASES = {
    "int8-static": ("int8", {"activation_mode": "static", "estimator": "minmax"}),
    "int8": ("int8", {}),
    "fp8": ("fp8", {}),
    "mixed": ("mixed", {"layer_schemes": {"backbone.blocks.0.*": "fp16", "backbone.blocks.1.*": "int8-weight",
                                          "backbone.blocks.2.attn.wq": "float", "backbone.blocks.3.*": "fp8"}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_exact(seg, tmp_path, case):
    scheme, opts = CASES[case]
    q, _ = quantize(seg, scheme, calibration=_data(1), input_size=INPUT, **opts)
    path = save_quantized(q, tmp_path / "q.safetensors")
    assert is_quantized_checkpoint(path) and is_quantized_checkpoint(read_header(path))
    back = load_quantized(path)
    assert isinstance(back, QuantizedModel) and back.task == "seg" and back.recipe == q.recipe
    assert back.layer_schemes == q.layer_schemes
    sd, sd2 = q.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype, k
        assert torch.equal(sd[k].view(torch.uint8) if sd[k].dtype == torch.float8_e4m3fn else sd[k],
                           sd2[k].view(torch.uint8) if sd2[k].dtype == torch.float8_e4m3fn else sd2[k]), k
    x = _data(3)[0]
    with torch.no_grad():
        assert torch.equal(q(x), back(x))


def test_file_layout_and_metadata(seg, tmp_path):
    q, _ = quantize(seg, "int8", calibration=_data(1), input_size=INPUT, activation_mode="static")
    path = save_quantized(q, tmp_path / "q.safetensors")
    h = read_header(path)
    t = h.tensors
    assert t["backbone.blocks.0.attn.wq.weight"].dtype == "I8"
    assert t["backbone.blocks.0.attn.wq.weight"].shape == (64, 64)
    assert t["backbone.blocks.0.attn.wq.weight_scale"].dtype == "F32"
    assert t["backbone.blocks.0.attn.wq.weight_scale"].shape == (64,)
    assert t["backbone.blocks.0.attn.wq.input_scale"].shape == (1,)
    assert t["backbone.blocks.0.attn.wq.bias"].dtype == "F32"
    assert t["backbone.blocks.0.ln1.weight"].dtype == "F32"
    assert t["backbone.patch_embed.projection.weight"].dtype == "F32"
    assert t["backbone.rope_embed.periods"].dtype == "BF16"
    assert t["decode_head.conv_seg.weight"].dtype == "F32"
    meta = h.metadata
    recipe = json.loads(meta["sapiens2_edge.recipe"])
    assert recipe["scheme"] == "int8" and recipe["activation_mode"] == "static"
    assert recipe["layers"]["backbone.blocks.17.ffn.w3"] == "int8"
    assert json.loads(meta["sapiens2_edge.arch"]) == seg.arch.to_dict()
    assert json.loads(meta["sapiens2_edge.head"]) == seg.head_spec.to_dict()
    fp8, _ = quantize(seg, "fp8")
    h8 = read_header(save_quantized(fp8, tmp_path / "f.safetensors"))
    assert h8.tensors["backbone.blocks.0.ffn.w12.weight"].dtype == "F8_E4M3"
    assert "backbone.blocks.0.ffn.w12.input_scale" not in h8.tensors


def test_pretrain_model_uses_bare_names(tmp_path):
    m = tiny_model(None)
    q, _ = quantize(m, "int8-weight")
    path = save_quantized(q, tmp_path / "p.safetensors")
    h = read_header(path)
    assert "blocks.0.attn.wq.weight_scale" in h.tensors and "cls_token" in h.tensors
    assert not any(k.startswith("backbone.") for k in h.tensors)
    assert json.loads(h.metadata["sapiens2_edge.head"]) is None
    back = load_quantized(path)
    assert back.task is None
    x = _data(4)[0]
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


C256 = ArchSpec(256, 2, 4, (4, 4), 1024, name="c256")


@pytest.mark.parametrize("scheme", ["int8", "int8-weight", "fp8"])
def test_size_ratio(tmp_path, scheme):
    """Backbone block tensors (linear weights + scales + biases + norms) shrink to <= 0.27x of fp32
    on a C=256 model, where per-channel scales are a small fraction of the weights."""
    m = build_model(C256)
    fp32 = read_header(save(m, tmp_path / "fp32.safetensors"))
    q, report = quantize(m, scheme)
    qh = read_header(save_quantized(q, tmp_path / "q.safetensors"))

    def blocks(h):
        return sum(t.nbytes for k, t in h.tensors.items() if k.startswith("blocks."))

    ratio = blocks(qh) / blocks(fp32)
    assert ratio <= 0.27, ratio
    assert qh.file_size / fp32.file_size < 0.35  # whole file, float patch embedding included
    assert report.size_after_bytes == sum(t.nbytes for t in qh.tensors.values())
    assert report.size_before_bytes == sum(t.nbytes for t in fp32.tensors.values())


def test_loading_errors(seg, tmp_path):
    float_path = save(seg, tmp_path / "float.safetensors")
    assert not is_quantized_checkpoint(float_path)
    with pytest.raises(CheckpointError, match="is not a quantized checkpoint.*load_model"):
        load_quantized(float_path)
    q, _ = quantize(seg, "int8-weight")
    path = save_quantized(q, tmp_path / "q.safetensors")
    with pytest.raises(TaskMismatchError, match="is a seg checkpoint, but task='pose'"):
        load_quantized(path, task="pose")
    # a quantized weight stored as float32 is refused, not silently cast
    h = read_header(path)
    tensors = read_tensors(path)
    tensors["backbone.blocks.0.attn.wq.weight"] = tensors["backbone.blocks.0.attn.wq.weight"].float()
    bad = write_tensors(tensors, tmp_path / "bad.safetensors", metadata=h.metadata)
    with pytest.raises(StateDictMismatchError, match="'backbone.blocks.0.attn.wq.weight' is F32, expected torch.int8"):
        load_quantized(bad)
    del tensors["backbone.blocks.0.attn.wq.weight_scale"]
    bad = write_tensors(tensors, tmp_path / "bad2.safetensors", metadata=h.metadata)
    with pytest.raises(StateDictMismatchError, match="missing tensors: 'backbone.blocks.0.attn.wq.weight_scale'"):
        load_quantized(bad)
    with pytest.raises(CheckpointError, match="expects a QuantizedModel"):
        save_quantized(seg, tmp_path / "x.safetensors")
