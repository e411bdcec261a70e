"""torch export: a ``torch.export`` program (``model.pt2``) and, when CUDA is present, an
AOTInductor package (``model_aoti.pt2``) compiled for that GPU.

The program keeps the model's numerics exactly (RoPE mode included; the tables of the export grid
are frozen as constants) and has a dynamic batch up to ``max_batch``. Quantized models export
as they run in torch: int8-weight dequantizes per call, W8A8 keeps ``torch._int_mm`` (an aten op)
or its exact emulation, and custom kernel ops (``torch.library``) stay custom ops in the graph,
so loading the program needs ``sapiens2_edge.kernels`` imported (the runtime does that).
AOTInductor needs a compiler toolchain and is only built for CUDA: on a CPU-only machine the
manifest says it was not built, and the runtime runs ``model.pt2``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from ..errors import ExportError

PROGRAM_FILE = "model.pt2"
AOTI_FILE = "model_aoti.pt2"


def export_program(model, input_size, max_batch: int, device: str = "cpu"):
    """The torch.export program of ``model`` at ``input_size`` with batch 1..max_batch."""
    import torch

    from .onnx_export import frozen_rope

    x = torch.zeros(min(2, max_batch), 3, *input_size, device=device)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    with frozen_rope(model, input_size), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(model.eval(), (x,), dynamic_shapes=dynamic)
        except Exception as e:  # noqa: BLE001 - any tracing failure is an export failure
            raise ExportError(f"torch.export failed for {model.arch.name} {model.task}: {e}") from e


def export_torch(model, out_dir: Path, input_size, max_batch: int) -> tuple[dict, dict]:
    """Write ``model.pt2`` (+ ``model_aoti.pt2`` on CUDA); returns ({file: role}, notes)."""
    import torch

    ep = export_program(model, input_size, max_batch)
    torch.export.save(ep, str(out_dir / PROGRAM_FILE))
    files = {PROGRAM_FILE: "model"}
    notes = {"program": f"torch.export {torch.__version__}, batch 1..{max_batch}"}
    if torch.cuda.is_available():
        files[AOTI_FILE] = "aoti_package"
        notes["aoti"] = f"built for {torch.cuda.get_device_name()} with CUDA {torch.version.cuda}"
        notes["aoti_fidelity"] = build_aoti(model, out_dir / AOTI_FILE, input_size, max_batch)
    else:
        notes["aoti"] = "not built: no CUDA device at export (AOTInductor packages are built for CUDA only)"
    return files, notes


AOTI_TOLERANCE = 1e-3  # fp32 on the GPU: other kernels and summation orders than the CPU reference


def build_aoti(model, path: Path, input_size, max_batch: int) -> dict:
    """Compile the package on CUDA and check it against the model on CPU; returns the numbers."""
    import copy

    import torch

    from . import compare, torch_outputs, verification_inputs
    from .onnx_export import output_names

    gpu = copy.deepcopy(model).to("cuda")
    ep = export_program(gpu, input_size, max_batch, device="cuda")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"AOTInductor compilation failed: {e}") from e
    from ..runtime.torch_backend import AOTIBackend

    x = verification_inputs(input_size, batch=min(2, max_batch))
    result = compare(torch_outputs(model, x), AOTIBackend(path)(x), output_names(model.task))
    if result["rel_l2"] > AOTI_TOLERANCE:
        raise ExportError(f"the AOTInductor package does not match torch: relative L2 {result['rel_l2']:.3g} > "
                          f"{AOTI_TOLERANCE:g} ({result['outputs']})")
    return {"rel_l2": result["rel_l2"], "tolerance": AOTI_TOLERANCE, "device": "cuda"}


def write(model, out_dir: Path, opts) -> dict[str, str]:
    files, notes = export_torch(model, out_dir, opts.input_size, opts.max_batch)
    opts.notes["torch"] = notes
    return files


def verifier(out_dir: Path, files: dict[str, str]):
    """The program on CPU (the AOTI package, when built, was checked on CUDA by :func:`build_aoti`)."""
    from ..runtime.torch_backend import ExportedProgramBackend

    return ExportedProgramBackend(out_dir / PROGRAM_FILE, device="cpu")
