"""Build mtlkernels._C: C++ CPU kernels always, CUDA kernels when torch and a toolkit have CUDA.

Environment:
  FORCE_CUDA=1 / FORCE_CPU=1   build the CUDA kernels even without a visible GPU / never
  TORCH_CUDA_ARCH_LIST         CUDA targets (default DEFAULT_CUDA_ARCH_LIST below)
  MTL_PORTABLE=1               no -march=native (for binaries that move between machines)
  DEBUG=1                      -O0 -g
  MAX_JOBS=N                   parallel compile jobs (ninja)
Always build against the installed torch: pip install --no-build-isolation -e .
"""
import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# SASS for sm_80 and sm_90 (A100, H100/H200), and PTX of compute_90 that the driver compiles for
# newer GPUs. Other 8.x GPUs run the sm_80 SASS; anything older than sm_80 has no image, and
# mtlkernels._backend then reports the "cuda" backend unavailable there instead of failing each
# launch. tests/test_cuda_compile.py compiles every .cu for this list.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def build_config():
    debug = _flag("DEBUG")
    torch_cuda = torch.version.cuda is not None
    use_cuda = not _flag("FORCE_CPU") and CUDA_HOME is not None and (
        _flag("FORCE_CUDA") or (torch_cuda and torch.cuda.is_available()) or torch_cuda
    )
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp"]  # the C++ standard is the one torch.utils.cpp_extension chooses
    if not debug and not _flag("MTL_PORTABLE"):
        cxx += ["-march=native"]
    srcs = ["csrc/mtlkernels.cpp", "csrc/common/tables.cpp"] + sources("csrc/*/cpu/*.cpp")
    macros = []
    extra = {"cxx": cxx}
    if use_cuda:
        srcs += sources("csrc/*/cuda/*.cpp") + sources("csrc/*/cuda/*.cu")
        macros.append(("MTL_WITH_CUDA", None))
        # torch.utils.cpp_extension turns the list into -gencode flags ("+PTX": PTX too)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        extra["nvcc"] = ["-O3" if not debug else "-G", "--expt-relaxed-constexpr", "-lineinfo"]
    print(
        f"mtlkernels build: torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"CUDA_HOME={CUDA_HOME}, CUDA kernels: {'yes' if use_cuda else 'no'}"
        f"{' (' + os.environ['TORCH_CUDA_ARCH_LIST'] + ')' if use_cuda else ''}, debug: {debug}, "
        f"cxx flags: {' '.join(cxx)}, {len(srcs)} sources",
        file=sys.stderr,
    )
    Ext = CUDAExtension if use_cuda else CppExtension
    return Ext(
        "mtlkernels._C",
        srcs,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )


setup(
    packages=find_packages(include=["mtlkernels", "mtlkernels.*"]),
    ext_modules=[build_config()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
