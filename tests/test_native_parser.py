"""Malformed safetensors files, manifests and configurations: the native engine rejects each with
a typed error that says what was wrong - never a crash."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from sapiens2_edge.errors import ArtifactError, ConfigError, CorruptCheckpointError, StateDictMismatchError
from sapiens2_edge.exporters import export
from sapiens2_edge.runtime.native_backend import import_native
from tests.fixtures.tiny import input_size, tiny_model

native = import_native()


def container(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


VALID = save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int8)}, metadata={"k": "v"})


def test_valid_file_matches_safetensors():
    tensors, meta = native.parse_safetensors(VALID)
    assert tensors == {"a": ("F32", [2, 3]), "b": ("I8", [4])} and meta == {"k": "v"}


@pytest.mark.parametrize("data,match", [
    (b"", "truncated: 0 bytes"),
    (VALID[:5], "truncated: 5 bytes"),
    (VALID[:20], "truncated: the header claims"),
    (VALID[:-1], "lies past the"),
    (struct.pack("<Q", 1 << 60) + b"{}", "exceeds the 104857600-byte limit"),
    (container(b"{not json"), "header is not valid JSON"),
    (container(b"[1, 2]"), "must be a JSON object"),
    (container({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype 'F33'"),
    (container({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4),
     "4 bytes do not hold a F32 tensor of shape \\(3,\\)"),
    (container({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}, b"\0" * 4), "lies past the 4 data"),
    (container({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "not an increasing pair"),
    (container({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative integers"),
    (container({"a": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 4]}}, b"\0" * 4), "overflows"),
    (container({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "tensors overlap"),
    (container({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "needs exactly 'dtype', 'shape' and 'data_offsets'"),
    (container({"__metadata__": {"k": 1}}), "__metadata__ entry 'k' is not a string"),
    (container(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
    (container(b"[" * 100 + b"]" * 100), "nesting deeper than 8"),
])
def test_malformed_safetensors(data, match):
    with pytest.raises(CorruptCheckpointError, match=match):
        native.parse_safetensors(data)


def test_every_truncation_rejected():
    for n in range(len(VALID)):
        with pytest.raises(CorruptCheckpointError):
            native.parse_safetensors(VALID[:n])


def test_random_bit_flips_never_crash():
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = bytearray(VALID)
        for i in rng.integers(0, len(b), 3):
            b[i] ^= 1 << int(rng.integers(0, 8))
        try:
            native.parse_safetensors(bytes(b))
        except CorruptCheckpointError:
            pass


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "x\\u00e9\\ud83d\\ude00\\n"}}',
                                  '[]', '"s"', '0', '-0.5', '{"big": 9223372036854775807}', ' {"k" : [ {} ] } '])
def test_json_parser_agrees_with_python(text):
    assert native.parse_json(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text,match", [
    ('{"a": 1,}', "expected a string key"), ('[1 2]', "expected ',' or ']'"), ('{"a" 1}', "expected ':'"),
    ('"\\ud800"', "unpaired surrogate"), ('"a\x01"', "control character"), ('01', "trailing characters"),
    ('1e999', "out of range"), ('[' * 66 + ']' * 66, "nesting deeper than 64"), ('tru', "unexpected character"),
    ('"abc', "unterminated string"), ('', "unexpected end of input"), ('{"a": 1} x', "trailing characters"),
])
def test_json_parser_rejects(text, match):
    with pytest.raises(ArtifactError, match=match):
        native.parse_json(text.encode())


# --- engine: weights and manifests -------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model = tiny_model("seg", seed=1)
    return export(model, tmp_path_factory.mktemp("n") / "seg", format="native", input_size=input_size("seg"),
                  verify=False)


@pytest.fixture()
def copy(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def rewrite_weights(root, edit):
    """Load the artifact's weights (torch: the RoPE periods are bf16), ``edit`` the dict of numpy
    arrays / tensors, and write it back with the same metadata."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = root / "weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in tensors.items()}, str(path),
              metadata=meta)


def test_truncated_weights(copy):
    p = copy / "weights.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="lies past the"):
        native.Engine(str(copy))


def test_missing_extra_misshaped_and_mistyped_tensors(copy):
    rewrite_weights(copy, lambda t: t.pop("backbone.blocks.3.attn.wk.bias"))
    with pytest.raises(StateDictMismatchError, match="missing tensor 'backbone.blocks.3.attn.wk.bias' of shape \\(64,\\)"):
        native.Engine(str(copy))
    rewrite_weights(copy, lambda t: t.update({"backbone.blocks.3.attn.wk.bias": np.zeros(64, np.float32),
                                              "backbone.extra": np.zeros(2, np.float32)}))
    with pytest.raises(StateDictMismatchError, match="1 unexpected tensor\\(s\\) for this architecture: 'backbone.extra'"):
        native.Engine(str(copy))
    rewrite_weights(copy, lambda t: (t.pop("backbone.extra"), t.update({"backbone.ln1.weight": np.zeros(65, np.float32)})))
    with pytest.raises(StateDictMismatchError, match="'backbone.ln1.weight' has shape \\(65,\\), expected \\(64,\\)"):
        native.Engine(str(copy))
    rewrite_weights(copy, lambda t: t.update({"backbone.ln1.weight": np.zeros(64, np.int8)}))
    with pytest.raises(StateDictMismatchError, match="'backbone.ln1.weight' is I8; only linear weights"):
        native.Engine(str(copy))
    rewrite_weights(copy, lambda t: t.update({"backbone.ln1.weight": np.zeros(64, np.int32)}))
    with pytest.raises(StateDictMismatchError, match="has dtype I32, expected F32, F16 or BF16"):
        native.Engine(str(copy))
    rewrite_weights(copy, lambda t: t.update({"backbone.ln1.weight": np.zeros(64, np.float32),
                                              "backbone.blocks.0.attn.wq.weight": np.zeros((64, 64), np.int8)}))
    with pytest.raises(StateDictMismatchError, match="quantized tensor 'backbone.blocks.0.attn.wq.weight' has no "
                                                     "'backbone.blocks.0.attn.wq.weight_scale'"):
        native.Engine(str(copy))


def manifest_edit(root, edit):
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("arch"), "lacks the field 'arch'"),
    (lambda m: m["arch"].update(kv_heads=[4] * 3), "kv_heads has 3 entries, expected depth=18"),
    (lambda m: m["arch"].update(kv_heads=[3] * 18), "3 kv heads do not divide 4 query heads"),
    (lambda m: m["arch"].update(embed_dim="64"), "arch.embed_dim must be an integer, found a string"),
    (lambda m: m["arch"].update(depth=-1), "depth = -1 is outside"),
    (lambda m: m["head"].update(task="depth"), "unknown task 'depth'"),
    (lambda m: m["head"].update(in_channels=32), "differs from the backbone width 64"),
    (lambda m: m.update(rope_mode="fp8"), "unknown rope_mode 'fp8'"),
    (lambda m: m.update(files={"../w.safetensors": {"role": "model"}}), "leaves the artifact directory"),
    (lambda m: m.update(files={}), "lists no weights.safetensors"),
    (lambda m: m.update(task="pose"), "task 'pose' does not match the head's 'seg'"),
])
def test_bad_manifest(copy, edit, match):
    manifest_edit(copy, edit)
    with pytest.raises(ArtifactError, match=match):
        native.Engine(str(copy))


def test_manifest_not_json_and_missing(copy, tmp_path):
    (copy / "manifest.json").write_text('{"arch": {')
    with pytest.raises(ArtifactError, match="manifest.json is not valid JSON: invalid JSON at byte 10: expected a string key"):
        native.Engine(str(copy))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json cannot be read"):
        native.Engine(str(tmp_path / "empty"))
    with pytest.raises(CorruptCheckpointError, match="cannot open"):
        native.Engine(str(tmp_path / "nope.safetensors"))


def test_weights_file_with_and_without_config(artifact):
    w = str(artifact / "weights.safetensors")
    assert native.Engine(w).task == "seg"  # the exporter's metadata describes the model
    m = json.loads((artifact / "manifest.json").read_text())
    cfg = {"arch": m["arch"], "head": m["head"], "rope_mode": "bf16"}
    assert native.Engine(w, json.dumps(cfg)).output_names == ["logits"]
    with pytest.raises(ArtifactError, match="config is not valid JSON"):
        native.Engine(w, "{")
    assert native.parse_config(json.dumps(cfg).encode())["outputs"] == ["logits"]


def test_plain_checkpoint_needs_config(tmp_path):
    from tests.fixtures.tiny import save

    p = save(tiny_model("pose"), tmp_path / "pose.safetensors")
    with pytest.raises(ArtifactError, match="carries no sapiens2_edge.arch/head metadata; pass the configuration"):
        native.Engine(str(p))


def test_unsupported_static_activation_layer_is_config_error(copy):
    rewrite_weights(copy, lambda t: t.update({"backbone.blocks.0.attn.wq.input_scale": np.ones(1, np.float32)}))
    with pytest.raises(ConfigError, match="static activation quantization"):
        native.Engine(str(copy))


@pytest.mark.parametrize("raw", [b'"\xff"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\xe2\x82"'])
def test_json_parser_rejects_invalid_utf8(raw):
    with pytest.raises(ArtifactError, match="UTF-8"):
        native.parse_json(raw)
    assert native.parse_json('"€😀"'.encode()) == "€😀"
