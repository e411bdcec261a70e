"""``QuantizedModel``: a :class:`Sapiens2Model` whose selected backbone linears are
:class:`QuantLinear` modules, carrying the recipe that made it.

Everything else (patch embedding, norms, RoPE, softmax/attention, residuals, LayerScale, the
head) stays float; with ``recipe.attention == "int8"`` the attention's q, k, v are rounded to int8
first (:mod:`.attention_inputs`), and with ``recipe.head == "int8"`` the head's transposed convolutions are
:class:`~.head_int8.QuantDeconv` modules. ``state_dict()`` / ``official_state_dict()`` hold the quantized
tensors under the official names (``...wq.weight`` int8/fp8/fp16, ``...wq.weight_scale``,
``...input_scale``), the attention input scales as ``...attn.input_quant.{q,k,v}_scale`` and an int8
head's ``decode_head.deconv_layers.N.{weight,weight_scale,input_scale}``.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from ..models.model import Sapiens2Model, set_module
from .config import QuantRecipe
from .kernels import check_kernel
from .linear import QuantLinear


class QuantizedModel(Sapiens2Model):
    """Built by :func:`~sapiens2_edge.quantization.quantize` or :func:`~.serialize.load_quantized`."""

    recipe: QuantRecipe
    layer_schemes: dict[str, str]

    @property
    def scheme(self) -> str:
        return self.recipe.scheme

    def quantized_layers(self) -> dict[str, QuantLinear]:
        return {n: m for n, m in self.named_modules() if isinstance(m, QuantLinear)}

    def set_kernel(self, name: str) -> "QuantizedModel":
        """Select the GEMM path of every quantized layer (see :mod:`.kernels`)."""
        check_kernel(name)
        for m in self.quantized_layers().values():
            m.kernel = name
        return self

    def recipe_dict(self) -> dict:
        """The recipe plus the per-layer scheme of every quantized layer (what the checkpoint
        stores), and under ``layer_configs`` the full config of each layer whose config is not the
        one the recipe's settings give its scheme (layers quantized by :func:`~.convert.apply`)."""
        d = {**self.recipe.to_dict(), "layers": dict(self.layer_schemes)}
        own = {n: m.config.to_dict() for n, m in self.quantized_layers().items()
               if m.config != self.recipe.layer_config(m.scheme)}
        if own:
            d["layer_configs"] = own
        return d


def is_quantized(model: nn.Module) -> bool:
    return isinstance(model, QuantizedModel) or any(isinstance(m, QuantLinear) for m in model.modules())


def candidate_linears(model: nn.Module) -> list[str]:
    """Module names of every plain ``nn.Linear`` in the backbone (the only layers ever quantized)."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith("backbone.")]


def as_quantized(model: Sapiens2Model, recipe: QuantRecipe, layer_schemes: dict[str, str]) -> QuantizedModel:
    """Re-class ``model`` (in place) as a :class:`QuantizedModel`."""
    model.__class__ = QuantizedModel
    model.recipe = recipe
    model.layer_schemes = dict(layer_schemes)
    return model


def float_copy(model: Sapiens2Model, skip: Iterable[str] = ()) -> Sapiens2Model:
    """A deep copy with float32 parameters (the RoPE periods buffer keeps its bf16).

    skip: names of modules whose tensors the copy shares with ``model`` instead of copying (for
    modules the caller replaces in the copy at once: no transient copy of their weights)."""
    shared = [t for n in skip for t in (*model.get_submodule(n).parameters(), *model.get_submodule(n).buffers())
              if t.dtype == torch.float32 or not t.is_floating_point()]  # the loop below must not touch them
    m = copy.deepcopy(model, {id(t): t for t in shared})
    with torch.no_grad():
        for p in m.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
    return m


def float_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the float32 tensors outside the quantized layers (head, patch embedding,
    norms, tokens): what ``float_storage="fp16"`` stores as float16."""
    from .head_int8 import QuantConv, QuantDeconv

    quant = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantDeconv, QuantConv)))
    return [k for k, v in model.state_dict().items() if v.dtype == torch.float32 and not k.startswith(quant)]


def stores_float16(model: nn.Module) -> bool:
    """Whether the model's recipe stores its float tensors as float16 (``float_storage="fp16"``)."""
    return getattr(getattr(model, "recipe", None), "float_storage", "fp32") == "fp16"


def round_float_storage(model: nn.Module) -> None:
    """Round the :func:`float_keys` tensors to float16 values in place (they stay float32 tensors)."""
    with torch.no_grad():
        sd = model.state_dict()
        for k in float_keys(model):
            sd[k].copy_(sd[k].half().float())


def state_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the state dict (what a checkpoint of it holds)."""
    half = set(float_keys(model)) if stores_float16(model) else ()
    return sum(t.numel() * (2 if k in half else t.element_size()) for k, t in model.state_dict().items())


__all__ = ["QuantizedModel", "is_quantized", "candidate_linears", "as_quantized", "state_bytes", "float_keys",
           "round_float_storage", "stores_float16", "set_module"]
