"""Safetensors I/O, header validation, key layouts and checkpoint resolution (CPU, offline)."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from sapiens2_edge.errors import (  # noqa: E402
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StateDictMismatchError,
)
from sapiens2_edge.models.checkpoint import (  # noqa: E402
    MAX_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    header_summary,
    official_filename,
    read_header,
    read_tensors,
    resolve_checkpoint,
    split_layout,
    strip_wrapper_prefixes,
    write_tensors,
)

# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def craft(path: Path, header: object, data: bytes = b"", *, length: int | None = None,
          raw_header: bytes | None = None) -> Path:
    """Write a (possibly malformed) safetensors file by hand."""
    hb = raw_header if raw_header is not None else json.dumps(header).encode("utf-8")
    n = len(hb) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + hb + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _bits(t: "torch.Tensor") -> "torch.Tensor":
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else t


BACKBONE_KEYS = [
    "cls_token",
    "storage_tokens",
    "patch_embed.projection.weight",
    "patch_embed.projection.bias",
    "rope_embed.periods",
    "ln1.weight",
    "blocks.0.ln1.weight",
    "blocks.0.attn.wq.weight",
    "blocks.1.ffn.w3.bias",
]
HEAD_KEYS = ["conv_seg.weight", "conv_seg.bias", "deconv_layers.0.weight"]


# ------------------------------------------------------------------------------------------
# round trip
# ------------------------------------------------------------------------------------------


def test_round_trip_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(7, 2, generator=g).to(torch.bfloat16),
        "f16": torch.randn(4, generator=g).to(torch.float16),
        "i8": torch.randint(-128, 128, (2, 3, 4), generator=g, dtype=torch.int8),
        "f8": torch.randn(9, generator=g).to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5),
        "strided": torch.randn(4, 6, generator=g).t(),  # not contiguous
    }
    tensors["f32"][0, 0] = float("nan")  # NaN payload must survive
    path = write_tensors(tensors, tmp_path / "sub" / "rt.safetensors", metadata={"format": "pt"})
    assert path == tmp_path / "sub" / "rt.safetensors"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # tmp cleaned up

    back = read_tensors(path)
    assert list(sorted(back)) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype, name
        assert back[name].shape == t.shape, name
        assert torch.equal(_bits(back[name]), _bits(t)), name
    assert read_header(path).metadata == {"format": "pt"}

    subset = read_tensors(path, names=["bf16", "i8"])
    assert list(subset) == ["bf16", "i8"]
    assert subset["bf16"].dtype == torch.bfloat16


def test_write_handles_shared_storage_and_overwrites_atomically(tmp_path):
    w = torch.randn(4, 4)
    path = tmp_path / "tied.safetensors"
    write_tensors({"a": w, "b": w, "c": w[1:3]}, path)
    back = read_tensors(path)
    assert torch.equal(back["a"], w) and torch.equal(back["b"], w)
    assert torch.equal(back["c"], w[1:3])
    write_tensors({"x": torch.ones(2)}, path)  # replace in place
    assert list(read_tensors(path)) == ["x"]


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match="str -> str"):
        write_tensors({"a": torch.ones(1)}, tmp_path / "m.safetensors", metadata={"k": 1})
    with pytest.raises(CheckpointError, match="expected a torch.Tensor"):
        write_tensors({"a": [1.0]}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="safetensors only"):
        write_tensors({"a": torch.ones(1)}, tmp_path / "m.pth")
    assert not list(tmp_path.iterdir())


def test_read_unknown_names(tmp_path):
    path = write_tensors({"a": torch.ones(1)}, tmp_path / "a.safetensors")
    with pytest.raises(StateDictMismatchError, match="'nope'"):
        read_tensors(path, names=["a", "nope"])


# ------------------------------------------------------------------------------------------
# read_header
# ------------------------------------------------------------------------------------------


def test_read_header_offsets_and_shapes(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file(
        {"w": torch.zeros(2, 3), "b": torch.zeros(5, dtype=torch.bfloat16)},
        str(path),
        metadata={"arch": "tiny"},
    )
    h = read_header(path)
    assert isinstance(h, SafetensorsHeader)
    assert h.path == path
    assert h.file_size == path.stat().st_size
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert h.data_start == 8 + n
    assert h.metadata == {"arch": "tiny"}
    w, b = h.tensors["w"], h.tensors["b"]
    assert isinstance(w, TensorInfo)
    assert (w.dtype, w.shape, w.numel, w.nbytes) == ("F32", (2, 3), 6, 24)
    assert (b.dtype, b.shape, b.numel, b.nbytes) == ("BF16", (5,), 5, 10)
    assert sorted([(w.begin, w.end), (b.begin, b.end)]) == [(0, 24), (24, 34)]
    assert h.file_size - h.data_start == 34


def test_read_header_does_not_read_data(tmp_path, monkeypatch):
    """A 4 GiB sparse data region is validated from the header alone."""
    size = 1 << 30  # elements of F32 -> 4 GiB of data
    hdr = {"big": entry("F32", [size], 0, 4 * size)}
    path = craft(tmp_path / "big.safetensors", hdr)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + 4 * size)  # sparse: costs no disk
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            reads.append(n)
            return self._f.read(n)

        def __getattr__(self, k):
            return getattr(self._f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self._f.__exit__(*a)

    import builtins

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Spy(real_open(*a, **k)))
    h = read_header(path)
    monkeypatch.undo()
    assert h.tensors["big"].nbytes == 4 * size
    assert sum(reads) < 1000


def test_header_with_no_tensors_and_null_metadata(tmp_path):
    h = read_header(craft(tmp_path / "e.safetensors", {"__metadata__": None}))
    assert h.tensors == {} and h.metadata == {}


@pytest.mark.parametrize(
    "name, build, pattern",
    [
        ("short", lambda p: p.write_bytes(b"\x01\x02\x03"), r"only 3 bytes.*8-byte"),
        ("empty", lambda p: p.write_bytes(b""), r"only 0 bytes"),
        (
            "len_past_eof",
            lambda p: craft(p, {}, length=1000),
            r"declares a 1000-byte JSON header but only 2 bytes follow.*998 bytes missing",
        ),
        (
            "len_absurd",
            lambda p: craft(p, {}, length=MAX_HEADER_BYTES + 1),
            r"100000001-byte JSON header, more than the 100000000-byte limit",
        ),
        ("len_zero", lambda p: craft(p, {}, length=0), r"empty \(0-byte\) JSON header"),
        ("not_json", lambda p: craft(p, None, raw_header=b"{not json"), r"not valid JSON"),
        ("not_utf8", lambda p: craft(p, None, raw_header=b'{"\xff": 1}'), r"not valid UTF-8"),
        ("json_list", lambda p: craft(p, [1, 2]), r"JSON list, expected a JSON object"),
        ("json_string", lambda p: craft(p, "x"), r"JSON str, expected a JSON object"),
        (
            "duplicate_key",
            lambda p: craft(
                p, None, b"\0" * 4,
                raw_header=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
                b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            ),
            r"key 'a' more than once",
        ),
        ("entry_not_object", lambda p: craft(p, {"w": [1]}), r"tensor 'w': entry is a JSON list"),
        (
            "missing_field",
            lambda p: craft(p, {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
            r"tensor 'w': entry has no 'data_offsets' field",
        ),
        (
            "unknown_dtype",
            lambda p: craft(p, {"w": entry("F128", [1], 0, 16)}, b"\0" * 16),
            r"tensor 'w': unknown dtype 'F128'; expected one of F64, F32",
        ),
        (
            "negative_shape",
            lambda p: craft(p, {"w": entry("F32", [2, -1], 0, 0)}),
            r"tensor 'w': invalid shape \[2, -1\]; expected a list of non-negative integers",
        ),
        (
            "float_shape",
            lambda p: craft(p, {"w": entry("F32", [2.0], 0, 8)}, b"\0" * 8),
            r"tensor 'w': invalid shape \[2.0\]",
        ),
        (
            "bool_shape",
            lambda p: craft(p, {"w": entry("F32", [True], 0, 4)}, b"\0" * 4),
            r"tensor 'w': invalid shape \[True\]",
        ),
        (
            "shape_not_list",
            lambda p: craft(p, {"w": entry("F32", 4, 0, 16)}, b"\0" * 16),
            r"tensor 'w': invalid shape 4",
        ),
        (
            "offsets_reversed",
            lambda p: craft(p, {"w": entry("F32", [1], 8, 4)}, b"\0" * 8),
            r"tensor 'w': invalid data_offsets \[8, 4\]; expected 0 <= begin <= end",
        ),
        (
            "offsets_negative",
            lambda p: craft(p, {"w": entry("F32", [0], -4, -4)}),
            r"tensor 'w': invalid data_offsets \[-4, -4\]",
        ),
        (
            "offsets_three",
            lambda p: craft(p, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2, 4]}}),
            r"tensor 'w': invalid data_offsets \[0, 2, 4\]; expected \[begin, end\] integers",
        ),
        (
            "offsets_vs_shape",
            lambda p: craft(p, {"w": entry("F32", [2, 3], 0, 20)}, b"\0" * 20),
            r"tensor 'w': data_offsets \[0, 20\] span 20 bytes but shape \(2, 3\) of F32 "
            r"needs 6 x 4 = 24 bytes",
        ),
        (
            "overlap",
            lambda p: craft(
                p, {"a": entry("F32", [4], 0, 16), "b": entry("F32", [2], 8, 16)}, b"\0" * 16
            ),
            r"tensors 'a' \(bytes \[0, 16\)\) and 'b' \(bytes \[8, 16\)\) overlap",
        ),
        (
            "hole",
            lambda p: craft(
                p, {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12
            ),
            r"4 unindexed bytes \(a hole\) after tensor 'a'",
        ),
        (
            "trailing",
            lambda p: craft(p, {"a": entry("F32", [1], 0, 4)}, b"\0" * 10),
            r"6 trailing bytes after the last tensor",
        ),
        (
            "truncated",
            lambda p: craft(
                p, {"a": entry("F32", [4], 0, 16), "b": entry("F32", [8], 16, 48)}, b"\0" * 40
            ),
            r"truncated: tensor 'b' ends at data offset 48 but the data region holds only "
            r"40 bytes \(8 bytes missing",
        ),
        (
            "metadata_not_map",
            lambda p: craft(p, {"__metadata__": ["x"]}),
            r"'__metadata__' is a JSON list, expected an object mapping strings to strings",
        ),
        (
            "metadata_value_not_str",
            lambda p: craft(p, {"__metadata__": {"epoch": 3}}),
            r"'__metadata__' entry 'epoch' has a int value",
        ),
        (
            "nan_constant",
            lambda p: craft(p, None, raw_header=b'{"__metadata__": {"a": NaN}}'),
            r"not valid JSON",
        ),
    ],
)
def test_corrupt_headers(tmp_path, name, build, pattern):
    path = tmp_path / f"{name}.safetensors"
    build(path)
    with pytest.raises(CorruptCheckpointError, match=pattern) as info:
        read_header(path)
    assert str(path) in str(info.value)  # the message names the file
    # read_tensors goes through the same validation (never a crash in safetensors / torch)
    with pytest.raises(CorruptCheckpointError, match=pattern):
        read_tensors(path)


def test_huge_dimension_refused(tmp_path):
    path = craft(tmp_path / "huge.safetensors", {"w": entry("F32", [2**70, 0], 0, 0)})
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'w': invalid shape.*below 2\*\*63"):
        read_header(path)


def test_random_corruption_gives_typed_errors(tmp_path):
    """Byte flips, cuts and insertions: either a clean read or CorruptCheckpointError."""
    import random

    src = write_tensors(
        {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16),
         "c": torch.arange(6, dtype=torch.int8)},
        tmp_path / "src.safetensors",
        metadata={"k": "v"},
    )
    blob = src.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    rng = random.Random(1234)
    target = tmp_path / "fuzz.safetensors"
    for _ in range(300):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if r < 0.6 and b:
                b[rng.randrange(min(len(b), 8 + n))] = rng.randrange(256)
            elif r < 0.8:
                del b[rng.randrange(len(b) + 1):]
            else:
                b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        target.write_bytes(bytes(b))
        try:
            read_tensors(target)
        except CorruptCheckpointError:
            pass


def test_truncated_real_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(16, 16)}, str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'w'.*100 bytes missing"):
        read_header(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_header(tmp_path)


def test_dtype_table():
    assert SAFETENSORS_DTYPES["F32"] == 4 and SAFETENSORS_DTYPES["BF16"] == 2
    assert SAFETENSORS_DTYPES["F8_E4M3"] == 1 and SAFETENSORS_DTYPES["I64"] == 8
    for name in ("F64", "F16", "I32", "I16", "I8", "U8", "BOOL", "F8_E5M2"):
        assert name in SAFETENSORS_DTYPES


# ------------------------------------------------------------------------------------------
# pickle refusal
# ------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_pickle_checkpoint_never_unpickled(tmp_path, suffix):
    marker = tmp_path / "marker.txt"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": _Evil(str(marker))}))
    # sanity: this file really would run code if unpickled (done on a copy, marker removed)
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="pickle-based checkpoints are never loaded"):
        resolve_checkpoint(path)
    with pytest.raises(CheckpointError, match="pickle-based"):
        read_header(path)
    with pytest.raises(CheckpointError, match="pickle-based"):
        read_tensors(path)
    assert not marker.exists()


def test_pickle_renamed_safetensors_is_corrupt_not_unpickled(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(CorruptCheckpointError):
        read_tensors(path)
    assert not marker.exists()


@pytest.mark.parametrize("module", ["checkpoint", "safetensors_header", "safetensors_io", "resolve", "layout",
                                    "loading"])
def test_no_torch_load_in_module(module):
    src = Path(__import__(f"sapiens2_edge.models.{module}", fromlist=["x"]).__file__).read_text()
    import re

    # the only mention is the conversion advice in the refusal message: "torch.load(..., "
    assert not re.search(r"torch\.load\((?!\.\.\.)", src)
    assert "import pickle" not in src and "pickle.load" not in src


# ------------------------------------------------------------------------------------------
# key prefixes and layouts
# ------------------------------------------------------------------------------------------


def test_strip_wrapper_prefixes():
    names = [
        "module.blocks.0.ln1.weight",
        "_orig_mod.cls_token",
        "model.ln1.weight",
        "module._orig_mod.model.patch_embed.projection.weight",
        "_orig_mod.module.backbone.blocks.1.ln2.weight",
        "decode_head.conv_seg.weight",
        "blocks.0.attn.model.weight",  # 'model.' only stripped when leading
    ]
    assert strip_wrapper_prefixes(names) == [
        "blocks.0.ln1.weight",
        "cls_token",
        "ln1.weight",
        "patch_embed.projection.weight",
        "backbone.blocks.1.ln2.weight",
        "decode_head.conv_seg.weight",
        "blocks.0.attn.model.weight",
    ]
    d = {"module.a": 1, "b": 2}
    out = strip_wrapper_prefixes(d)
    assert out == {"a": 1, "b": 2} and list(out) == ["a", "b"]


def test_strip_wrapper_prefixes_collision():
    pattern = r"'module\.ln1\.weight' and 'ln1\.weight' both become"
    with pytest.raises(CheckpointError, match=pattern):
        strip_wrapper_prefixes(["module.ln1.weight", "ln1.weight"])
    with pytest.raises(CheckpointError, match="both become 'cls_token'"):
        strip_wrapper_prefixes({"_orig_mod.cls_token": 0, "model.module.cls_token": 1})
    with pytest.raises(CheckpointError, match="nothing but wrapper prefixes"):
        strip_wrapper_prefixes(["module."])


def test_split_layout_pretrain():
    layout, bb, head = split_layout(BACKBONE_KEYS)
    assert layout == "pretrain" and head == {}
    assert bb == {k: k for k in BACKBONE_KEYS}
    layout, bb, head = split_layout({"module." + k: None for k in BACKBONE_KEYS})
    assert layout == "pretrain"
    assert bb["blocks.0.ln1.weight"] == "module.blocks.0.ln1.weight"


def test_split_layout_task():
    keys = ["backbone." + k for k in BACKBONE_KEYS] + ["decode_head." + k for k in HEAD_KEYS]
    layout, bb, head = split_layout(keys)
    assert layout == "task"
    assert bb["blocks.0.ln1.weight"] == "backbone.blocks.0.ln1.weight"
    assert head == {k: "decode_head." + k for k in HEAD_KEYS}
    layout, bb, head = split_layout(["_orig_mod." + k for k in keys])
    assert layout == "task" and head["conv_seg.weight"] == "_orig_mod.decode_head.conv_seg.weight"


def test_split_layout_backbone_prefix_only_is_pretrain():
    layout, bb, head = split_layout(["backbone." + k for k in BACKBONE_KEYS])
    assert layout == "pretrain" and head == {}
    assert bb["cls_token"] == "backbone.cls_token"


def test_split_layout_errors():
    mixed = r"mixed checkpoint layout.*'cls_token'.*'backbone\.ln1\.weight'"
    with pytest.raises(CheckpointError, match=mixed):
        split_layout(["cls_token", "blocks.0.ln1.weight", "backbone.ln1.weight"])
    headless = r"'decode_head\.' keys .*'decode_head\.conv_seg\.weight'.* no 'backbone\.' keys"
    with pytest.raises(CheckpointError, match=headless):
        split_layout(["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"])
    unknown = r"neither backbone nor head keys: 'teacher\.cls_token'"
    with pytest.raises(StateDictMismatchError, match=unknown):
        split_layout(["cls_token", "teacher.cls_token"])
    with pytest.raises(StateDictMismatchError, match=r"'state_dict\.ln1\.weight'"):
        split_layout(["state_dict.ln1.weight"])
    with pytest.raises(StateDictMismatchError, match=r"'backbone\.foo'"):
        split_layout(["backbone.ln1.weight", "backbone.foo", "decode_head.conv_seg.weight"])
    with pytest.raises(CheckpointError, match="no tensors"):
        split_layout([])


# ------------------------------------------------------------------------------------------
# official names
# ------------------------------------------------------------------------------------------


def test_official_filename_all_ids():
    expected = {}
    for size in ("0.1b", "0.4b", "0.8b", "1b", "5b"):
        expected[f"facebook/sapiens2-pretrain-{size}"] = (
            f"pretrain/sapiens2_{size}_pretrain.safetensors"
        )
    expected["facebook/sapiens2-pretrain-1b-4k"] = "pretrain/sapiens2_1b_4k_pretrain.safetensors"
    for task in ("pose", "seg", "normal", "pointmap"):
        for size in ("0.4b", "0.8b", "1b", "5b"):
            expected[f"facebook/sapiens2-{task}-{size}"] = (
                f"{task}/sapiens2_{size}_{task}.safetensors"
            )
    expected["facebook/sapiens-pose-bbox-detector"] = "detector/rtmdet_m.pth"
    assert len(expected) == 6 + 16 + 1
    for repo, name in expected.items():
        assert official_filename(repo) == name, repo
    # never released / not an id
    for bad in ("facebook/sapiens2-seg-0.1b", "facebook/sapiens2-pose-1b-4k",
                "facebook/sapiens2-albedo-1b", "facebook/sapiens2-seg", "sapiens2-seg-0.4b",
                "facebook/other", "a/b/c"):
        assert official_filename(bad) is None, bad


# ------------------------------------------------------------------------------------------
# resolve_checkpoint
# ------------------------------------------------------------------------------------------


def _tiny(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"cls_token": torch.zeros(1, 1, 4)}, str(path))
    return path


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """Empty checkpoint root and an empty, offline Hugging Face cache."""
    root = tmp_path / "root"
    cache = tmp_path / "hf" / "hub"
    root.mkdir()
    cache.mkdir(parents=True)
    monkeypatch.setenv("SAPIENS_CHECKPOINT_ROOT", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache), raising=False)
    except ImportError:
        pass
    return root, cache


def _fake_hf_snapshot(cache: Path, repo_id: str, files: list[str], rev: str = "a" * 40) -> Path:
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / rev
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, name in enumerate(files):
        blob = _tiny(blobs / f"blob{i}")
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev)
    return snap


def test_resolve_file(tmp_path):
    p = _tiny(tmp_path / "m.safetensors")
    assert resolve_checkpoint(p) == p
    assert resolve_checkpoint(str(p)) == p


def test_resolve_file_without_suffix_sniffed(tmp_path):
    p = _tiny(tmp_path / "weights.st")
    p2 = tmp_path / "weights"
    p.rename(p2)
    assert resolve_checkpoint(p2) == p2
    other = tmp_path / "notes.txt"
    other.write_text("hello world")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        resolve_checkpoint(other)


def test_resolve_directory(tmp_path):
    d = tmp_path / "one"
    p = _tiny(d / "sapiens2_0.4b_seg.safetensors")
    (d / "config.json").write_text("{}")
    assert resolve_checkpoint(d) == p

    d2 = tmp_path / "several_with_model"
    _tiny(d2 / "a.safetensors")
    m = _tiny(d2 / "model.safetensors")
    assert resolve_checkpoint(d2) == m

    d3 = tmp_path / "ambiguous"
    _tiny(d3 / "a.safetensors")
    _tiny(d3 / "b.safetensors")
    ambiguous = r"2 \.safetensors files.*ambiguous.*'a\.safetensors', 'b\.safetensors'"
    with pytest.raises(CheckpointError, match=ambiguous):
        resolve_checkpoint(d3)

    d4 = tmp_path / "empty"
    d4.mkdir()
    (d4 / "old.pth").write_bytes(b"x")
    with pytest.raises(CheckpointNotFoundError, match=r"no \.safetensors file.*'old\.pth'"):
        resolve_checkpoint(d4)


def test_resolve_missing_path(tmp_path, hf_env):
    with pytest.raises(CheckpointNotFoundError, match="not found"):
        resolve_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointNotFoundError, match="not found"):
        resolve_checkpoint(str(tmp_path / "a" / "b"))
    with pytest.raises(CheckpointNotFoundError, match="no file at"):
        resolve_checkpoint("missing.pth")
    with pytest.raises(CheckpointNotFoundError, match="repo id"):
        resolve_checkpoint("not an id at all")


def test_resolve_repo_id_from_checkpoint_root(hf_env):
    root, _ = hf_env
    p = _tiny(root / "seg" / "sapiens2_0.4b_seg.safetensors")
    assert resolve_checkpoint("facebook/sapiens2-seg-0.4b") == p
    p4k = _tiny(root / "pretrain" / "sapiens2_1b_4k_pretrain.safetensors")
    assert resolve_checkpoint("facebook/sapiens2-pretrain-1b-4k") == p4k


def test_resolve_repo_id_default_root(tmp_path, hf_env, monkeypatch):
    monkeypatch.delenv("SAPIENS_CHECKPOINT_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = _tiny(tmp_path / "home" / "sapiens2_host" / "pose" / "sapiens2_1b_pose.safetensors")
    assert resolve_checkpoint("facebook/sapiens2-pose-1b") == p


def test_resolve_repo_id_from_fake_hf_cache(hf_env):
    _, cache = hf_env
    snap = _fake_hf_snapshot(cache, "facebook/sapiens2-normal-0.8b",
                             ["sapiens2_0.8b_normal.safetensors"])
    got = resolve_checkpoint("facebook/sapiens2-normal-0.8b")
    assert got == snap / "sapiens2_0.8b_normal.safetensors"
    assert read_header(got).tensors["cls_token"].shape == (1, 1, 4)


def test_resolve_hf_cache_prefers_official_name(hf_env):
    _, cache = hf_env
    snap = _fake_hf_snapshot(cache, "facebook/sapiens2-seg-1b",
                             ["other.safetensors", "sapiens2_1b_seg.safetensors"])
    assert resolve_checkpoint("facebook/sapiens2-seg-1b") == snap / "sapiens2_1b_seg.safetensors"


def test_resolve_hf_cache_non_official_repo(hf_env):
    _, cache = hf_env
    snap = _fake_hf_snapshot(cache, "someone/my-finetune", ["model.safetensors"])
    assert resolve_checkpoint("someone/my-finetune") == snap / "model.safetensors"


def test_resolve_hf_offline_miss(hf_env):
    root, cache = hf_env
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("facebook/sapiens2-seg-0.4b")
    msg = str(info.value)
    assert "facebook/sapiens2-seg-0.4b" in msg
    assert "huggingface-cli download facebook/sapiens2-seg-0.4b --include '*.safetensors'" in msg
    assert "hf download facebook/sapiens2-seg-0.4b" in msg
    assert str(root / "seg" / "sapiens2_0.4b_seg.safetensors") in msg
    assert "HF_HUB_OFFLINE" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_resolve_hf_snapshot_without_safetensors(hf_env):
    _, cache = hf_env
    snap = _fake_hf_snapshot(cache, "facebook/sapiens2-pose-0.4b", [])
    (snap / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match="no .safetensors file in the snapshot"):
        resolve_checkpoint("facebook/sapiens2-pose-0.4b")


def test_resolve_detector_refused(hf_env):
    with pytest.raises(CheckpointError, match="pickle-based"):
        resolve_checkpoint("facebook/sapiens-pose-bbox-detector")


def test_resolve_without_huggingface_hub(hf_env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import now fails
    with pytest.raises(CheckpointNotFoundError, match="pip install huggingface_hub") as info:
        resolve_checkpoint("facebook/sapiens2-seg-0.4b")
    assert "hf download facebook/sapiens2-seg-0.4b" in str(info.value)


def test_resolve_existing_path_wins_over_repo_id(tmp_path, hf_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _tiny(tmp_path / "facebook" / "sapiens2-seg-0.4b" / "model.safetensors")
    assert resolve_checkpoint("facebook/sapiens2-seg-0.4b").resolve() == p.resolve()


# ------------------------------------------------------------------------------------------
# header_summary
# ------------------------------------------------------------------------------------------


def test_header_summary(tmp_path):
    path = write_tensors(
        {
            "a": torch.zeros(2, 3),
            "b": torch.zeros(4, dtype=torch.bfloat16),
            "c": torch.zeros(5, dtype=torch.bfloat16),
            "q": torch.zeros(8, dtype=torch.int8),
        },
        tmp_path / "s.safetensors",
        metadata={"task": "seg"},
    )
    s = header_summary(read_header(path))
    assert s["num_tensors"] == 4
    assert s["num_parameters"] == 6 + 4 + 5 + 8
    assert s["total_bytes"] == 24 + 8 + 10 + 8
    assert s["dtypes"] == {"BF16": 2, "F32": 1, "I8": 1}
    assert s["dtype_bytes"]["BF16"] == 18
    assert s["metadata"] == {"task": "seg"}
    assert s["file_size"] == path.stat().st_size
    assert header_summary(path) == s  # a path works too
    json.dumps(s)  # serialisable for the CLI


def test_header_functions_need_no_torch(tmp_path):
    """read_header / header_summary / resolve_checkpoint run in a process without torch."""
    import subprocess
    import sys

    path = write_tensors({"w": torch.zeros(3)}, tmp_path / "n.safetensors")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from sapiens2_edge.models.checkpoint import (\n"
        "    header_summary, read_header, resolve_checkpoint)\n"
        f"p = resolve_checkpoint({str(path)!r})\n"
        "print(header_summary(read_header(p))['num_parameters'])\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    import torch

    path = write_tensors({"a": torch.zeros(2)}, tmp_path / "p.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
