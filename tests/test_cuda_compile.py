"""The CUDA sources compile, and their kernels compute the reference, also where there is no GPU.

* Each ``csrc/cuda/*.cu`` is compiled to an object file with ``nvcc -c`` against the
  installed torch's headers, with the flags ``setup.py`` and
  ``torch.utils.cpp_extension`` use for a CUDA build, for sm_80 and sm_90 in one
  invocation (the host side, most of the time, is compiled once). Skipped where
  ``nvcc`` or torch's CUDA headers are missing, and where the installed extension
  was itself built with CUDA (that build compiled the same sources).
* (slow) The same sources, launches rewritten for ``csrc/cuda/emulation``, are built
  as a CPU extension that runs every kernel thread as a CPU thread, with scratch and
  tile sizes small enough that the chunking and tiling paths all run; its results
  must match the pure-PyTorch reference in float64 and float32 (the float16/bfloat16
  paths differ only in ATen's mixed-precision GEMMs, which exist on CUDA alone).
  Skipped where tgfr._C has the real CUDA kernels.
"""
import re
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


def needs_nvcc(test):
    """Skip where the sources cannot, or need not, be compiled here."""
    marks = [
        pytest.mark.skipif(NVCC is None, reason="nvcc not found"),
        pytest.mark.skipif(extension_built_with_cuda(), reason="the installed tgfr._C was compiled from these sources"),
        pytest.mark.skipif(
            not (TORCH_INCLUDE / "c10" / "cuda" / "CUDAGuard.h").exists(), reason="torch ships no c10/cuda headers"
        ),
    ]
    for mark in marks:
        test = mark(test)
    return test


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
@needs_nvcc
def test_cuda_source_compiles(source, tmp_path):
    output = tmp_path / f"{source.stem}.o"
    result = compile_cuda(source, output)
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{result.stderr[-6000:]}"
    assert output.stat().st_size > 0


@needs_nvcc
def test_broken_source_is_reported(tmp_path):
    broken = tmp_path / "broken.cu"
    broken.write_text("__global__ void kernel(float* x) { x[0] = undefined_name; }\n")
    result = compile_cuda(broken, tmp_path / "broken.o", archs=(80,))
    assert result.returncode != 0 and "undefined_name" in result.stderr


# --------------------------------------------------------------------------- emulated on the CPU

EMULATION = ROOT / "csrc" / "cuda" / "emulation"
LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\(", re.S)
# small enough that word-region pairs are split over several chunks of several images
# (and InfoNCE over several row and column tiles and column groups) at the sizes below
EMULATION_KNOBS = {"TGFR_CUDA_SCRATCH_BYTES": 12000, "TGFR_CUDA_INFO_NCE_TILE_ROWS": 64, "TGFR_CUDA_INFO_NCE_GROUP_ROWS": 16}


def emulated_source(source: Path) -> str:
    """``kernel<<<grid, block, shared, stream>>>(args)`` -> ``emulated_launch(grid, block, shared, stream, kernel, args)``."""
    text = LAUNCH.sub(lambda m: f"emulated_launch({m.group(2)}, {m.group(1)}, ", source.read_text())
    assert "<<<" not in text, f"a launch in {source.name} was not rewritten"
    return text


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if extension_built_with_cuda():
        pytest.skip("the real CUDA kernels are tested on the device by test_ops.py")
    if not cpp_extension.is_ninja_available():
        pytest.skip("ninja is needed to build the emulated kernels")
    root = tmp_path_factory.mktemp("cuda_emulated")
    (root / "cuda").mkdir()
    shutil.copy(ROOT / "csrc" / "tgfr.h", root)
    for header in (ROOT / "csrc" / "cuda").glob("*.cuh"):
        shutil.copy(header, root / "cuda")
    sources = [str(EMULATION / "bindings.cpp")]
    for source in CUDA_SOURCES:
        rewritten = root / "cuda" / f"{source.stem}.cpp"
        rewritten.write_text(emulated_source(source))
        sources.append(str(rewritten))
    flags = ["-std=c++20", "-O1", "-DTGFR_WITH_CUDA", "-include", str(EMULATION / "cuda_emulation.h")]
    flags += [f"-D{name}={value}" for name, value in EMULATION_KNOBS.items()]
    return cpp_extension.load(
        name="tgfr_cuda_emulated",
        sources=sources,
        extra_include_paths=[str(EMULATION), str(root)],  # the stand-in c10/cuda headers come first
        extra_cflags=flags,
        build_directory=str(root),
    )


TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_emulated_word_region_matches_reference(emulated, dtype):
    from tgfr.ops import reference

    gen = torch.Generator().manual_seed(7)
    B_v, B_t, T, N, D = 7, 5, 6, 9, 10
    words = torch.randn(B_t, T, D, generator=gen, dtype=torch.float64)
    words[2, 1] = 0  # a zero word: the cosine's denominator is clamped at eps
    regions = torch.randn(B_v, N, D, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B_t,), generator=gen)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    upstream = torch.randn(B_v, B_t, generator=gen, dtype=torch.float64)
    w_ref, r_ref = words.clone().requires_grad_(), regions.clone().requires_grad_()
    expected = reference.word_region_scores_loop(w_ref, r_ref, mask)
    (expected * upstream).sum().backward()

    w, r = words.to(dtype), regions.to(dtype)
    scores = emulated.word_region_scores_forward(w, r, mask, 4.0, 5.0, 1e-8)
    grad_words, grad_regions = emulated.word_region_scores_backward(upstream.to(dtype), w, r, mask, scores, 4.0, 5.0, 1e-8)
    assert scores.dtype == grad_words.dtype == grad_regions.dtype == dtype
    torch.testing.assert_close(scores.double(), expected.detach(), **TOLERANCES[dtype])
    torch.testing.assert_close(grad_words.double(), w_ref.grad, **TOLERANCES[dtype])
    torch.testing.assert_close(grad_regions.double(), r_ref.grad, **TOLERANCES[dtype])
    assert torch.all(grad_words[~mask] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("with_ids", [False, True], ids=["distinct", "shared-ids"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_emulated_info_nce_matches_reference(emulated, dtype, with_ids):
    from tgfr.ops import reference

    gen = torch.Generator().manual_seed(11)
    B, D = 300, 12  # 5 row tiles x 2 column tiles
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    temperature = torch.tensor(0.13, dtype=torch.float64)
    class_ids = torch.randint(0, 100, (B,), generator=gen) if with_ids else torch.arange(B)
    a_ref, b_ref, t_ref = a.clone().requires_grad_(), b.clone().requires_grad_(), temperature.clone().requires_grad_()
    expected = reference.info_nce_reference(a_ref, b_ref, t_ref, class_ids if with_ids else None)
    expected.backward()
    logits = (a @ b.t() / temperature).masked_fill(reference.same_identity_mask(class_ids), float("-inf"))

    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tau = temperature.to(stat_dtype)
    loss, lse_rows, lse_cols = emulated.info_nce_forward(a.to(dtype), b.to(dtype), tau, class_ids)
    grad_loss = torch.tensor(1.7, dtype=stat_dtype)
    grad_a, grad_b, grad_t = emulated.info_nce_backward(grad_loss, a.to(dtype), b.to(dtype), tau, class_ids, lse_rows, lse_cols)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(loss.double(), expected.detach(), **tol)
    torch.testing.assert_close(lse_rows.double(), logits.logsumexp(1), **tol)
    torch.testing.assert_close(lse_cols.double(), logits.logsumexp(0), **tol)
    torch.testing.assert_close(grad_a.double(), 1.7 * a_ref.grad, **tol)
    torch.testing.assert_close(grad_b.double(), 1.7 * b_ref.grad, **tol)
    torch.testing.assert_close(grad_t.double(), 1.7 * t_ref.grad, **tol)
