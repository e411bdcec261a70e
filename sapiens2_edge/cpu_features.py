"""What this CPU computes natively, from the flags the Linux kernel lists in /proc/cpuinfo.

One reader for every choice made per CPU: the runtime precision of OpenVINO artifacts, the int8
weight layout of graphs made for OpenVINO, the precision of the quantizer's calibration forwards
and the kernel of torch-side int8 GEMMs. Where there are no flags to read (macOS, Windows) the callers decide what that means.
"""

from __future__ import annotations

import os
from pathlib import Path

#: flags of x86 CPUs with bf16 dot products (AVX-512 BF16, AMX tiles)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: flags of x86 CPUs whose u8 x s8 dot products do not saturate (VNNI, AMX)
INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
#: oneDNN instruction-set caps below its VNNI kernels: with one of these in $ONEDNN_MAX_CPU_ISA (or the older
#: $DNNL_MAX_CPU_ISA), every oneDNN in the process (torch's, the native engine's) multiplies int8 as a CPU
#: without VNNI does, whatever the CPU has
ONEDNN_CAPS_WITHOUT_INT8_DOT = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def onednn_isa_cap() -> tuple[str, str] | None:
    """(variable, value) of the oneDNN instruction-set cap set for this process, or None."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # oneDNN reads them in this order
        value = os.environ.get(name, "").strip().upper()
        if value:
            return name, value
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The first CPU's flags in ``cpuinfo`` (default: /proc/cpuinfo); None where there are none."""
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                None)


def bf16_flags(cpuinfo: str | None = None) -> tuple[bool | None, str]:
    """(whether this CPU computes bf16 natively, the evidence); None when no flags could be read."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return None, "no CPU flags to read here"
    found = [f for f in BF16_FLAGS if f in flags]
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"


def int8_dot_products(cpuinfo: str | None = None) -> tuple[bool, str]:
    """(whether this CPU has int8 dot-product instructions, why): x86 with VNNI (avx512_vnni, avx_vnni)
    or AMX does; x86 without them pairs u8 x s8 products in int16 (vpmaddubsw, which saturates) and
    torch's int8 GEMM falls back to a plain loop. A machine without /proc/cpuinfo flags (macOS,
    Windows, ARM) is taken as able. A oneDNN cap below VNNI (:data:`ONEDNN_CAPS_WITHOUT_INT8_DOT`) counts as
    a CPU without them: torch's int8 GEMMs then saturate (measured: off by up to 68099 at K=256)."""
    cap = onednn_isa_cap()
    if cap and cap[1] in ONEDNN_CAPS_WITHOUT_INT8_DOT:
        return False, f"{cap[0]}={cap[1]} keeps oneDNN below its VNNI kernels (torch's int8 GEMMs too)"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return True, "no CPU flags to read here"
    found = [f for f in INT8_DOT_FLAGS if f in flags]
    return (True, f"this CPU has {', '.join(found)}") if found else (False, "this CPU has no VNNI or AMX")


__all__ = ["BF16_FLAGS", "INT8_DOT_FLAGS", "ONEDNN_CAPS_WITHOUT_INT8_DOT", "bf16_flags", "cpu_flags",
           "int8_dot_products", "onednn_isa_cap"]
