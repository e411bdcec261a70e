"""A seeded mutation fuzzer over tiny artifacts of each format (native, onnx, torch, openvino).

Each case copies one clean artifact, applies one mutation - a manifest JSON mutation, a byte flip
or truncation of a file (with or without its manifest entry rewritten to match, as an attacker
would), or a path trick (``..``, absolute paths, symbolic links, a directory for a file) - then
opens it with ``Predictor``, runs one image and ``verify_artifact``. Every outcome must be success or
a typed error of ``sapiens2_edge.errors``; anything else is counted as untyped and fails the run.

    python scripts/fuzz_artifacts.py --cases 5000 --seed 0 --work /tmp/fuzz

prints one JSON line of counts (per outcome, per format, per mutation kind) and exits 1 when any
case failed untyped (the first ones are listed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMATS = ("native", "onnx", "torch", "openvino")
JUNK = [None, True, False, -1, 0, 1, 2.5, -5, 10**12, "", "x", "../x", "/etc/passwd", [], [1], [1, 2, 3], {},
        {"a": 1}, [128, 96], [100, 96], [0, 0], [True, False], "NaN", 1e308, [[[[1]]]], "fp32", "seg", "native"]


def build_bases(work: Path, formats) -> dict[str, Path]:
    """Tiny seg artifacts (a 2-block backbone, so a build takes seconds) of each format."""
    from sapiens2_edge.exporters import export
    from sapiens2_edge.models.arch import ArchSpec
    from sapiens2_edge.models.model import build_model
    from tests.fixtures.tiny import HEADS, INPUT

    model = build_model(ArchSpec(64, 2, 4, (4, 4), 256, name="micro"), head=HEADS["seg"], seed=0)
    bases = {}
    for fmt in formats:
        root = work / "base" / fmt
        if not (root / "manifest.json").is_file():
            export(model, root, format=fmt, input_size=INPUT, max_batch=2, overwrite=True, verify=False)
        bases[fmt] = root
    return bases


def rehash(root: Path, manifest: dict, rel: str) -> None:
    p = root / rel
    if rel in manifest.get("files", {}) and p.is_file() and not p.is_symlink():
        data = p.read_bytes()
        manifest["files"][rel].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def mutate_json(rng: random.Random, value, depth: int = 0):
    """One random change somewhere in a JSON value."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        action = rng.random()
        if action < 0.15:
            del value[key]
        elif action < 0.3:
            value[key] = rng.choice(JUNK)
        elif action < 0.35:
            nest = 1
            for _ in range(rng.choice([70, 500, 5000])):
                nest = [nest]
            value[key] = nest
        else:
            value[key] = mutate_json(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        if rng.random() < 0.2:
            del value[i]
        else:
            value[i] = mutate_json(rng, value[i], depth + 1)
        return value
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, -value, 0, value * 1000, float(value), str(value), None, True])
    if isinstance(value, float):
        return rng.choice([-value, 0.0, 1e300, float("inf"), None, "x"])
    if isinstance(value, str):
        return rng.choice(["", value + "x", value.upper(), "../" + value, "/" + value, 1, None, value[:-1]])
    return rng.choice(JUNK)


def apply(rng: random.Random, root: Path, outside: Path) -> str:
    """Mutate the artifact copy at ``root``; returns the mutation's kind."""
    mpath = root / "manifest.json"
    manifest = json.loads(mpath.read_text())
    files = [r for r in manifest["files"]]
    kind = rng.choice(["json", "json", "json", "files", "flip", "flip_rehash", "truncate", "truncate_rehash",
                       "path", "symlink", "manifest_bytes", "reference"])
    if kind == "json":
        manifest = mutate_json(rng, manifest)
    elif kind == "files":
        manifest["files"] = mutate_json(rng, manifest["files"])
    elif kind in ("flip", "flip_rehash", "truncate", "truncate_rehash", "reference"):
        rel = "reference.npz" if kind == "reference" else rng.choice(files)
        p = root / rel
        data = bytearray(p.read_bytes())
        if kind.startswith("truncate"):
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.choice([1, 1, 4, 64])):
                if data:
                    pos = rng.randrange(min(len(data), 4096) if rng.random() < 0.6 else len(data))
                    data[pos] = rng.randrange(256)
        p.write_bytes(bytes(data))
        if kind != "flip" and kind != "truncate":
            rehash(root, manifest, rel)
    elif kind == "path":
        rel = rng.choice(files)
        info = manifest["files"].pop(rel)
        trick = rng.choice(["dotdot", "abs", "abs_passwd", "dir", "backslash", "dot"])
        if trick == "dotdot":
            shutil.copy(root / rel, outside / Path(rel).name)
            manifest["files"][f"../{outside.name}/{Path(rel).name}"] = info
        elif trick == "abs":
            shutil.copy(root / rel, outside / Path(rel).name)
            manifest["files"][str(outside / Path(rel).name)] = info
        elif trick == "abs_passwd":
            manifest["files"]["/etc/passwd"] = info
        elif trick == "dir":
            (root / rel).unlink()
            (root / rel).mkdir()
            manifest["files"][rel] = info
        elif trick == "backslash":
            manifest["files"][rel.replace(".", "\\.")] = info
        else:
            manifest["files"]["./" + rel] = info
    elif kind == "symlink":
        rel = rng.choice([*files, "manifest.json"])
        target = outside / ("copy-" + Path(rel).name)
        shutil.copy(root / rel, target)
        if rel == "manifest.json":
            target.write_text(json.dumps(manifest))
        (root / rel).unlink()
        os.symlink(target, root / rel)
        if rel == "manifest.json":
            return kind
    elif kind == "manifest_bytes":
        data = bytearray(mpath.read_bytes())
        for _ in range(rng.choice([1, 3])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        mpath.write_bytes(bytes(data))
        return kind
    try:
        text = json.dumps(manifest)
    except (ValueError, RecursionError):
        text = "[" * 100000
    mpath.write_text(text)
    return kind


def run_case(root: Path, image: np.ndarray) -> str:
    import sapiens2_edge as s2e
    from sapiens2_edge.errors import Sapiens2EdgeError
    from sapiens2_edge.runtime.verify import verify_artifact

    try:
        pred = s2e.Predictor(root, device="cpu")
        pred(image)
        verify_artifact(root)
        return "ok"
    except Sapiens2EdgeError as e:
        return type(e).__name__
    except Exception as e:  # noqa: BLE001 - what this fuzzer looks for
        return f"UNTYPED {type(e).__name__}: {str(e)[:200]} | {traceback.format_exc(limit=-3)[-600:]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index (to replay cases of a longer run)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--formats", default=",".join(FORMATS))
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    formats = args.formats.split(",")
    t0 = time.time()
    bases = build_bases(args.work, formats)
    built = time.time() - t0
    image = np.random.default_rng(0).integers(0, 255, (150, 110, 3), dtype=np.uint8)
    outcomes, per_format, per_kind, untyped = Counter(), Counter(), Counter(), []
    for i in range(args.start, args.start + args.cases):
        rng = random.Random(args.seed * 1_000_003 + i)
        fmt = formats[i % len(formats)]
        case = args.work / "case" / "artifact"
        outside = args.work / "case" / "outside"
        shutil.rmtree(case.parent, ignore_errors=True)
        shutil.copytree(bases[fmt], case, symlinks=True)
        outside.mkdir()
        kind = apply(rng, case, outside)
        result = run_case(case, image)
        key = "untyped" if result.startswith("UNTYPED") else result
        outcomes[key] += 1
        per_format[f"{fmt}:{'ok' if key == 'ok' else 'error' if key != 'untyped' else 'untyped'}"] += 1
        per_kind[kind] += 1
        if key == "untyped":
            untyped.append(f"case {i} ({fmt}, {kind}): {result}")
    report = {"cases": args.cases, "seed": args.seed, "build_s": round(built, 1),
              "fuzz_s": round(time.time() - t0 - built, 1), "outcomes": dict(outcomes.most_common()),
              "per_format": dict(sorted(per_format.items())), "per_kind": dict(sorted(per_kind.items())),
              "untyped_first": untyped[:10]}
    print(json.dumps(report))
    return 1 if untyped else 0


if __name__ == "__main__":
    sys.exit(main())
