"""Compile the Triton kernels for a GPU architecture on a machine without one.

The host functions run on ``meta`` tensors of the given shapes with their tiles sized for
``sm_<arch>``; every launch they make is compiled, not run, with the specialisation the
runtime would apply (16-byte-aligned pointers and integers divisible by 16 marked so).
What ptxas made of each kernel is reported: registers per thread, spill stack and shared
memory. It exits 1 when a kernel fails to compile, needs more shared memory than the
architecture has, or spills more than ``--max-spill`` bytes per thread. A shape that the
kernels decline (``tgfr.kernels.unsupported_reason``) is reported, not compiled: dispatch
sends it to another backend.

    python -m tgfr.kernels.compile_check --arch 90 --dtype bf16 fp32 --shape 22,196,256
    python -m tgfr.kernels.compile_check --arch 86 --grid          # T, N, D up to 64, 784, 1024

Must run without ``TRITON_INTERPRET=1`` (the interpreter replaces the compiler).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction

from tgfr.ops.common import accumulation_dtype, triton_interpreted

from . import info_nce, word_region
from ._common import GPU, SHARED_MEMORY_LIMIT
from .backend import unsupported_reason

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
               torch.uint8: "u8", torch.int64: "i64", torch.int32: "i32"}
# the paper's shapes (T words, N regions, D) and the model's defaults (max_words 48)
PAPER_SHAPE = (22, 196, 256)
MODEL_DEFAULT_SHAPE = (48, 196, 256)
# the coverage promised: T up to 64, N up to 784 (28 x 28 regions), D up to 1024
GRID_T, GRID_N, GRID_D = (22, 48, 64), (49, 196, 784), (256, 512, 1024)
# spill stack per thread a kernel may use (bytes). The float32 word-region backward at the
# paper's shapes needs ~0.9 KB on sm_90, ~1.5 KB on sm_80 (ptxas keeps it to 128 registers
# there); what spills cost is for a GPU measurement to say. float64 (verification, not
# speed) may spill FLOAT64_SPILL_FACTOR times as much.
DEFAULT_MAX_SPILL = 2048
FLOAT64_SPILL_FACTOR = 4


def _captured_launches(run_host):
    """Every ``kernel[grid](*args, **kwargs)`` that ``run_host()`` makes, not run: (kernel, args, kwargs)."""
    launches = []

    def launcher(kernel, grid):
        return lambda *args, **kwargs: launches.append((kernel, args, kwargs))

    with mock.patch.object(JITFunction, "__getitem__", launcher):
        run_host()
    return launches


def _source(kernel, args, kwargs, backend):
    """The ``ASTSource`` the runtime would build for this launch, and its compile options."""
    kwargs = dict(kwargs)
    options = {"num_warps": kwargs.pop("num_warps"), "num_stages": kwargs.pop("num_stages")}
    values = dict(zip(kernel.arg_names, args), **kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        name, value = param.name, values[param.name]
        if param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name] = "constexpr"  # the runtime also folds integers equal to 1
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPE_NAMES[value.dtype]
            # allocations are aligned; a view is aligned when its offset is
            if value.storage_offset() * value.element_size() % 16 == 0:
                attrs[(index,)] = backend.parse_attr("D")
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = backend.parse_attr("D")
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot type argument {name}={value!r}")
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs), options


def _resource_usage(cubin: bytes) -> dict:
    """Registers and spill stack per thread, read from the cubin by cuobjdump."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run([cuobjdump, "--dump-resource-usage", file.name],
                                 capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+).*?STACK:(\d+)", listing)
    return {"registers": int(usage.group(1)), "spill": int(usage.group(2))}


def _host_calls(dtype: torch.dtype, shape: tuple[int, int, int], dim: int, batch: int, gpu: GPU, ops):
    """(op, name, host call) of every host entry point at these sizes, on meta tensors."""
    T, N, D = shape
    meta = dict(dtype=dtype, device="meta")
    acc = accumulation_dtype(dtype)
    words, regions = torch.empty(batch, T, D, **meta), torch.empty(batch, N, D, **meta)
    mask = torch.empty(batch, T, dtype=torch.bool, device="meta")
    grad_scores = torch.empty(batch, batch, dtype=acc, device="meta")
    paper = (4.0, 5.0, 1e-8)
    a, b = torch.empty(batch, dim, **meta), torch.empty(batch, dim, **meta)
    ids = torch.empty(batch, dtype=torch.int64, device="meta")
    temperature, grad_loss = torch.empty((), dtype=acc, device="meta"), torch.empty((), dtype=acc, device="meta")
    lse = torch.empty(batch, dtype=acc, device="meta")
    if "word_region" in ops:
        yield "word_region", "word_region forward", lambda: word_region.word_region_scores_forward(
            words, regions, mask, *paper, gpu=gpu)
        yield "word_region", "word_region backward", lambda: word_region.word_region_scores_backward(
            grad_scores, words, regions, mask, *paper, gpu=gpu)
    if "info_nce" in ops:
        yield "info_nce", "info_nce lse", lambda: info_nce.info_nce_forward(a, b, temperature, ids, gpu=gpu)
        yield "info_nce", "info_nce grad", lambda: info_nce.info_nce_backward(
            grad_loss, a, b, temperature, ids, lse, lse, gpu=gpu)


def compile_kernels(dtype: torch.dtype, arch: int = 90, shape=PAPER_SHAPE, dim: int | None = None,
                    batch: int = 128, ops=("word_region", "info_nce")) -> list[dict]:
    """Compile what the host functions launch for inputs of ``dtype`` on ``sm_<arch>``; one report per kernel.

    A report holds ``kernel``, ``dtype``, ``shape`` and either ``unsupported`` (the reason
    dispatch gives) or ``error`` (the compiler's message), or ``registers``, ``spill``,
    ``shared_memory``, ``num_warps``, ``num_stages`` and the tiles.
    """
    if triton_interpreted():
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset: the interpreter replaces the compiler")
    dim = dim or shape[2]
    gpu = GPU.of_arch(arch)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    sizes = {"word_region": dict(T=shape[0], N=shape[1], D=shape[2]), "info_nce": dict(D=dim)}
    reports = []
    for op, name, run_host in _host_calls(dtype, shape, dim, batch, gpu, ops):
        report = {"kernel": name, "dtype": _TYPE_NAMES[dtype], "arch": arch,
                  "shape": ",".join(map(str, shape)) if op == "word_region" else f"D={dim}"}
        reason = unsupported_reason(op, dtype, sizes[op], gpu=gpu)
        if reason:
            reports.append({**report, "unsupported": reason})
            continue
        compiled_sources = set()
        for kernel, args, kwargs in _captured_launches(run_host):
            source, options = _source(kernel, args, kwargs, backend)
            if source.hash() in compiled_sources:  # the same specialisation launched twice
                continue
            compiled_sources.add(source.hash())
            tiles = {k: v for k, v in kwargs.items() if k.startswith(("BLOCK_", "CAPS", "RESIDENT"))}
            try:
                compiled = triton.compile(source, target=target, options=options)
            except Exception as error:  # noqa: BLE001 - any compiler failure is the finding
                message = [line for line in str(error).splitlines() if line.strip()] or [""]
                reports.append({**report, **tiles, "error": f"{type(error).__name__}: {message[-1][:300]}"})
                continue
            reports.append({**report, **tiles, **options, "shared_memory": compiled.metadata.shared,
                            **_resource_usage(compiled.asm["cubin"])})
    return reports


def failures(report: dict, max_spill: int) -> list[str]:
    """Why a report fails the check (empty when it passes or the shape is declined)."""
    if "unsupported" in report:
        return []
    if "error" in report:
        return [report["error"]]
    problems = []
    limit = SHARED_MEMORY_LIMIT.get(report["arch"])
    if limit is not None and report["shared_memory"] > limit:
        problems.append(f"shared memory {report['shared_memory']} B > {limit} B of sm_{report['arch']}")
    budget = max_spill * (FLOAT64_SPILL_FACTOR if report["dtype"] == "fp64" else 1)
    if report["spill"] > budget:
        problems.append(f"spills {report['spill']} B per thread > budget {budget} B")
    return problems


def format_report(report: dict, problems: list[str]) -> str:
    head = f"sm_{report['arch']} {report['kernel']:<20} {report['dtype']:<4} {report['shape']:<12}"
    if "unsupported" in report:
        return f"{head} unsupported: {report['unsupported']}"
    if "error" in report:
        return f"{head} FAILED: {report['error']}"
    tiles = " ".join(f"{k}={int(v)}" for k, v in report.items() if k.startswith(("BLOCK_", "CAPS")))
    line = (f"{head} warps={report['num_warps']:<2} stages={report['num_stages']} {tiles:<26} "
            f"registers={report['registers']:<3} spill={report['spill']:>5} B  smem={report['shared_memory']:>6} B")
    return line + ("  FAILED: " + "; ".join(problems) if problems else "")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        T, N, D = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,N,D (three integers), got {text!r}") from None
    return T, N, D


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tgfr.kernels.compile_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], choices=sorted(SHARED_MEMORY_LIMIT),
                        help="compute capabilities, e.g. 80 (A100), 86/89 (A10, L4), 90 (H100)")
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16", "fp32", "fp64"], choices=sorted(DTYPES))
    parser.add_argument("--shape", type=_shape, nargs="+", default=[PAPER_SHAPE, MODEL_DEFAULT_SHAPE],
                        metavar="T,N,D", help="word-region sizes (default: the paper's and the model's defaults)")
    parser.add_argument("--dim", type=int, default=None, help="InfoNCE width D (default: D of each --shape)")
    parser.add_argument("--batch", type=int, default=128, help="batch size: decides integer specialisation")
    parser.add_argument("--grid", action="store_true",
                        help=f"every T in {GRID_T}, N in {GRID_N}, D in {GRID_D} instead of --shape")
    parser.add_argument("--max-spill", type=int, default=DEFAULT_MAX_SPILL,
                        help=f"spill stack budget, bytes per thread ({FLOAT64_SPILL_FACTOR}x for fp64)")
    args = parser.parse_args(argv)
    if triton_interpreted():
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the compiler")
    shapes = list(itertools.product(GRID_T, GRID_N, GRID_D)) if args.grid else args.shape
    failed = 0
    print(f"triton {triton.__version__}")
    for arch, dtype, shape in itertools.product(args.arch, args.dtype, shapes):
        # InfoNCE depends on D only: over the grid, once per D is enough
        ops = ("word_region", "info_nce") if not args.grid or shape[:2] == (GRID_T[0], GRID_N[0]) else ("word_region",)
        for report in compile_kernels(DTYPES[dtype], arch, shape, args.dim, args.batch, ops):
            problems = failures(report, args.max_spill)
            failed += bool(problems)
            print(format_report(report, problems), flush=True)
    print(f"{failed} kernel(s) failed" if failed else "all kernels compiled within limits")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
