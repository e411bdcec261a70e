"""The Sapiens2 backbone (spec section 1): RMSNorm, 2-D axial RoPE with the reference's bf16
rounding, grouped-query attention, SwiGLU, LayerScale, prefix tokens and the 4K window tokenizer.

Attribute names are the checkpoint's tensor names, so ``state_dict()`` is the official layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..kernels import switch
from ..spec import NUM_PREFIX_TOKENS, NUM_STORAGE_TOKENS, PATCH_SIZE, WINDOW_SIZE
from .arch import ROPE_BASE, ArchSpec

ROPE_MODES = ("bf16", "fp32")
EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class RopeEmbedding(nn.Module):
    """2-D axial RoPE tables (spec 1.4). ``periods`` is a persistent bf16 buffer, as stored.

    mode ``bf16`` reproduces the reference: the tables are computed in bf16 (rounded after every
    step) and q/k are rotated with bf16 rounding; ``fp32`` computes everything in float32 from the
    same stored periods. Tables come back as float32 either way (bf16 values are exact in fp32).
    ``freeze(hp, wp)`` stores the tables of one grid as buffers, so an exported graph carries
    them as constants instead of bf16 trigonometry that some runtimes lack.
    """

    def __init__(self, head_dim: int, base: float = ROPE_BASE, mode: str = "bf16"):
        super().__init__()
        if mode not in ROPE_MODES:
            raise ConfigError(f"unknown RoPE mode {mode!r}; expected one of {ROPE_MODES}")
        self.mode = mode
        quarter = head_dim // 4
        # on the CPU even where the model is built on the meta device (the loaders): arange on meta
        # goes through torch's Python decompositions, whose first import costs ~1.2 s
        exponent = 2 * torch.arange(quarter, dtype=torch.bfloat16, device="cpu") / (head_dim // 2)
        self.register_buffer("periods", base**exponent, persistent=True)
        self.frozen: tuple[int, int, str] | None = None

    @property
    def round_bf16(self) -> bool:
        return self.mode == "bf16"

    def tables(self, hp: int, wp: int) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float32
        periods = self.periods.to(dtype)
        dd = {"dtype": dtype, "device": periods.device}
        coords_h = torch.arange(0.5, hp, **dd) / hp
        coords_w = torch.arange(0.5, wp, **dd) / wp
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
        angles = angles.flatten(1, 2).tile(2)  # [a_y, a_x, a_y, a_x]
        return torch.sin(angles).float(), torch.cos(angles).float()

    def freeze(self, hp: int, wp: int) -> None:
        sin, cos = self.tables(hp, wp)
        self.register_buffer("frozen_sin", sin, persistent=False)
        self.register_buffer("frozen_cos", cos, persistent=False)
        self.frozen = (hp, wp, self.mode)

    def forward(self, hp: int, wp: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen == (hp, wp, self.mode):
            return self.frozen_sin, self.frozen_cos
        return self.tables(hp, wp)


def _round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def _rotation_tables(sin: torch.Tensor, cos: torch.Tensor, tokens: int, d: int):
    """(half-swap index, sign-folded sin, cos) over all ``tokens``: the prefix rows get cos 1 and
    sin 0, which leave them as they are, and ``rotate_half(x) * sin == x[..., swap] * signed_sin``
    bit for bit (``swap`` exchanges the halves). In an exported graph: one Gather and elementwise
    ops instead of slicing the prefix off, a Split, a Neg and two Concats per q/k, which OpenVINO
    runs as reference (slow-path) kernels; the tables and the index are constants there."""
    half = d // 2
    swap = torch.cat([torch.arange(half, d, device=sin.device), torch.arange(0, half, device=sin.device)])
    sign = torch.cat([-torch.ones(half, device=sin.device), torch.ones(half, device=sin.device)])
    prefix = tokens - sin.shape[-2]
    if prefix:
        dd = {"dtype": sin.dtype, "device": sin.device}  # not new_zeros/new_ones: Core ML's converter lacks them
        sin = torch.cat([torch.zeros(prefix, d, **dd), sin], dim=-2)
        cos = torch.cat([torch.ones(prefix, d, **dd), cos], dim=-2)
    return swap, sin * sign, cos


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, round_bf16: bool = True,
               heads_after_tokens: bool = False, gather: bool = True) -> torch.Tensor:
    """Rotate (B, heads, T, d), or (B, T, heads, d) with ``heads_after_tokens``, leaving the leading
    prefix tokens (T - len(sin)) unrotated.

    With ``round_bf16`` it reproduces the reference, which casts the whole of q/k (prefix included)
    to bf16 and rotates in bf16 (its tables are bf16 values). Traced for an export, every step runs in
    float32 and is rounded to bf16, which exports as plain Cast nodes; run in torch, the same steps
    are torch's bf16 ops, which compute in float32 and round: bit-identical, at a fifth of the
    memory traffic (nine float32 copies of q and k less per call). The prefix rows come out exactly
    as they went in (x * 1 + x' * 0). ``gather`` False swaps the halves as a Split and a Concat in exported
    graphs too (what ONNX Runtime runs fastest); the values are the same.
    """
    dtype = x.dtype
    exporting = switch.exporting()
    native_bf16 = round_bf16 and not exporting and _bf16_values(sin) and _bf16_values(cos)
    x = x.to(torch.bfloat16) if native_bf16 else x.float()
    if round_bf16 and not native_bf16:
        x = _round_bf16(x)
    swap, sin, cos = _rotation_tables(sin, cos, x.shape[-3 if heads_after_tokens else -2], x.shape[-1])
    if native_bf16:
        sin, cos = sin.to(torch.bfloat16), cos.to(torch.bfloat16)  # exact: bf16 values
    if heads_after_tokens:
        sin, cos = sin[:, None], cos[:, None]  # (T, 1, d): the same row for every head
    # the same halves swapped either way: a Gather in exported graphs (OpenVINO runs Split / Concat as
    # reference kernels), two views concatenated in torch (whose index_select on the last dim is 10-70x
    # slower than that) and in graphs made for ONNX Runtime (its Gather on the last axis: 9x slower)
    rotated = x.index_select(-1, swap) if exporting and gather else torch.cat(x.chunk(2, dim=-1)[::-1], dim=-1)
    if round_bf16 and not native_bf16:
        x = _round_bf16(_round_bf16(x * cos) + _round_bf16(rotated * sin))
    else:
        x = x * cos + rotated * sin
    return x.to(dtype)


def _bf16_values(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is a bf16 value (tables of the reference's bf16 mode are)."""
    return t.dtype == torch.bfloat16 or torch.equal(t, t.to(torch.bfloat16).to(t.dtype))


class Attention(nn.Module):
    """Multi-head / grouped-query attention with optional QK-RMSNorm, RoPE and LayerScale."""

    def __init__(self, dim: int, heads: int, kv_heads: int, qk_norm: bool = True, layerscale: bool = True):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, kv_heads * self.head_dim)
        self.wv = nn.Linear(dim, kv_heads * self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.gamma = LayerScale(dim) if layerscale else None
        # Core ML cannot convert SDPA's enable_gqa flag; repeat_interleave works everywhere.
        self.repeat_kv = True
        # The fused Triton prologue, chosen once (set False to keep this module on the code below).
        self.fused = switch.fused_default()
        # q, k, v -> q, k, v right before the attention product: int8 attention inputs of a quantized
        # model (quantization.attention_inputs), or a calibration observer; None: left as computed
        self.input_quant: nn.Module | None = None
        # RoPE's half swap as one Gather in exported graphs (False: a Split and a Concat, for ONNX Runtime)
        self.rope_gather = True
        # q, k, v (B, T, heads, d) -> (B, T, C): the attention product of an export made for a runtime
        # with a fused attention operator (exporters.onnxruntime_graph); None: scaled_dot_product_attention
        self.product: nn.Module | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, bool] | None = None) -> torch.Tensor:
        if self.fused and switch.enabled(x):  # Triton for x's device; exports always trace the code below
            return self._forward_fused(x, rope)
        b, t, c = x.shape
        d = self.head_dim
        # QK-norm and RoPE in the (B, T, heads, d) layout the projections write, then to (B, heads, T, d):
        # the transposes sit right before the attention, where OpenVINO folds them into its fused
        # attention kernel instead of running each as a copy (same values: both are per-token and per-head)
        q = self.wq(x).view(b, t, self.heads, d)
        k = self.wk(x).view(b, t, self.kv_heads, d)
        v = self.wv(x).view(b, t, self.kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, *rope, heads_after_tokens=True, gather=self.rope_gather)
            k = apply_rope(k, *rope, heads_after_tokens=True, gather=self.rope_gather)
        if self.input_quant is not None:  # before the transposes, which OpenVINO folds into its attention
            q, k, v = self.input_quant(q, k, v)
        if self.product is not None:
            return self.project(self.product(q, k, v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        groups = self.heads // self.kv_heads
        if groups > 1 and self.repeat_kv:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=groups > 1 and not self.repeat_kv)
        return self.project(o.transpose(1, 2).reshape(b, t, c))

    def project(self, o: torch.Tensor) -> torch.Tensor:
        """Output projection and LayerScale of the (..., C) attention output."""
        o = self.proj(o)
        return self.gamma(o) if self.gamma is not None else o

    def _forward_fused(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, bool] | None) -> torch.Tensor:
        """Projections -> one prologue pass (QK-norm, RoPE, layout) -> SDPA (native GQA) -> proj."""
        from ..kernels.attention_prologue.op import attention_prologue

        b, t, c = x.shape
        norm = self.q_norm is not None
        sin, cos, round_bf16 = rope if rope is not None else (None, None, False)
        q, k, v = attention_prologue(self.wq(x), self.wk(x), self.wv(x), self.q_norm.weight if norm else None,
                                     self.k_norm.weight if norm else None, sin, cos, self.heads, self.kv_heads,
                                     self.q_norm.eps if norm else EPS, round_bf16)
        if self.input_quant is not None:
            q, k, v = self.input_quant(q, k, v)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.heads != self.kv_heads)
        return self.project(o.transpose(1, 2).reshape(b, t, c))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(g) * u)


class Block(nn.Module):
    """Pre-norm transformer block; LayerScale sits inside attention only (the FFN has none)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int, main: bool = True):
        super().__init__()
        self.ln1 = RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, qk_norm=main, layerscale=main)
        self.ln2 = RMSNorm(dim)
        self.ffn = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, bool] | None = None) -> torch.Tensor:
        return self.ffn_residual(self.attention_residual(x, rope))

    def attention_residual(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, bool] | None = None):
        """The first half of the block: x + attn(ln1(x))."""
        return x + self.attn(self.ln1(x), rope)

    def ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The second half of the block: x + ffn(ln2(x))."""
        return x + self.ffn(self.ln2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.projection = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class WindowTokenizer(nn.Module):
    """4K tokenizer (spec 1.9): each 4x4 patch window becomes [w_cls, 16 patches] + local position
    embedding, runs through MHA blocks (no QK-norm, RoPE or LayerScale), and only its CLS is kept."""

    def __init__(self, arch: ArchSpec, chunk_size: int = 1024):
        super().__init__()
        c, n = arch.embed_dim, WINDOW_SIZE * WINDOW_SIZE
        self.chunk_size = chunk_size
        self.local_pos_embed = nn.Parameter(torch.zeros(1, n + 1, c))
        self.w_cls = nn.Parameter(torch.zeros(1, 1, c))
        self.blocks = nn.ModuleList(
            Block(c, arch.num_heads, arch.num_heads, arch.ffn_hidden, main=False) for _ in range(arch.tokenizer_depth))
        # The fused Triton windows, chosen once (set False to keep this module on the chunked code).
        self.fused = switch.fused_default()

    def partition(self, tokens: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """(B, hp*wp, C) row-major patches -> (B*windows, 17, C) sequences, windows row-major."""
        b, _, c = tokens.shape
        ws = WINDOW_SIZE
        x = tokens.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        return torch.cat([self.w_cls.expand(x.shape[0], -1, -1), x], dim=1) + self.local_pos_embed

    def forward(self, tokens: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        if self.fused and switch.enabled(tokens):  # Triton for the device; exports trace the code below
            return self._forward_fused(tokens, hp, wp)
        b, _, c = tokens.shape
        seqs = self.partition(tokens, hp, wp)
        outs = []
        for chunk in seqs.split(self.chunk_size):
            for blk in self.blocks:
                chunk = blk(chunk)
            outs.append(chunk[:, 0])
        return torch.cat(outs).reshape(b, -1, c)

    def _forward_fused(self, tokens: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """One gather + RMSNorm pass builds every window at once (no permute copies, no chunk loop),
        each block's attention reads q/k/v straight from the projections, and the last block
        computes only what its CLS output needs (q, attention, proj and FFN of token 0)."""
        from ..kernels.window_attention import op

        b, _, c = tokens.shape
        first = self.blocks[0]
        x, h = op.window_partition_norm(tokens, self.w_cls, self.local_pos_embed, first.ln1.weight, hp, wp,
                                        WINDOW_SIZE, first.ln1.eps)
        for i, blk in enumerate(self.blocks):
            attn = blk.attn
            if i:
                h = blk.ln1(x)
            if i < len(self.blocks) - 1:
                x = x + attn.project(op.window_attention(attn.wq(h), attn.wk(h), attn.wv(h), attn.heads))
            else:  # only token 0 survives the tokenizer
                o = op.window_attention_cls(attn.wq(h[:, 0]), attn.wk(h), attn.wv(h), attn.heads)
                x = x[:, 0] + attn.project(o)
            x = x + blk.ffn(blk.ln2(x))
        return x.reshape(b, -1, c)


class Sapiens2Backbone(nn.Module):
    """Backbone returning the final-normed token sequence (B, 9+N, C); see :meth:`featmap`."""

    def __init__(self, arch: ArchSpec, rope_mode: str = "bf16"):
        super().__init__()
        self.arch = arch
        c = arch.embed_dim
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.storage_tokens = nn.Parameter(torch.zeros(1, NUM_STORAGE_TOKENS, c))
        self.rope_embed = RopeEmbedding(arch.head_dim, mode=rope_mode)
        self.blocks = nn.ModuleList(Block(c, arch.num_heads, kv, arch.ffn_hidden) for kv in arch.kv_heads)
        self.ln1 = RMSNorm(c)
        if arch.is_4k:
            self.tokenizer = WindowTokenizer(arch)

    @property
    def rope_mode(self) -> str:
        return self.rope_embed.mode

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, bool], int, int]:
        """Image (B,3,H,W) -> (the first block's input (B, 9+N, C), its RoPE tables, Hp, Wp)."""
        t = self.patch_embed(x)
        b, c, hp, wp = t.shape
        t = t.flatten(2).transpose(1, 2)
        if self.arch.is_4k:
            t = self.tokenizer(t, hp, wp)
            hp, wp = hp // WINDOW_SIZE, wp // WINDOW_SIZE
        t = torch.cat([self.cls_token.expand(b, -1, -1), self.storage_tokens.expand(b, -1, -1), t], dim=1)
        return t, (*self.rope_embed(hp, wp), self.rope_embed.round_bf16), hp, wp

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Image (B,3,H,W) -> (tokens (B, 9+N, C), Hp, Wp) after the final norm."""
        t, rope, hp, wp = self.embed(x)
        for blk in self.blocks:
            t = blk(t, rope)
        return self.ln1(t), hp, wp

    @staticmethod
    def featmap(t: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """Final-normed tokens (B, 9+N, C) -> the patch tokens as a feature map (B, C, Hp, Wp)."""
        return t[:, NUM_PREFIX_TOKENS:].transpose(1, 2).reshape(t.shape[0], -1, hp, wp)

    def forward(self, x: torch.Tensor, output: str = "featmap") -> torch.Tensor:
        """``output``: ``featmap`` (B,C,Hp,Wp), ``raw`` (B,9+N,C) or ``cls_token`` (B,C) (spec 1.2)."""
        t, hp, wp = self.forward_tokens(x)
        if output == "raw":
            return t
        if output == "cls_token":
            return t[:, 0]
        if output == "featmap":
            return self.featmap(t, hp, wp)
        raise ConfigError(f"unknown backbone output {output!r}; expected 'featmap', 'raw' or 'cls_token'")
