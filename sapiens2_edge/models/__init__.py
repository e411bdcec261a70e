"""Torch reference implementation of Sapiens2 (backbone, heads, checkpoint loading).

Submodules are imported on demand so that ``sapiens2_edge.models.checkpoint`` (header
reading) works without torch.
"""
