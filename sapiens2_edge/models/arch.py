"""Architecture descriptions: the backbone (:class:`ArchSpec`), the task heads (:class:`HeadSpec`),
the official presets, and inference of both from a checkpoint's tensor names and shapes (spec 1.8).

Nothing here needs torch: shapes are plain tuples, so the CLI's ``info`` command can describe a
checkpoint from its safetensors header alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

from ..errors import ArchInferenceError, ConfigError
from ..spec import (
    DEFAULT_INPUT_SIZE,
    NUM_PREFIX_TOKENS,
    NUM_STORAGE_TOKENS,
    PATCH_SIZE,
    TASKS,
    WINDOW_SIZE,
    check_task,
)

ROPE_BASE = 100.0

Shape = tuple[int, ...]

#: Largest value any width, depth or size in an architecture description may take (a guard
#: against corrupt metadata: the largest preset width is 2432 and its FFN 9728).
MAX_ARCH_VALUE = 2**20


def _check_int(owner: str, name: str, value: object, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_ARCH_VALUE:
        raise ConfigError(f"{owner}.{name}={value!r:.60} must be an integer in [{low}, {MAX_ARCH_VALUE}]")


def _check_ints(owner: str, name: str, values: object, low: int = 1) -> None:
    if not isinstance(values, tuple):
        raise ConfigError(f"{owner}.{name} must be a sequence of integers, got {type(values).__name__}")
    for v in values:
        _check_int(owner, name, v, low)


@dataclass(frozen=True)
class ArchSpec:
    """Backbone hyper-parameters. ``kv_heads[i]`` is the number of key/value heads of block i."""

    embed_dim: int
    depth: int
    num_heads: int
    kv_heads: tuple[int, ...]
    ffn_hidden: int
    tokenizer_depth: int = 0  # > 0 only for the 4K variant
    name: str = "custom"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "ffn_hidden"):
            _check_int("ArchSpec", name, getattr(self, name))
        _check_int("ArchSpec", "tokenizer_depth", self.tokenizer_depth, low=0)
        _check_ints("ArchSpec", "kv_heads", self.kv_heads)
        if not isinstance(self.name, str):
            raise ConfigError(f"ArchSpec.name must be a string, got {type(self.name).__name__}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ConfigError(f"head width {self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if len(self.kv_heads) != self.depth:
            raise ConfigError(f"kv_heads has {len(self.kv_heads)} entries, expected depth={self.depth}")
        for i, kv in enumerate(self.kv_heads):
            if kv <= 0 or self.num_heads % kv:
                raise ConfigError(f"block {i}: {kv} kv heads do not divide {self.num_heads} query heads")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def is_4k(self) -> bool:
        return self.tokenizer_depth > 0

    @property
    def input_multiple(self) -> int:
        """Input H and W must be multiples of this (64 with the 4K tokenizer)."""
        return PATCH_SIZE * (WINDOW_SIZE if self.is_4k else 1)

    def grid(self, input_size: Sequence[int]) -> tuple[int, int]:
        """Token grid (Hp, Wp) seen by the main blocks for an input (H, W)."""
        h, w = input_size
        stride = self.input_multiple
        return h // stride, w // stride

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv_heads"] = list(self.kv_heads)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArchSpec":
        if not isinstance(d, Mapping) or not isinstance(d.get("kv_heads"), (list, tuple)):
            raise ConfigError(f"an ArchSpec is a mapping with a 'kv_heads' list, got {d!r:.100}")
        return cls(**{**d, "kv_heads": tuple(d["kv_heads"])})


def _official_kv(depth: int, heads: int) -> tuple[int, ...]:
    """First 8 and last 8 blocks are MHA; blocks in between use h/2 kv heads (spec 1.1)."""
    return tuple(heads // 2 if 8 <= i < depth - 8 else heads for i in range(depth))


def _preset(name: str, c: int, depth: int, heads: int, tokenizer: int = 0) -> ArchSpec:
    return ArchSpec(c, depth, heads, _official_kv(depth, heads), 4 * c, tokenizer, name)


PRESETS: dict[str, ArchSpec] = {
    p.name: p
    for p in (
        _preset("sapiens2_0.1b", 768, 12, 12),
        _preset("sapiens2_0.4b", 1024, 24, 16),
        _preset("sapiens2_0.8b", 1280, 32, 16),
        _preset("sapiens2_1b", 1536, 40, 24),
        _preset("sapiens2_1b_4k", 1536, 40, 24, tokenizer=4),
        _preset("sapiens2_5b", 2432, 56, 32),
    )
}
# Tokenizer depth each arch would use if its 4K variant existed (only 1b-4K is released).
TOKENIZER_DEPTHS = {"sapiens2_0.1b": 2, "sapiens2_0.4b": 2, "sapiens2_0.8b": 3, "sapiens2_1b": 4, "sapiens2_5b": 6}


def get_preset(name: str) -> ArchSpec:
    """Look up a preset by its id; ``0.4b``, ``sapiens2-0.4b`` and ``1b-4k`` are accepted too."""
    key = name.lower().replace("-", "_")
    if not key.startswith("sapiens2_"):
        key = "sapiens2_" + key
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(p[9:] for p in PRESETS)}")
    return PRESETS[key]


def _match_preset(spec: ArchSpec) -> ArchSpec:
    for preset in PRESETS.values():
        if replace(spec, name=preset.name) == preset:
            return preset
    return spec


# --- heads ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadSpec:
    """Channel widths of a task head, in the order of its layers.

    pose/seg: ``deconv`` (DeconvUnit outputs) then ``conv`` (ConvUnit outputs, kernel ``conv_kernel``).
    normal/pointmap/albedo: ``upsample`` (PixelShuffleUnit outputs) then ``conv`` (k=3).
    pointmap adds ``scale_conv`` (stride-2 1x1 convs) and ``scale_fc`` (the MLP's output widths);
    its flattening MLP pins the network input to ``input_size`` (H, W).
    """

    task: str
    in_channels: int
    out_channels: int
    deconv: tuple[int, ...] = ()
    upsample: tuple[int, ...] = ()
    conv: tuple[int, ...] = ()
    conv_kernel: int = 1
    scale_conv: tuple[int, ...] = ()
    scale_fc: tuple[int, ...] = ()
    input_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"HeadSpec.task={self.task!r:.60} is not a task; expected one of {', '.join(TASKS)}")
        for name in ("in_channels", "out_channels", "conv_kernel"):
            _check_int("HeadSpec", name, getattr(self, name))
        for name in ("deconv", "upsample", "conv", "scale_conv", "scale_fc"):
            _check_ints("HeadSpec", name, getattr(self, name))
        if self.input_size is not None:
            _check_ints("HeadSpec", "input_size", self.input_size)
            if len(self.input_size) != 2:
                raise ConfigError(f"HeadSpec.input_size must be (H, W), got {self.input_size!r:.60}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "HeadSpec":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a HeadSpec is a mapping of its fields, got {type(d).__name__}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def scale_grid_for(input_size: Sequence[int], patch_stride: int = PATCH_SIZE, steps: int = 3) -> tuple[int, int]:
    """Spatial size after ``steps`` stride-2 1x1 convs (each step is ceil(n/2))."""
    h, w = input_size[0] // patch_stride, input_size[1] // patch_stride
    for _ in range(steps):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def default_head_spec(task: str, arch: ArchSpec, input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> HeadSpec:
    """The official head widths for ``arch`` (spec section 2); archs with no released head of
    their own (0.1b, custom) get the 0.4b widths."""
    check_task(task)
    c = arch.embed_dim
    big = arch.name.startswith("sapiens2_5b")
    if task == "pose":
        if arch.name.startswith("sapiens2_1b"):
            return HeadSpec("pose", c, 308, deconv=(1536, 1024), conv=(768, 512, 256), conv_kernel=1)
        return HeadSpec("pose", c, 308, deconv=(1024, 768), conv=(512, 512, 256), conv_kernel=1)
    if task == "seg":
        return HeadSpec("seg", c, 29, deconv=(512, 256, 128, 64), conv=(64, 64), conv_kernel=1)
    if task == "normal":
        if big:
            return HeadSpec("normal", c, 3, upsample=(1536, 768, 512, 256), conv=(128, 64, 32), conv_kernel=3)
        return HeadSpec("normal", c, 3, upsample=(768, 512, 256, 128), conv=(64, 32, 16), conv_kernel=3)
    if task == "albedo":
        up = (1536, 768, 512, 256) if big else (768, 512, 256, 128)
        return HeadSpec("albedo", c, 3, upsample=up, conv=(64, 32, 16), conv_kernel=3)
    # pointmap
    up, conv = ((1536, 768, 768, 768), (128, 64, 32)) if big else ((1536, 768, 512, 256), (64, 32, 16))
    return HeadSpec("pointmap", c, 3, upsample=up, conv=conv, conv_kernel=3, scale_conv=(1536, 512, 128),
                    scale_fc=(512, 128, 1), input_size=tuple(input_size))


# --- expected state dicts ---------------------------------------------------------------------------
def backbone_shapes(arch: ArchSpec) -> dict[str, Shape]:
    """Every backbone tensor name and shape for ``arch`` (spec 1.7), bare (pretrain) names."""
    c, d, hidden = arch.embed_dim, arch.head_dim, arch.ffn_hidden
    shapes: dict[str, Shape] = {
        "cls_token": (1, 1, c),
        "storage_tokens": (1, NUM_STORAGE_TOKENS, c),
        "patch_embed.projection.weight": (c, 3, PATCH_SIZE, PATCH_SIZE),
        "patch_embed.projection.bias": (c,),
        "rope_embed.periods": (d // 4,),
        "ln1.weight": (c,),
    }

    def block(prefix: str, kv_dim: int, main: bool) -> None:
        shapes.update({
            f"{prefix}ln1.weight": (c,), f"{prefix}ln2.weight": (c,),
            f"{prefix}attn.wq.weight": (c, c), f"{prefix}attn.wq.bias": (c,),
            f"{prefix}attn.wk.weight": (kv_dim, c), f"{prefix}attn.wk.bias": (kv_dim,),
            f"{prefix}attn.wv.weight": (kv_dim, c), f"{prefix}attn.wv.bias": (kv_dim,),
            f"{prefix}attn.proj.weight": (c, c), f"{prefix}attn.proj.bias": (c,),
            f"{prefix}ffn.w12.weight": (2 * hidden, c), f"{prefix}ffn.w12.bias": (2 * hidden,),
            f"{prefix}ffn.w3.weight": (c, hidden), f"{prefix}ffn.w3.bias": (c,),
        })
        if main:
            shapes.update({f"{prefix}attn.q_norm.weight": (d,), f"{prefix}attn.k_norm.weight": (d,),
                           f"{prefix}attn.gamma.weight": (c,)})

    for i, kv in enumerate(arch.kv_heads):
        block(f"blocks.{i}.", kv * d, main=True)
    if arch.is_4k:
        shapes["tokenizer.local_pos_embed"] = (1, WINDOW_SIZE * WINDOW_SIZE + 1, c)
        shapes["tokenizer.w_cls"] = (1, 1, c)
        for j in range(arch.tokenizer_depth):
            block(f"tokenizer.blocks.{j}.", c, main=False)
    return shapes


def head_shapes(spec: HeadSpec, stride: int = PATCH_SIZE) -> dict[str, Shape]:
    """Every head tensor name and shape (spec section 2), without the ``decode_head.`` prefix."""
    shapes: dict[str, Shape] = {}
    cur = spec.in_channels
    if spec.task in ("pose", "seg"):
        for i, out in enumerate(spec.deconv):
            shapes[f"deconv_layers.{3 * i}.weight"] = (cur, out, 4, 4)
            cur = out
        k = spec.conv_kernel
        for i, out in enumerate(spec.conv):
            shapes[f"conv_layers.{3 * i}.weight"] = (out, cur, k, k)
            shapes[f"conv_layers.{3 * i}.bias"] = (out,)
            cur = out
        final = "conv_pose" if spec.task == "pose" else "conv_seg"
        shapes[f"{final}.weight"] = (spec.out_channels, cur, 1, 1)
        shapes[f"{final}.bias"] = (spec.out_channels,)
        return shapes

    rms = spec.task == "albedo"
    shapes["input_conv.0.weight"] = (cur, cur, 3, 3)
    shapes["input_conv.0.bias"] = (cur,)
    if rms:
        shapes["input_conv.1.norm.weight"] = (cur,)
    for i, out in enumerate(spec.upsample):
        shapes[f"upsample_blocks.{i}.0.weight"] = (4 * out, cur, 3, 3)
        shapes[f"upsample_blocks.{i}.0.bias"] = (4 * out,)
        if rms:
            shapes[f"upsample_blocks.{i}.2.norm.weight"] = (out,)
        cur = out
    for i, out in enumerate(spec.conv):
        shapes[f"conv_layers.{3 * i}.weight"] = (out, cur, 3, 3)
        shapes[f"conv_layers.{3 * i}.bias"] = (out,)
        if rms:
            shapes[f"conv_layers.{3 * i + 1}.norm.weight"] = (out,)
        cur = out
    shapes[f"conv_{spec.task}.weight"] = (spec.out_channels, cur, 1, 1)
    shapes[f"conv_{spec.task}.bias"] = (spec.out_channels,)
    if spec.task == "pointmap":
        cur = spec.in_channels
        for i, out in enumerate(spec.scale_conv):
            shapes[f"scale_conv_layers.{3 * i}.weight"] = (out, cur, 1, 1)
            shapes[f"scale_conv_layers.{3 * i}.bias"] = (out,)
            cur = out
        gh, gw = scale_grid_for(spec.input_size, stride, len(spec.scale_conv))
        cur = cur * gh * gw
        for i, out in enumerate(spec.scale_fc):
            shapes[f"scale_final_layer.{2 * i + 1}.weight"] = (out, cur)
            shapes[f"scale_final_layer.{2 * i + 1}.bias"] = (out,)
            cur = out
    return shapes


# --- inference from a checkpoint ----------------------------------------------------------------------
# Block indices of at most 6 digits: a longer index is no block (and int() of a 5000-digit string fails).
_BLOCK = re.compile(r"^blocks\.(\d{1,6})\.")
_TOK_BLOCK = re.compile(r"^tokenizer\.blocks\.(\d{1,6})\.")


def _need(shapes: Mapping[str, Shape], key: str, what: str, ndim: int = 1) -> Shape:
    """The shape of ``key``, which must have ``ndim`` dims, each at least 1."""
    if key not in shapes:
        raise ArchInferenceError(f"cannot infer the {what}: tensor {key!r} is missing from the checkpoint")
    return _dims(key, tuple(shapes[key]), what, ndim)


def _dims(key: str, shape: Shape, what: str, ndim: int) -> Shape:
    if len(shape) != ndim or not all(1 <= d <= MAX_ARCH_VALUE for d in shape[:2]):
        raise ArchInferenceError(
            f"cannot infer the {what}: tensor {key!r} has shape {shape}; expected {ndim} dimensions "
            f"with leading sizes in [1, {MAX_ARCH_VALUE}]")
    return shape


def infer_arch(shapes: Mapping[str, Shape]) -> ArchSpec:
    """Work out the backbone from bare backbone tensor names and shapes (spec 1.8)."""
    c = _need(shapes, "patch_embed.projection.weight", "embedding width", 4)[0]
    blocks = [int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))]
    if not blocks:
        raise ArchInferenceError("cannot infer the depth: no 'blocks.{i}.' tensors in the checkpoint")
    depth = max(blocks) + 1
    d = _need(shapes, "blocks.0.attn.q_norm.weight", "head width")[0]
    if depth > len(shapes):
        raise ArchInferenceError(f"block index {depth - 1} but only {len(shapes)} tensors: blocks are missing")
    if c % d:
        raise ArchInferenceError(f"q_norm width {d} does not divide the embedding width {c}")
    heads = c // d
    kv = []
    for i in range(depth):
        rows = _need(shapes, f"blocks.{i}.attn.wk.weight", f"kv heads of block {i}", 2)[0]
        if rows % d:
            raise ArchInferenceError(f"blocks.{i}.attn.wk.weight has {rows} rows, not a multiple of head width {d}")
        kv.append(rows // d)
    hidden2 = _need(shapes, "blocks.0.ffn.w12.weight", "FFN width", 2)[0]
    tok = [int(m.group(1)) for k in shapes if (m := _TOK_BLOCK.match(k))]
    has_tok = any(k.startswith("tokenizer.") for k in shapes)
    if has_tok and not tok:
        raise ArchInferenceError("the checkpoint has 'tokenizer.' tensors but no 'tokenizer.blocks.{j}.' blocks")
    try:
        spec = ArchSpec(c, depth, heads, tuple(kv), hidden2 // 2, (max(tok) + 1) if tok else 0)
    except ConfigError as e:
        raise ArchInferenceError(f"inconsistent backbone shapes: {e}") from None
    return _match_preset(spec)


def infer_task(head_names: Sequence[str]) -> str:
    """The task is named by the head's final layer (``conv_pose``, ``conv_seg``, ...)."""
    found = [t for t in TASKS if f"conv_{t}.weight" in head_names]
    if len(found) != 1:
        raise ArchInferenceError(
            "cannot tell the task from the head tensors: expected exactly one of "
            + ", ".join(f"'conv_{t}.weight'" for t in TASKS) + f", found {found or 'none'}")
    return found[0]


def _chain(shapes: Mapping[str, Shape], fmt: str, stride: int, start: int = 0, ndim: int = 4) -> list[Shape]:
    out, i = [], start
    while fmt.format(i) in shapes:
        out.append(_dims(fmt.format(i), tuple(shapes[fmt.format(i)]), "head layout", ndim))
        i += stride
    return out


def infer_head(shapes: Mapping[str, Shape], in_channels: int, stride: int = PATCH_SIZE) -> HeadSpec:
    """Work out a head from its tensor names (no ``decode_head.`` prefix) and shapes."""
    task = infer_task(list(shapes))
    final = _need(shapes, f"conv_{task}.weight", "head output", 4)
    try:
        return _infer_head(shapes, task, final, in_channels, stride)
    except ConfigError as e:
        raise ArchInferenceError(f"inconsistent head shapes: {e}") from None


def _infer_head(shapes: Mapping[str, Shape], task: str, final: Shape, in_channels: int, stride: int) -> HeadSpec:
    if task in ("pose", "seg"):
        deconv = tuple(s[1] for s in _chain(shapes, "deconv_layers.{}.weight", 3))
        convs = _chain(shapes, "conv_layers.{}.weight", 3)
        kernel = convs[0][2] if convs else 1
        return HeadSpec(task, in_channels, final[0], deconv=deconv, conv=tuple(s[0] for s in convs), conv_kernel=kernel)
    upsample = tuple(s[0] // 4 for s in _chain(shapes, "upsample_blocks.{}.0.weight", 1))
    conv = tuple(s[0] for s in _chain(shapes, "conv_layers.{}.weight", 3))
    if task != "pointmap":
        return HeadSpec(task, in_channels, final[0], upsample=upsample, conv=conv, conv_kernel=3)
    scale_conv = tuple(s[0] for s in _chain(shapes, "scale_conv_layers.{}.weight", 3))
    fcs = _chain(shapes, "scale_final_layer.{}.weight", 2, start=1, ndim=2)
    if not scale_conv or not fcs:
        raise ArchInferenceError("pointmap head without its scale branch ('scale_conv_layers', 'scale_final_layer')")
    size = _infer_scale_input(fcs[0][1] // scale_conv[-1], stride, len(scale_conv))
    if size is None or fcs[0][1] % scale_conv[-1]:
        raise ArchInferenceError(
            f"pointmap scale MLP input {fcs[0][1]} is not {scale_conv[-1]} channels times the grid of a "
            "4:3 input; pass input_size= to load_model")
    return HeadSpec(task, in_channels, final[0], upsample=upsample, conv=conv, conv_kernel=3,
                    scale_conv=scale_conv, scale_fc=tuple(s[0] for s in fcs), input_size=size)


def _infer_scale_input(cells: int, stride: int, steps: int) -> tuple[int, int] | None:
    """The scale MLP fixes only gh*gw; pick the largest 4:3 (H:W) input that gives it, which is the
    official 1024x768 for the released heads. ``load_model(input_size=...)`` overrides this."""
    best = None
    for m in range(1, 257):
        size = (4 * m * stride, 3 * m * stride)
        g = scale_grid_for(size, stride, steps)
        if g[0] * g[1] == cells:
            best = size
    return best


def count_params(shapes: Mapping[str, Shape]) -> int:
    return sum(math.prod(s) for s in shapes.values())


__all__ = [
    "ArchSpec", "HeadSpec", "PRESETS", "TASKS", "get_preset", "default_head_spec", "backbone_shapes",
    "head_shapes", "infer_arch", "infer_head", "infer_task", "scale_grid_for", "count_params",
    "PATCH_SIZE", "NUM_PREFIX_TOKENS", "NUM_STORAGE_TOKENS", "WINDOW_SIZE", "ROPE_BASE", "DEFAULT_INPUT_SIZE",
]
