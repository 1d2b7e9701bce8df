"""Compile the Triton kernels for a GPU architecture on a machine without one.

Uses the tiles the host functions pick on a GPU for the paper's shapes (T = 22 words,
N = 196 regions, D = 256) and reports what ptxas made of each kernel: registers per
thread, spill stack and shared memory. A kernel that fails to compile, or needs more
shared memory than the architecture has, fails here instead of on the first GPU run.

    python -m tgfr.kernels.compile_check [--arch 90] [--dtypes bf16 fp32 fp64]

Must run without ``TRITON_INTERPRET=1`` (the interpreter replaces the compiler).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import _common, info_nce, word_region

# largest dynamic shared memory per block, by compute capability
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def _pointer(dtype: torch.dtype) -> str:
    return "*" + _TRITON_TYPES[dtype]


def _launches(dtype: torch.dtype):
    """(name, kernel, signature, launch config) of every kernel, as the host would launch it."""
    acc = _common.accumulation_dtype(dtype)
    words = torch.empty(4, 22, 256, dtype=dtype, device="meta")
    regions = torch.empty(4, 196, 256, dtype=dtype, device="meta")
    embeddings = torch.empty(4, 256, dtype=dtype, device="meta")
    with mock.patch.object(_common, "interpreted", return_value=False), \
         mock.patch.object(word_region, "interpreted", return_value=False), \
         mock.patch.object(info_nce, "interpreted", return_value=False):
        scores_forward = word_region._launch_config(words, regions, "forward", None, None)
        scores_backward = word_region._launch_config(words, regions, "backward", None, None)
        lse = info_nce._launch_config(embeddings, "lse", None, None)
        grad = info_nce._launch_config(embeddings, "grad", None, None)
    sizes = ("B_t", "T", "N", "D")
    paper_constants = {"GAMMA1": 4.0, "GAMMA2": 5.0, "EPS": 1e-8}
    yield "word_region forward", word_region._scores_forward_kernel, {
        "words_ptr": _pointer(dtype), "regions_ptr": _pointer(dtype), "mask_ptr": "*u8", "scores_ptr": _pointer(dtype),
        **{name: "i32" for name in sizes}}, {**scores_forward, **paper_constants}
    yield "word_region backward", word_region._scores_backward_kernel, {
        "grad_scores_ptr": _pointer(dtype), "words_ptr": _pointer(dtype), "regions_ptr": _pointer(dtype),
        "mask_ptr": "*u8", "grad_words_ptr": _pointer(acc), "grad_regions_ptr": _pointer(acc),
        **{name: "i32" for name in sizes + ("blocks_per_group",)}}, {**scores_backward, **paper_constants}
    stats = {"ids_ptr": "*i64", "temp_ptr": _pointer(acc)}
    yield "info_nce lse", info_nce._row_lse_kernel, {
        "x_ptr": _pointer(dtype), "y_ptr": _pointer(dtype), **stats, "lse_ptr": _pointer(acc),
        "nll_ptr": _pointer(acc), "B": "i32", "D": "i32"}, lse
    yield "info_nce grad", info_nce._row_grad_kernel, {
        "x_ptr": _pointer(dtype), "y_ptr": _pointer(dtype), **stats, "grad_loss_ptr": _pointer(acc),
        "lse_x_ptr": _pointer(acc), "lse_y_ptr": _pointer(acc), "grad_x_ptr": _pointer(dtype),
        "tau_partial_ptr": _pointer(acc), "B": "i32", "D": "i32"}, {**grad, "REDUCE_TAU": True}


def _resource_usage(cubin: bytes) -> dict:
    """Registers and spill stack per thread, read from the cubin by cuobjdump."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run([cuobjdump, "--dump-resource-usage", file.name],
                                 capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+).*?STACK:(\d+)", listing)
    return {"registers": int(usage.group(1)), "spill_stack": int(usage.group(2))}


def compile_kernels(dtype: torch.dtype, arch: int = 90) -> list[dict]:
    """Compile every kernel for inputs of ``dtype`` on ``sm_<arch>``; one report per kernel."""
    if _common.interpreted():
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset: the interpreter replaces the compiler")
    reports = []
    for name, kernel, signature, config in _launches(dtype):
        config = dict(config)
        options = {"num_warps": config.pop("num_warps"), "num_stages": config.pop("num_stages")}
        source = ASTSource(fn=kernel, signature={**signature, **{k: "constexpr" for k in config}}, constexprs=config)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
        reports.append({"kernel": name, "dtype": _TRITON_TYPES[dtype], "shared_memory": compiled.metadata.shared,
                        **_resource_usage(compiled.asm["cubin"]), **options})
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32", "fp64"], choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    limit = SHARED_MEMORY_LIMIT.get(args.arch)
    too_big = 0
    for dtype in args.dtypes:
        for report in compile_kernels(DTYPES[dtype], args.arch):
            fits = limit is None or report["shared_memory"] <= limit
            too_big += not fits
            print(f"{report['kernel']:<22} {report['dtype']:<5} warps={report['num_warps']:<2} "
                  f"stages={report['num_stages']} registers={report['registers']:<3} "
                  f"spill={report['spill_stack']:>5} B  smem={report['shared_memory']:>6} B"
                  + ("" if fits else f"  > {limit} B available"))
    return 1 if too_big else 0


if __name__ == "__main__":
    raise SystemExit(main())
