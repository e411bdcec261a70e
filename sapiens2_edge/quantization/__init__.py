"""Post-training quantization of Sapiens2 backbones (issue 3).

>>> qmodel, report = quantize(model, "int8", calibration="calib_images/")
>>> qmodel, report = quantize(model, Int8(activations=Static("mse")), calibration=Calibration("calib_images/"))
>>> qmodel, report = apply(model, {"backbone.blocks.0.attn.wq": Fp8(), "backbone.blocks.1.ffn.w3": Int8WeightOnly()})
>>> save_quantized(qmodel, "seg-int8.safetensors"); load_quantized("seg-int8.safetensors")

Modules (one responsibility each):

=============== ==================================================================================
config          scheme names, the recorded request (QuantRecipe) and what one layer stores (LayerQuantConfig)
schemes         the config objects: Int8WeightOnly, Int4Weight, Int8, Fp8, Fp16, Mixed (Dynamic / Static), Calibration
numerics        scales, int8 / E4M3 rounding, the int8 GEMM (``torch._int_mm``) and its emulation, SQNR
kernels         registry where faster GEMMs (Triton, later) plug into QuantLinear
linear          QuantLinear, the one module that replaces nn.Linear
decomposed      DecomposedLinear, the export form of a QuantLinear every exporter maps to its ops
precision       the precision an artifact of a (quantized) model has, per export format
observers       calibration statistics (min/max, percentile, MSE ranges; per-channel maxima)
calibration     calibration inputs -> preprocessed batches (the task pipelines), progress bars
smoothquant     RMSNorm -> Linear smoothing-factor computation and folding
model           QuantizedModel and layer selection
report          QuantReport / LayerReport
measure         the report's per-layer and end-to-end output SQNR (and raw outputs) from shared forwards
convert         apply(): quantize given layers with given configs (SmoothQuant, calibration, report)
sensitivity     the budget-driven mixed search (on apply)
api             quantize(): a scheme (config, name or recipe) -> a layer mapping for apply
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
from .convert import apply
from .decomposed import DecomposedLinear
from .kernels import available_kernels, register_kernel, unregister_kernel
from .linear import QuantLinear
from .model import QuantizedModel, is_quantized
from .observers import ChannelAbsMaxObserver, RangeObserver
from .precision import export_precision, scheme_of
from .report import LayerReport, QuantReport
from .schemes import Calibration, Dynamic, Fp8, Fp16, Int4Weight, Int8, Int8WeightOnly, Mixed, Static
from .serialize import is_quantized_checkpoint, load_quantized, save_quantized

__all__ = [
    "quantize", "apply", "Int8WeightOnly", "Int4Weight", "Int8", "Fp8", "Fp16", "Mixed", "Dynamic", "Static", "Calibration",
    "DecomposedLinear", "scheme_of", "export_precision", "save_quantized", "load_quantized", "is_quantized_checkpoint",
    "QuantizedModel", "QuantLinear", "QuantReport", "LayerReport", "is_quantized",
    "QuantRecipe", "LayerQuantConfig", "WeightQuantConfig", "ActivationQuantConfig", "make_recipe",
    "SCHEMES", "LAYER_SCHEMES", "DEFAULT_EXCLUDE", "DEFAULT_PREFIX_TOKENS", "DEFAULT_CALIBRATION_SIZE",
    "RangeObserver", "ChannelAbsMaxObserver", "CalibrationSet", "build_calibration_set",
    "register_kernel", "unregister_kernel", "available_kernels",
]
