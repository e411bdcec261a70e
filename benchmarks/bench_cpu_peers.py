"""CPU latency of our artifacts against what a user could do without us, on one model and input size.

Rows (each timed in its own process, so peak RSS is the row's own; artifacts are made first, in
other processes, and cached under --work):

    torch-fp32         torch eager, float32 (the baseline and the reference outputs), the head's layers one by
                       one as the official model runs them
    torch-bf16         torch eager under torch.autocast("cpu", bfloat16)
    ours-torch-fp32    s2e's torch backend on the same float model (the Predictor's eager path: freed heap pages
                       reused while it runs, see sapiens2_edge/heap.py; the head's lean eager path,
                       sapiens2_edge/models/lean_head.py)
    ours-torch-bf16    the same at precision="bf16" (as Predictor(checkpoint, precision="bf16") runs it): bf16
                       autocast, GEMM weights stored in bf16, the long attentions on OpenVINO's bf16 kernel where
                       it is installed (sapiens2_edge/models/bf16.py)
    ov-plain           OpenVINO IR of the float model compiled with OpenVINO's defaults
                       (its default precision: bf16 on CPUs with native bf16)
    nncf-int8          NNCF post-training int8 with its defaults on --calib samples, compiled with defaults
    ort-plain          the float model's ONNX graph in standard operators (as torch.onnx.export writes it) on
                       an ONNX Runtime session with its defaults
    ort-qstatic        onnxruntime.quantization.quantize_static of that graph with its defaults on --calib samples
    ours-ov-int8       s2e int8 (static) OpenVINO artifact, run as the Predictor runs it (its precision policy)
    ours-ov-int8-attn  the same with the attention's inputs in int8 too (recipe attention="int8")
    ours-ov-int8-head  the same with the head's transposed convolutions in int8 too (recipe head="int8")
    ours-ov-bf16       s2e OpenVINO bf16 artifact
    ours-ov-fp32       s2e OpenVINO fp32 artifact (f32, accuracy mode)
    ours-ov-fp16       s2e OpenVINO fp16 artifact (fp16 weights; f32 compute)
    ours-ov-w8         s2e OpenVINO int8-weight artifact (int8 weights, float activations)
    ours-ort-int8      s2e int8 (static) ONNX artifact on ONNX Runtime (-head: with the ours-ov-int8-head recipe)
    ours-ort-int8-std  the same exported with graph="standard" (attention as MatMul / Softmax / MatMul and
                       ConvTranspose for the head, instead of the graph shaped for ONNX Runtime)
    ours-ort-fp32      s2e fp32 ONNX artifact on ONNX Runtime
    ours-native-fp32   s2e native engine, float weights
    ours-native-w8     s2e native engine, int8-weight
    ours-native-bf16   s2e native engine, bf16 artifact (bf16 weights; bf16 GEMMs on oneDNN where the CPU has them)
    ours-native-int8   s2e native engine, int8 (static) artifact: int8 GEMMs on oneDNN (the ours-ov-int8 recipe)
    ours-native-int8-attn  the same with int8 attention inputs (the ours-ov-int8-attn recipe)
    ours-native-int8-head  the same with the int8 head too (the ours-ov-int8-head recipe)

--interleave keeps one process per row alive and times the rows' calls in turn (row 1, row 2, ...,
row 1, ...), with a pause between calls: on a machine whose speed drifts between minutes, every row
then sees the same moments, so their ratios are comparable even when the medians move.

Random weights (build_model, seed 0; --task picks the head, seg by default); calibration and evaluation
on synthetic image-like inputs (verification_inputs, different seeds). Latency: batch 1, median of --runs
after --warmup. rel L2 of the main output and the task's measure (benchmarks/task_metrics.py: seg
agreement, the argmax labels; pose keypoint displacement; normal mean angle; albedo PSNR) against
torch fp32 on --eval inputs. A row that fails (out of memory, a missing package) is reported as such.
Achieved GOP/s is the model's operation count (torch's FLOP counter over one forward: linears,
attention, convolutions and the head) over the median, and its share of the peak of the precision the row's GEMMs run in on this CPU (see
``cpu_peaks``: AMX int8/bf16 tiles, AVX-512 VNNI/bf16 or FMA, at the nominal clock).

    python benchmarks/bench_cpu_peers.py --arch 0.1b --size 512x384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from task_metrics import METRIC, formatted, task_metric  # noqa: E402 - the benchmarks' folder, inserted above

ROWS = ("torch-fp32", "torch-bf16", "ours-torch-fp32", "ours-torch-bf16", "ov-plain", "nncf-int8", "ort-plain", "ort-qstatic", "ours-ov-int8", "ours-ov-int8-attn",
        "ours-ov-int8-head", "ours-ov-bf16", "ours-ov-fp32", "ours-ov-fp16", "ours-ov-w8", "ours-ort-int8", "ours-ort-int8-head", "ours-ort-int8-std", "ours-ort-fp32",
        "ours-native-fp32", "ours-native-w8", "ours-native-bf16", "ours-native-int8", "ours-native-int8-attn",
        "ours-native-int8-head")
INT8_ROWS = {"ours-ov-int8": "openvino", "ours-ov-int8-attn": "openvino", "ours-ov-int8-head": "openvino",
             "ours-ort-int8": "onnx", "ours-ort-int8-head": "onnx", "ours-ort-int8-std": "onnx",
             "ours-native-int8": "native", "ours-native-int8-attn": "native", "ours-native-int8-head": "native"}
#: rows whose artifact is another row's folder under --work
FOLDERS = {"ours-ov-bf16": "ov-bf16", "ours-ov-fp32": "ov-fp32", "ov-plain": "ov-fp32", "ours-ort-fp32": "onnx-fp32",
           "ort-plain": "onnx-plain"}


def inputs(size, seeds) -> list[np.ndarray]:
    from sapiens2_edge.artifact import verification_inputs

    return [verification_inputs(size, 1, seed=s) for s in seeds]


def calib_inputs(a) -> list[np.ndarray]:
    return inputs(a.size, range(1000, 1000 + a.calib))


def eval_inputs(a) -> list[np.ndarray]:
    return inputs(a.size, range(a.eval))


def model(a):
    from sapiens2_edge.models.model import build_model

    return build_model(a.arch, a.task, input_size=a.size, seed=0)


# -- preparing each row's artifact (in its own process) -----------------------------------------------
def prepare(row: str, a) -> None:
    import torch

    import sapiens2_edge as s2e

    w = a.work
    target = w / FOLDERS.get(row, row)
    if row not in ("torch-fp32", "torch-bf16", "ours-torch-fp32", "ours-torch-bf16") and target.exists():
        return  # made by an earlier run
    if row in ("ov-plain", "nncf-int8", "ours-ov-fp32") and not (w / "ov-fp32").exists():
        s2e.export(model(a), w / "ov-fp32", format="openvino", input_size=a.size, max_batch=1, verify=False)
    if row == "ours-ov-bf16":
        s2e.export(model(a), w / "ov-bf16", format="openvino", precision="bf16", input_size=a.size, max_batch=1)
    if row == "ours-ort-fp32":
        s2e.export(model(a), w / "onnx-fp32", format="onnx", input_size=a.size, max_batch=1, verify=False)
    if row in ("ort-plain", "ort-qstatic") and not (w / "onnx-plain").exists():
        s2e.export(model(a), w / "onnx-plain", format="onnx", input_size=a.size, max_batch=1, verify=False,
                   graph="standard")
    if row in INT8_ROWS:
        calib = [torch.from_numpy(x[0]) for x in calib_inputs(a)]
        float_model = model(a)
        # report_samples=1: the bench reads no report (each report input costs a float and a quantized forward)
        q, _ = s2e.quantize(float_model, "int8", calibration=calib, input_size=a.size, activation_mode="static",
                            report_samples=1, progress=False,
                            attention="int8" if row.endswith(("-attn", "-head")) else "float",
                            head="int8" if row.endswith("-head") else "float")
        options = {"graph": "standard"} if row.endswith("-std") else {}
        s2e.export(q, w / row, format=INT8_ROWS[row], input_size=a.size, max_batch=1, float_model=float_model, **options)
    if row in ("ours-ov-fp16", "ours-ov-w8"):
        float_model = model(a)
        q, _ = s2e.quantize(float_model, "fp16" if row == "ours-ov-fp16" else "int8-weight", report_samples=1,
                            progress=False)
        s2e.export(q, w / row, format="openvino", input_size=a.size, max_batch=1, float_model=float_model)
    if row in ("ours-native-fp32", "ours-native-w8", "ours-native-bf16"):
        m = model(a)
        if row == "ours-native-w8":
            m, _ = s2e.quantize(m, "int8-weight", progress=False)
        precision = "bf16" if row == "ours-native-bf16" else None
        s2e.export(m, w / row, format="native", input_size=a.size, max_batch=1, precision=precision)
    if row == "nncf-int8":
        import nncf
        import openvino as ov

        core = ov.Core()
        ir = core.read_model(str(w / "ov-fp32" / "openvino" / "model.xml"))
        qm = nncf.quantize(ir, nncf.Dataset(calib_inputs(a)), subset_size=a.calib)
        (w / "nncf-int8").mkdir(exist_ok=True)
        ov.save_model(qm, str(w / "nncf-int8" / "model.xml"))
    if row == "ort-qstatic":
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        name = onnx.load(str(w / "onnx-plain" / "model.onnx"), load_external_data=False).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{name: x} for x in calib_inputs(a)])

            def get_next(self):
                return next(self.it, None)

        (w / "ort-qstatic").mkdir(exist_ok=True)
        quantize_static(str(w / "onnx-plain" / "model.onnx"), str(w / "ort-qstatic" / "model.onnx"), Reader(),
                        use_external_data_format=True)


# -- timing one row (in its own process) -------------------------------------------------------------
def runner_for(row: str, a):
    """(callable batch -> first output, size in bytes, what runs)."""
    w = a.work
    if row.startswith("torch"):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        m = model(a).eval()
        size = sum(p.numel() * p.element_size() for p in m.parameters())

        from sapiens2_edge.models.lean_head import layer_by_layer

        def run(x):
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=row == "torch-bf16"), \
                    layer_by_layer():
                out = m(torch.from_numpy(x))
            return (out[0] if isinstance(out, tuple) else out).float().numpy()
        return run, size, f"torch {torch.__version__}"
    if row in ("ours-torch-fp32", "ours-torch-bf16"):
        from sapiens2_edge.runtime.torch_backend import TorchBackend

        # the row's model is the backend's alone, as when the Predictor loads a checkpoint itself
        r = TorchBackend(model(a), "cpu", precision=row.rsplit("-", 1)[1], owns_model=True)
        return (lambda x: r(x)[0]), sum(p.numel() * p.element_size() for p in r.model.parameters()), r.describe()
    if row in ("ov-plain", "nncf-int8"):
        import openvino as ov

        xml = w / ("ov-fp32/openvino" if row == "ov-plain" else "nncf-int8") / "model.xml"
        c = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        req = c.create_infer_request()
        prec = c.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return (lambda x: np.array(req.infer({0: x})[c.outputs[0]]), _bytes(xml.parent),
                f"openvino {ov.__version__} defaults ({prec})")
    if row == "ort-plain":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(w / "onnx-plain" / "model.onnx"), providers=["CPUExecutionProvider"])
        return (lambda x: sess.run(None, {sess.get_inputs()[0].name: x})[0]), _bytes(w / "onnx-plain"), \
            f"onnxruntime {ort.__version__} defaults"
    if row == "ort-qstatic":
        from sapiens2_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

        r = OnnxRuntimeBackend(w / "ort-qstatic" / "model.onnx", providers=["CPUExecutionProvider"])
        return (lambda x: r(x)[0]), _bytes(w / "ort-qstatic"), r.describe()
    from sapiens2_edge.runtime import open_artifact

    root = w / FOLDERS.get(row, row)
    backend = ("openvino" if row.startswith("ours-ov-") else "onnxruntime" if row.startswith("ours-ort-")
               else "native")
    m, r, _ = open_artifact(root, backend, "cpu")
    size = sum(f["size"] for f in m.files.values() if f["role"] != "reference")
    return (lambda x: r(x)[0]), size, r.describe()


def attention_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    """q k^T and the scores times v: 2 (B heads Lq Lk d + B heads Lq Lk d_v)."""
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * (d + dv)


def model_gop(a) -> float:
    """Operations of one forward (multiply-add = 2), counted by torch on the float model. torch's counter
    knows no formula for the CPU attention kernel (it counts 0 for it): ours is added."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    m = model(a).eval()
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        m(torch.zeros(1, 3, *a.size))
    return counter.get_total_flops() / 1e9


def cpu_peaks() -> tuple[dict[str, float], str]:
    """Peak GOP/s of all cores of this CPU by GEMM precision, at the nominal clock /proc/cpuinfo reports,
    and a line saying how they were derived. Per core and cycle: AMX 1024 bf16 / 2048 int8 ops; AVX-512
    with two FMA ports 64 fp32 ops, 128 bf16 (avx512_bf16), 256 int8 (VNNI); AVX2 32 fp32, 64 int8."""
    flags, mhz = set(), 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("cpu MHz") and not mhz:
            mhz = float(line.split(":", 1)[1])
    ghz, cores = mhz / 1e3, os.cpu_count() or 1
    if "avx512f" in flags:
        per = {"fp32": 64, "bf16": 128 if "avx512_bf16" in flags else 64, "int8": 256 if "avx512_vnni" in flags else 128}
    else:
        per = {"fp32": 32, "bf16": 32, "int8": 64}
    if "amx_bf16" in flags:
        per["bf16"] = 1024
    if "amx_int8" in flags:
        per["int8"] = 2048
    peaks = {k: v * ghz * cores for k, v in per.items()}
    how = (f"{cores} cores at {ghz:.2f} GHz nominal; per core and cycle " + ", ".join(f"{k} {v}" for k, v in per.items())
           + " ops (" + ", ".join(f for f in ("amx_int8", "amx_bf16", "avx512_vnni", "avx512_bf16", "avx512f", "avx2")
                                   if f in flags) + ")")
    return peaks, how


def gemm_precision(row: str, what: str) -> str:
    """The precision a row's GEMMs run in (for its share of the peak). The native int8-weight engine
    expands weights to fp32 per layer, so its GEMMs are fp32; the native bf16 row says which it ran."""
    if row.endswith(("int8", "int8-attn", "int8-head", "int8-std")) or row == "ort-qstatic":
        return "int8"
    if row == "ours-native-bf16":
        return "bf16" if "bf16 GEMMs" in what else "fp32"
    if row == "ours-torch-fp32":  # its description names the RoPE's bf16 rounding, not its GEMMs
        return "fp32"
    if "bf16" in row or "bf16" in what:
        return "bf16"
    return "fp32"


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def time_row(row: str, a) -> dict:
    from sapiens2_edge.bench import latency_stats, peak_rss_mb, time_calls

    t0 = time.perf_counter()
    run, size, what = runner_for(row, a)
    load_s = time.perf_counter() - t0
    x = eval_inputs(a)[0]
    stats = latency_stats(time_calls(lambda: run(x), a.warmup, a.runs))
    peak = peak_rss_mb()  # the row's own: before the outputs this script keeps for the fidelity columns
    outs = [run(x) for x in eval_inputs(a)]
    np.save(a.work / f"out-{row}.npy", np.concatenate(outs))
    out = {"row": row, "what": what, "load_s": load_s, **stats, "peak_rss_mb": peak, "size_mb": size / 1e6}
    if row == "torch-fp32":  # counted after timing, so the counter's memory is not in the row's peak
        out["model_gop"] = model_gop(a)
    return out


def serve_row(row: str, a) -> None:
    """A row's process for --interleave: loads the row, then answers the parent's lines on stdin:
    "run" (one call, its seconds printed), "finish" (the outputs saved, the row's record printed)."""
    from sapiens2_edge.bench import peak_rss_mb

    t0 = time.perf_counter()
    run, size, what = runner_for(row, a)
    record = {"row": row, "what": what, "load_s": time.perf_counter() - t0, "size_mb": size / 1e6}
    x = eval_inputs(a)[0]
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            t = time.perf_counter()
            run(x)
            print(time.perf_counter() - t, flush=True)
            continue
        record["peak_rss_mb"] = peak_rss_mb()
        np.save(a.work / f"out-{row}.npy", np.concatenate([run(v) for v in eval_inputs(a)]))
        if row == "torch-fp32":
            record["model_gop"] = model_gop(a)
        print(json.dumps(record), flush=True)
        return


def time_interleaved(rows: list[str], a) -> list[dict]:
    """Every row's calls in turn, each row in its own live process (see --interleave)."""
    from sapiens2_edge.bench import latency_stats

    procs = {}
    for row in rows:
        cmd = [sys.executable, __file__, "--arch", a.arch, "--task", a.task, "--size", f"{a.size[0]}x{a.size[1]}",
               "--work", str(a.work), "--calib", str(a.calib), "--eval", str(a.eval), "--serve", row]
        procs[row] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
        if procs[row].stdout.readline().strip() != "ready":
            raise RuntimeError(f"row {row} did not start (exit {procs[row].wait()})")

    def ask(row: str, what: str) -> str:
        """The row's answer to one line, or "" when its process is gone (killed: out of memory)."""
        try:
            procs[row].stdin.write(what + "\n")
            procs[row].stdin.flush()
        except BrokenPipeError:
            return ""
        return procs[row].stdout.readline().strip()

    def ended(row: str, doing: str) -> str:
        code = procs[row].wait()
        return "out of memory (killed)" if code in (-9, 137) else f"{doing} (exit {code})"

    times = {row: [] for row in rows}
    failed = {}
    for i in range(a.warmup + a.runs):
        live = [r for r in rows if r not in failed]
        for row in live[i % len(live):] + live[:i % len(live)] if live else []:  # rotate who goes first
            time.sleep(0.2)  # the last row's threads stop spinning before this one runs
            answer = ask(row, "run")
            if not answer:
                failed[row] = ended(row, "failed while timed")
            elif i >= a.warmup:
                times[row].append(float(answer))
    results = []
    for row in rows:
        answer = "" if row in failed else ask(row, "finish")
        if not answer:
            results.append({"row": row, "error": failed.get(row) or ended(row, "failed while saving its outputs")})
            continue
        procs[row].wait()
        results.append({**json.loads(answer), **latency_stats(sorted(times[row]))})
    return results


# -- the parent: every row in child processes, then the table -----------------------------------------
def child(mode: str, row: str, a) -> tuple[dict | None, str]:
    cmd = [sys.executable, __file__, "--arch", a.arch, "--task", a.task, "--size", f"{a.size[0]}x{a.size[1]}",
           "--work", str(a.work), "--runs", str(a.runs), "--warmup", str(a.warmup), "--calib", str(a.calib), "--eval", str(a.eval),
           f"--{mode}", row]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        killed = proc.returncode in (-9, 137)
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, "out of memory (killed)" if killed or "MemoryError" in tail else f"failed: {tail[:160]}"
    return (json.loads(proc.stdout.strip().splitlines()[-1]) if mode == "time" else None), ""


def fidelity(row: str, a) -> tuple[float, float | None]:
    ref, got = np.load(a.work / "out-torch-fp32.npy").astype(np.float64), np.load(a.work / f"out-{row}.npy")
    return float(np.linalg.norm(ref - got) / np.linalg.norm(ref)), task_metric(a.task, ref, got, a.size)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="0.1b")
    p.add_argument("--size", default="512x384")
    p.add_argument("--task", default="seg", choices=tuple(METRIC))
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--calib", type=int, default=32, help="calibration samples for the int8 rows")
    p.add_argument("--eval", type=int, default=4, help="inputs for rel L2 and the task's measure")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_cpu_peers"))
    p.add_argument("--out", type=Path, default=None,
                   help="Markdown record to append this run's section to (earlier runs are kept)")
    p.add_argument("--interleave", action="store_true",
                   help="time the rows' calls in turn, every row in its own live process (drift-fair ratios)")
    p.add_argument("--prepare", help=argparse.SUPPRESS)
    p.add_argument("--time", help=argparse.SUPPRESS)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.size = tuple(int(v) for v in a.size.split("x"))
    a.work.mkdir(parents=True, exist_ok=True)
    if a.prepare:
        return prepare(a.prepare, a)
    if a.time:
        print(json.dumps(time_row(a.time, a)))
        return None
    if a.serve:
        return serve_row(a.serve, a)
    rows = [r.strip() for r in a.rows.split(",")]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; expected some of {', '.join(ROWS)}")
    if "torch-fp32" not in rows:
        rows.insert(0, "torch-fp32")
    load = [os.getloadavg()]
    results = []
    for row in rows:
        t0 = time.perf_counter()
        _, err = child("prepare", row, a)
        prep_s = time.perf_counter() - t0
        if err:
            results.append({"row": row, "error": err})
        elif a.interleave:  # timed below, all rows together
            results.append({"row": row})
        else:
            res, err = child("time", row, a)
            results.append(res or {"row": row, "error": err})
        results[-1]["prepare_s"] = prep_s
    if a.interleave:
        ready = [r["row"] for r in results if "error" not in r]
        load = [os.getloadavg()]  # the timed part's load, after the artifacts are made
        timed = {r["row"]: r for r in time_interleaved(ready, a)}
        results = [{**r, **timed.get(r["row"], {})} for r in results]
    for r in results:
        if "error" not in r:
            r["rel_l2"], r["task_metric"] = fidelity(r["row"], a)
        print(r["row"], json.dumps(r), flush=True)
    load.append(os.getloadavg())
    report(results, a, load, " ".join(["python", "benchmarks/bench_cpu_peers.py", *(argv or sys.argv[1:])]))


def report(results: list[dict], a, load, command: str) -> None:
    import openvino
    import torch

    base = next(r["median_s"] for r in results if r["row"] == "torch-fp32" and "median_s" in r)
    gop = next(r["model_gop"] for r in results if r["row"] == "torch-fp32" and "model_gop" in r)
    peaks, how = cpu_peaks()
    lines = [f"# CPU peers: {a.arch} {a.task} at {a.size[0]}x{a.size[1]} (random weights, batch 1)", "",
             f"{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, openvino {openvino.__version__}; load average (1/5/15 min) "
             f"{' / '.join(f'{v:.2f}' for v in load[0])} at the start, "
             f"{' / '.join(f'{v:.2f}' for v in load[1])} at the end."
             + (" Rows interleaved: each row's calls in turn, every row in its own live process." if a.interleave
                else ""), "", f"`{command}`", "",
             "| row | runs as | median (s) | p90 (s) | speed-up vs torch fp32 | peak RSS (MB) | size (MB) | "
             f"rel L2 vs torch fp32 | {METRIC[a.task] or 'task measure'} | GOP/s | share of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['error']} | - | - | - | - | - | - | - | - | - |")
            continue
        prec = gemm_precision(r["row"], r["what"])
        rate = gop / r["median_s"]
        lines.append(f"| {r['row']} | {r['what']} | {r['median_s']:.3f} | {r['p90_s']:.3f} | "
                     f"{base / r['median_s']:.2f}x | {r['peak_rss_mb']:.0f} | {r['size_mb']:.1f} | "
                     f"{r['rel_l2']:.2e} | {formatted(a.task, r['task_metric'])} | {rate:.0f} | "
                     f"{100 * rate / peaks[prec]:.1f} % of {prec} |")
    lines += ["", f"One forward: {gop:.0f} GOP (torch's FLOP counter). Peaks: "
              + ", ".join(f"{k} {v / 1e3:.2f} TOP/s" for k, v in peaks.items()) + f" ({how})."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        earlier = a.out.read_text() if a.out.exists() else ""
        a.out.write_text(earlier + ("\n" if earlier else "") + text)


if __name__ == "__main__":
    main()
