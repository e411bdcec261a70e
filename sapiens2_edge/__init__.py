"""sapiens2-edge: edge inference for Meta's Sapiens2 human-centric vision transformers.

The public face of the SDK::

    import sapiens2_edge as s2e
    model = s2e.load_model("sapiens2_0.4b_seg.safetensors")
    pred = s2e.Predictor(model)
    result = pred(image_rgb_uint8)

Heavy modules (torch) are imported lazily, so ``import sapiens2_edge`` and the runtime path
work with only numpy and OpenCV installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ._version import __version__

_LAZY = {
    "load_model": "sapiens2_edge.loading",
    "load_detector": "sapiens2_edge.detection.checkpoint",
    "Sapiens2Model": "sapiens2_edge.models.model",
    "ArchSpec": "sapiens2_edge.models.arch",
    "Predictor": "sapiens2_edge.runtime.predictor",
    "quantize": "sapiens2_edge.quantization.api",
    "export": "sapiens2_edge.exporters",
    "errors": "sapiens2_edge.errors",
    "tasks": "sapiens2_edge.tasks",
}

# Attributes that are modules. The verbs quantize/export are plain functions; their subpackages are
# named quantization/ and exporters/ so that importing a subpackage never shadows a verb.
_MODULES = {"errors", "tasks"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        if name.isidentifier() and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")  # a subpackage not imported yet
        raise AttributeError(f"module 'sapiens2_edge' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name in _MODULES else getattr(module, name)
