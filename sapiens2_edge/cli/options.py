"""The command line's plumbing: option choices generated from the library's registries, and the
click group that turns every failure into one printed line and an exit code."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import Optional

import typer
from typer.core import TyperGroup

from ..artifact.formats import ALL_SCHEMES, FORMATS, ONNX_GRAPHS
from ..demo import DEMO_SCHEMES
from ..errors import ConfigError, Sapiens2EdgeError
from ..runtime.opener import BACKENDS
from ..spec import RELEASED_PRETRAIN_SIZES, TASKS
from ..workflows import FLOAT_SCHEMES, QUANT_SCHEMES, missing_package_error

DEBUG_ENV = "SAPIENS2_EDGE_DEBUG"


def _choices(name: str, values) -> type[StrEnum]:
    """A str enum of ``values``: typer turns it into a choice, listed in --help."""
    return StrEnum(name, [(v, v) for v in values])


Scheme = _choices("Scheme", ALL_SCHEMES)
ExportScheme = _choices("ExportScheme", (*FLOAT_SCHEMES, *QUANT_SCHEMES))
DemoScheme = _choices("DemoScheme", DEMO_SCHEMES)
Format = _choices("Format", FORMATS)
DemoFormat = _choices("DemoFormat", ("auto", *FORMATS))
Task = _choices("Task", TASKS)
TaskOrNone = _choices("TaskOrNone", (*TASKS, "none"))
Backend = _choices("Backend", BACKENDS)
Arch = _choices("Arch", RELEASED_PRETRAIN_SIZES)
DemoSize = _choices("DemoSize", ("auto", *RELEASED_PRETRAIN_SIZES))
Activations = _choices("Activations", ("static", "dynamic"))
CalibPrecision = _choices("CalibPrecision", ("auto", "fp32", "bf16"))
CALIB_INPUT_HELP = ("network input HxW of the calibration forwards, e.g. 512x384: half the side is ~5x faster "
                    "at 1024x768; the held-out fidelity is still measured at --input-size (default: --input-size)")
CALIB_PRECISION_HELP = ("precision of the calibration forwards: auto (bf16 on a CPU with native bf16, "
                        "faster; else fp32), fp32 or bf16")
TorchPrecision = _choices("TorchPrecision", ("fp32", "bf16", "auto"))
TORCH_PRECISION_HELP = ("a checkpoint run by torch: fp32 (default), bf16 (autocast; on CPUs with native bf16, ~1.8x "
                        "faster at 0.4b) or auto (bf16 where native); an artifact runs at its exported precision")
Dtype = _choices("Dtype", ("fp32", "bf16", "fp16"))
AttentionInputs = _choices("AttentionInputs", ("float", "int8"))
ATTENTION_HELP = ("what the attention products read: float, or int8 (q, k, v rounded to int8 with scales from the "
                  "calibration images; OpenVINO then runs the attention in int8). Needs --calib")
OnnxGraph = _choices("OnnxGraph", ONNX_GRAPHS)
GRAPH_HELP = ("onnx, ort: the graph's form: auto (default: onnxruntime, or standard for fp8), onnxruntime (shaped "
              "for ONNX Runtime: its fused MultiHeadAttention, sub-pixel convolutions for the head's transposed "
              "ones; less memory) or standard (standard operators, for other ONNX runtimes such as TensorRT)")
HeadPrecision = _choices("HeadPrecision", ("float", "int8"))
HEAD_HELP = ("the head's upsampling layers (pose / seg: transposed convolutions; normal / pointmap / albedo: the 3x3 "
             "convolutions up to the output resolution): float, or int8 (int8 weights and inputs, the input scales from the calibration images; "
             "OpenVINO then runs them with its int8 kernels). Needs --calib")
EVAL_MIN_HELP = ("held-out images read at least; after them, the evaluation stops once the task's headline metric "
                 "(seg agreement, pose displacement, ...) is known to its 95 % interval (>= --eval-samples: read all)")


def error_line(e: BaseException) -> str:
    """``error: <Type>: <message>`` on one line (whitespace folded)."""
    return f"error: {type(e).__name__}: {' '.join(str(e).split())}"


# The click exception base class typer raises (typer >= 0.2x vendors its own click).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _echo_error(text: str) -> None:
    typer.echo(text, err=True)


class _Group(TyperGroup):
    """Runs a command and turns every failure into one printed line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra) or 0
        except _ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: the help, as asked for
                e.show()
                code = 0
            else:
                hint = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) else ""
                message = " ".join(e.format_message().replace("Value error, ", "").split())
                _echo_error(f"error: {type(e).__name__}: {message}{hint}")
                code = e.exit_code
        except typer.Abort:
            _echo_error("error: aborted")
            code = 1
        except KeyboardInterrupt:
            _echo_error("error: interrupted")
            code = 130
        except Sapiens2EdgeError as e:
            _echo_error(error_line(e))
            code = 2
        except ModuleNotFoundError as e:
            if os.environ.get(DEBUG_ENV) or not e.name:
                raise
            _echo_error(error_line(missing_package_error(e.name, "this command")))
            code = 2
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            _echo_error(error_line(e) + f" (an unexpected failure; {DEBUG_ENV}=1 shows the traceback)")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def opt_in_parts(attention, head) -> dict[str, str]:
    """The recipe's opt-in parts the user asked for (``attention``, ``head``), as quantize options."""
    return {k: str(v) for k, v in (("attention", attention), ("head", head)) if str(v) != "float"}


def parse_size(text: Optional[str], flag: str = "--input-size") -> Optional[tuple[int, int]]:
    """``--input-size 1024x768`` -> (H, W)."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ConfigError(f"{flag} must look like 1024x768 (H x W), got {text!r}") from None
    return h, w


def detector_option(spec: Optional[str]):
    """``--detector``: none, an exported .onnx (onnxruntime), a detector artifact directory, or an
    RTMDet-m safetensors file."""
    if spec is None:
        return None  # a pose artifact's own detector, if it carries one
    if spec.lower() == "none":
        return False
    if spec.lower().endswith(".onnx"):
        from ..runtime.detectors import OnnxDetector

        return OnnxDetector(spec)
    return spec
