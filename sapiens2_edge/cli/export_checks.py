"""Checks of ``export``'s flags made before anything is loaded: the scheme against the format,
calibration images for the schemes that need them, and the packages the format needs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional

from ..artifact.formats import FORMATS
from ..errors import ConfigError
from ..workflows import QUANT_SCHEMES, require

WEIGHT_ONLY = ("int8-weight", "int4-weight")  # quantized export schemes that need no calibration images


def given_options(**options) -> dict:
    """The format options given on the command line (as plain values), the others left to the format's defaults."""
    return {k: str(v) if isinstance(v, StrEnum) else v for k, v in options.items() if v is not None}


def check_export_flags(scheme: Optional[str], fmt: str, calib: Optional[Path], activations: str = "static",
                       attention: str = "float", head: str = "float", options: Mapping = MappingProxyType({})) -> None:
    from ..workflows import check_scheme_format

    if "graph" in options and "graph" not in FORMATS[fmt].options:
        takes = ", ".join(f.name for f in FORMATS.values() if "graph" in f.options)
        raise ConfigError(f"--graph chooses the form of an ONNX graph ({takes}); the {fmt} format has no such "
                          "choice")

    check_scheme_format(scheme or FORMATS[fmt].default_precision, fmt, static=activations == "static")
    for flag, value, ranges in (("--attention", attention, "the q, k, v ranges"), ("--head", head, "the head's input ranges")):
        if value == "int8" and scheme not in QUANT_SCHEMES:
            raise ConfigError(f"{flag} int8 is part of a quantization recipe: pass --scheme (e.g. int8), not "
                              f"{'--scheme ' + scheme if scheme else 'a float export'}")
        if value == "int8" and calib is None:
            raise ConfigError(f"{flag} int8 reads {ranges} from calibration images: pass --calib DIR")
    if head == "int8" and not FORMATS[fmt].int8_head:
        takes = ", ".join(f.name for f in FORMATS.values() if f.int8_head)
        raise ConfigError(f"--head int8 exports to {takes}; the {fmt} format has no int8 head")
    if scheme in QUANT_SCHEMES and scheme not in WEIGHT_ONLY and calib is None:
        raise ConfigError(f"--scheme {scheme} quantizes activations and needs calibration images: pass --calib DIR "
                          "(a folder of images of the task's domain; 32 are used), or use --scheme int8-weight "
                          "(or int4-weight), which needs none")
    spec = FORMATS[fmt]
    require("torch", "export", spec.export_extra)
    for package in spec.export_packages:
        require(package, f"export --format {fmt}")  # names the extra that installs the package
