"""SmoothQuant (Xiao et al., 2023) on the backbone's RMSNorm -> Linear pairs.

Each block feeds ``ln1`` into ``attn.wq``/``attn.wk``/``attn.wv`` and ``ln2`` into ``ffn.w12``.
With X the norm's output and W the concatenated weights it feeds, per input channel j::

    s_j = max|X_j| ** alpha / max|W_:,j| ** (1 - alpha)

and the norm weight g becomes ``g / s`` and every fed weight ``W * s`` (column-wise). Because
``rms_norm(x) * g / s @ (W * s).T == rms_norm(x) * g @ W.T``, the float model is unchanged up
to rounding; activation outlier channels shrink and the weights absorb them, which is what makes
per-token int8 activations work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

S_MIN, S_MAX = 1e-5, 1e5


@dataclass(frozen=True)
class SmoothGroup:
    norm: str  # module name of the RMSNorm
    linears: tuple[str, ...]  # module names of the linears it feeds


def find_groups(model: nn.Module) -> list[SmoothGroup]:
    """Every ln1 -> wq/wk/wv and ln2 -> w12 pair in the backbone (main and tokenizer blocks)."""
    groups = []
    for name, mod in model.named_modules():
        if hasattr(mod, "ln1") and hasattr(mod, "attn") and hasattr(mod, "ffn") and hasattr(mod, "ln2"):
            groups.append(SmoothGroup(f"{name}.ln1", tuple(f"{name}.attn.{p}" for p in ("wq", "wk", "wv"))))
            groups.append(SmoothGroup(f"{name}.ln2", (f"{name}.ffn.w12",)))
    return groups


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Per-input-channel s (K,) from activation maxima (K,) and the fed weights [(N_i, K)]."""
    w_max = torch.cat([w.detach().float().abs() for w in weights]).amax(dim=0)
    a_max = act_absmax.float().to(w_max.device)
    s = a_max.clamp_min(1e-8).pow(alpha) / w_max.clamp_min(1e-8).pow(1.0 - alpha)
    s = torch.where((a_max > 0) & (w_max > 0), s, torch.ones_like(s))
    return s.clamp(S_MIN, S_MAX)


@torch.no_grad()
def apply_smoothing(model: nn.Module, group: SmoothGroup, scales: torch.Tensor) -> None:
    """Fold ``scales`` into the norm weight (divide) and the fed linears' columns (multiply)."""
    modules = dict(model.named_modules())
    norm = modules[group.norm]
    norm.weight.div_(scales.to(norm.weight))
    for name in group.linears:
        lin = modules[name]
        lin.weight.mul_(scales.to(lin.weight)[None, :])


__all__ = ["SmoothGroup", "find_groups", "smoothing_scales", "apply_smoothing"]
