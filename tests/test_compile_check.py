"""``compile_check`` compiles what the host functions launch, specialised as the runtime would.

The compiler needs no GPU but a few seconds per kernel, so one architecture and one dtype
are compiled here; CI runs the full check (sm_80 and sm_90, two triton versions).
"""
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


# Run by the compiler's Python side, which TRITON_INTERPRET=1 (set for the suite on a CPU) replaces:
# hence a subprocess without it.
_INSPECT_LAUNCHES = """
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from tgfr.kernels import compile_check, info_nce, word_region

def sources(run_host):
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return [compile_check._source(kernel, args, kwargs, backend)
            for kernel, args, kwargs in compile_check._captured_launches(run_host)]

# the runtime's specialisation: aligned pointers and integers divisible by 16 (B = 128, D = 256)
gpu = compile_check.GPU.of_arch(90)
a = torch.empty(128, 256, dtype=torch.bfloat16, device="meta")
ids = torch.empty(128, dtype=torch.int64, device="meta")
t = torch.empty((), dtype=torch.float32, device="meta")
(rows, _), (cols, _) = sources(lambda: info_nce.info_nce_forward(a, a, t, ids, gpu=gpu))
names = info_nce._row_lse_kernel.arg_names
marked = {names[key[0]] for key, value in rows.attrs.items() if value == [["tt.divisibility", 16]]}
assert {"x_ptr", "y_ptr", "lse_ptr", "R", "C", "D"} <= marked, marked
assert rows.signature["BLOCK_D"] == "constexpr" and rows.signature["R"] == "i32"

# the configuration the dispatcher launches, sized for the 99 KB of sm_86
gpu = compile_check.GPU.of_arch(86)
words = torch.empty(8, 48, 256, dtype=torch.bfloat16, device="meta")
regions = torch.empty(8, 196, 256, dtype=torch.bfloat16, device="meta")
mask = torch.empty(8, 48, dtype=torch.bool, device="meta")
[(source, options)] = sources(lambda: word_region.word_region_scores_forward(words, regions, mask, 4.0, 5.0, 1e-8,
                                                                            gpu=gpu))
expected = word_region._launch_config(words, regions, "forward", gpu=gpu)
assert options == {"num_warps": expected["num_warps"], "num_stages": expected["num_stages"]}
constants = {source.fn.arg_names[key[0]]: value for key, value in source.constants.items()}
assert all(constants[name] == expected[name] for name in ("CAPS", "T_PAD", "N_PAD", "BLOCK_D")), constants
print("checked")
"""


def _compiler_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_launches_are_the_dispatched_configuration_with_the_runtime_specialisation():
    result = subprocess.run([sys.executable, "-c", _INSPECT_LAUNCHES], env=_compiler_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "checked" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="triton ships no ptxas here")
def test_compile_check_passes_at_the_paper_shapes():
    result = subprocess.run([sys.executable, "-m", "tgfr.kernels.compile_check", "--arch", "90", "--dtype", "bf16",
                             "--shape", "22,196,256"], env=_compiler_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for kernel in ("word_region forward", "word_region backward", "info_nce lse", "info_nce grad"):
        assert kernel in result.stdout


def test_compile_check_rejects_a_bad_shape():
    result = subprocess.run([sys.executable, "-m", "tgfr.kernels.compile_check", "--shape", "22,196"],
                            env=_compiler_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "T,N,D" in result.stderr
