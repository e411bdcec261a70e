"""Build entry point. Metadata, extras and tool configuration live in pyproject.toml; this file
builds the native extension ``sapiens2_edge._native`` from the C++ sources listed once in
``cpp/sources.txt`` (the same list CMakeLists.txt reads) plus ``cpp/bindings/*.cpp``.

GEMM comes from OpenBLAS in the scipy-openblas32 wheel (a build and runtime dependency); bfloat16
GEMMs from oneDNN, opened at run time (its headers come from the onednn-devel-cpu-gomp wheel, a
build dependency; without them the extension builds with float32 GEMMs only). The
extension finds the library at run time through rpaths: next to it in the same site-packages
(``$ORIGIN/..``), in the target environment's site-packages (editable installs), and where the
build found it (builds without isolation).
"""

import os
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def onednn_include_dirs() -> list[str]:
    """oneDNN's header directory from the onednn-devel-cpu-gomp wheel, where it is installed."""
    from importlib import metadata

    try:
        files = metadata.distribution("onednn-devel-cpu-gomp").files or []
    except metadata.PackageNotFoundError:
        return []
    dist = metadata.distribution("onednn-devel-cpu-gomp")
    for f in files:
        if str(f).replace(os.sep, "/").endswith("include/oneapi/dnnl/dnnl.h"):
            return [str(Path(dist.locate_file(f)).resolve().parents[2])]
    return []


def native_extension():
    import scipy_openblas32 as blas
    from pybind11.setup_helpers import Pybind11Extension

    listed = [line.strip() for line in (ROOT / "cpp" / "sources.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    sources = list(dict.fromkeys(listed))  # a line appended twice is built once
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "bindings").glob("*.cpp"))
    rpaths = ["$ORIGIN/../scipy_openblas32/lib",
              os.path.join(sysconfig.get_paths()["platlib"], "scipy_openblas32", "lib"),
              blas.get_lib_dir()]
    openmp = ["-fopenmp"] if sys.platform != "darwin" else ["-Xpreprocessor", "-fopenmp"]
    return Pybind11Extension(
        "sapiens2_edge._native",
        sources=sources,
        include_dirs=["cpp/include", "cpp/bindings", blas.get_include_dir(), *onednn_include_dirs()],
        library_dirs=[blas.get_lib_dir()],
        libraries=[blas.get_library(), "dl"],
        runtime_library_dirs=rpaths,
        define_macros=[("S2E_BLAS_SCIPY_PREFIX", "1")],
        # -fno-trapping-math: see CMakeLists.txt (the element-wise loops vectorize only without it)
        extra_compile_args=["-O3", "-fno-trapping-math", *openmp],
        extra_link_args=openmp if sys.platform != "darwin" else ["-lomp"],
        cxx_std=17,
    )


def build_ext_class():
    from pybind11.setup_helpers import ParallelCompile, build_ext

    ParallelCompile("S2E_BUILD_JOBS", default=0).install()  # compile the sources in parallel

    return build_ext


setup(ext_modules=[native_extension()], cmdclass={"build_ext": build_ext_class()})
