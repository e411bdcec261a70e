"""``export(model, out_dir, format=...)``: one checkpoint in, an artifact directory per device out.

Every export is verified against the torch model on fixed sample inputs before the artifact is
put in place; the numbers go into the manifest, and a failed verification fails the export.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError, ExportError
from .manifest import FORMATS, MANIFEST, Manifest, read_manifest, write_artifact

# Relative L2 a verification may reach per precision before the export is refused. Quantized
# artifacts are compared with the torch QuantizedModel of the same recipe: weight-only is as exact
# as fp32; with quantized activations a 1e-6 input change already flips roundings that grow
# through the blocks (~1e-2 on the random tiny models), so the end-to-end bound is looser and the
# per-layer exactness is tested separately (tests/test_export_quantized.py).
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8-weight": 1e-3, "int8": 5e-2, "fp8": 5e-2, "mixed": 5e-2}

__all__ = ["export", "verify_artifact", "FORMATS", "MANIFEST", "Manifest", "read_manifest", "verification_inputs",
           "TOLERANCE", "ExportOptions", "EXPORTERS"]

# format -> module (under sapiens2_edge.exporters) that implements it. Each module provides
#   write(model, out_dir: Path, opts: ExportOptions) -> {relative path: role}   (one role "model")
#   verifier(out_dir: Path, files: dict[str, str]) -> Callable[[np.ndarray], tuple[np.ndarray, ...]] | None
# ``verifier`` returns the runtime that checks the fresh export on this machine, or None when the
# format cannot run here (then ``write`` must have checked what it can and raised on failure).
EXPORTERS = {"onnx": "onnx_export", "openvino": "openvino_export", "coreml": "coreml_export", "torch": "torch_export", "native": "native_export"}


@dataclass
class ExportOptions:
    """What every exporter gets besides the model and the directory."""

    input_size: tuple[int, int]
    max_batch: int = 8
    opset: int = 18
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific keyword options of export()
    notes: dict[str, Any] = field(default_factory=dict)  # what write() checked/decided; -> manifest.options


def verification_inputs(input_size: Sequence[int], batch: int = 2, seed: int = 0) -> np.ndarray:
    """Normalised sample inputs: a smooth image-like pattern plus noise, reproducible by seed."""
    rng = np.random.default_rng(seed)
    h, w = input_size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) + np.cos(4 * yy - c) for c in range(3)])
    return (base[None] + 0.5 * rng.standard_normal((batch, 3, h, w))).astype(np.float32)


def torch_outputs(model, x: np.ndarray) -> tuple[np.ndarray, ...]:
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return tuple(o.float().numpy() for o in (out if isinstance(out, tuple) else (out,)))


def compare(ref: Sequence[np.ndarray], test: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    per = {}
    for name, r, t in zip(names, ref, test, strict=True):
        r64, t64 = r.astype(np.float64), np.asarray(t, np.float64)
        per[name] = {"rel_l2": float(np.linalg.norm(r64 - t64) / max(np.linalg.norm(r64), 1e-30)),
                     "max_abs": float(np.abs(r64 - t64).max())}
    return {"outputs": per, "rel_l2": max(v["rel_l2"] for v in per.values())}


def export(model: Any, out_dir: str | os.PathLike, format: str = "onnx", *, precision: str | None = None,
           input_size: Sequence[int] | None = None, max_batch: int = 8, opset: int = 18, verify: bool = True,
           tolerance: float | None = None, overwrite: bool = False, **options: Any) -> Path:
    """Export ``model`` (a loaded model or anything ``load_model`` accepts) to ``out_dir``.

    ``input_size`` (H, W) is fixed per artifact (default: the model's); the batch is dynamic up to
    ``max_batch``. Format-specific ``options`` go to the exporter (``ExportOptions.extra``).
    ``precision`` defaults to fp32, or for a QuantizedModel to what its scheme means for the format.
    With ``float_model=`` (the float model a QuantizedModel came from) the artifact's task fidelity
    against it goes into the manifest next to the torch QuantizedModel's, on ``fidelity_data=``
    (images / folder / tensors; default the verification inputs), pose restricted to
    ``fidelity_keypoints=``; ``report=`` (its QuantReport) adds the report's fidelity.
    Returns the artifact directory.
    """
    from ..loading import load_model
    from ..models.model import Sapiens2Model
    from ..quantization.precision import export_precision
    from ..tasks import get_pipeline

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if format not in EXPORTERS:
        raise ConfigError(f"export format {format!r} is not available in this version; "
                          f"use one of {', '.join(EXPORTERS)}")
    exporter = importlib.import_module(f".{EXPORTERS[format]}", __name__)
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
    if not isinstance(model, Sapiens2Model):
        model = load_model(model)
    precision = export_precision(model, format, precision)
    fid_opts = {k: options.pop(k) for k in ("float_model", "fidelity_data", "fidelity_keypoints", "report")
                if k in options}
    size = tuple(int(v) for v in (input_size or model.input_size))
    model.check_input(_shape_probe(size))
    from .onnx_export import output_names

    names = output_names(model.task)
    manifest = Manifest(
        format=format, task=model.task, arch=model.arch.to_dict(),
        head=model.head_spec.to_dict() if model.head_spec else None, input_size=list(size), max_batch=max_batch,
        precision=precision, rope_mode=model.rope_mode,
        preprocessing=get_pipeline(model.task, input_size=size).config() if model.task else {},
        outputs=names, options={"opset": opset, **{k: _jsonable(v) for k, v in options.items()}})
    opts = ExportOptions(input_size=size, max_batch=max_batch, opset=opset, precision=precision, extra=dict(options))
    limit = TOLERANCE.get(precision, 1e-3) if tolerance is None else tolerance
    if hasattr(model, "recipe_dict"):
        manifest.quantization = {"scheme": model.scheme, "recipe": model.recipe_dict()}
        if getattr(fid_opts.get("report"), "fidelity", None):
            manifest.quantization["report_fidelity"] = fid_opts["report"].fidelity

    def build(tmp: Path) -> dict[str, str]:
        files = exporter.write(model, tmp, opts)
        quant_notes = opts.notes.pop("quantization", None)
        if quant_notes and manifest.quantization is not None:
            manifest.quantization["export"] = quant_notes
        manifest.options.update(opts.notes)
        x = verification_inputs(size, batch=min(2, max_batch))
        ref = torch_outputs(model, x)
        np.savez_compressed(tmp / REFERENCE, **{n: fingerprint(r) for n, r in zip(names, ref, strict=True)})
        files[REFERENCE] = "reference"
        runner = exporter.verifier(tmp, files) if verify else None
        if runner is not None:
            got = runner(x)
            result = compare(ref, got, names)
            kind = f"torch {model.scheme} QuantizedModel (same recipe)" if hasattr(model, "recipe_dict") else "torch fp32"
            result.update({"reference": f"{kind} eager, RoPE {model.rope_mode}", "tolerance": limit,
                           "inputs": f"verification_inputs({list(size)}, batch={len(x)}, seed=0)"})
            if fid_opts.get("float_model") is not None:
                result["vs_float"] = float_fidelity(model, runner, size, max_batch, **fid_opts)
            manifest.fidelity = result
            if result["rel_l2"] > limit:
                raise ExportError(f"{format} {precision} export does not match torch: relative L2 "
                                  f"{result['rel_l2']:.3g} > {limit:g} ({result['outputs']})")
        return files

    return write_artifact(out_dir, manifest, build, overwrite=overwrite)


def float_fidelity(model, runner, size, max_batch: int, float_model, fidelity_data=None, fidelity_keypoints=None,
                   report=None) -> dict[str, Any]:
    """Task fidelity against the float model of the artifact and of the torch QuantizedModel, on
    the same inputs (the quantization report's metrics, see quantize.fidelity)."""
    import torch

    from ..quantization.evaluate import as_batches
    from ..quantization.fidelity import task_fidelity

    if fidelity_data is None:
        data = [torch.from_numpy(verification_inputs(size, batch=1, seed=s)) for s in range(4)]
        where = f"verification_inputs({list(size)}, seed=0..3)"
    else:
        data, where = fidelity_data, "fidelity_data"
    batches = as_batches(data, model.task, size, samples=64, batch_size=max_batch)
    parts: dict[str, list] = {"float": [], "torch": [], "artifact": []}
    for b in batches:
        x = b.numpy()
        parts["float"].append(torch_outputs(float_model, x))
        parts["torch"].append(torch_outputs(model, x))
        parts["artifact"].append(tuple(np.asarray(o) for o in runner(x)))
    out = {k: tuple(np.concatenate(p) for p in zip(*v, strict=True)) for k, v in parts.items()}
    kp = fidelity_keypoints
    return {"artifact": task_fidelity(model.task, out["float"], out["artifact"], size, keypoints=kp),
            "torch_quantized": task_fidelity(model.task, out["float"], out["torch"], size, keypoints=kp),
            "inputs": where, "samples": batches.num_samples}


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


REFERENCE = "reference.npz"


def fingerprint(output: np.ndarray) -> np.ndarray:
    """A small, fixed subsample of a reference output (every s-th pixel, at most ~64 per side),
    stored with the artifact so ``verify`` can re-check numerics without the torch model."""
    a = np.asarray(output, np.float32)
    if a.ndim == 4:
        s = max(1, a.shape[2] // 64, a.shape[3] // 64)
        a = a[:, :, ::s, ::s]
    return np.ascontiguousarray(a)


def verify_artifact(root, backend: str = "auto", tolerance: float | None = None) -> dict[str, Any]:
    """Re-check an artifact: checksums (via the manifest) and numerics on the sample inputs
    against the torch reference outputs stored at export time."""
    from ..runtime.artifact import open_artifact

    manifest, runner, _ = open_artifact(root, backend)
    if manifest.file_for("reference") is None:
        raise ArtifactError(f"{root} carries no reference outputs ({REFERENCE}); re-export it to verify numerics")
    stored = np.load(Path(root) / manifest.file_for("reference"))
    x = verification_inputs(manifest.input_size, batch=min(2, manifest.max_batch))
    got = [fingerprint(o) for o in runner(x)]
    result = compare([stored[n] for n in manifest.outputs], got, manifest.outputs)
    if tolerance is None:
        tolerance = manifest.fidelity.get("tolerance", TOLERANCE.get(manifest.precision, 1e-3))
    limit = tolerance
    result.update({"backend": runner.name, "tolerance": limit, "passed": result["rel_l2"] <= limit})
    return result


def files_role(files: dict[str, str], role: str) -> str:
    return next(k for k, v in files.items() if v == role)


def _shape_probe(size):
    """A one-image zero input for the model's input-size checks (no forward pass)."""
    import torch

    return torch.zeros(1, 3, *size)
