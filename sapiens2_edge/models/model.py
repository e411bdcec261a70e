"""The full model: ``backbone`` + optional ``decode_head``, as in the official task checkpoints."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import InputSizeError, InvalidTensorError
from ..spec import DEFAULT_INPUT_SIZE
from .arch import ArchSpec, HeadSpec, default_head_spec, get_preset
from .backbone import ROPE_MODES, Sapiens2Backbone
from .heads import build_head


class Sapiens2Model(nn.Module):
    """``model(x)`` with x (B,3,H,W) normalised float returns the backbone featmap (B,C,H/16,W/16)
    when there is no head, otherwise the head's raw output: pose heatmaps, seg logits,
    unnormalised normals, ``(pointmap, scale)`` or albedo."""

    def __init__(self, arch: ArchSpec, head: HeadSpec | None = None, rope_mode: str = "bf16"):
        super().__init__()
        self.arch = arch
        self.head_spec = head
        self.backbone = Sapiens2Backbone(arch, rope_mode)
        self.decode_head = build_head(head, arch.input_multiple) if head is not None else None
        self.source: str | None = None  # where the weights came from, when loaded
        self.pretrained = False  # True once real (non-random) weights are loaded

    @property
    def task(self) -> str | None:
        return self.head_spec.task if self.head_spec is not None else None

    @property
    def input_size(self) -> tuple[int, int]:
        """The network input (H, W) the task pipelines use by default."""
        if self.head_spec is not None and self.head_spec.input_size is not None:
            return tuple(self.head_spec.input_size)
        return DEFAULT_INPUT_SIZE

    @property
    def rope_mode(self) -> str:
        return self.backbone.rope_mode

    def set_rope_mode(self, mode: str) -> "Sapiens2Model":
        """``bf16`` reproduces the reference rounding; ``fp32`` is for exporters."""
        if mode not in ROPE_MODES:
            from ..errors import ConfigError

            raise ConfigError(f"unknown RoPE mode {mode!r}; expected one of {ROPE_MODES}")
        self.backbone.rope_embed.mode = mode
        return self

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under their official names: bare backbone keys for a pretrain model,
        ``backbone.`` + ``decode_head.`` for a task model."""
        sd = self.state_dict()
        if self.decode_head is None:
            return {k[len("backbone."):]: v for k, v in sd.items()}
        return dict(sd)

    def check_input_size(self, h: int, w: int) -> None:
        """An :class:`InputSizeError` unless the model runs at (h, w)."""
        m = self.arch.input_multiple
        if h < m or w < m or h % m or w % m:
            kind = "the 4K tokenizer (16-px patches in 4x4 windows)" if self.arch.is_4k else "16-px patches"
            raise InputSizeError(f"input size {h}x{w} is not a positive multiple of {m} in both sides, as {kind} need")
        if self.task == "pointmap" and (h, w) != tuple(self.input_size):
            want = "x".join(map(str, self.input_size))
            raise InputSizeError(f"the pointmap head's scale branch was built for {want} inputs, got {h}x{w}")

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InvalidTensorError(f"expected a torch.Tensor of shape (B,3,H,W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidTensorError(f"expected input of shape (B,3,H,W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InvalidTensorError(f"expected a normalised float input, got dtype {x.dtype}")
        self.check_input_size(*x.shape[-2:])
        if not torch.compiler.is_compiling() and not torch.jit.is_tracing() and torch.isnan(x).any():
            raise InvalidTensorError("the input holds NaN values")

    def forward(self, x: torch.Tensor):
        if not torch.compiler.is_exporting():
            self.check_input(x)
        feat = self.backbone(x.to(self.backbone.cls_token.dtype), "featmap")
        return feat if self.decode_head is None else self.decode_head(feat)


def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random init (truncated-normal linears, LayerScale near 1e-4, unit norms).
    Used for the offline demo, fixtures and speed benchmarks; numbers are meaningless."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "gamma" in name:
                p.copy_(1e-4 * (1 + 0.1 * torch.randn(p.shape, generator=gen)))
            elif "norm" in name or name.endswith("ln1.weight") or name.endswith("ln2.weight"):
                p.copy_(1 + 0.05 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2 and p.shape[0] > 1 and p.numel() // p.shape[0] > 1 and "token" not in name:
                fan_in = p.numel() // (p.shape[1] if "deconv" in name else p.shape[0])
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def build_model(arch: str | ArchSpec = "0.4b", task: str | None = None, *, head: HeadSpec | None = None,
                input_size: Sequence[int] = DEFAULT_INPUT_SIZE, rope_mode: str = "bf16", seed: int = 0) -> Sapiens2Model:
    """A randomly initialised model in the official layout, for a preset id or an :class:`ArchSpec`."""
    spec = get_preset(arch) if isinstance(arch, str) else arch
    if head is None and task is not None:
        head = default_head_spec(task, spec, input_size)
    model = Sapiens2Model(spec, head, rope_mode)
    init_weights(model, seed)
    return model.eval()


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted path) of ``model`` is."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
