"""Quantized checkpoints: one safetensors file, official tensor names, recipe in the metadata.

Layout (a task model; a backbone-only model uses the bare backbone names, as official
pretrain checkpoints do):

=========================================== ======= ==========================================
``backbone.blocks.0.attn.wq.weight``        I8      int8 layers (``int8``, ``int8-weight``)
                                            F8_E4M3 fp8 layers; F16 for fp16 layers
                                            U8 (N, K/2) for int4 layers: two nibbles a byte
``backbone.blocks.0.attn.wq.weight_scale``  F32     (N,) per channel or (1,) per tensor
                                            F16 (N, K/G) for int4 layers, one per group
``backbone.blocks.0.attn.wq.input_scale``   F32     (1,), static activations only
``backbone.blocks.0.attn.input_quant.q_scale`` F32  (1,) each of q, k, v: ``attention="int8"`` only
``decode_head.deconv_layers.0.weight``      I8      (in, out, 4, 4): ``head="int8"`` only, with
                                                    ``weight_scale`` F32 (out,), ``input_scale`` F32 (1,)
``decode_head.input_conv.0.weight``         I8      (out, in, 3, 3): ``head="int8"`` on a dense head, with
                                                    ``weight_scale`` F32 (out,), ``input_scale`` F32 (1,)
everything else                             as held by the model (F32; RoPE periods BF16), F16 with
                                            the recipe's ``float_storage="fp16"`` (values rounded so)
=========================================== ======= ==========================================

``__metadata__`` holds ``sapiens2_edge.format`` (``quantized/1``), ``sapiens2_edge.recipe`` (the
recipe JSON plus ``layers``: module name -> per-layer scheme, and ``layer_configs`` for layers whose
config differs from what the recipe's settings give their scheme), ``sapiens2_edge.arch`` and
``sapiens2_edge.head`` (``ArchSpec.to_dict`` / ``HeadSpec.to_dict`` JSON, ``null`` for no head)
and ``sapiens2_edge.version``. Loading rebuilds the module tree from the metadata, checks every
name, shape and dtype, and loads the tensors as stored, so a save/load round trip is bit-exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, CorruptCheckpointError, StateDictMismatchError, TaskMismatchError
from ..models.arch import TASKS, ArchSpec, HeadSpec, backbone_shapes, count_params, head_shapes
from ..models.checkpoint import (
    SafetensorsHeader,
    _torch_dtype,
    read_header,
    resolve_checkpoint,
    write_tensors,
)
from ..models.layout import RANDOM_WEIGHTS_KEY, check_shapes, is_random_checkpoint
from ..models.loading import assign_file_tensors
from ..models.model import Sapiens2Model
from . import attention_inputs, head_int8
from .config import LAYER_SCHEMES, LayerQuantConfig, QuantRecipe
from .linear import QuantLinear
from .model import QuantizedModel, as_quantized, float_keys, set_module

FORMAT = "quantized/1"
KEY_FORMAT = "sapiens2_edge.format"
KEY_RECIPE = "sapiens2_edge.recipe"
KEY_ARCH = "sapiens2_edge.arch"
KEY_HEAD = "sapiens2_edge.head"
KEY_REPORT = "sapiens2_edge.report"
KEY_VERSION = "sapiens2_edge.version"
_FLOAT_OK = {torch.float32, torch.float16, torch.bfloat16}


def _file_names(model: Sapiens2Model) -> dict[str, str]:
    """Module state-dict key -> name in the file (bare backbone names without a head)."""
    keys = model.state_dict().keys()
    if model.decode_head is None:
        return {k: k[len("backbone."):] for k in keys}
    return {k: k for k in keys}


def save_quantized(qmodel: QuantizedModel, path: str | os.PathLike, report: Any = None) -> Path:
    """Write ``qmodel`` (from :func:`quantize` or :func:`load_quantized`) as one safetensors file;
    ``report`` (a :class:`QuantReport`) is stored beside the recipe as JSON (``sapiens2_edge.report``)."""
    if not isinstance(qmodel, QuantizedModel):
        raise CheckpointError(f"save_quantized expects a QuantizedModel (from quantize()), got {type(qmodel).__name__}; "
                              "float models are saved with their own checkpoint writer")
    from .._version import __version__

    names = _file_names(qmodel)
    half = set(float_keys(qmodel)) if qmodel.recipe.float_storage == "fp16" else set()
    tensors = {names[k]: v.half() if k in half else v for k, v in qmodel.state_dict().items()}
    meta = {
        KEY_FORMAT: FORMAT,
        KEY_RECIPE: json.dumps(qmodel.recipe_dict(), sort_keys=True),
        KEY_ARCH: json.dumps(qmodel.arch.to_dict(), sort_keys=True),
        KEY_HEAD: json.dumps(qmodel.head_spec.to_dict() if qmodel.head_spec is not None else None, sort_keys=True),
        KEY_VERSION: __version__,
    }
    if report is not None:
        meta[KEY_REPORT] = report.to_json(indent=None)
    if not getattr(qmodel, "pretrained", True):  # quantized from random weights: its predictions are noise
        meta[RANDOM_WEIGHTS_KEY] = "true"
    return write_tensors(tensors, path, metadata=meta)


def read_report(path: str | os.PathLike) -> dict | None:
    """The QuantReport stored in a quantized checkpoint, or None."""
    header = read_header(path)
    raw = header.metadata.get(KEY_REPORT)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CorruptCheckpointError(f"quantized checkpoint {str(header.path)!r}: metadata {KEY_REPORT!r} is not "
                                     f"valid JSON ({str(e)[:100]}); expected the QuantReport JSON") from None


def is_quantized_checkpoint(header: SafetensorsHeader | str | os.PathLike) -> bool:
    """True when a safetensors header (or file) carries a quantization recipe."""
    if not isinstance(header, SafetensorsHeader):
        header = read_header(header)
    return KEY_RECIPE in header.metadata


def _json(header: SafetensorsHeader, key: str) -> Any:
    raw = header.metadata.get(key)
    if raw is None:
        raise CorruptCheckpointError(f"quantized checkpoint {str(header.path)!r} lacks the metadata entry {key!r}; "
                                     f"expected {KEY_RECIPE}, {KEY_ARCH} and {KEY_HEAD}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # also a >4300-digit integer, or nesting too deep
        raise CorruptCheckpointError(f"quantized checkpoint {str(header.path)!r}: metadata {key!r} is not valid JSON "
                                     f"({str(e)[:100]})") from None


#: Fewest tensors one transformer block stores (norms, q/k/v/proj and FFN weights and biases).
_TENSORS_PER_BLOCK = 14


def _read_metadata(header: SafetensorsHeader, where: str) -> tuple:
    """(recipe, {layer: scheme}, {layer: config}, {layer: prefix tokens}, arch, head) from the metadata, every field
    type-checked: anything malformed is a CorruptCheckpointError naming the entry."""
    recipe_d, arch_d, head_d = (_json(header, k) for k in (KEY_RECIPE, KEY_ARCH, KEY_HEAD))
    if not isinstance(recipe_d, dict):
        raise CorruptCheckpointError(f"{where}: metadata {KEY_RECIPE!r} is a JSON {type(recipe_d).__name__}, "
                                     "expected an object")
    layers, own_d = recipe_d.get("layers"), recipe_d.get("layer_configs", {})
    if not isinstance(layers, dict) or not all(isinstance(v, str) for v in layers.values()):
        raise CorruptCheckpointError(f"{where}: the recipe's 'layers' must map layer names to scheme names, got "
                                     f"{layers!r:.100}")
    if not isinstance(own_d, dict) or not all(isinstance(v, dict) for v in own_d.values()):
        raise CorruptCheckpointError(f"{where}: the recipe's 'layer_configs' must map layer names to objects, got "
                                     f"{own_d!r:.100}")
    try:
        recipe = QuantRecipe.from_dict(recipe_d)
        own = {n: LayerQuantConfig.from_dict(d) for n, d in own_d.items()}
        configs = {name: own[name] if name in own else recipe.layer_config(scheme) for name, scheme in layers.items()}
        prefix = {name: recipe.prefix_tokens_for(name) for name in layers}
        arch = ArchSpec.from_dict(arch_d)
        head = HeadSpec.from_dict(head_d) if head_d is not None else None
    except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise CorruptCheckpointError(f"{where}: the recipe/arch/head metadata is malformed ({type(e).__name__}: "
                                     f"{str(e)[:200]})") from None
    for name, cfg in configs.items():
        if cfg is None or cfg.scheme not in LAYER_SCHEMES or cfg.scheme == "float":
            raise CorruptCheckpointError(f"{where}: the recipe gives layer {name!r:.80} the scheme "
                                         f"{getattr(cfg, 'scheme', 'float')!r:.40}; expected a quantized scheme "
                                         f"({', '.join(s for s in LAYER_SCHEMES if s != 'float')})")
    return recipe, layers, configs, prefix, arch, head


def _check_declared_size(header: SafetensorsHeader, arch: ArchSpec, head: HeadSpec | None, where: str,
                         int4_layers: tuple[str, ...] = ()) -> None:
    """Refuse metadata that declares a model the file cannot hold, before a byte of it is allocated:
    block and layer counts against the tensor count, the parameter count against the data bytes
    (one byte per parameter at the least, half a byte for int4 weights), then every float-layout
    tensor's name and shape."""
    n = len(header.tensors)
    blocks = arch.depth + arch.tokenizer_depth
    layers = 0 if head is None else sum(len(v) for v in (head.deconv, head.upsample, head.conv, head.scale_conv,
                                                          head.scale_fc))
    if _TENSORS_PER_BLOCK * blocks + layers > n:
        raise CorruptCheckpointError(f"{where}: the metadata declares {blocks} transformer blocks and {layers} head "
                                     f"layers, but the file holds only {n} tensors; the metadata does not describe "
                                     "this file")
    prefix = ("backbone.", "decode_head.") if head is not None else ("", "")
    expected = {prefix[0] + k: v for k, v in backbone_shapes(arch).items()}
    if head is not None:
        expected.update({prefix[1] + k: v for k, v in head_shapes(head, arch.input_multiple).items()})
    params, data = count_params(expected), header.file_size - header.data_start
    names = {n[len("backbone."):] if head is None else n for n in int4_layers}
    packed = {k for k in expected if k.endswith(".weight") and k[:-len(".weight")] in names}  # (N, K/2) in the file
    need = params - count_params({k: expected[k] for k in packed}) // 2
    if need > data:
        raise CorruptCheckpointError(
            f"{where}: the metadata declares a model of {params:,} parameters ({arch.name}, embed_dim "
            f"{arch.embed_dim}, depth {arch.depth}), at least {need:,} bytes even at one byte each (half for int4 "
            f"weights), but the file holds {data:,} bytes of tensor data; refusing to build it")
    wrong = [f"{k} (file: {header.tensors[k].shape if k in header.tensors else 'missing'}, expected {v})"
             for k, v in expected.items() if k not in packed and (k not in header.tensors or header.tensors[k].shape != v)]
    if wrong:
        raise StateDictMismatchError(f"{where}: {len(wrong)} tensors do not match the architecture in the metadata: "
                                     + "; ".join(wrong[:8]))


def load_quantized(source: str | os.PathLike, task: str | None = None, *, rope_mode: str = "bf16",
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> QuantizedModel:
    """Load a checkpoint written by :func:`save_quantized` (strict names, shapes and dtypes).

    ``task``, when given, must match. ``dtype`` applies to the float parameters only (norms,
    patch embedding, head); quantized weights and their float32 scales stay as stored.
    """
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    path = resolve_checkpoint(source)
    header = read_header(path)
    where = f"quantized checkpoint {str(path)!r}"
    if not is_quantized_checkpoint(header):
        raise CheckpointError(f"{str(path)!r} is not a quantized checkpoint (no {KEY_RECIPE!r} metadata); "
                              "expected a file written by save_quantized - load float checkpoints with load_model")
    fmt = header.metadata.get(KEY_FORMAT)
    if fmt != FORMAT:
        raise CheckpointError(f"{where} has format {fmt!r}; this version reads {FORMAT!r}")
    recipe, layers, configs, prefix, arch, head = _read_metadata(header, where)
    found_task = head.task if head is not None else None
    if task is not None and task != found_task:
        what = f"a {found_task} checkpoint" if found_task else "a pretrain (backbone-only) checkpoint"
        raise TaskMismatchError(f"{path} is {what}, but task={task!r} was asked for")
    _check_declared_size(header, arch, head, where,
                         tuple(n for n, c in configs.items() if c is not None and c.weight.dtype == "int4"))

    with torch.device("meta"):  # no weights made to be replaced: the file's tensors become the model's below
        model = Sapiens2Model(arch, head, rope_mode)
        modules = dict(model.named_modules())
        for name, cfg in configs.items():
            lin = modules.get(name)
            if type(lin) is not nn.Linear:
                raise StateDictMismatchError(f"{where}: the recipe quantizes {name!r:.100}, which is not a linear layer "
                                             "of this architecture")
            set_module(model, name, QuantLinear(lin.in_features, lin.out_features, cfg, lin.bias is not None,
                                                prefix[name]))
        attention_inputs.install(model, {n: (1.0, 1.0, 1.0) for n in attention_inputs.selected(model, recipe)})
        head_int8.install(model, head_int8.selected(model, recipe))
    expected = model.state_dict()
    names = _file_names(model)
    found = {k: header.tensors[k].shape for k in header.tensors}
    check_shapes(found, {names[k]: tuple(v.shape) for k, v in expected.items()}, where)
    bad = []
    for k, v in expected.items():
        got = _torch_dtype(header.tensors[names[k]].dtype)
        ok = got == v.dtype or (v.dtype == torch.float32 and got in _FLOAT_OK and not k.endswith("_scale"))
        if not ok:
            bad.append(f"{names[k]!r} is {header.tensors[names[k]].dtype}, expected {v.dtype}")
    if bad:
        raise StateDictMismatchError(f"{where}: wrong tensor dtypes: " + "; ".join(bad[:8]))
    assign_file_tensors(model, path, {k: names[k] for k in expected})
    model = as_quantized(model, recipe, dict(layers))
    model.source, model.pretrained = str(path), not is_random_checkpoint(header.metadata)
    model = model.to(device)
    if dtype != torch.float32:
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.to(dtype)
    return model.eval()


__all__ = ["save_quantized", "load_quantized", "is_quantized_checkpoint", "read_report", "FORMAT", "KEY_RECIPE",
           "KEY_ARCH", "KEY_HEAD", "KEY_REPORT"]
