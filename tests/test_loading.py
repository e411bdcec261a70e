"""load_model on tiny fixtures in every official layout, dtype and prefix, and its strict errors."""

from __future__ import annotations

import pytest
import torch

import sapiens2_edge as s2e
from sapiens2_edge.errors import (
    ArchInferenceError,
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    StateDictMismatchError,
    TaskMismatchError,
)
from sapiens2_edge.models.checkpoint import read_tensors, write_tensors
from tests.fixtures.tiny import INPUT, INPUT_4K, TINY, TINY_4K, TINY_MHA, input_size, save, tiny_model


def _same_outputs(a, b, x, **tol):
    with torch.no_grad():
        oa, ob = a(x), b(x)
    for u, v in zip(oa if isinstance(oa, tuple) else (oa,), ob if isinstance(ob, tuple) else (ob,), strict=True):
        torch.testing.assert_close(u, v, **tol)


@pytest.mark.parametrize("task", [None, "pose", "seg", "normal", "pointmap", "albedo"])
def test_round_trip_every_task(tmp_path, task):
    model = tiny_model(task)
    path = save(model, tmp_path / "m.safetensors")
    loaded = s2e.load_model(path)
    assert loaded.task == task and loaded.arch.kv_heads == TINY.kv_heads and loaded.pretrained
    assert loaded.input_size == ((256, 192) if task == "pointmap" else (1024, 768))
    _same_outputs(model, loaded, torch.randn(1, 3, *input_size(task)), rtol=0, atol=0)


def test_pretrain_layout_is_bare_keys_and_task_layout_prefixed(tmp_path):
    pre = read_tensors(save(tiny_model(), tmp_path / "p.safetensors"))
    assert "cls_token" in pre and not any(k.startswith("backbone.") for k in pre) and len(pre) == 312
    task = read_tensors(save(tiny_model("seg"), tmp_path / "t.safetensors"))
    assert all(k.startswith(("backbone.", "decode_head.")) for k in task)


@pytest.mark.parametrize("arch,size", [(TINY_4K, INPUT_4K), (TINY_MHA, INPUT)])
def test_4k_and_all_mha_variants(tmp_path, arch, size):
    model = tiny_model(arch=arch)
    loaded = s2e.load_model(save(model, tmp_path / "m.safetensors"))
    assert loaded.arch.tokenizer_depth == arch.tokenizer_depth and loaded.arch.kv_heads == arch.kv_heads
    _same_outputs(model, loaded, torch.randn(1, 3, *size), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files_load_into_fp32(tmp_path, dtype):
    model = tiny_model("seg")
    loaded = s2e.load_model(save(model, tmp_path / "m.safetensors", dtype=dtype))
    p = loaded.backbone.blocks[0].attn.wq.weight
    assert p.dtype == torch.float32
    torch.testing.assert_close(p, model.backbone.blocks[0].attn.wq.weight.to(dtype).float(), rtol=0, atol=0)
    assert loaded.backbone.rope_embed.periods.dtype == torch.bfloat16


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    model = tiny_model("pose")
    loaded = s2e.load_model(save(model, tmp_path / "m.safetensors", prefix=prefix))
    _same_outputs(model, loaded, torch.randn(1, 3, *INPUT), rtol=0, atol=0)


def test_directory_source(tmp_path):
    save(tiny_model("seg"), tmp_path / "sapiens2_tiny_seg.safetensors")
    assert s2e.load_model(tmp_path).task == "seg"


def _edit(tmp_path, task, fn):
    sd = dict(tiny_model(task).official_state_dict())
    fn(sd)
    path = tmp_path / "bad.safetensors"
    write_tensors({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def test_missing_tensor_is_named(tmp_path):
    path = _edit(tmp_path, "seg", lambda sd: sd.pop("backbone.blocks.3.attn.proj.bias"))
    with pytest.raises(StateDictMismatchError, match=r"missing tensors: 'backbone.blocks.3.attn.proj.bias'"):
        s2e.load_model(path)


def test_extra_tensor_is_named(tmp_path):
    path = _edit(tmp_path, "seg", lambda sd: sd.update({"decode_head.conv_extra.weight": torch.zeros(2)}))
    with pytest.raises(StateDictMismatchError, match=r"unexpected tensors: 'decode_head.conv_extra.weight'"):
        s2e.load_model(path)


def test_wrong_shape_is_named(tmp_path):
    path = _edit(tmp_path, "seg", lambda sd: sd.update({"backbone.blocks.2.ffn.w3.bias": torch.zeros(65)}))
    with pytest.raises(StateDictMismatchError,
                       match=r"backbone.blocks.2.ffn.w3.bias: file has \(65,\), expected \(64,\)"):
        s2e.load_model(path)


def test_integer_tensors_refused(tmp_path):
    path = _edit(tmp_path, None, lambda sd: sd.update({"ln1.weight": torch.ones(64, dtype=torch.int32)}))
    with pytest.raises(StateDictMismatchError, match=r"expected F32, BF16 or F16 tensors, found 'ln1.weight' \(I32\)"):
        s2e.load_model(path)


def test_unknown_keys_refused(tmp_path):
    path = _edit(tmp_path, None, lambda sd: sd.update({"teacher.foo": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="teacher.foo"):
        s2e.load_model(path)


def test_no_head_inference_possible(tmp_path):
    path = _edit(tmp_path, "seg", lambda sd: sd.pop("decode_head.conv_seg.weight"))
    with pytest.raises(ArchInferenceError, match="cannot tell the task from the head tensors"):
        s2e.load_model(path)


def test_missing_q_norm_is_named(tmp_path):
    path = _edit(tmp_path, None, lambda sd: sd.pop("blocks.0.attn.q_norm.weight"))
    with pytest.raises(ArchInferenceError, match="'blocks.0.attn.q_norm.weight' is missing"):
        s2e.load_model(path)


def test_task_mismatch(tmp_path):
    path = save(tiny_model("seg"), tmp_path / "seg.safetensors")
    with pytest.raises(TaskMismatchError, match=r"is a seg checkpoint, but task='pose' was asked for"):
        s2e.load_model(path, task="pose")
    pre = save(tiny_model(), tmp_path / "pre.safetensors")
    with pytest.raises(TaskMismatchError, match=r"pretrain \(backbone-only\) checkpoint, but task='normal'"):
        s2e.load_model(pre, task="normal")
    with pytest.raises(ConfigError, match="unknown task 'depth'"):
        s2e.load_model(path, task="depth")


def test_truncated_file(tmp_path):
    path = save(tiny_model("seg"), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError, match="bytes missing"):
        s2e.load_model(path)


def test_lying_header_offsets(tmp_path):
    import json
    import struct

    path = save(tiny_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 4]
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CorruptCheckpointError, match=name):
        s2e.load_model(path)


def test_pickle_never_loaded(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        s2e.load_model(path)


def test_pointmap_input_size_override(tmp_path):
    path = save(tiny_model("pointmap"), tmp_path / "pm.safetensors")
    assert s2e.load_model(path).input_size == (256, 192)
    # 16x12 and 15x12 grids both reduce to 2x2: the override picks the other one.
    m = s2e.load_model(path, input_size=(240, 192))
    assert m.input_size == (240, 192)
    with torch.no_grad():
        pm, scale = m(torch.randn(1, 3, 240, 192))
    assert pm.shape == (1, 3, 240, 192) and scale.shape == (1, 1)


def test_half_precision_model_runs(tmp_path):
    path = save(tiny_model("seg"), tmp_path / "m.safetensors", dtype=torch.bfloat16)
    model = s2e.load_model(path, dtype=torch.bfloat16)
    assert model.backbone.blocks[0].attn.wq.weight.dtype == torch.bfloat16
    assert model.backbone.rope_embed.periods.dtype == torch.bfloat16
    ref = s2e.load_model(path)
    x = torch.randn(1, 3, *INPUT)
    with torch.no_grad():
        low, high = model(x).float(), ref(x)
    assert ((low - high).norm() / high.norm()).item() < 0.05


def test_header_matches_arch_description(tmp_path):
    """Spec 8.1: the expected key -> shape map built from the arch equals the file's JSON header."""
    from sapiens2_edge.models.arch import backbone_shapes, head_shapes
    from sapiens2_edge.models.checkpoint import read_header

    for task in (None, "pose", "pointmap"):
        model = tiny_model(task)
        header = read_header(save(model, tmp_path / f"{task}.safetensors"))
        expected = backbone_shapes(TINY) if task is None else {
            **{f"backbone.{k}": v for k, v in backbone_shapes(TINY).items()},
            **{f"decode_head.{k}": v for k, v in head_shapes(model.head_spec).items()}}
        assert {k: t.shape for k, t in header.tensors.items()} == expected


def _real_checkpoints():
    import os
    from pathlib import Path

    root = Path(os.environ.get("SAPIENS_CHECKPOINT_ROOT", "~/sapiens2_host")).expanduser()
    return sorted(root.glob("*/sapiens2_*.safetensors")) if root.is_dir() else []


@pytest.mark.skipif(not _real_checkpoints(), reason="no official Sapiens2 files under $SAPIENS_CHECKPOINT_ROOT")
@pytest.mark.parametrize("path", _real_checkpoints() or [None])
def test_real_headers_offline(path):
    """Header-only check of real files when present: the inferred arch is a preset and every name
    and shape matches it (reads a few KB, no weights)."""
    from sapiens2_edge.models.arch import PRESETS, backbone_shapes, head_shapes
    from sapiens2_edge.models.layout import check_shapes, describe_checkpoint

    header, layout, arch, head, bb, hd = describe_checkpoint(path)
    assert arch.name in PRESETS
    check_shapes({k: header.tensors[v].shape for k, v in bb.items()}, backbone_shapes(arch), str(path))
    if head is not None:
        assert path.parent.name == head.task
        check_shapes({k: header.tensors[v].shape for k, v in hd.items()}, head_shapes(head), str(path))


@pytest.mark.parametrize("scheme", ["int8-weight", "fp8"])
def test_load_model_reloads_quantized_checkpoints_bit_exactly(tmp_path, scheme):
    from sapiens2_edge.quantization import QuantizedModel, save_quantized

    qmodel, _ = s2e.quantize(tiny_model("seg"), scheme)
    path = save_quantized(qmodel, tmp_path / "q.safetensors")
    loaded = s2e.load_model(path, task="seg")
    assert isinstance(loaded, QuantizedModel) and loaded.scheme == scheme
    _same_outputs(qmodel, loaded, torch.randn(2, 3, *INPUT), rtol=0, atol=0)
    with pytest.raises(TaskMismatchError, match="seg"):
        s2e.load_model(path, task="pose")
