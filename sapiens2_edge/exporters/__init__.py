"""``export(model, out_dir, format=...)``: one checkpoint in, an artifact directory per device out.

Every export is verified against the torch model on fixed sample inputs before the artifact is
put in place; the numbers go into the manifest, and a failed verification fails the export. What
each format accepts comes from :data:`sapiens2_edge.artifact.FORMATS` and is checked first.
"""

from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..artifact import (
    FIDELITY_OPTIONS,
    FORMATS,
    MANIFEST,
    REFERENCE,
    TOLERANCE,
    Manifest,
    check_destination,
    check_export_request,
    compare,
    fingerprint,
    read_manifest,
    reference_inputs,
    replace_problem,
    save_reference,
    verification_inputs,
    write_artifact,
)
from ..errors import ConfigError, ExportError
from ..runtime.verify import verify_artifact
from ..spec import DETECTION_TASK, output_names
from .bundle import BUNDLED_DETECTOR, check_bundled_detector, copy_detector
from .fidelity import check_runner, export_tolerance, float_fidelity, quantized_bound, shared_forwards, torch_outputs

__all__ = ["export", "verify_artifact", "FORMATS", "MANIFEST", "REFERENCE", "Manifest", "read_manifest",
           "verification_inputs", "TOLERANCE", "ExportOptions", "EXPORTERS", "compare", "fingerprint",
           "torch_outputs", "detector_checkpoint"]

# format -> module (under sapiens2_edge.exporters) that implements it. Each module provides
#   write(model, out_dir: Path, opts: ExportOptions) -> {relative path: role}   (one role "model")
#   verifier(out_dir: Path, files: dict[str, str]) -> Callable[[np.ndarray], tuple[np.ndarray, ...]] | None
#   and optionally resolve_precision(model, precision: str | None) -> str
#   and optionally rope_mode(model, precision: str) -> str: the RoPE mode the artifact computes (and is
#   verified against torch in); the model runs in it for the export and gets its own mode back after
# ``verifier`` returns the runtime that checks the fresh export on this machine, or None when the
# format cannot run here (then ``write`` must have checked what it can and raised on failure).
EXPORTERS = {"onnx": "onnx_export", "openvino": "openvino_export", "coreml": "coreml_export", "torch": "torch_export",
             "native": "native_export", "litert": "litert_export", "ort": "ort_export",
             "executorch": "executorch_export"}


@dataclass
class ExportOptions:
    """What every exporter gets besides the model and the directory."""

    input_size: tuple[int, int]
    max_batch: int = 8
    opset: int = 18
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # the format's keyword options (FORMATS[...].options)
    notes: dict[str, Any] = field(default_factory=dict)  # what write() checked/decided; -> manifest.options
    float_model: Any = None  # the float model a QuantizedModel came from, when export was given it


def export(model: Any, out_dir: str | os.PathLike, format: str = "onnx", *, scheme: Any = None,
           calibration: Any = None, quantize_options: Mapping[str, Any] | None = None, precision: str | None = None,
           input_size: Sequence[int] | None = None, max_batch: int = 8, verify: bool = True,
           tolerance: float | None = None, overwrite: bool = False, detector: str | os.PathLike | None = None,
           **options: Any) -> Path:
    """Export ``model`` (a loaded model or anything ``load_model`` accepts) to ``out_dir``.

    ``input_size`` (H, W) is fixed per artifact (default: the model's); the batch is dynamic up to
    ``max_batch``. ``options`` are the format's own (``FORMATS[format].options``, e.g. ``opset``
    for onnx/openvino) and the fidelity options below; any other name is a ConfigError.
    ``scheme`` (a name such as ``"int8"`` or a scheme/recipe object of
    :mod:`sapiens2_edge.quantization`) quantizes a float model first, with ``calibration`` and
    ``quantize_options`` (keyword options of ``quantize``), and records its fidelity against the
    float model. ``precision`` defaults to the format's for a float model, or for a QuantizedModel
    to what its scheme means for the format.
    With ``float_model=`` (the float model a QuantizedModel came from) the artifact's task fidelity
    against it goes into the manifest next to the torch QuantizedModel's, on ``fidelity_data=``
    (images / folder / tensors; default the verification inputs), pose restricted to
    ``fidelity_keypoints=``; ``report=`` (its QuantReport) adds the report's fidelity.

    The person detector (an :class:`~sapiens2_edge.detection.RTMDet`, or its safetensors file)
    exports the same way to onnx, openvino or torch, in float (task ``"detection"``). A pose
    export takes ``detector=`` (a detector artifact directory): it is verified and copied into the
    pose artifact's ``detector/`` folder, so ``Predictor(pose_dir)`` runs detection and pose.
    Returns the artifact directory.
    """
    from ..detection.export import as_graph

    model = as_graph(detector_checkpoint(model))
    if getattr(model, "task", None) == DETECTION_TASK:
        _check_detector_request(format, scheme, precision, detector)
    fmt = check_export_request(format, options, precision, _scheme_name(scheme))
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
    if scheme is None and (calibration is not None or quantize_options):
        raise ConfigError("calibration= and quantize_options= configure the quantization that scheme= asks for; "
                          "pass scheme= too (e.g. scheme='int8'), or quantize the model first with s2e.quantize")
    if scheme is not None and precision is not None:
        raise ConfigError(f"pass scheme= (quantize, then export as that scheme) or precision=, not both "
                          f"(got scheme={_scheme_name(scheme)!r}, precision={precision!r})")
    _check_int8_head(fmt, getattr(scheme, "head", None) or (quantize_options or {}).get("head"))
    check_destination(out_dir, overwrite, replace_problem)  # before any work; again under the lock at the end
    from ..loading import load_model
    from ..models.model import Sapiens2Model
    from ..quantization.precision import export_precision, scheme_of

    exporter = importlib.import_module(f".{EXPORTERS[format]}", __name__)
    if not isinstance(model, Sapiens2Model) and getattr(model, "task", None) != DETECTION_TASK:
        model = load_model(model)
    bundled = check_bundled_detector(detector, model.task) if detector is not None else None
    if scheme is not None:
        model, options = _quantize_first(model, scheme, calibration, input_size, quantize_options, options)
    _check_int8_head(fmt, getattr(getattr(model, "recipe", None), "head", None))
    precision = export_precision(model, format, precision if precision is not None or scheme_of(model)
                                 else fmt.default_precision)
    fid_opts = {k: options.pop(k) for k in FIDELITY_OPTIONS if k in options}
    format_options = {**fmt.options, **options}
    size = tuple(int(v) for v in (input_size or model.input_size))
    model.check_input(_shape_probe(size))
    names = list(output_names(model.task))
    rope = model.rope_mode  # None for a model without RoPE (the person detector)
    if rope is not None:
        rope = getattr(exporter, "rope_mode", lambda m, p: m.rope_mode)(model, precision)
    with _rope_mode(model, rope) as official:
        return _export(model, exporter, fmt, format, out_dir, size, names, precision, max_batch, format_options,
                       fid_opts, tolerance, verify, overwrite, official, bundled)


def _check_int8_head(fmt, head: str | None) -> None:
    if head == "int8" and not fmt.int8_head:
        takes = ", ".join(f.name for f in FORMATS.values() if f.int8_head)
        raise ConfigError(f"the {fmt.name} format has no int8 head (recipe head='int8': the head's convolutions in int8 "
                          f"with calibrated inputs); export it to {takes}, or quantize with head='float'")


def _export(model, exporter, fmt, format, out_dir, size, names, precision, max_batch, format_options, fid_opts,
            tolerance, verify, overwrite, official, bundled) -> Path:
    from .._version import __version__
    from ..tasks import get_pipeline

    manifest = Manifest(
        format=format, task=model.task, arch=model.arch.to_dict(),
        head=model.head_spec.to_dict() if model.head_spec else None, input_size=list(size), max_batch=max_batch,
        precision=precision, rope_mode=model.rope_mode,
        preprocessing=_preprocessing(model, size, get_pipeline),
        outputs=names, options={k: _jsonable(v) for k, v in format_options.items()}, sdk_version=__version__)
    opts = ExportOptions(input_size=size, max_batch=max_batch, opset=format_options.get("opset", 18),
                         precision=precision, extra=format_options, float_model=fid_opts.get("float_model"))
    if not getattr(model, "pretrained", True):  # random weights: the runtime marks every overlay as noise
        manifest.options["random_weights"] = True
    limit = export_tolerance(model, precision, getattr(exporter, "tolerance_for", None)) if tolerance is None \
        else tolerance
    if hasattr(model, "recipe_dict"):
        manifest.quantization = {"scheme": model.scheme, "recipe": model.recipe_dict()}
        if getattr(fid_opts.get("report"), "fidelity", None):
            manifest.quantization["report_fidelity"] = fid_opts["report"].fidelity

    def build(tmp: Path) -> dict[str, str]:
        files = exporter.write(model, tmp, opts)
        strays = [f for f in files if not fmt.writes(f)]
        if strays:
            raise ExportError(f"the {format} exporter wrote {strays}, which FORMATS[{format!r}].files does not list "
                              f"({', '.join(fmt.files)})")
        quant_notes = opts.notes.pop("quantization", None)
        if quant_notes and manifest.quantization is not None:
            manifest.quantization["export"] = quant_notes
        manifest.options.update(opts.notes)
        if bundled is not None:
            files.update(copy_detector(bundled, tmp))
            manifest.options["detector"] = BUNDLED_DETECTOR
        x = reference_inputs(size, max_batch)
        with getattr(exporter, "reference_form", _as_is)(model) as form:
            ref = torch_outputs(model, x)
        files[save_reference(tmp, names, ref)] = "reference"
        runner = exporter.verifier(tmp, files) if verify else None
        if runner is not None:
            result = check_runner(model, runner, x, ref, names, limit, form)
            bound = limit
            if tolerance is None:  # a caller's own tolerance is kept as given
                with getattr(exporter, "reference_form", _as_is)(model):
                    bound, allowance = quantized_bound(model, x, ref, names, limit, result["rel_l2"])
                result.update(allowance, tolerance=bound)
            if fid_opts.get("float_model") is not None:
                result["vs_float"] = float_fidelity(model, runner, size, max_batch, **fid_opts)
            if official is not None:  # how far this RoPE mode is from the model's own (torch against torch)
                with _rope_mode(model, official):
                    result["vs_rope_" + official] = compare(torch_outputs(model, x), ref, names)["rel_l2"]
            manifest.fidelity = result
            if result["rel_l2"] > bound:
                moved = (f"; the torch model itself moves by {result['rounding_sensitivity']:.3g} under a 1e-6 input "
                         "change" if "rounding_sensitivity" in result else "")
                raise ExportError(f"{format} {precision} export does not match torch: relative L2 "
                                  f"{result['rel_l2']:.3g} > {bound:g}{moved} ({result['outputs']})")
        return files

    with shared_forwards():
        return write_artifact(out_dir, manifest, build, overwrite=overwrite)


@contextmanager
def _as_is(model):
    """The torch model an artifact is checked against, unless its exporter says otherwise: itself."""
    yield None


@contextmanager
def _rope_mode(model, mode: str):
    """Run ``model`` with RoPE ``mode`` inside the block; yields its own mode when that differs, else None."""
    own = model.rope_mode
    if mode == own:
        yield None
        return
    model.set_rope_mode(mode)
    try:
        yield own
    finally:
        model.set_rope_mode(own)


def _preprocessing(model, size, get_pipeline) -> dict:
    if model.task == DETECTION_TASK:
        return model.preprocessing(size)
    return get_pipeline(model.task, input_size=size).config() if model.task else {}


def detector_checkpoint(model: Any) -> Any:
    """A detector safetensors file (``convert``'s, marked in its metadata) loaded as RTMDet-m;
    anything else unchanged."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).endswith(".safetensors"):
        return model
    from ..detection.config import DETECTOR_METADATA_KEY
    from ..models.safetensors_header import read_header

    if not os.path.isfile(model) or DETECTOR_METADATA_KEY not in (read_header(model).metadata or {}):
        return model
    from ..detection.checkpoint import load_detector

    return load_detector(model)


def _check_detector_request(format: str, scheme: Any, precision: str | None, detector: Any) -> None:
    from ..detection.export import INT8_REFUSAL, PRECISIONS

    if format not in PRECISIONS:
        raise ConfigError(f"the person detector exports to {', '.join(PRECISIONS)}, not {format!r} (coreml and "
                          "native carry Sapiens2 models only)")
    if scheme is not None:
        raise ConfigError(f"scheme={_scheme_name(scheme)!r}: {INT8_REFUSAL}")
    if precision is not None and precision not in PRECISIONS[format]:
        raise ConfigError(f"a {format} detector artifact has precision {' or '.join(PRECISIONS[format])}, got "
                          f"precision={precision!r}" + (f"; {INT8_REFUSAL}" if "int8" in precision else ""))
    if detector is not None:
        raise ConfigError("detector= names the person detector a pose artifact runs first; this export is the "
                          "detector itself (drop detector=)")


def _scheme_name(scheme: Any) -> str | None:
    """The scheme name of ``scheme=``: the string itself, or a scheme/recipe object's ``scheme``."""
    if scheme is None or isinstance(scheme, str):
        return scheme
    name = getattr(scheme, "scheme", None) or getattr(scheme, "name", None)
    if not isinstance(name, str):
        raise ConfigError(f"scheme= takes a scheme name (e.g. 'int8') or a quantization scheme/recipe object "
                          f"of sapiens2_edge.quantization, got {type(scheme).__name__}")
    return name


def _quantize_first(model, scheme, calibration, input_size, quantize_options, options: dict) -> tuple[Any, dict]:
    """(QuantizedModel, options with the float model and report for the fidelity check)."""
    from ..quantization.api import quantize

    qopts = dict(quantize_options or {})
    if input_size is not None:
        qopts.setdefault("input_size", tuple(input_size))
    qmodel, report = quantize(model, scheme, calibration=calibration, **qopts)
    return qmodel, {"float_model": model, "report": report, **options}


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


def _shape_probe(size):
    """A one-image zero input for the model's input-size checks (no forward pass)."""
    import torch

    return torch.zeros(1, 3, *size)
