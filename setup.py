"""Builds the C++/CUDA extension ``tgfr._C`` and installs ``kernels/`` as ``tgfr.kernels``.

CUDA sources are compiled only when torch is a CUDA build and a CUDA toolkit is
found (``TGFR_NO_CUDA=1`` forces a CPU-only build). The architectures are explicit:
sm_80 (A100) and sm_90 (H100/H200) by default, ``TGFR_CUDA_ARCHS="80;90"`` to change.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def with_cuda():
    if os.environ.get("TGFR_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    cxx_flags = ["-O3", "-std=c++17"]
    cpp_sources = ["csrc/bindings.cpp", "csrc/tgfr_api.cpp"] + sources("csrc/cpu/*.cpp")
    if not with_cuda():
        return CppExtension("tgfr._C", cpp_sources, extra_compile_args={"cxx": cxx_flags})
    archs = os.environ.get("TGFR_CUDA_ARCHS", "80;90").split(";")
    nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    for arch in archs:
        nvcc_flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return CUDAExtension(
        "tgfr._C",
        cpp_sources + sources("csrc/cuda/*.cu"),
        define_macros=[("TGFR_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
