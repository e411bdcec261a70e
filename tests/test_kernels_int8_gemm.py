"""INT8 W8A8 GEMM: the Triton kernel under the interpreter against the integer reference, the
custom op, QuantLinear's ``triton`` path, the kernel switch and input errors.

``triton.jit`` picks the interpreter when Triton is imported (its own library functions are
decorated then), so the interpreted runs happen in one child Python per test module that sets
``TRITON_INTERPRET=1`` before anything imports Triton; this process keeps the reference path and
compares. :func:`run_interpreted` is shared with the FP8 and RMSNorm test files.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sapiens2_edge.errors import ConfigError, InvalidTensorError
from sapiens2_edge.kernels import switch
from sapiens2_edge.kernels.scaled_gemm.op import LAUNCHES, int8_gemm
from sapiens2_edge.kernels.scaled_gemm.reference import int8_accumulate_reference, int8_gemm_reference
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear

ROOT = Path(__file__).resolve().parents[1]


# --- the interpreter child ------------------------------------------------------------------------
def run_interpreted(module: str, calls: list[tuple[str, tuple]], workdir: Path) -> list[dict]:
    """Call ``tests.<module>.<name>(*args)`` for each (name, args) in a fresh Python with
    ``TRITON_INTERPRET=1`` and ``SAPIENS2_EDGE_KERNELS=triton``; returns, per call, its output
    and the kernel launches it made."""
    inp, out = workdir / "calls.pt", workdir / "results.pt"
    torch.save(calls, inp)
    env = {**os.environ, "TRITON_INTERPRET": "1", "SAPIENS2_EDGE_KERNELS": "triton"}
    code = f"from tests.test_kernels_int8_gemm import child_main; child_main({module!r}, {str(inp)!r}, {str(out)!r})"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"interpreter child failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return torch.load(out, weights_only=True)


def child_main(module: str, inp: str, out: str) -> None:
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    mod = importlib.import_module(f"tests.{module}")
    results = []
    for name, args in torch.load(inp, weights_only=True):
        before = dict(LAUNCHES)
        value = getattr(mod, name)(*args)
        launches = {k: v - before.get(k, 0) for k, v in LAUNCHES.items() if v != before.get(k, 0)}
        results.append({"out": value, "launches": launches})
    from triton.runtime.interpreter import InterpretedFunction

    from sapiens2_edge.kernels.scaled_gemm.op import _FP8, _INT8
    from sapiens2_edge.kernels.token_quant.op import _KERNEL

    assert switch.interpreting()
    assert all(isinstance(k, InterpretedFunction) for k in (_INT8, _FP8, _KERNEL))  # interpreted, never compiled
    torch.save(results, out)


# --- functions the child runs ----------------------------------------------------------------------
def raw_accumulate(a, w):
    from sapiens2_edge.kernels.scaled_gemm.op import launch_scaled_gemm

    return launch_scaled_gemm(a, w, None, None, None, torch.float32, epilogue=False)


def gemm(a, w, sa, sw, bias, out_dtype):
    return int8_gemm(a, w, sa, sw, bias, out_dtype)


def make_layer(seed: int, k: int, n: int, mode: str, scheme: str = "int8", granularity: str = "per_channel",
               bias: bool = True) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.2)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    cfg = layer_config(scheme, activation_mode=mode, weight_granularity=granularity)
    return QuantLinear.from_float(lin, cfg, prefix_tokens=9, input_scale=torch.tensor([0.015]))


def layer_forward(seed, k, n, mode, scheme, granularity, bias, x):
    with torch.no_grad():
        return make_layer(seed, k, n, mode, scheme, granularity, bias)(x)


def exported_ops(seed, k, n, x):
    """Operator names in the torch.export graph of an int8 layer (with the Triton switch on)."""
    ep = torch.export.export(make_layer(seed, k, n, "dynamic").eval(), (x,))
    return ",".join(str(node.target) for node in ep.graph.nodes if node.op == "call_function")


# --- cases ------------------------------------------------------------------------------------------
def _ints(shape, seed, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(seed))


# M not a multiple of the 16-row block, K and N odd multiples of 16, a K with a ragged tail, M < 16
ACC_SHAPES = [(37, 48, 80), (5, 80, 112), (33, 24, 50), (1, 16, 16)]
EPI_CASES = [  # (M, N, K, out dtype, per-channel weight scales, bias)
    (37, 48, 80, torch.float32, True, True),
    (19, 80, 48, torch.float16, True, True),
    (21, 48, 112, torch.float32, False, False),
    (3, 16, 48, torch.float16, False, True),
]
LAYER_CASES = [  # (K, N, mode, granularity, bias, x shape)
    (48, 80, "dynamic", "per_channel", True, (2, 13, 48)),
    (80, 48, "static", "per_channel", True, (2, 13, 80)),
    (48, 48, "static", "per_tensor", False, (3, 11, 48)),
    (112, 16, "dynamic", "per_channel", True, (7, 112)),
]


def _epi_inputs(m, n, k, per_channel, bias, seed):
    g = torch.Generator().manual_seed(seed)
    sa = torch.rand(m, 1, generator=g) * 1e-3 + 1e-4
    sw = torch.rand(n if per_channel else 1, generator=g) * 1e-2 + 1e-3
    b = torch.randn(n, generator=g) if bias else None
    return _ints((m, k), seed + 1), _ints((n, k), seed + 2), sa, sw, b


def _x(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if len(shape) == 3:
        x[:, :9] *= 8.0  # outlier prefix tokens, as in the model
    return x


def _calls():
    calls = [("raw_accumulate", (_ints((m, k), i), _ints((n, k), 100 + i))) for i, (m, n, k) in enumerate(ACC_SHAPES)]
    # extreme values: every product is +-127*127, the sum must stay exact in int32
    calls.append(("raw_accumulate", (torch.full((17, 112), 127, dtype=torch.int8),
                                     torch.full((16, 112), -127, dtype=torch.int8))))
    for i, (m, n, k, od, pc, b) in enumerate(EPI_CASES):
        calls.append(("gemm", (*_epi_inputs(m, n, k, pc, b, 10 * i), od)))
    for i, (k, n, mode, gran, bias, shape) in enumerate(LAYER_CASES):
        calls.append(("layer_forward", (i, k, n, mode, "int8", gran, bias, _x(shape, 50 + i))))
    calls.append(("exported_ops", (0, 48, 32, _x((1, 12, 48), 99))))
    return calls


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    calls = _calls()
    return calls, run_interpreted("test_kernels_int8_gemm", calls, tmp_path_factory.mktemp("int8_interp"))


def _results(interpreted, name):
    calls, results = interpreted
    return [(args, r) for (n, args), r in zip(calls, results, strict=True) if n == name]


def test_int32_accumulation_is_bit_exact(interpreted):
    rows = _results(interpreted, "raw_accumulate")
    assert len(rows) == len(ACC_SHAPES) + 1
    for (a, w), r in rows:
        assert r["launches"] == {"int8_gemm": 1}
        assert r["out"].dtype == torch.int32
        assert torch.equal(r["out"], int8_accumulate_reference(a, w)), tuple(a.shape) + tuple(w.shape)
    assert int(rows[-1][1]["out"][0, 0]) == -112 * 127 * 127


def test_fused_epilogue_matches_reference_bit_for_bit(interpreted):
    rows = _results(interpreted, "gemm")
    assert len(rows) == len(EPI_CASES)
    for (a, w, sa, sw, b, od), r in rows:
        assert r["launches"] == {"int8_gemm": 1}
        ref = int8_gemm_reference(a, w, sa, sw, b, od)
        assert r["out"].dtype == od and r["out"].shape == ref.shape
        assert torch.isfinite(ref).all()
        assert torch.equal(r["out"], ref)


def test_quantlinear_triton_path_equals_reference_path(interpreted):
    rows = _results(interpreted, "layer_forward")
    assert len(rows) == len(LAYER_CASES)
    for (seed, k, n, mode, scheme, gran, bias, x), r in rows:
        # one fused quantization pass and one GEMM: the Triton path ran, not the fallback
        assert r["launches"] == {"token_quant": 1, "int8_gemm": 1}, (mode, gran)
        layer = make_layer(seed, k, n, mode, scheme, gran, bias)
        layer.kernel = "reference"
        with torch.no_grad():
            ref = layer(x)
        assert r["out"].shape == ref.shape == (*x.shape[:-1], n)
        assert torch.equal(r["out"], ref), (mode, gran)


def test_export_traces_the_reference_decomposition(interpreted):
    (_, r), = _results(interpreted, "exported_ops")
    assert r["launches"] == {}
    assert "sapiens2_edge" not in r["out"] and "aten" in r["out"]


# --- in this process: the reference path, the op, the switch, errors --------------------------------
def test_cpu_default_path_does_not_launch_and_is_unchanged():
    with switch.override(mode="auto", triton=True):
        layer = make_layer(3, 48, 40, "static")
    assert layer.auto_kernel is not None and layer.auto_kernel.name == "triton"  # chosen at construction
    x = _x((2, 12, 48), 7)
    before = sum(LAUNCHES.values())
    with torch.no_grad(), switch.override(mode="auto", triton=True):
        auto = layer(x)
        layer.kernel = "reference"
        ref = layer(x)
    assert sum(LAUNCHES.values()) == before
    assert torch.equal(auto, ref)


def test_reference_mode_layers_choose_no_kernel():
    with switch.override(mode="reference"):
        assert make_layer(0, 16, 16, "dynamic").auto_kernel is None
    assert make_layer(0, 16, 16, "dynamic", "int8-weight").auto_kernel is None  # no Triton path for the scheme


def test_op_reference_mode_and_schema():
    a, w, sa, sw, b = _epi_inputs(20, 24, 32, True, True, 5)
    before = LAUNCHES["int8_gemm"]
    with switch.override(mode="reference"):
        y = int8_gemm(a, w, sa, sw, b, torch.float16)
    assert LAUNCHES["int8_gemm"] == before and y.dtype == torch.float16
    manual = ((a.double() @ w.double().t()) * (sa.double() * sw.double()) + b.double()).half()
    torch.testing.assert_close(y, manual, rtol=1e-3, atol=1e-3)
    torch.library.opcheck(torch.ops.sapiens2_edge.int8_gemm.default, (a, w, sa, sw, b, torch.float32))
    torch.library.opcheck(torch.ops.sapiens2_edge.int8_gemm.default, (a, w, sa, sw[:1], None, torch.bfloat16))


def test_forced_triton_on_cpu_without_interpreter_is_a_config_error():
    a, w, sa, sw, b = _epi_inputs(4, 16, 16, True, False, 1)
    with switch.override(mode="triton", triton=True, interpret=False):
        with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
            int8_gemm(a, w, sa, sw)
        with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
            make_layer(0, 16, 16, "dynamic")(torch.randn(2, 16))


@pytest.mark.parametrize("change, error, match", [
    (dict(a=torch.zeros(4, 16)), InvalidTensorError, "activations must be a 2-D torch.int8"),
    (dict(w=torch.zeros(8, 16, 1, dtype=torch.int8)), InvalidTensorError, "weight must be a 2-D torch.int8"),
    (dict(w=torch.zeros(8, 24, dtype=torch.int8)), InvalidTensorError, "must share a non-zero K"),
    (dict(sa=torch.ones(3, 1)), InvalidTensorError, "one value per row"),
    (dict(sa=torch.ones(4, 1, dtype=torch.float16)), InvalidTensorError, "activation scales must be float32"),
    (dict(sw=torch.ones(5)), InvalidTensorError, r"weight scales must be float32 of shape \(8,\) or \(1,\)"),
    (dict(b=torch.ones(7)), InvalidTensorError, r"bias must be float32 of shape \(8,\)"),
    (dict(od=torch.int32), ConfigError, "out_dtype torch.int32 is not supported"),
])
def test_input_errors(change, error, match):
    args = dict(a=torch.zeros(4, 16, dtype=torch.int8), w=torch.zeros(8, 16, dtype=torch.int8),
                sa=torch.ones(4, 1), sw=torch.ones(8), b=None, od=torch.float32)
    args.update(change)
    with pytest.raises(error, match=match):
        int8_gemm(args["a"], args["w"], args["sa"], args["sw"], args["b"], args["od"])


# --- the compiled kernels build for real GPUs (no device needed: Triton compiles to a target) -------
def _compile(fn, types: dict, consts: dict, cc: int, num_warps: int = 4):
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import JITFunction

    names = list(inspect.signature(fn).parameters)
    sig = {n: "constexpr" if n in consts else types[n] for n in names}
    src = ASTSource(JITFunction(fn), sig, {(names.index(n),): v for n, v in consts.items()})
    return compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps, "num_stages": 3})


@pytest.mark.parametrize("cc, fp8", [(90, False), (90, True), (89, True), (80, False)])
def test_gemm_kernel_compiles_for_gpu_targets(cc, fp8):
    from sapiens2_edge.kernels.scaled_gemm.op import _CONFIGS, _scaled_gemm

    q = "*u8" if fp8 else "*i8"
    types = dict(a_ptr=q, w_ptr=q, c_ptr="*bf16", sa_ptr="*fp32", sw_ptr="*fp32", bias_ptr="*fp32",
                 **{n: "i32" for n in ("M", "N", "K", "stride_am", "stride_ak", "stride_wn", "stride_wk", "stride_cm",
                                       "stride_cn")})
    cfg = {k: v for k, v in _CONFIGS[0].items() if k not in ("num_warps", "num_stages")}
    kernel = _compile(_scaled_gemm, types, dict(IS_FP8=fp8, SW_PER_CHANNEL=True, HAS_BIAS=True, EPILOGUE=True, **cfg),
                      cc, num_warps=_CONFIGS[0]["num_warps"])
    assert kernel.asm["cubin"] and ("mma" in kernel.asm["ptx"])


@pytest.mark.parametrize("fp8", [False, True])
def test_quant_rows_kernel_compiles_for_hopper(fp8):
    from sapiens2_edge.kernels.token_quant.op import _quant_rows

    types = dict(x_ptr="*bf16", q_ptr="*u8" if fp8 else "*i8", s_ptr="*fp32", static_ptr="*fp32",
                 K="i32", stride_x="i32", stride_q="i32", seq_len="i32", prefix="i32")
    kernel = _compile(_quant_rows, types, dict(STATIC=True, IS_FP8=fp8, BLOCK_K=2048), 90)
    assert kernel.asm["cubin"]
