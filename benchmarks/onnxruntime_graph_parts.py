"""The two parts the ONNX graph for ONNX Runtime writes differently, timed alone on ONNX Runtime's CPU
provider, each form in its own process (peak RSS is the form's own):

    attention  one attention product at (tokens, heads, 64): standard ops (Transpose, MatMul, Softmax,
               MatMul, as torch.onnx writes it), com.microsoft MultiHeadAttention (our graph), and ONNX's
               Attention (opset 23)
    head       the whole seg head from the backbone's feature map: its transposed convolutions as ConvTranspose
               (standard), each as four parity convolutions and a pixel shuffle (phased), and the last one's
               parity maps kept apart to the head's output (parity: our graph; see parity_deconv)

    python benchmarks/onnxruntime_graph_parts.py --arch 0.4b --size 1024x768

Random inputs and weights; median of --runs after one warm-up; rel L2 of each form against the first.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMS = {"attention": ("standard", "multi_head_attention", "attention_opset23"),
         "head": ("standard", "phased", "parity")}


def attention_graph(form: str, tokens: int, heads: int, d: int = 64):
    from onnx import TensorProto, helper

    c = heads * d
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, tokens, c]) for n in ("q", "k", "v")]
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, tokens, c])
    inits, opset = [], [helper.make_opsetid("", 18)]
    if form == "multi_head_attention":
        nodes = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=heads)]
        opset.append(helper.make_opsetid("com.microsoft", 1))
    elif form == "attention_opset23":
        nodes = [helper.make_node("Attention", ["q", "k", "v"], ["o"], q_num_heads=heads, kv_num_heads=heads)]
        opset = [helper.make_opsetid("", 23)]
    else:
        inits = [helper.make_tensor("split", TensorProto.INT64, [4], [1, tokens, heads, d]),
                 helper.make_tensor("merge", TensorProto.INT64, [3], [1, tokens, c]),
                 helper.make_tensor("scale", TensorProto.FLOAT, [], [d ** -0.5])]
        nodes = [helper.make_node("Reshape", [n, "split"], [n + "4"]) for n in ("q", "k", "v")] + [
            helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
            helper.make_node("Mul", ["qt", "scale"], ["qs"]), helper.make_node("MatMul", ["qs", "kt"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vt"], ["ot"]),
            helper.make_node("Transpose", ["ot"], ["o4"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["o4", "merge"], ["o"])]
    model = helper.make_model(helper.make_graph(nodes, "attention", io, [out], initializer=inits), opset_imports=opset)
    model.ir_version = 10
    rng = np.random.default_rng(0)
    feeds = {n: 2 * rng.standard_normal((1, tokens, c), dtype=np.float32) for n in ("q", "k", "v")}
    return model.SerializeToString(), feeds


def head_graph(form: str, arch: str, size: tuple[int, int], work: Path):
    import torch
    from torch import nn

    from sapiens2_edge.exporters.parity_deconv import ParityHead, PhasedDeconv
    from sapiens2_edge.models.arch import default_head_spec, get_preset
    from sapiens2_edge.models.heads import build_head

    spec = default_head_spec("seg", get_preset(arch))
    torch.manual_seed(0)
    head = build_head(spec).eval()
    for p in head.parameters():
        nn.init.normal_(p, std=0.02)
    if form == "phased":
        for i, m in enumerate(head.deconv_layers):
            if isinstance(m, nn.ConvTranspose2d):
                head.deconv_layers[i] = PhasedDeconv(m)
    elif form == "parity":
        head = ParityHead(head)
        for i, m in enumerate(head.early):
            if isinstance(m, nn.ConvTranspose2d):
                head.early[i] = PhasedDeconv(m)
    x = torch.randn(1, spec.in_channels, size[0] // 16, size[1] // 16)
    path = work / f"head-{form}.onnx"
    torch.onnx.export(head, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"], verbose=False)
    return str(path), {"x": x.numpy()}


def measure(part: str, form: str, a) -> dict:
    import onnxruntime as ort

    from sapiens2_edge.runtime.onnxruntime_backend import session_options

    size = tuple(int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        if part == "attention":
            from sapiens2_edge.models.arch import get_preset

            arch = get_preset(a.arch)
            model, feeds = attention_graph(form, size[0] // 16 * size[1] // 16 + 9, arch.num_heads, arch.head_dim)
        else:
            model, feeds = head_graph(form, a.arch, size, Path(tmp))
        session = ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = session.run(None, feeds)[0]
    times = []
    for _ in range(a.runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    np.save(Path(a.work) / f"{part}-{form}.npy", out)
    return {"part": part, "form": form, "median_s": float(np.median(times)), "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_run_mb": rss_loaded}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="0.4b")
    p.add_argument("--size", default="1024x768")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/onnxruntime_graph_parts"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.one:
        print(json.dumps(measure(*a.one.split(":"), a)))
        return
    print(f"`python benchmarks/onnxruntime_graph_parts.py --arch {a.arch} --size {a.size} --runs {a.runs}`\n")
    print("| part | form | median (s) | peak RSS (MB) | RSS before the first run (MB) | rel L2 vs standard |")
    print("|---|---|---|---|---|---|")
    for part, forms in FORMS.items():
        for form in forms:
            cmd = [sys.executable, __file__, "--arch", a.arch, "--size", a.size, "--runs", str(a.runs),
                   "--work", str(a.work), "--one", f"{part}:{form}"]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            ref, got = (np.load(a.work / f"{part}-{f}.npy") for f in (forms[0], form))
            rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
            print(f"| {part} | {form} | {row['median_s']:.3f} | {row['peak_rss_mb']:.0f} | "
                  f"{row['rss_before_run_mb']:.0f} | {rel:.1e} |", flush=True)


if __name__ == "__main__":
    main()
