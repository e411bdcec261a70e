"""Torch reference implementation of Sapiens2 (backbone, heads, float checkpoint loading).

Submodules are imported on demand so that checkpoint headers (``safetensors_header``,
``resolve``, ``layout``, or all of them through ``checkpoint``) can be read without torch.
Quantized checkpoints are loaded by :func:`sapiens2_edge.load_model`; models never import
quantization.
"""
