"""The INT8 / FP8 GEMM benchmark body (``bench_int8_gemm.py`` and ``bench_fp8_gemm.py`` call it).

Per Sapiens2 linear (M = 3081 x batch tokens, K x N of the preset), times:
  GEMM alone on quantized inputs: our Triton kernel (dequant + bias fused, bf16 out), the torch
    reference op path (``torch._int_mm`` + fp32 epilogue / fp32 matmul of the E4M3 values),
    ``torch._int_mm`` alone / ``torch._scaled_mm`` rowwise, torchao's ``int_scaled_matmul`` if
    installed, and bf16 ``F.linear`` (the baseline everything is compared with);
  whole ``QuantLinear`` from a bf16 input: the Triton path (fused per-token quantization + GEMM)
    against the built-in torch path of the same layer and bf16 ``nn.Linear``.
"""

from __future__ import annotations

import sys

from _quant_bench import TOKENS, gemm_row, header, linear_shapes, measure_peaks, time_ms, write


def run(qdtype: str, args) -> None:
    import torch

    from sapiens2_edge.kernels.scaled_gemm.op import fp8_unsupported_reason

    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU, or pass --dry-run to exercise the script on CPU")
    stem = f"{qdtype}_gemm"
    command = f"python benchmarks/kernels/bench_{stem}.py --batch {args.batch}" + (" --dry-run" if args.dry_run else "")
    peaks = measure_peaks(device, ("bf16", qdtype))
    head = header(device, peaks, args, command)
    if qdtype == "fp8" and (reason := fp8_unsupported_reason(device)):
        head["skipped"] = reason
        print(f"{stem}: {reason}")
        print(write(stem, head, {}, args.out))
        return
    if args.dry_run:
        shapes, m = [("tiny", "odd", 48, 80)], 37
    else:
        shapes = [(p, n, k, nn) for p in args.presets.split(",") for n, k, nn in linear_shapes(p)]
        m = TOKENS * args.batch
    sections: dict[str, list[dict]] = {}
    torch.manual_seed(0)
    for preset, name, k, n in shapes:
        rows = _shape_rows(qdtype, m, k, n, device, peaks, 1 if args.dry_run else args.batch, args.dry_run)
        sections[f"{preset} {name}: M={m} K={k} N={n}"] = rows
        print(f"{preset} {name} M={m} K={k} N={n}: " + ", ".join(
            f"{r['variant']} {r.get('ms', r.get('note'))} ms ({r.get('vs bf16', '-')}x)" for r in rows), flush=True)
    print(write(stem, head, sections, args.out))


def _shape_rows(qdtype, m, k, n, device, peaks, batch, dry_run) -> list[dict]:
    """All variants of one (M, K, N) linear."""
    import torch
    import torch.nn.functional as F

    from sapiens2_edge.kernels import numerics as nx
    from sapiens2_edge.kernels import switch
    from sapiens2_edge.kernels.scaled_gemm.op import LAUNCHES, fp8_gemm, int8_gemm
    from sapiens2_edge.kernels.scaled_gemm.reference import fp8_gemm_reference, int8_gemm_reference
    from sapiens2_edge.quantization.config import layer_config
    from sapiens2_edge.quantization.linear import QuantLinear

    gemm = int8_gemm if qdtype == "int8" else fp8_gemm
    ref_op = int8_gemm_reference if qdtype == "int8" else fp8_gemm_reference
    act_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    flops = 2.0 * m * n * k
    x = torch.randn(m, k, device=device).to(act_dtype)
    lin = torch.nn.Linear(k, n, device=device)
    w_bf = lin.weight.detach().to(act_dtype)
    b_bf = lin.bias.detach().to(act_dtype)
    wq, sw = nx.quantize_weight(lin.weight.detach(), qdtype)
    sa = nx.token_scales(x, qdtype)
    a = nx.quantize_activation(x.float(), sa, qdtype)
    bias = lin.bias.detach().float()
    rows = []
    base = time_ms(lambda: F.linear(x, w_bf, b_bf), device)
    rows.append(gemm_row(f"bf16 F.linear ({str(act_dtype)[6:]})", base, flops, peaks.get("bf16"), base))
    peak = peaks.get(qdtype)
    ours = gemm(a, wq, sa, sw, bias, act_dtype)
    ref = ref_op(a, wq, sa, sw, bias, torch.float32)
    err = ((ours.float() - ref).abs().max() / ref.abs().max()).item()
    rows.append(gemm_row(f"triton {qdtype}_gemm (fused epilogue)", time_ms(lambda: gemm(a, wq, sa, sw, bias, act_dtype),
                                                                 device), flops, peak, base,
                         f"max abs err / max abs ref = {err:.1e}"))
    rows.append(gemm_row("torch reference op path", time_ms(lambda: ref_op(a, wq, sa, sw, bias, act_dtype), device),
                         flops, peak, base))
    if qdtype == "int8":
        wt = wq.t()
        rows.append(_try(lambda: gemm_row("torch._int_mm (int32 out, no epilogue)",
                                          time_ms(lambda: torch._int_mm(a, wt), device), flops, peak, base),
                         "torch._int_mm"))
        rows.append(_torchao_row(a, wq, sa, sw, device, flops, peak, base))
    else:
        swr = sw.reshape(1, -1)
        rows.append(_try(lambda: gemm_row("torch._scaled_mm rowwise (bf16 out)", time_ms(
            lambda: torch._scaled_mm(a, wq.t(), scale_a=sa, scale_b=swr, bias=b_bf, out_dtype=torch.bfloat16),
            device), flops, peak, base), "torch._scaled_mm rowwise"))
    # the whole quantized linear from a bf16 input: quantize the activations, GEMM, epilogue
    triton_mode = "triton" if dry_run else "auto"
    with switch.override(mode=triton_mode):  # the layer chooses its kernel when built
        layer = QuantLinear.from_float(lin, layer_config(qdtype))
    x3 = x.reshape(batch, -1, k)
    with torch.no_grad():
        launched = LAUNCHES[f"{qdtype}_gemm"]
        with switch.override(mode=triton_mode):
            t_ours = time_ms(lambda: layer(x3), device)
        if LAUNCHES[f"{qdtype}_gemm"] == launched:
            sys.exit(f"QuantLinear did not take the Triton path on {device}")
        with switch.override(mode="reference"):  # the built-in torch path of QuantLinear (no Triton)
            t_torch = time_ms(lambda: layer(x3), device)
    rows.append(gemm_row("QuantLinear, Triton (fused quant + GEMM)", t_ours, flops, peak, base))
    rows.append(gemm_row("QuantLinear, built-in torch path", t_torch, flops, peak, base))
    return rows


def _try(fn, what: str) -> dict:
    try:
        return fn()
    except (RuntimeError, TypeError, NotImplementedError) as e:
        return {"variant": what, "note": f"unavailable: {str(e).splitlines()[0][:120]}"}


def _torchao_row(a, wq, sa, sw, device, flops, peak, base) -> dict:
    try:
        from torchao.kernel.intmm import int_scaled_matmul
    except ImportError:
        return {"variant": "torchao int_scaled_matmul", "note": "torchao not installed"}
    wt = wq.t()
    return _try(lambda: gemm_row("torchao int_scaled_matmul (+ weight scale)",
                                 time_ms(lambda: int_scaled_matmul(a, wt, sa) * sw, device), flops, peak, base),
                "torchao int_scaled_matmul")
