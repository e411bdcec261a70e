"""Hostile checkpoints: every malformed header, shape or metadata is a typed error whose message
says what was wrong, and the cost of refusing stays bounded (time, and memory measured in a
subprocess)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sapiens2_edge
from sapiens2_edge.errors import ArchInferenceError, CorruptCheckpointError, StateDictMismatchError
from sapiens2_edge.models.arch import ArchSpec, HeadSpec, get_preset
from sapiens2_edge.models.checkpoint import read_header
from sapiens2_edge.models.model import build_model
from sapiens2_edge.models.safetensors_header import MAX_DIMS, checked_numel, show_int
from sapiens2_edge.quantization import quantize, save_quantized
from sapiens2_edge.quantization.serialize import KEY_ARCH, KEY_HEAD, KEY_RECIPE, KEY_REPORT, read_report
from tests.fixtures.tiny import TINY, save

ROOT = Path(__file__).resolve().parents[1]
MICRO = ArchSpec(16, 2, 4, (4, 2), 32, name="micro")
SEG = HeadSpec("seg", 16, 29, deconv=(8,), conv=(8,), conv_kernel=1)
NORMAL = HeadSpec("normal", 16, 3, upsample=(8, 8), conv=(8,), conv_kernel=3)


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path: Path, header: dict | str, data: bytes) -> Path:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _relayout(header: dict) -> bytes:
    """Offsets recomputed from the (edited) shapes, zero data of the matching size."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "F8_E4M3": 1}
    pos = 0
    for name, e in header.items():
        if name == "__metadata__":
            continue
        n = sizes[e["dtype"]]
        for d in e["shape"]:
            n *= d
        e["data_offsets"] = [pos, pos + n]
        pos += n
    return bytes(pos)


def _with_shape(src: Path, dst: Path, key: str, shape: list) -> Path:
    header, _ = _split(src)
    header[key]["shape"] = shape
    return _write(dst, header, _relayout(header))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust")
    seg = build_model(MICRO, head=SEG, seed=0)
    out = {
        "pretrain": save(build_model(MICRO, seed=1), d / "pretrain.safetensors"),
        "seg": save(seg, d / "seg.safetensors"),
        "normal": save(build_model(MICRO, head=NORMAL, seed=2), d / "normal.safetensors"),
    }
    q, report = quantize(seg, "int8", progress=False)
    out["quant"] = save_quantized(q, d / "q.safetensors", report=report)
    out["dir"] = d
    return out


# -- the safetensors header: dims, products, huge integers --------------------------------------------
def _one_tensor(tmp_path: Path, shape: list, offsets: list, data: bytes = b"\0" * 16) -> Path:
    return _write(tmp_path / "t.safetensors", {"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}, data)


def test_too_many_dims_refused_fast(tmp_path):
    path = _one_tensor(tmp_path, [1] * 100_000, [0, 16])
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match=f"shape has 100000 dimensions; at most {MAX_DIMS} are accepted"):
        read_header(path)
    assert time.perf_counter() - t0 < 1.0


def test_huge_dims_product_is_checked_not_computed(tmp_path):
    # 8 dims of 2**62: the product would be a 150-digit number; 1000 such dims (before the dims limit)
    # made a 19,000-digit product that Python could not even format into the message.
    path = _one_tensor(tmp_path, [2**62] * 8, [0, 16])
    with pytest.raises(CorruptCheckpointError, match=r"needs more bytes than the whole data region holds \(16 bytes\)"):
        read_header(path)
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="dimensions; at most 8"):
        read_header(_one_tensor(tmp_path, [2**62] * 1000, [0, 16]))
    assert time.perf_counter() - t0 < 1.0


def test_huge_offsets_are_shown_by_their_length(tmp_path):
    path = _one_tensor(tmp_path, [4], [0, 10**4000])
    with pytest.raises(CorruptCheckpointError, match=r"invalid data_offsets \[0, a 4001-digit number\]"):
        read_header(path)


def test_show_int_and_checked_numel():
    assert show_int(12345) == "12345" and show_int(-7) == "-7"
    assert show_int(10**4000) == "a 4001-digit number"  # str() of it raises ValueError past 4300 digits
    assert checked_numel([3, 4, 5], 100) == 60
    assert checked_numel([2**62] * 8, 2**64) is None
    assert checked_numel([2**62, 0, 2**62], 10) == 0


# -- architecture inference from shapes ---------------------------------------------------------------
@pytest.mark.parametrize("key,shape,pattern", [
    ("patch_embed.projection.weight", [], r"'patch_embed.projection.weight' has shape \(\); expected 4 dimensions"),
    ("patch_embed.projection.weight", [16], r"has shape \(16,\); expected 4 dimensions"),
    ("patch_embed.projection.weight", [0, 3, 16, 16], r"has shape \(0, 3, 16, 16\); expected 4 dimensions with "
                                                      r"leading sizes in \[1, 1048576\]"),
    ("blocks.0.attn.q_norm.weight", [], r"head width: tensor 'blocks.0.attn.q_norm.weight' has shape \(\)"),
    ("blocks.1.attn.wk.weight", [8], r"kv heads of block 1: tensor 'blocks.1.attn.wk.weight' has shape \(8,\)"),
    ("blocks.0.ffn.w12.weight", [64], r"FFN width: tensor 'blocks.0.ffn.w12.weight' has shape \(64,\)"),
])
def test_scalar_and_short_tensors_in_arch_inference(files, tmp_path, key, shape, pattern):
    path = _with_shape(files["pretrain"], tmp_path / "bad.safetensors", key, shape)
    with pytest.raises(ArchInferenceError, match=pattern):
        sapiens2_edge.load_model(path)


@pytest.mark.parametrize("src,key,shape,pattern", [
    ("seg", "decode_head.deconv_layers.0.weight", [16], r"'deconv_layers.0.weight' has shape \(16,\); expected 4"),
    ("seg", "decode_head.conv_seg.weight", [29], r"head output: tensor 'conv_seg.weight' has shape \(29,\)"),
    ("seg", "decode_head.conv_layers.0.weight", [8, 8, 0, 0], r"inconsistent head shapes: HeadSpec.conv_kernel=0"),
    ("normal", "decode_head.upsample_blocks.0.0.weight", [2, 16, 3, 3], r"inconsistent head shapes: HeadSpec.upsample"),
])
def test_malformed_head_shapes(files, tmp_path, src, key, shape, pattern):
    path = _with_shape(files[src], tmp_path / "bad.safetensors", key, shape)
    with pytest.raises(ArchInferenceError, match=pattern):
        sapiens2_edge.load_model(path)


def test_block_index_of_thousands_of_digits(files, tmp_path):
    header, data = _split(files["pretrain"])
    header["blocks." + "9" * 5000 + ".ln1.weight"] = header.pop("blocks.1.ln1.weight")
    with pytest.raises(StateDictMismatchError, match="missing tensors: 'blocks.1.ln1.weight'.*unexpected tensors"):
        sapiens2_edge.load_model(_write(tmp_path / "b.safetensors", header, data))


# -- quantized metadata ---------------------------------------------------------------------------------
def _edit_meta(src: Path, dst: Path, **values: str) -> Path:
    header, data = _split(src)
    header["__metadata__"].update(values)
    return _write(dst, header, data)


def _arch(files) -> dict:
    return json.loads(read_header(files["quant"]).metadata[KEY_ARCH])


def _recipe(files) -> dict:
    return json.loads(read_header(files["quant"]).metadata[KEY_RECIPE])


@pytest.mark.parametrize("key,value,pattern", [
    (KEY_ARCH, "[1, 2]", r"ArchSpec is a mapping with a 'kv_heads' list"),
    (KEY_ARCH, "{}", r"ArchSpec is a mapping with a 'kv_heads' list"),
    (KEY_HEAD, '{"task": "dance", "in_channels": 16, "out_channels": 3}', r"HeadSpec.task='dance' is not a task"),
    (KEY_HEAD, '"seg"', r"a HeadSpec is a mapping of its fields, got str"),
    (KEY_RECIPE, '"int8"', r"metadata 'sapiens2_edge.recipe' is a JSON str, expected an object"),
    (KEY_RECIPE, "[" * 100_000 + "]" * 100_000, r"metadata 'sapiens2_edge.recipe' is not valid JSON"),
    (KEY_ARCH, '{"embed_dim": ' + "9" * 4400 + "}", r"metadata 'sapiens2_edge.arch' is not valid JSON"),
])
def test_malformed_quantized_metadata(files, tmp_path, key, value, pattern):
    path = _edit_meta(files["quant"], tmp_path / "m.safetensors", **{key: value})
    with pytest.raises(CorruptCheckpointError, match=pattern):
        sapiens2_edge.load_model(path)


@pytest.mark.parametrize("field,value,pattern", [
    ("num_heads", 0, r"ArchSpec.num_heads=0 must be an integer in \[1, 1048576\]"),
    ("embed_dim", 10**30, r"ArchSpec.embed_dim=1000000000000000000000000000000 must be an integer"),
    ("depth", "2", r"ArchSpec.depth='2' must be an integer"),
    ("kv_heads", [4, True], r"ArchSpec.kv_heads=True must be an integer"),
])
def test_malformed_arch_values(files, tmp_path, field, value, pattern):
    arch = {**_arch(files), field: value}
    path = _edit_meta(files["quant"], tmp_path / "a.safetensors", **{KEY_ARCH: json.dumps(arch)})
    with pytest.raises(CorruptCheckpointError, match="the recipe/arch/head metadata is malformed.*" + pattern):
        sapiens2_edge.load_model(path)


@pytest.mark.parametrize("edit,pattern", [
    (lambda r: r.update(layers=["backbone.blocks.0.attn.wq"]), r"the recipe's 'layers' must map layer names to scheme"),
    (lambda r: r["layers"].update({"backbone.blocks.0.attn.wq": 8}), r"'layers' must map layer names to scheme names"),
    (lambda r: r["layers"].update({"backbone.blocks.0.attn.wq": "float"}), r"gives layer 'backbone.blocks.0.attn.wq' "
                                                                           r"the scheme 'float'; expected a quantized"),
    (lambda r: r["layers"].update({"backbone.blocks.0.attn.wq": "int4"}), r"metadata is malformed"),
    (lambda r: r.update(layer_configs={"x": 1}), r"'layer_configs' must map layer names to objects"),
    (lambda r: r.update(layer_configs={"backbone.blocks.0.attn.wq": {"scheme": "int8"}}), r"KeyError: 'weight'"),
    (lambda r: r.update(prefix_tokens="five"), r"prefix_tokens='five' must be an integer >= 0"),
    (lambda r: r["layers"].update({"backbone.nothing": "int8"}), r"quantizes 'backbone.nothing', which is not a linear"),
])
def test_malformed_recipe_values(files, tmp_path, edit, pattern):
    recipe = _recipe(files)
    edit(recipe)
    path = _edit_meta(files["quant"], tmp_path / "r.safetensors", **{KEY_RECIPE: json.dumps(recipe)})
    with pytest.raises((CorruptCheckpointError, StateDictMismatchError), match=pattern):
        sapiens2_edge.load_model(path)


def test_malformed_report(files, tmp_path):
    path = _edit_meta(files["quant"], tmp_path / "rep.safetensors", **{KEY_REPORT: "{not json"})
    with pytest.raises(CorruptCheckpointError, match="metadata 'sapiens2_edge.report' is not valid JSON"):
        read_report(path)
    assert read_report(files["quant"])["scheme"] == "int8"


def test_declared_model_larger_than_the_file(files, tmp_path):
    big = get_preset("0.1b").to_dict()
    with pytest.raises(CorruptCheckpointError, match=r"declares 12 transformer blocks and 2 head layers, but the file "
                                                     r"holds only \d+ tensors"):
        sapiens2_edge.load_model(_edit_meta(files["quant"], tmp_path / "b.safetensors", **{KEY_ARCH: json.dumps(big)}))
    wide = {**_arch(files), "embed_dim": 4096, "num_heads": 4, "ffn_hidden": 16384}
    with pytest.raises(CorruptCheckpointError, match=r"declares a model of [\d,]+ parameters \(micro, embed_dim 4096, "
                                                     r"depth 2\).*refusing to build it"):
        sapiens2_edge.load_model(_edit_meta(files["quant"], tmp_path / "w.safetensors", **{KEY_ARCH: json.dumps(wide)}))
    narrow = {**_arch(files), "ffn_hidden": 16}
    with pytest.raises(StateDictMismatchError, match=r"tensors do not match the architecture in the metadata: "
                                                     r"backbone.blocks.0.ffn.w12.weight \(file: \(64, 16\), expected "
                                                     r"\(32, 16\)\)"):
        sapiens2_edge.load_model(_edit_meta(files["quant"], tmp_path / "n.safetensors", **{KEY_ARCH: json.dumps(narrow)}))


_PEAK = """
import sys
sys.path.insert(0, {root!r})
import torch, sapiens2_edge
from sapiens2_edge.errors import CorruptCheckpointError
def hwm():  # peak RSS of this process image (ru_maxrss would include the parent's, kept over exec)
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) / 1024
base = hwm()
try:
    sapiens2_edge.load_model({path!r})
except CorruptCheckpointError as e:
    print("refused:", str(e)[:1000])
print("grew", hwm() - base)
"""


def test_small_file_large_arch_refused_before_allocating(tmp_path):
    """A 1.6 MB quantized file (the 18-block tiny model) whose metadata declares the 0.4b backbone
    (24 blocks, 300M parameters, 1.2 GB in float32): refused before the model is built."""
    q, _ = quantize(build_model(TINY, seed=0), "int8", progress=False)
    src = save_quantized(q, tmp_path / "tiny.safetensors")
    big = {**get_preset("0.4b").to_dict(), "depth": 18, "kv_heads": [16] * 18}
    path = _edit_meta(src, tmp_path / "big.safetensors", **{KEY_ARCH: json.dumps(big)})
    assert path.stat().st_size < 2_000_000
    out = subprocess.run([sys.executable, "-c", _PEAK.format(root=str(ROOT), path=str(path))], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert "refused:" in out and "refusing to build it" in out, out
    grew = float(out.split("grew")[-1])
    assert grew < 200, f"peak RSS grew by {grew:.0f} MB while refusing the file"


def test_valid_files_still_load(files):
    for name in ("pretrain", "seg", "normal", "quant"):
        model = sapiens2_edge.load_model(files[name])
        assert sum(p.numel() for p in model.parameters()) > 0
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(sapiens2_edge.load_model(files["seg"])(x)).all()
