import os

import pytest
import torch

# Without a GPU the Triton kernels run on the CPU through the interpreter; the
# variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tgfr.ops import backends  # noqa: E402

# Every fused backend on every device it supports, plus the vectorised reference:
# all are checked against the published-loop reference by one suite.
BACKEND_DEVICES = [("vectorized", "cpu"), ("cpp", "cpu"), ("triton", "cpu")]
if torch.cuda.is_available():
    BACKEND_DEVICES += [("vectorized", "cuda"), ("cuda", "cuda"), ("triton", "cuda")]


def _param(backend, device):
    return pytest.param((backend, torch.device(device)), id=f"{backend}-{device}")


@pytest.fixture(params=[_param(b, d) for b, d in BACKEND_DEVICES])
def backend_device(request):
    backend, device = request.param
    if not backends.is_available(backend, device):
        pytest.skip(f"backend {backend} not available on {device}")
    return backend, device


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
