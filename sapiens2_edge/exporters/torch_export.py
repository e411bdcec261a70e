"""torch export: a ``torch.export`` program (``model.pt2``) and, when CUDA is present, an
AOTInductor package (``model_aoti.pt2``) compiled for that GPU.

The program keeps the model's numerics exactly (RoPE mode included; the tables of the export grid
are frozen as constants) and has a dynamic batch up to ``max_batch``. Quantized models export
as they run in torch: int8-weight dequantizes per call, W8A8 keeps ``torch._int_mm`` (an aten op)
or its exact emulation, and custom kernel ops (``torch.library``) stay custom ops in the graph,
so loading the program needs ``sapiens2_edge.kernels`` imported (the runtime does that).
AOTInductor needs a compiler toolchain and is only built for CUDA: on a CPU-only machine the
manifest says it was not built, and the runtime runs ``model.pt2``.

Precision ``bf16`` exports the float model under torch's bf16 autocast (no weight cache), float32
outputs, its linear and convolution weights stored in bf16 (what autocast rounds them to at every
call: half the file): ``torch.export`` records the autocast region in the program
(``wrap_with_autocast``), which then computes what ``Predictor(checkpoint, precision="bf16")`` does in
eager mode (bit for bit, minus the eager path's OpenVINO attention); where the CPU lacks native bf16
torch emulates it (slower than fp32).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from ..artifact import tolerance_for
from ..errors import ExportError

PROGRAM_FILE = "model.pt2"
AOTI_FILE = "model_aoti.pt2"


def bf16_program(model, device_type: str):
    """``model`` under bf16 autocast on ``device_type``, its outputs in float32: what ``torch.export``
    records for a bf16 program."""
    import torch

    from ..models.bf16 import bf16_autocast

    class Bf16Program(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            with bf16_autocast(device_type):
                out = self.model(x)
            return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    return Bf16Program()


def export_program(model, input_size, max_batch: int, device: str = "cpu", precision: str = "fp32"):
    """The torch.export program of ``model`` at ``input_size`` with batch 1..max_batch (``precision``
    bf16: under bf16 autocast, :func:`bf16_program`)."""
    import torch

    from ..models.bf16 import gemm_weights_in_bf16
    from .onnx_export import frozen_rope

    x = torch.zeros(min(2, max_batch), 3, *input_size, device=device)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    bf16 = precision == "bf16"
    program = bf16_program(model.eval(), torch.device(device).type) if bf16 else model.eval()
    with frozen_rope(model, input_size), gemm_weights_in_bf16(model) if bf16 else contextlib.nullcontext(), \
            torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(program, (x,), dynamic_shapes=dynamic)
        except Exception as e:  # noqa: BLE001 - any tracing failure is an export failure
            raise ExportError(f"torch.export failed for {model.arch.name} {model.task}: {e}") from e


def export_torch(model, out_dir: Path, input_size, max_batch: int, precision: str = "fp32") -> tuple[dict, dict]:
    """Write ``model.pt2`` (+ ``model_aoti.pt2`` on CUDA); returns ({file: role}, notes)."""
    import torch

    ep = export_program(model, input_size, max_batch, precision=precision)
    torch.export.save(ep, str(out_dir / PROGRAM_FILE))
    files = {PROGRAM_FILE: "model"}
    notes = {"program": f"torch.export {torch.__version__}, batch 1..{max_batch}"
                        + (", bf16 autocast, float32 outputs" if precision == "bf16" else "")}
    if torch.cuda.is_available():
        files[AOTI_FILE] = "aoti_package"
        notes["aoti"] = f"built for {torch.cuda.get_device_name()} with CUDA {torch.version.cuda}"
        notes["aoti_fidelity"] = build_aoti(model, out_dir / AOTI_FILE, input_size, max_batch, precision)
    else:
        notes["aoti"] = "not built: no CUDA device at export (AOTInductor packages are built for CUDA only)"
    return files, notes


AOTI_TOLERANCE = 1e-3  # fp32 on the GPU: other kernels and summation orders than the CPU reference


def build_aoti(model, path: Path, input_size, max_batch: int, precision: str = "fp32") -> dict:
    """Compile the package on CUDA and check it against the model on CPU; returns the numbers."""
    import copy

    import torch

    from . import compare, torch_outputs, verification_inputs
    from .onnx_export import output_names

    tolerance = max(AOTI_TOLERANCE, tolerance_for(precision))
    gpu = copy.deepcopy(model).to("cuda")
    ep = export_program(gpu, input_size, max_batch, device="cuda", precision=precision)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"AOTInductor compilation failed: {e}") from e
    from ..runtime.torch_backend import AOTIBackend

    x = verification_inputs(input_size, batch=min(2, max_batch))
    result = compare(torch_outputs(model, x), AOTIBackend(path)(x), output_names(model.task))
    if result["rel_l2"] > tolerance:
        raise ExportError(f"the AOTInductor package does not match torch: relative L2 {result['rel_l2']:.3g} > "
                          f"{tolerance:g} ({result['outputs']})")
    return {"rel_l2": result["rel_l2"], "tolerance": tolerance, "device": "cuda"}


def write(model, out_dir: Path, opts) -> dict[str, str]:
    files, notes = export_torch(model, out_dir, opts.input_size, opts.max_batch, opts.precision)
    opts.notes["torch"] = notes
    return files


def verifier(out_dir: Path, files: dict[str, str]):
    """The program on CPU (the AOTI package, when built, was checked on CUDA by :func:`build_aoti`)."""
    from ..runtime.torch_backend import ExportedProgramBackend

    return ExportedProgramBackend(out_dir / PROGRAM_FILE, device="cpu")
