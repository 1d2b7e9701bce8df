"""Every CUDA source compiles, also where there is no GPU.

Each ``csrc/cuda/*.cu`` is compiled to an object file with ``nvcc -c`` against the
installed torch's headers, with the flags ``setup.py`` and
``torch.utils.cpp_extension`` use for a CUDA build, for sm_80 and sm_90 in one
invocation (the host side, most of the time, is compiled once). Skipped where
``nvcc`` or torch's CUDA headers are missing, and where the installed extension
was itself built with CUDA (that build compiled the same sources).
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")
TORCH_INCLUDE = Path(cpp_extension.include_paths()[0])
ARCHS = (80, 90)  # as setup.py


def extension_built_with_cuda() -> bool:
    try:
        from tgfr import _C
    except ImportError:
        return False
    return _C.built_with_cuda()


pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc not found"),
    pytest.mark.skipif(extension_built_with_cuda(), reason="the installed tgfr._C was compiled from these sources"),
    pytest.mark.skipif(
        not (TORCH_INCLUDE / "c10" / "cuda" / "CUDAGuard.h").exists(), reason="torch ships no c10/cuda headers"
    ),
]


def nvcc_command(source: Path, output: Path, archs=ARCHS) -> list[str]:
    flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]  # as setup.py
    flags += cpp_extension.COMMON_NVCC_FLAGS
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-Xcompiler", "-fPIC"]
    flags.append("-DTGFR_WITH_CUDA=1")
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    if not (TORCH_INCLUDE / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # a CPU build of torch does not generate this header; it only holds build-time macros
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{ROOT / 'csrc'}"]
    return [NVCC, *flags, *includes, "-c", str(source), "-o", str(output)]


def compile_cuda(source: Path, output: Path, archs=ARCHS) -> subprocess.CompletedProcess:
    return subprocess.run(nvcc_command(source, output, archs), capture_output=True, text=True)


def test_cuda_sources_exist():
    names = {p.name for p in CUDA_SOURCES}
    assert {"word_region_cuda.cu", "info_nce_cuda.cu"} <= names


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    output = tmp_path / f"{source.stem}.o"
    result = compile_cuda(source, output)
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{result.stderr[-6000:]}"
    assert output.stat().st_size > 0


def test_broken_source_is_reported(tmp_path):
    broken = tmp_path / "broken.cu"
    broken.write_text("__global__ void kernel(float* x) { x[0] = undefined_name; }\n")
    result = compile_cuda(broken, tmp_path / "broken.o", archs=(80,))
    assert result.returncode != 0 and "undefined_name" in result.stderr
