"""Checkpoint key layouts, torch-free: wrapper prefixes, pretrain vs task layout (spec 1.7, 1.10),
architecture and task from the header alone, and the strict name/shape comparison (used by
``load_model`` and the CLI's ``info``)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

from ..errors import CheckpointError, StateDictMismatchError
from .arch import HeadSpec, infer_arch, infer_head
from .safetensors_header import SafetensorsHeader, read_header, shorten

# metadata of a checkpoint written by models.random_init: its predictions are noise
RANDOM_WEIGHTS_KEY = "sapiens2_edge.random_weights"


def is_random_checkpoint(metadata: dict[str, str]) -> bool:
    """Whether a checkpoint's safetensors metadata marks its weights as random."""
    return metadata.get(RANDOM_WEIGHTS_KEY) == "true"

#: Wrapper prefixes that training / compile / DDP wrappers put in front of every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

#: First dotted component of every backbone key (spec 1.7).
BACKBONE_ROOTS = frozenset(
    {"cls_token", "storage_tokens", "patch_embed", "rope_embed", "ln1", "blocks", "tokenizer"}
)

_BACKBONE_PREFIX = "backbone."
_HEAD_PREFIX = "decode_head."

#: The dtypes a float checkpoint may hold (spec 1.10: the released dtype cannot be told).
FLOAT_DTYPES = {"F32", "BF16", "F16"}
MAX_LISTED = 8

#: The metadata entry that marks a quantized checkpoint (its recipe, written by
#: ``sapiens2_edge.quantization.serialize``); float loaders refuse such a file.
QUANTIZED_METADATA_KEY = "sapiens2_edge.recipe"


def is_quantized_header(header: SafetensorsHeader) -> bool:
    """Whether a checkpoint holds a quantized model (int8 / fp8 tensors, scales and a recipe)."""
    return QUANTIZED_METADATA_KEY in header.metadata


def _strip_one(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def strip_wrapper_prefixes(names_or_dict: Any) -> Any:
    """Remove leading ``module.``, ``_orig_mod.`` and ``model.`` (repeatedly, in any order).

    A mapping gives a new dict with the stripped keys (same values, same order); any other
    iterable of names gives a list of stripped names. Two keys that become the same name,
    or a key that becomes empty, raise :class:`CheckpointError` naming them.
    """
    is_map = isinstance(names_or_dict, Mapping)
    if isinstance(names_or_dict, str):
        raise CheckpointError(
            "strip_wrapper_prefixes expects a mapping or a list of names, got a str"
        )
    keys = list(names_or_dict.keys() if is_map else names_or_dict)
    origin: dict[str, str] = {}
    for key in keys:
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint key {key!r} is not a string")
        new = _strip_one(key)
        if not new:
            raise CheckpointError(
                f"checkpoint key {key!r} is nothing but wrapper prefixes "
                f"({', '.join(WRAPPER_PREFIXES)})"
            )
        if new in origin:
            raise CheckpointError(
                f"checkpoint keys {origin[new]!r} and {key!r} both become {new!r} once the "
                f"wrapper prefixes ({', '.join(WRAPPER_PREFIXES)}) are removed; the file holds "
                "two copies of the same tensor"
            )
        origin[new] = key
    if is_map:
        return {_strip_one(k): names_or_dict[k] for k in keys}
    return list(origin)


def split_layout(
    keys: Iterable[str] | Mapping[str, Any],
) -> tuple[str, dict[str, str], dict[str, str]]:
    """Work out the key layout of a checkpoint.

    Returns ``(layout, backbone_map, head_map)``: ``layout`` is ``"pretrain"`` (bare backbone
    keys, spec 1.7) or ``"task"`` (``backbone.`` + ``decode_head.`` keys, spec 1.10); each map
    goes from the local name (``blocks.0.ln1.weight``, ``conv_seg.weight``) to the original
    file key. Wrapper prefixes are stripped first. A file whose keys are all under
    ``backbone.`` (no head) is a prefixed backbone and comes back as ``"pretrain"``.

    Raises :class:`CheckpointError` for mixed layouts and a head without a backbone, and
    :class:`StateDictMismatchError` (a CheckpointError) for keys that belong to neither.
    """
    original = list(keys.keys() if isinstance(keys, Mapping) else keys)
    if not original:
        raise CheckpointError("the checkpoint holds no tensors")
    stripped = strip_wrapper_prefixes(original)  # same order as `original`
    bare: dict[str, str] = {}
    backbone: dict[str, str] = {}
    head: dict[str, str] = {}
    unknown: list[str] = []
    for local, orig in zip(stripped, original, strict=True):
        if local.startswith(_BACKBONE_PREFIX):
            sub = local[len(_BACKBONE_PREFIX):]
            if sub.split(".", 1)[0] in BACKBONE_ROOTS:
                backbone[sub] = orig
            else:
                unknown.append(orig)
        elif local.startswith(_HEAD_PREFIX):
            sub = local[len(_HEAD_PREFIX):]
            if sub:
                head[sub] = orig
            else:
                unknown.append(orig)
        elif local.split(".", 1)[0] in BACKBONE_ROOTS:
            bare[local] = orig
        else:
            unknown.append(orig)

    if bare and (backbone or head):
        prefixed = list(backbone.values()) + list(head.values())
        raise CheckpointError(
            "mixed checkpoint layout: some keys are bare backbone keys (e.g. "
            f"{shorten(bare.values(), 3)}) and others are under 'backbone.'/'decode_head.' "
            f"(e.g. {shorten(prefixed, 3)}); expected either only bare backbone keys "
            "(pretrain) or only 'backbone.' + 'decode_head.' keys (task)"
        )
    if head and not backbone:
        raise CheckpointError(
            f"the checkpoint has {len(head)} 'decode_head.' keys (e.g. "
            f"{shorten(head.values(), 3)}) but no 'backbone.' keys; a task checkpoint needs both"
        )
    if unknown:
        known = "bare backbone keys" if bare else "'backbone.' / 'decode_head.' keys"
        raise StateDictMismatchError(
            f"{len(unknown)} checkpoint keys are neither backbone nor head keys: "
            f"{shorten(unknown)}; expected {known} (backbone keys start with "
            f"{', '.join(sorted(BACKBONE_ROOTS))})"
        )
    if bare:
        return "pretrain", bare, {}
    if backbone and not head:
        return "pretrain", backbone, {}
    return "task", backbone, head


def check_shapes(found: Mapping[str, tuple], expected: Mapping[str, tuple], where: str, prefix: str = "") -> None:
    """Raise :class:`StateDictMismatchError` naming every missing, unexpected or mis-shaped tensor."""
    missing = [prefix + k for k in expected if k not in found]
    unexpected = [prefix + k for k in found if k not in expected]
    wrong = [f"{prefix}{k}: file has {tuple(found[k])}, expected {tuple(v)}"
             for k, v in expected.items() if k in found and tuple(found[k]) != tuple(v)]
    problems = []
    if missing:
        problems.append(f"missing tensors: {shorten(sorted(missing), MAX_LISTED)}")
    if unexpected:
        problems.append(f"unexpected tensors: {shorten(sorted(unexpected), MAX_LISTED)}")
    if wrong:
        problems.append("mis-shaped tensors: " + "; ".join(wrong[:MAX_LISTED]))
    if problems:
        raise StateDictMismatchError(f"{where} does not match the inferred architecture: " + " | ".join(problems))


def describe_checkpoint(path: str | os.PathLike | SafetensorsHeader, input_size: Sequence[int] | None = None):
    """Header-only description: (header, layout, arch, head_spec, {local name: file key} per part).

    ``path`` is a safetensors file or its already read header. Used by ``load_model`` and by the
    CLI's ``info`` (which reads no weights)."""
    header = path if isinstance(path, SafetensorsHeader) else read_header(path)
    layout, bb_files, head_files = split_layout(list(header.tensors))  # local name -> file key
    bb_shapes = {k: header.tensors[v].shape for k, v in bb_files.items()}
    arch = infer_arch(bb_shapes)
    head = None
    if head_files:
        h_shapes = {k: header.tensors[v].shape for k, v in head_files.items()}
        head = infer_head(h_shapes, arch.embed_dim, arch.input_multiple)
        if input_size is not None and head.input_size is not None:
            head = HeadSpec.from_dict({**head.to_dict(), "input_size": tuple(input_size)})
    return header, layout, arch, head, bb_files, head_files


__all__ = [
    "WRAPPER_PREFIXES", "BACKBONE_ROOTS", "FLOAT_DTYPES", "MAX_LISTED", "QUANTIZED_METADATA_KEY",
    "strip_wrapper_prefixes", "split_layout", "is_quantized_header", "check_shapes",
    "describe_checkpoint",
]
