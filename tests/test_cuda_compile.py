"""The CUDA sources compile, and their kernels compute the reference, also where there is no GPU.

* ``csrc/cuda/*.cu`` are compiled to one object file with ``nvcc -c`` against the
  installed torch's headers, with the flags of ``setup.py`` (imported from it): machine
  code for sm_80 and sm_90 and the PTX of compute_90. The sources are compiled as one
  unit (each includes the same heavy ATen headers; parsing them once per architecture
  instead of once per file and architecture halves the time), so their file-local names
  must stay distinct. The compile runs in the background while the emulated tests run.
  Skipped where ``nvcc`` or torch's CUDA headers are missing, and where the installed
  extension was itself built with CUDA (that build compiled the same sources).
* (slow) The same sources, launches rewritten for ``csrc/cuda/emulation``, are built as
  a CPU library that runs every kernel thread as a CPU thread, with scratch and tile
  sizes small enough that the chunking and tiling paths all run; its results must match
  the pure-PyTorch reference in float64, float32, float16 and bfloat16 (the 16-bit
  kernels are the CUDA code itself, on c10::Half / c10::BFloat16; only the GEMMs that
  ATen runs on CUDA with a float32 out_dtype are done on float32 copies, see
  common.cuh). Skipped where tgfr._C has the real CUDA kernels.
"""
import importlib.util
import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from tgfr.ops.info_nce import info_nce_reference
from tgfr.ops.word_region import word_region_scores_loop

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_SOURCES = sorted((CSRC / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")
TORCH_INCLUDE = Path(cpp_extension.include_paths()[0])


def load_setup():
    spec = importlib.util.spec_from_file_location("tgfr_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the build flags, builds nothing
    return module


SETUP = load_setup()
ARCHS = SETUP.cuda_archs(SETUP.DEFAULT_CUDA_ARCHS)


def extension_built_with_cuda() -> bool:
    try:
        from tgfr import _C
    except ImportError:
        return False
    return _C.built_with_cuda()


def torch_cxx_standard() -> str:
    """The -std torch's BuildExtension adds when setup.py gives none (c++17 up to torch 2.11, c++20 later)."""
    found = re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", inspect.getsource(cpp_extension))
    return found.group(1) if found else "c++17"


def nvcc_command(source: Path, output: Path, archs=ARCHS) -> list[str]:
    flags = SETUP.NVCC_FLAGS + SETUP.gencode_flags(archs) + cpp_extension.COMMON_NVCC_FLAGS
    flags += [f"-std={torch_cxx_standard()}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    flags += ["-Xcompiler", "-fPIC", "-DTGFR_WITH_CUDA=1", "--threads", "2"]  # one thread per architecture
    if not (TORCH_INCLUDE / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # a CPU build of torch does not generate this header; it only holds build-time macros
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{CSRC}"]
    return [NVCC, *flags, *includes, "-c", str(source), "-o", str(output)]


def compile_cuda(source: Path, output: Path, archs=ARCHS) -> subprocess.CompletedProcess:
    return subprocess.run(nvcc_command(source, output, archs), capture_output=True, text=True)


def unity_source(directory: Path, sources) -> Path:
    """One translation unit that includes every given source."""
    unit = directory / "all_sources.cu"
    unit.write_text("".join(f'#include "{s}"\n' for s in sources))
    return unit


def cuobjdump():
    """cuobjdump of the CUDA toolkit, or the copy triton ships; None if neither is there."""
    found = shutil.which("cuobjdump") or (Path(cpp_extension.CUDA_HOME or "/nonexistent") / "bin" / "cuobjdump")
    if Path(found).exists():
        return str(found)
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else None


def test_cuda_sources_exist():
    names = {p.name for p in CUDA_SOURCES}
    assert {"word_region_cuda.cu", "info_nce_cuda.cu"} <= names


# an atomic read-modify-write (atomicAdd, ATen's gpuAtomicAdd / fastAtomicAdd, atomicCAS, ...)
ATOMIC_CALL = re.compile(r"\b\w*[aA]tomic[A-Z]\w*\s*\(")
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
ALERT = "alertNotDeterministic("


def atomics_without_alert(source_text: str) -> list[str]:
    """The atomic calls of a CUDA source that never calls at::globalContext().alertNotDeterministic:
    their additions land in the order the threads run, so the results vary run to run, and PyTorch's
    convention is an error under torch.use_deterministic_algorithms(True)."""
    code = COMMENT.sub("", source_text)
    return [] if ALERT in code else ATOMIC_CALL.findall(code)


def test_atomics_without_alert_are_found():
    atomic = "__global__ void k(float* x) { atomicAdd(x, 1.f); gpuAtomicAdd(x + 1, 2.f); }\n"
    assert atomics_without_alert(atomic) == ["atomicAdd(", "gpuAtomicAdd("]
    alerted = 'void launch() { at::globalContext().alertNotDeterministic("k"); }\n' + atomic
    assert atomics_without_alert(alerted) == []
    assert atomics_without_alert("// no atomicAdd(x) here\nstd::atomic<int> n; /* atomicCAS( */\n") == []


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_sources_follow_the_determinism_convention(source):
    # the kernels sum in a fixed order (outputs owned by one thread block, GEMMs through ATen, whose
    # cuBLAS calls check CUBLAS_WORKSPACE_CONFIG under use_deterministic_algorithms); atomics would
    # need the alert
    assert atomics_without_alert(source.read_text()) == [], source.name


def test_setup_embeds_ptx_of_the_newest_arch():
    flags = SETUP.gencode_flags(["80", "90a"])
    pairs = [flags[i + 1] for i in range(0, len(flags), 2)]
    assert pairs == ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a", "arch=compute_90,code=compute_90"]
    assert SETUP.cuda_archs("80; 90") == ["80", "90"]


def test_setup_rejects_mismatched_cuda_major(capsys):
    SETUP.check_cuda_versions("13.0", "13.2")  # minor versions may differ
    with pytest.raises(SystemExit) as failure:
        SETUP.check_cuda_versions("12.8", "13.0")
    message = str(failure.value)
    assert message.startswith("tgfr setup: error:") and "CUDA 12.8" in message and "13.0" in message
    assert "TGFR_NO_CUDA=1" in message
    with pytest.raises(SystemExit, match="TGFR_CUDA_ARCHS"):
        SETUP.cuda_archs("sm_90")


# --------------------------------------------------------------------------- compiled by nvcc

nvcc_skips = [
    (NVCC is None, "nvcc not found"),
    (extension_built_with_cuda(), "the installed tgfr._C was compiled from these sources"),
    (not (TORCH_INCLUDE / "c10" / "cuda" / "CUDAGuard.h").exists(), "torch ships no c10/cuda headers"),
]


def needs_nvcc(test):
    """Skip where the sources cannot, or need not, be compiled here."""
    for condition, reason in nvcc_skips:
        test = pytest.mark.skipif(condition, reason=reason)(test)
    return test


@pytest.fixture(scope="module")
def nvcc_build(tmp_path_factory):
    """Starts compiling every CUDA source (one unit) in the background; the test waits for it."""
    if any(condition for condition, _ in nvcc_skips):
        yield None
        return
    directory = tmp_path_factory.mktemp("nvcc")
    output = directory / "all_sources.o"
    process = subprocess.Popen(
        nvcc_command(unity_source(directory, CUDA_SOURCES), output),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    yield process, output
    if process.poll() is None:
        process.kill()
        process.wait()


@needs_nvcc
def test_broken_source_is_reported(tmp_path):
    broken = tmp_path / "broken.cu"
    broken.write_text("__global__ void kernel(float* x) { x[0] = undefined_name; }\n")
    result = compile_cuda(broken, tmp_path / "broken.o", archs=["80"])
    assert result.returncode != 0 and "undefined_name" in result.stderr


# --------------------------------------------------------------------------- emulated on the CPU

EMULATION = CSRC / "cuda" / "emulation"
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
def emulated(nvcc_build, tmp_path_factory):
    """The emulated kernels as torch.ops.tgfr_cuda_emulated.* (requests nvcc_build only to start it first)."""
    if extension_built_with_cuda():
        pytest.skip("the real CUDA kernels are tested on the device by test_ops.py")
    if not cpp_extension.is_ninja_available():
        pytest.skip("ninja is needed to build the emulated kernels")
    root = tmp_path_factory.mktemp("cuda_emulated")
    (root / "cuda").mkdir()
    for header in CSRC.glob("*.h"):
        shutil.copy(header, root)
    for header in (CSRC / "cuda").glob("*.cuh"):
        shutil.copy(header, root / "cuda")
    rewritten = []
    for source in CUDA_SOURCES:
        rewritten.append(root / "cuda" / f"{source.stem}.cpp")
        rewritten[-1].write_text(emulated_source(source))
    unit = root / "emulated.cpp"  # one unit: the torch headers are parsed once
    unit.write_text("".join(f'#include "{s}"\n' for s in [EMULATION / "bindings.cpp", *rewritten]))
    flags = ["-std=c++20", "-O1", "-DTGFR_WITH_CUDA", "-DTGFR_CUDA_EMULATION"]
    flags += ["-include", str(EMULATION / "cuda_emulation.h")]
    flags += [f"-D{name}={value}" for name, value in EMULATION_KNOBS.items()]
    cpp_extension.load(
        name="tgfr_cuda_emulated",
        sources=[str(unit)],
        extra_include_paths=[str(EMULATION), str(root)],  # the stand-in c10/cuda headers come first
        extra_cflags=flags,
        build_directory=str(root),
        is_python_module=False,
    )
    return torch.ops.tgfr_cuda_emulated


# rtol, and an absolute floor as a fraction of the largest expected magnitude
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (1e-2, 2e-3),
    torch.bfloat16: (6e-2, 1.5e-2),
}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f64", "f32", "f16", "bf16"]


def assert_close(actual, expected, dtype, what=""):
    """`actual` (any dtype) against a float64 `expected`, within `dtype`'s tolerance; the absolute part
    never falls below the floor times the largest expected magnitude (or times 1 when that is 0)."""
    rtol, floor = TOLERANCES[dtype]
    magnitude = expected[expected.isfinite()].abs().max().item() if expected.isfinite().any() else 1.0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=floor * (magnitude or 1.0), msg=what or None)


def rounded(x, dtype):
    """x rounded to dtype and back to float64: the reference then sees exactly the kernels' inputs."""
    return x.to(dtype).double()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_emulated_word_region_matches_reference(emulated, dtype):
    gen = torch.Generator().manual_seed(7)
    B_v, B_t, T, N, D = 7, 5, 6, 9, 10
    words = rounded(torch.randn(B_t, T, D, generator=gen, dtype=torch.float64), dtype)
    if dtype != torch.float16:  # its gradient (~1e7) is past float16's range
        words[2, 1] = 0  # a zero word: the cosine's denominator is clamped at eps
    regions = rounded(torch.randn(B_v, N, D, generator=gen, dtype=torch.float64), dtype)
    lengths = torch.randint(1, T + 1, (B_t,), generator=gen)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    upstream = rounded(torch.randn(B_v, B_t, generator=gen, dtype=torch.float64) / (B_v * B_t), dtype)
    w_ref, r_ref = words.clone().requires_grad_(), regions.clone().requires_grad_()
    expected = word_region_scores_loop(w_ref, r_ref, mask)
    (expected * upstream).sum().backward()

    w, r = words.to(dtype), regions.to(dtype)
    scores = emulated.word_region_scores_forward(w, r, mask, 4.0, 5.0, 1e-8)
    grad_words, grad_regions = emulated.word_region_scores_backward(upstream.to(dtype), w, r, mask, 4.0, 5.0, 1e-8)
    assert scores.dtype == grad_words.dtype == grad_regions.dtype == dtype
    assert_close(scores, expected.detach(), dtype, "scores")
    assert_close(grad_words, w_ref.grad, dtype, "grad_words")
    assert_close(grad_regions, r_ref.grad, dtype, "grad_regions")
    assert torch.all(grad_words[~mask] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["f64", "f16"])
def test_emulated_word_region_all_padded_caption(emulated, dtype):
    """A caption without words: score -inf in every row, zero gradient for its words, and
    nothing (not even a NaN upstream gradient) reaches the regions through it."""
    gen = torch.Generator().manual_seed(8)
    B_v, B_t, T, N, D = 5, 4, 5, 7, 8
    words = rounded(torch.randn(B_t, T, D, generator=gen, dtype=torch.float64), dtype)
    regions = rounded(torch.randn(B_v, N, D, generator=gen, dtype=torch.float64), dtype)
    mask = torch.arange(T)[None, :] < torch.tensor([T, 3, 0, 2])[:, None]
    upstream = rounded(torch.randn(B_v, B_t, generator=gen, dtype=torch.float64) / (B_v * B_t), dtype)
    upstream[:, 2] = float("nan")
    keep = torch.tensor([0, 1, 3])
    w_ref, r_ref = words[keep].clone().requires_grad_(), regions.clone().requires_grad_()
    expected = word_region_scores_loop(w_ref, r_ref, mask[keep])
    (expected * upstream[:, keep]).sum().backward()

    w, r = words.to(dtype), regions.to(dtype)
    scores = emulated.word_region_scores_forward(w, r, mask, 4.0, 5.0, 1e-8)
    grad_words, grad_regions = emulated.word_region_scores_backward(upstream.to(dtype), w, r, mask, 4.0, 5.0, 1e-8)
    assert torch.all(scores[:, 2] == float("-inf"))
    assert_close(scores[:, keep], expected.detach(), dtype, "scores")
    assert torch.all(grad_words[2] == 0)
    assert_close(grad_words[keep], w_ref.grad, dtype, "grad_words")
    assert grad_regions.isfinite().all()
    assert_close(grad_regions, r_ref.grad, dtype, "grad_regions")


# (B, M, offset, symmetric): square as in training; positives straddling a column tile
# (columns are tiled by 256 here) with extra negatives on both sides; one-directional
INFO_NCE_LAYOUTS = [(300, 300, 0, True), (100, 300, 200, True), (150, 290, 37, False)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", INFO_NCE_LAYOUTS, ids=["square", "rect", "rect-rows"])
@pytest.mark.parametrize("with_ids", [False, True], ids=["distinct", "shared-ids"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_emulated_info_nce_matches_reference(emulated, dtype, with_ids, layout):
    B, M, offset, symmetric = layout
    gen = torch.Generator().manual_seed(11)
    D = 12
    b = torch.nn.functional.normalize(torch.randn(M, D, generator=gen, dtype=torch.float64), dim=1)
    a = b[offset : offset + B] + 0.5 * torch.randn(B, D, generator=gen, dtype=torch.float64)
    a, b = rounded(torch.nn.functional.normalize(a, dim=1), dtype), rounded(b, dtype)
    temperature = torch.tensor(0.13, dtype=torch.float64)
    class_ids = torch.randint(0, M // 3, (M,), generator=gen) if with_ids else torch.arange(M)
    a_ref, b_ref, t_ref = a.clone().requires_grad_(), b.clone().requires_grad_(), temperature.clone().requires_grad_()
    expected = info_nce_reference(
        a_ref, b_ref, t_ref, class_ids if with_ids else None, offset=offset, symmetric=symmetric
    )
    expected.backward()
    positives = torch.arange(offset, offset + B)
    same = class_ids[positives][:, None] == class_ids[None, :]
    same[torch.arange(B), positives] = False
    logits = (a @ b.t() / temperature).masked_fill(same, float("-inf"))

    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tau = temperature.to(stat_dtype)
    loss, lse_rows, lse_cols = emulated.info_nce_forward(a.to(dtype), b.to(dtype), tau, class_ids, offset, symmetric)
    grad_loss = torch.tensor(1.7, dtype=stat_dtype)
    grad_a, grad_b, grad_t = emulated.info_nce_backward(
        grad_loss, a.to(dtype), b.to(dtype), tau, class_ids, lse_rows, lse_cols, offset, symmetric
    )
    assert grad_a.dtype == grad_b.dtype == dtype and lse_rows.dtype == grad_t.dtype == stat_dtype
    # GEMM results and statistics are float32 for the 16-bit inputs: only the outputs stored
    # in the input dtype (grad_a, grad_b) carry its rounding
    stats_tol = dtype if dtype in (torch.float64, torch.float32) else torch.float32
    assert_close(loss, expected.detach(), stats_tol, "loss")
    assert_close(lse_rows, logits.logsumexp(1), stats_tol, "lse_rows")
    if symmetric:
        assert_close(lse_cols, logits[:, offset : offset + B].logsumexp(0), stats_tol, "lse_cols")
    else:
        assert lse_cols.numel() == 0
    assert_close(grad_a, 1.7 * a_ref.grad, dtype, "grad_a")
    assert_close(grad_b, 1.7 * b_ref.grad, dtype, "grad_b")
    assert_close(grad_t, 1.7 * t_ref.grad, stats_tol, "grad_temperature")


@pytest.mark.slow
def test_emulated_info_nce_float16_small_gradients_keep_precision(emulated):
    """d(loss)/d(logits) below float16's normal range (2^-14), as a softmax probability ~1/M
    is past M = 16K columns, must keep its precision in the float16 GEMM operand. Here the
    extra negatives of b (columns B..M-1) get such entries only (confident positives at a low
    temperature), and their rows of grad_b are made of nothing else: stored unscaled their
    error is ~100 %, scaled by a power of two ~5e-4. The incoming gradient is 2^16, as
    torch.amp.GradScaler makes it; the float16 results themselves would underflow otherwise."""
    gen = torch.Generator().manual_seed(5)
    B, M, D = 16, 144, 64
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    a = rounded(basis[:B], torch.float16)
    positives = basis[:B] + 0.3 * torch.randn(B, D, generator=gen, dtype=torch.float64) / D**0.5
    negatives = torch.randn(M - B, D, generator=gen, dtype=torch.float64)
    b = rounded(torch.nn.functional.normalize(torch.cat([positives, negatives]), dim=1), torch.float16)
    temperature = torch.tensor(0.05, dtype=torch.float64)
    softmax_rows = (a @ b.t() / temperature).softmax(1)
    assert (softmax_rows[:, B:] < 2**-14).float().mean() > 0.95  # the regime this test is about

    grad_loss = 2.0**16
    a_ref, b_ref = a.clone().requires_grad_(), b.clone().requires_grad_()
    (grad_loss * info_nce_reference(a_ref, b_ref, temperature)).backward()
    tau, ids = temperature.float(), torch.arange(M)
    _, lse_rows, lse_cols = emulated.info_nce_forward(a.half(), b.half(), tau, ids, 0, True)
    _, grad_b, _ = emulated.info_nce_backward(
        torch.tensor(grad_loss), a.half(), b.half(), tau, ids, lse_rows, lse_cols, 0, True
    )
    want = b_ref.grad[B:]
    row_error = (grad_b[B:].double() - want).norm(dim=1) / want.norm(dim=1)
    assert row_error.max() < 3e-3, row_error.max()


@needs_nvcc
def test_cuda_sources_compile_for_every_arch(nvcc_build):
    """Runs last: waits for the background compile started with the module's first fixture."""
    process, output = nvcc_build
    log, _ = process.communicate()
    assert process.returncode == 0, f"nvcc failed on {[s.name for s in CUDA_SOURCES]}:\n{log[-6000:]}"
    assert output.stat().st_size > 0
    tool = cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump to list the embedded code")
    elf = subprocess.run([tool, "--list-elf", str(output)], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", str(output)], capture_output=True, text=True, check=True).stdout
    assert {f"sm_{a}" for a in ARCHS} <= set(re.findall(r"sm_\d+\w?", elf)), elf
    assert re.findall(r"sm_\d+\w?", ptx) == [f"sm_{max(ARCHS, key=int)}"], ptx
