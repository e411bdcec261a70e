"""The prefix tokens' rows as a GEMM of their own in graphs made for OpenVINO: the recipe's arithmetic
row by row (prefix rows with their per-token scales, patch rows with the static scale), two GEMMs over
one int8 weight, and only for the layers it is meant for."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sapiens2_edge.exporters.onnx_quant import _export_module, export_modules, int8_dot_products, translation_table
from sapiens2_edge.exporters.prefix_split import PrefixRowsApart, rows_apart, split_prefix_rows
from sapiens2_edge.quantization.config import layer_config
from sapiens2_edge.quantization.linear import QuantLinear
from tests.fixtures.quant_layers import PREFIX, TwoLayers


class Block(nn.Module):
    """An FFN (its linears run their prefix rows apart) after a projection that keeps one GEMM."""

    def __init__(self, mode: str = "static"):
        super().__init__()
        proj, g = nn.Linear(64, 64), torch.Generator().manual_seed(2)
        with torch.no_grad():  # the bias too: from the global RNG it made the result depend on test order
            proj.weight.copy_(torch.randn(64, 64, generator=g) * 0.1)
            proj.bias.copy_(torch.randn(64, generator=g) * 0.1)
        self.proj = QuantLinear.from_float(proj, layer_config("int8", activation_mode=mode), PREFIX,
                                           torch.tensor([0.3]))
        self.ffn = TwoLayers("int8", mode)

    def forward(self, x):
        return self.ffn(self.proj(x))


def tokens(batch: int = 2) -> torch.Tensor:
    x = torch.randn(batch, PREFIX + 40, 64, generator=torch.Generator().manual_seed(1))
    x[:, :PREFIX] *= 20  # prefix outliers, far outside the static range: their own scales matter
    x[:, PREFIX:PREFIX + 3] *= 5  # patch tokens past the static range: clipped, as the recipe does
    return x


def signed(d):
    return _export_module(d, signed_weights=True)  # the OpenVINO graph's form on CPUs with VNNI / AMX


@pytest.mark.parametrize("name,wdtype,amode,prefix,is_signed,apart", [
    ("backbone.blocks.3.ffn.w3", "int8", "static", 9, True, True),
    ("backbone.blocks.0.ffn.gate", "int8", "static", 9, True, True),
    ("backbone.blocks.0.ffn.w12", "int8", "static", 9, True, True),
    ("backbone.blocks.0.attn.wq", "int8", "static", 9, True, False),  # the attention's projections: one GEMM
    ("backbone.tokenizer.blocks.0.ffn.w3", "int8", "static", 1, True, False),  # 4K windows: 1 prefix of 17
    ("backbone.blocks.0.ffn.w3", "int8", "static", 9, False, False),  # uint8 weights: no int8 FullyConnected
    ("backbone.blocks.0.ffn.w3", "int8", "dynamic", 0, True, False),  # per-token everywhere: nothing apart
    ("backbone.blocks.0.ffn.w3", "int8", "static", 0, True, False),  # no prefix tokens
    ("backbone.blocks.0.ffn.w3", "fp8", "static", 9, True, False),
])
def test_which_layers_run_their_prefix_rows_apart(name, wdtype, amode, prefix, is_signed, apart):
    assert rows_apart(name, wdtype, amode, prefix, is_signed) is apart


def test_rows_apart_compute_the_recipe_row_by_row_and_hold_one_weight(tmp_path):
    import onnxruntime as ort
    import openvino as ov

    module, x = Block().eval(), tokens()
    with torch.no_grad():
        ref = module(x).numpy()  # the torch QuantLinears: prefix rows per token, patch rows static
        with export_modules(module, signed), split_prefix_rows(module) as n:
            assert n == 2 and all(isinstance(m, PrefixRowsApart) for m in (module.ffn.a, module.ffn.b))
            assert not isinstance(module.proj, PrefixRowsApart)
            split = module(x).numpy()  # the export forms' torch side
            assert np.linalg.norm(split - ref) / np.linalg.norm(ref) < 2e-6
            path = tmp_path / "m.onnx"
            torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=18, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4)},),
                              custom_translation_table=translation_table(18))
    assert type(module.ffn.a) is QuantLinear  # swapped back
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    int8_weights = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert ops["MatMul"] == 5 and len(int8_weights) == 3  # two GEMMs per FFN layer over one stored weight
    dequantized = {node.output[0]: node.input[0] for node in graph.node
                   if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights}
    gemms = collections.Counter(dequantized[i] for node in graph.node if node.op_type == "MatMul"
                                for i in node.input if i in dequantized)
    assert sorted(gemms.values()) == [1, 2, 2]
    if not int8_dot_products()[0]:
        # this signed form is made only for CPUs with VNNI / AMX: without them both runtimes pair
        # the u8 x s8 products in int16 (vpmaddubsw), which saturates on these outlier rows
        return
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 2):
        xb = tokens(batch).numpy()
        want = ref[:batch]
        # OpenVINO's FakeQuantize divides in its own order: an input on a rounding boundary of a quantization
        # downstream of the float projection moves by one int8 step (7e-5 here); ONNX Runtime rounds as torch
        for runtime, y, tol in (("onnxruntime", sess.run(None, {sess.get_inputs()[0].name: xb})[0], 2e-6),
                                ("openvino", compiled({0: xb})[0], 5e-4)):
            assert np.linalg.norm(y - want) / np.linalg.norm(want) < tol, runtime
    fcs = [op for op in compiled.get_runtime_model().get_ops()
           if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected")]
    assert len(fcs) == 5  # OpenVINO runs all five GEMMs in int8
    assert {op.get_rt_info()["runtimePrecision"].astype(str) for op in fcs} <= {"i8", "u8"}


def test_dynamic_layers_keep_one_gemm():
    module = Block("dynamic").eval()
    with export_modules(module, signed), split_prefix_rows(module) as n:
        assert n == 0 and not isinstance(module.ffn.a, PrefixRowsApart)
