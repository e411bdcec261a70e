"""Post-training quantization of Sapiens2 backbones (issue 3).

>>> qmodel, report = quantize(model, "int8", calibration="calib_images/")
>>> save_quantized(qmodel, "seg-int8.safetensors"); load_quantized("seg-int8.safetensors")

Modules (one responsibility each):

=============== ==================================================================================
config          scheme names and the config dataclasses (QuantRecipe, LayerQuantConfig, ...)
numerics        scales, int8 / E4M3 rounding, the int8 GEMM (``torch._int_mm``) and its emulation, SQNR
kernels         registry where faster GEMMs (Triton, later) plug into QuantLinear
linear          QuantLinear, the one module that replaces nn.Linear
observers       calibration statistics (min/max, percentile, MSE ranges; per-channel maxima)
calibration     calibration inputs -> preprocessed batches (the task pipelines), progress bars
smoothquant     RMSNorm -> Linear smoothing-factor computation and folding
model           QuantizedModel and layer selection
report          QuantReport / LayerReport
api             quantize()
serialize       save_quantized / load_quantized / is_quantized_checkpoint
=============== ==================================================================================
"""

from __future__ import annotations

from .api import quantize
from .calibration import CalibrationSet, build_calibration_set
from .config import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_EXCLUDE,
    DEFAULT_PREFIX_TOKENS,
    LAYER_SCHEMES,
    SCHEMES,
    ActivationQuantConfig,
    LayerQuantConfig,
    QuantRecipe,
    WeightQuantConfig,
    make_recipe,
)
from .kernels import available_kernels, register_kernel, unregister_kernel
from .linear import QuantLinear
from .model import QuantizedModel, is_quantized
from .observers import ChannelAbsMaxObserver, RangeObserver
from .report import LayerReport, QuantReport
from .serialize import is_quantized_checkpoint, load_quantized, save_quantized

__all__ = [
    "quantize", "save_quantized", "load_quantized", "is_quantized_checkpoint",
    "QuantizedModel", "QuantLinear", "QuantReport", "LayerReport", "is_quantized",
    "QuantRecipe", "LayerQuantConfig", "WeightQuantConfig", "ActivationQuantConfig", "make_recipe",
    "SCHEMES", "LAYER_SCHEMES", "DEFAULT_EXCLUDE", "DEFAULT_PREFIX_TOKENS", "DEFAULT_CALIBRATION_SIZE",
    "RangeObserver", "ChannelAbsMaxObserver", "CalibrationSet", "build_calibration_set",
    "register_kernel", "unregister_kernel", "available_kernels",
]
