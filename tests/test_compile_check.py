"""``compile_check`` compiles what the host functions launch, specialised as the runtime would.

The compiler needs no GPU but a few seconds per kernel, so one architecture and one dtype
are compiled here; CI runs the full check (sm_80 and sm_90, two triton versions).
"""
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
compile_check = pytest.importorskip("tgfr.kernels.compile_check")
from tgfr.kernels import info_nce, word_region  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _sources(run_host):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", 90, 32))
    return [compile_check._source(kernel, args, kwargs, backend)
            for kernel, args, kwargs in compile_check._captured_launches(run_host)]


def test_launches_carry_the_runtime_specialisation():
    gpu = compile_check.GPU.of_arch(90)
    a = torch.empty(128, 256, dtype=torch.bfloat16, device="meta")
    ids = torch.empty(128, dtype=torch.int64, device="meta")
    t = torch.empty((), dtype=torch.float32, device="meta")
    (rows, _options), (cols, _) = _sources(lambda: info_nce.info_nce_forward(a, a, t, ids, gpu=gpu))
    divisible = [["tt.divisibility", 16]]
    names = info_nce._row_lse_kernel.arg_names
    marked = {names[key[0]] for key, value in rows.attrs.items() if value == divisible}
    # aligned pointers and the integers divisible by 16 (B = 128, D = 256); diag_offset 0 too
    assert {"x_ptr", "y_ptr", "lse_ptr", "R", "C", "D"} <= marked
    assert rows.signature["BLOCK_D"] == "constexpr" and rows.signature["R"] == "i32"


def test_launches_are_the_dispatched_configuration():
    gpu = compile_check.GPU.of_arch(86)
    words = torch.empty(8, 48, 256, dtype=torch.bfloat16, device="meta")
    regions = torch.empty(8, 196, 256, dtype=torch.bfloat16, device="meta")
    mask = torch.empty(8, 48, dtype=torch.bool, device="meta")
    [(source, options)] = _sources(
        lambda: word_region.word_region_scores_forward(words, regions, mask, 4.0, 5.0, 1e-8, gpu=gpu))
    expected = word_region._launch_config(words, regions, "forward", gpu=gpu)
    assert options == {"num_warps": expected["num_warps"], "num_stages": expected["num_stages"]}
    constants = {source.fn.arg_names[key[0]]: value for key, value in source.constants.items()}
    for name in ("CAPS", "T_PAD", "N_PAD", "BLOCK_D"):
        assert constants[name] == expected[name]


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="triton ships no ptxas here")
def test_compile_check_passes_at_the_paper_shapes():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "tgfr.kernels.compile_check", "--arch", "90", "--dtype", "bf16",
                             "--shape", "22,196,256"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for kernel in ("word_region forward", "word_region backward", "info_nce lse", "info_nce grad"):
        assert kernel in result.stdout


def test_compile_check_rejects_a_bad_shape():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "tgfr.kernels.compile_check", "--shape", "22,196"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "T,N,D" in result.stderr
