"""A task head's eager CPU forward alone: its layers one by one against the lean path of
``sapiens2_edge/models/lean_head.py``, in float32 or under bf16 autocast; time, peak memory over the
input and the output's rel L2 against the float32 head.

    python benchmarks/head_forward.py [--arch 0.4b] [--task seg] [--size 1024x768] [--precision bf16]
        [--weights-bf16] [--calls 4]

Each form runs in its own process (the peak is the process's own, reset before each call where Linux
allows it); Linux only (it reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_peak_mib() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return fields["VmRSS"], fields["VmHWM"]


def _dense(out):
    """The map a head returns (a pointmap head's first output; its scale is a few numbers)."""
    return out[0] if isinstance(out, tuple) else out


def run_form(a, form: str) -> dict:
    import torch

    from sapiens2_edge.heap import release_freed_heap, reuse_freed_pages
    from sapiens2_edge.models.arch import default_head_spec, get_preset
    from sapiens2_edge.models.heads import build_head
    from sapiens2_edge.models.lean_head import layer_by_layer

    torch.manual_seed(0)
    arch = get_preset(a.arch)
    h, w = a.size
    spec = default_head_spec(a.task, arch, input_size=a.size)
    head = build_head(spec).eval()
    x = torch.randn(1, spec.in_channels, h // 16, w // 16)
    bf16 = a.precision == "bf16"
    with torch.inference_mode():
        ref = _dense(head(x)).float()
        if a.weights_bf16:
            for m in head.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    m.to(torch.bfloat16)
        times, peaks = [], []
        with reuse_freed_pages(release=True):
            for _ in range(a.calls):
                release_freed_heap()
                with contextlib.suppress(OSError):
                    Path("/proc/self/clear_refs").write_text("5")
                before, _ = _rss_peak_mib()
                start = time.perf_counter()
                with (torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False) if bf16
                      else contextlib.nullcontext()), (layer_by_layer() if form == "layers" else contextlib.nullcontext()):
                    out = head(x)
                times.append(time.perf_counter() - start)
                peaks.append(_rss_peak_mib()[1] - before)
                got = _dense(out).float()
                del out
    warm = sorted(times[1:]) or times
    return {"form": form, "median_s": warm[len(warm) // 2], "peak_mib": max(peaks[1:] or peaks),
            "rel_l2": float((got - ref).norm() / ref.norm())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="0.4b")
    p.add_argument("--task", default="seg", choices=("seg", "pose", "normal", "albedo", "pointmap"))
    p.add_argument("--size", default="1024x768", help="network input HxW (the feature map is a 16th of it)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--weights-bf16", action="store_true", help="convolution weights stored in bf16 (bf16 only)")
    p.add_argument("--calls", type=int, default=4, help="calls per form, the first a warm-up")
    p.add_argument("--form", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.size = tuple(int(v) for v in a.size.split("x"))
    if a.form:
        print(json.dumps(run_form(a, a.form)))
        return
    print(f"{a.arch} {a.task} head, input {a.size[0]}x{a.size[1]}, {a.precision}"
          f"{' (weights stored in bf16)' if a.weights_bf16 else ''}, {a.calls} calls (first a warm-up)")
    print("| form | median (s) | peak over its input (MiB) | rel L2 vs the fp32 head |")
    print("|---|---|---|---|")
    for form in ("layers", "lean"):
        args = list(argv if argv is not None else sys.argv[1:])
        proc = subprocess.run([sys.executable, __file__, *args, "--form", form], capture_output=True, text=True,
                              check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {form} | {r['median_s']:.3f} | {r['peak_mib']} | {r['rel_l2']:.2e} |")


if __name__ == "__main__":
    main()
