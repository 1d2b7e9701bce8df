"""Op-level micro-benchmarks (pytest-benchmark): every available backend, forward and forward+backward,
at a small and a medium size, on the CPU and (where there is one) a CUDA device.

    pytest benchmarks/ --benchmark-only                                  # tables, one group per op/size/device/mode
    pytest benchmarks/ --benchmark-only --benchmark-json=before.json     # save the numbers ...
    pytest benchmarks/ --benchmark-only --benchmark-json=after.json      # ... change something, save again
    pytest-benchmark compare before.json after.json --group-by=group     # and compare

They are not part of the test suite (``testpaths = ["tests"]``). The inputs and the forward/backward are
those of the full benchmarks (``tgfr.bench.cases``). Triton on the CPU would time its interpreter: skipped.
"""
import pytest
import torch

from tgfr.bench.cases import available, make_case

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZES = {
    "word_region": {"small": dict(batch=8, T=22, N=196, D=256), "medium": dict(batch=32, T=22, N=196, D=256)},
    "info_nce": {"small": dict(batch=1024, D=256), "medium": dict(batch=4096, D=256)},
}
IMPLS = {
    "word_region": ("published", "reference", "vectorized", "cpp", "cuda", "triton"),
    "info_nce": ("cross_entropy", "cpp", "cuda", "triton"),
}
PARAMS = [
    pytest.param(op, size, device, impl, mode, id=f"{op}-{size}-{device}-{impl}-{mode}")
    for op in IMPLS
    for size in SIZES[op]
    for device in DEVICES
    for impl in IMPLS[op]
    for mode in ("forward", "forward+backward")
]


@pytest.mark.parametrize("op, size, device, impl, mode", PARAMS)
def test_op(benchmark, op, size, device, impl, mode):
    if not available(impl, device) or (impl == "triton" and device == "cpu"):
        pytest.skip(f"{impl} does not run (natively) on {device} here")
    spec = dict(op=op, impl=impl, dtype="fp32", device=device, **SIZES[op][size])
    case = make_case(spec)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        case.forward()
        sync()

    def forward_backward():
        case.step()
        sync()

    benchmark.group = f"{op} {size} {device} {mode}"
    benchmark.extra_info.update(spec)
    forward_backward()  # warm-up outside the rounds: compilation, first touch
    benchmark(forward if mode == "forward" else forward_backward)
