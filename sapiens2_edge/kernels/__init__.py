"""Triton kernels behind ``torch.library`` custom ops, each next to its pure-torch reference.

One folder per kernel (kernel + launcher, reference, custom op). :mod:`.dispatch` decides per
call whether the Triton kernel or the reference runs.
"""
