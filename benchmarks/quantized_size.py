"""File sizes of quantized checkpoints against the fp32 file, for a real preset (random weights).

Reads the two safetensors headers and sums the bytes of the backbone block tensors (weights,
scales, biases, norms) and of the whole file.

    python benchmarks/quantized_size.py --arch 0.4b --task seg
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import date
from pathlib import Path

import sapiens2_edge as s2e
from sapiens2_edge.models.checkpoint import read_header, write_tensors
from sapiens2_edge.models.model import build_model
from sapiens2_edge.quantization import save_quantized

RESULTS = Path(__file__).parent / "results"


def block_bytes(path: Path) -> int:
    return sum(t.nbytes for n, t in read_header(path).tensors.items() if ".blocks." in n or n.startswith("blocks."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="0.4b")
    ap.add_argument("--task", default="seg")
    ap.add_argument("--schemes", default="int8-weight,int8,fp8,fp16")
    args = ap.parse_args()
    model = build_model(args.arch, args.task)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = write_tensors(model.official_state_dict(), Path(tmp) / "fp32.safetensors")
        base_file, base_blocks = fp32.stat().st_size, block_bytes(fp32)
        for scheme in args.schemes.split(","):
            q, _ = s2e.quantize(model, scheme, progress=False)
            path = save_quantized(q, Path(tmp) / f"{scheme}.safetensors")
            rows.append((scheme, path.stat().st_size / base_file, block_bytes(path) / base_blocks, path.stat().st_size))
            del q
    lines = [f"\n## {date.today().isoformat()}: {args.arch} {args.task}, fp32 file {base_file / 1e6:.0f} MB\n",
             f"`python benchmarks/quantized_size.py --arch {args.arch} --task {args.task}`\n",
             "| scheme | file vs fp32 file | backbone block tensors vs fp32 | file (MB) |", "|---|---|---|---|"]
    lines += [f"| {s} | {f:.3f}x | {b:.3f}x | {n / 1e6:.0f} |" for s, f, b, n in rows]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "quantized_size.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
