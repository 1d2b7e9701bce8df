"""Builds the C++/CUDA extension ``tgfr._C``; ``kernels/`` is installed as ``tgfr.kernels`` through the
link ``tgfr/kernels`` (see pyproject.toml).

CUDA sources are compiled only when torch is a CUDA build and a CUDA toolkit is
found (``TGFR_NO_CUDA=1`` forces a CPU-only build). The architectures are explicit:
machine code (SASS) for sm_80 (A100) and sm_90 (H100/H200) by default, plus the PTX of
the newest, which the driver compiles for any later GPU. ``TGFR_CUDA_ARCHS="80;90;100"``
changes the list. nvcc must be of the CUDA major version torch was built with.

tests/test_cuda_compile.py imports this file (not as ``__main__``) to compile the CUDA
sources with exactly these flags.
"""
import glob
import os
import re
import subprocess
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "80;90"
# No -std flag: torch's BuildExtension adds the C++ standard its own headers need.
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]


def fail(message):
    sys.exit(f"tgfr setup: error: {message}")


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def with_cuda():
    if os.environ.get("TGFR_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def cuda_archs(spec=None):
    """The compute capabilities to build for, from ``TGFR_CUDA_ARCHS`` ("80;90", "90a")."""
    spec = os.environ.get("TGFR_CUDA_ARCHS", DEFAULT_CUDA_ARCHS) if spec is None else spec
    archs = [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]
    bad = [a for a in archs if not re.fullmatch(r"\d{2,3}[af]?", a)]
    if not archs or bad:
        fail(f"TGFR_CUDA_ARCHS must list compute capabilities like '80;90', got {spec!r}")
    return archs


def gencode_flags(archs):
    """SASS for every arch, and PTX for the newest: a GPU newer than all of them runs the
    PTX through the driver's JIT instead of failing with 'no kernel image'."""
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    newest = max((re.match(r"\d+", a).group() for a in archs), key=int)  # PTX of 90a would not run on 100
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return flags


def nvcc_version(nvcc):
    """'major.minor' of the CUDA toolkit of `nvcc`."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"cannot run {nvcc} --version ({e}); set CUDA_HOME to a CUDA toolkit, or TGFR_NO_CUDA=1 for a CPU-only build")
    match = re.search(r"release (\d+)\.(\d+)", out)
    if match is None:
        fail(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return f"{match.group(1)}.{match.group(2)}"


def check_cuda_versions(nvcc_release, torch_cuda):
    """Kernels built by one CUDA major version do not load into a torch built with another."""
    if nvcc_release.split(".")[0] != torch_cuda.split(".")[0]:
        fail(
            f"nvcc is CUDA {nvcc_release} ({CUDA_HOME}) but torch {torch.__version__} was built with CUDA "
            f"{torch_cuda}: the major versions must match. Point CUDA_HOME at a CUDA {torch_cuda.split('.')[0]}.x "
            f"toolkit, install the torch build for CUDA {nvcc_release.split('.')[0]}, or set TGFR_NO_CUDA=1 for a "
            f"CPU-only build."
        )


def extension():
    cpp_sources = ["csrc/bindings.cpp", "csrc/tgfr_api.cpp"] + sources("csrc/cpu/*.cpp")
    if not with_cuda():
        return CppExtension("tgfr._C", cpp_sources, extra_compile_args={"cxx": CXX_FLAGS})
    check_cuda_versions(nvcc_version(os.path.join(CUDA_HOME, "bin", "nvcc")), torch.version.cuda)
    return CUDAExtension(
        "tgfr._C",
        cpp_sources + sources("csrc/cuda/*.cu"),
        define_macros=[("TGFR_WITH_CUDA", "1")],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS + gencode_flags(cuda_archs())},
    )


if __name__ == "__main__":
    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
