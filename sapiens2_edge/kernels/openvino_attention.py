"""Long bf16 attention products of torch forwards on OpenVINO's CPU attention kernel.

torch's CPU ``scaled_dot_product_attention`` runs bf16 at about a third of its own bf16 GEMMs' rate:
one 0.4b attention at 1024x768 (3081 tokens, 16 heads of 64) takes 267-290 ms in bf16 (146 GFLOP/s,
slower than its float32 kernel's 247 ms) against 131-135 ms for OpenVINO's (AMD EPYC with AVX-512 BF16,
2 cores; torch's bf16 linears there run at 370-430 GFLOP/s). That attention is over a third of a bf16
calibration's time, which runs every calibration image through every block, so the calibration
forwards and the torch backend's bf16 inference hand it to OpenVINO where it is installed
(``models.bf16.attention_on_openvino``): one small graph
(the attention alone, static shapes, compiled once per shape) fed and read in place through the
tensors' memory. Float32 forwards keep torch's kernel (OpenVINO's is not faster there: 224 ms).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from . import switch

#: shorter sequences stay on torch's kernel. One attention, bf16, 2 threads, quiet AVX-512 BF16 EPYC (torch /
#: OpenVINO): 777 tokens (0.1b at 512x384) 14.8 / 13.4 ms, and inside the 0.1b backbone OpenVINO's was no
#: faster (0.75 against 0.73 s: the q, k, v copies and the threads' hand-over); 1545 tokens 53 / 31 ms,
#: 3081 tokens (1024x768) 295 / 136 ms. The 4K tokenizer's 17-token windows stay on torch's kernel.
MIN_TOKENS = 1024


def available() -> bool:
    """Whether OpenVINO is installed (it is an extra) and the kernels are not held to torch's own
    (``SAPIENS2_EDGE_KERNELS=reference``, :mod:`.switch`)."""
    return switch.mode() != "reference" and importlib.util.find_spec("openvino") is not None


class OpenVINOAttention:
    """Compiled attention graphs by shape: (B, T, heads, d) bf16 q, k, v -> (B, T, heads * d) bf16."""

    def __init__(self, threads: int | None = None):
        self._threads = threads or torch.get_num_threads()
        self._requests: dict[tuple[int, ...], object] = {}
        self._ov = self._core = None  # OpenVINO is loaded with the first long sequence (its runtime costs memory)

    def _request(self, shape: tuple[int, ...]):
        if shape not in self._requests:
            import openvino as ov
            import openvino.opset13 as ops

            if self._core is None:
                self._ov, self._core = ov, ov.Core()
                # bf16 arithmetic where the CPU has it; elsewhere the bf16 inputs are computed on in float32
                caps = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
                self._precision = "bf16" if "BF16" in caps else "f32"

            params = [ops.parameter(list(shape), ov.Type.bf16, name=n) for n in ("q", "k", "v")]
            to_heads = ops.constant([0, 2, 1, 3])
            heads = [ops.transpose(p, to_heads) for p in params]
            out = ops.transpose(ops.scaled_dot_product_attention(*heads, causal=False), to_heads)
            out = ops.reshape(out, ops.constant([shape[0], shape[1], shape[2] * shape[3]]), special_zero=False)
            config = {"INFERENCE_PRECISION_HINT": self._precision, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_NUM_THREADS": self._threads}
            compiled = self._core.compile_model(ov.Model([out], params, "attention"), "CPU", config)
            self._requests[shape] = compiled.create_infer_request()
        return self._requests[shape]

    def _tensor(self, t: torch.Tensor, shape: list[int]):
        return self._ov.Tensor(t.view(torch.int16).numpy(), shape, self._ov.Type.bf16)  # shares t's memory

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, t, h, d = q.shape
        request = self._request((b, t, h, d))
        q, k, v = (x.to(torch.bfloat16).contiguous() for x in (q, k, v))
        out = torch.empty(b, t, h * d, dtype=torch.bfloat16)
        request.set_output_tensor(0, self._tensor(out, [b, t, h * d]))
        request.infer([self._tensor(x, [b, t, h, d]) for x in (q, k, v)])
        return out


class AttentionProduct(nn.Module):
    """An attention's ``product`` (q, k, v (B, T, heads, d) -> (B, T, C)) on :class:`OpenVINOAttention`
    for long CPU sequences under bf16 autocast; anything else takes torch's kernel, as the attention
    itself would."""

    def __init__(self, kernel: OpenVINOAttention):
        super().__init__()
        self.kernel = kernel

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        groups = q.shape[2] // k.shape[2]
        if groups > 1:  # grouped-query attention: each kv head serves `groups` consecutive query heads
            k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        if on_openvino(q):
            return self.kernel(q, k, v)
        b, t, h, d = q.shape
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return o.transpose(1, 2).reshape(b, t, h * d)


def on_openvino(q: torch.Tensor) -> bool:
    """A product that goes to OpenVINO: a long CPU sequence under bf16 CPU autocast, nothing to differentiate."""
    return (q.device.type == "cpu" and q.shape[1] >= MIN_TOKENS and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not (torch.is_grad_enabled() and q.requires_grad))


__all__ = ["MIN_TOKENS", "AttentionProduct", "OpenVINOAttention", "available", "on_openvino"]
