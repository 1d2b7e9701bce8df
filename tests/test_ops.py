"""One suite for every backend of both ops, against the pure-PyTorch reference.

Ground truth is ``word_region_scores_loop`` (the published loop structure) and
``info_nce_reference`` (full logits + cross-entropy).
Tolerances: float64 to 1e-10 relative, float32 to 1e-5 (values) against the
float64 reference, always with an absolute floor (``conftest.assert_close``). Inputs are fresh random tensors with ragged masks, shapes
that are not multiples of any tile, ``B_v != B_t`` and non-contiguous views.
"""
import importlib
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import BACKEND_DEVICES, assert_close, expected_missing_reason

from tgfr.ops import backends, info_nce, word_region_loss, word_region_scores
from tgfr.ops.info_nce import info_nce_reference
from tgfr.ops.word_region import published_damsm_words_loss, word_region_scores_loop

# (B_v, B_t, T, N, D): odd sizes, B_v != B_t, T = 1, N = 1, D not a multiple of 8.
WORD_REGION_SHAPES = [(3, 2, 5, 7, 12), (2, 3, 1, 4, 9), (2, 2, 4, 1, 6), (4, 3, 6, 9, 13)]
INFO_NCE_SHAPES = [(1, 5), (7, 12), (13, 33)]


def make_word_region_inputs(shape, dtype, device, gen, ragged=True):
    B_v, B_t, T, N, D = shape
    words = torch.randn(B_t, T, D, generator=gen, dtype=torch.float64)
    regions = torch.randn(B_v, N, D, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B_t,), generator=gen) if ragged else torch.full((B_t,), T)
    lengths[0] = T  # at least one full caption
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return words.to(device, dtype), regions.to(device, dtype), mask.to(device)


def make_info_nce_inputs(shape, dtype, device, gen):
    B, D = shape
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    temperature = torch.tensor(0.1 + torch.rand((), generator=gen, dtype=torch.float64).item(), dtype=torch.float64)
    return a.to(device, dtype), b.to(device, dtype), temperature.to(device)


def reference_scores(words, regions, mask, **kw):
    return word_region_scores_loop(words.double().cpu(), regions.double().cpu(), mask.cpu(), **kw)


# --------------------------------------------------------------------------- word-region scores


@pytest.mark.parametrize("shape", WORD_REGION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-5)], ids=["f64", "f32"])
def test_word_region_forward_matches_reference(backend_device, shape, dtype, rtol, atol, rng):
    backend, device = backend_device
    words, regions, mask = make_word_region_inputs(shape, dtype, device, rng)
    scores = word_region_scores(words, regions, mask, backend=backend)
    assert scores.shape == (shape[0], shape[1]) and scores.dtype == dtype and scores.device.type == device.type
    torch.testing.assert_close(scores.double().cpu(), reference_scores(words, regions, mask), rtol=rtol, atol=atol)


@pytest.mark.parametrize("gammas", [(4.0, 5.0), (1.5, 10.0)], ids=["paper", "other"])
def test_word_region_gammas_and_no_mask(backend_device, gammas, rng):
    backend, device = backend_device
    words, regions, _ = make_word_region_inputs((3, 4, 5, 6, 7), torch.float64, device, rng)
    g1, g2 = gammas
    scores = word_region_scores(words, regions, None, gamma1=g1, gamma2=g2, backend=backend)
    full = torch.ones(words.shape[:2], dtype=torch.bool)
    expected = reference_scores(words, regions, full, gamma1=g1, gamma2=g2)
    torch.testing.assert_close(scores.cpu(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", WORD_REGION_SHAPES[:1] + WORD_REGION_SHAPES[3:], ids=str)
def test_word_region_backward_matches_reference(backend_device, shape, rng):
    backend, device = backend_device
    words, regions, mask = make_word_region_inputs(shape, torch.float64, device, rng)
    upstream = torch.randn(shape[0], shape[1], generator=rng, dtype=torch.float64)
    w_ref, r_ref = words.detach().cpu().requires_grad_(), regions.detach().cpu().requires_grad_()
    (word_region_scores_loop(w_ref, r_ref, mask.cpu()) * upstream).sum().backward()
    w, r = words.detach().requires_grad_(), regions.detach().requires_grad_()
    (word_region_scores(w, r, mask, backend=backend) * upstream.to(device)).sum().backward()
    torch.testing.assert_close(w.grad.cpu(), w_ref.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(r.grad.cpu(), r_ref.grad, rtol=1e-9, atol=1e-11)
    # padded words get no gradient
    assert torch.all(w.grad.cpu()[~mask.cpu()] == 0)


def test_word_region_gradcheck(backend_device, rng):
    backend, device = backend_device
    interpreted = backend == "triton" and device.type == "cpu"
    words, regions, mask = make_word_region_inputs((2, 3, 4, 5, 6), torch.float64, device, rng)
    words.requires_grad_()
    regions.requires_grad_()
    fn = lambda w, r: word_region_scores(w, r, mask, backend=backend)  # noqa: E731
    # the interpreter is slow: fast mode checks random projections of the Jacobian
    assert torch.autograd.gradcheck(fn, (words, regions), fast_mode=interpreted)


def test_word_region_non_contiguous(backend_device, rng):
    backend, device = backend_device
    words, regions, mask = make_word_region_inputs((3, 4, 5, 6, 14), torch.float64, device, rng)
    words_nc = words.transpose(0, 1).contiguous().transpose(0, 1)  # strided view of the same values
    regions_nc = torch.cat([regions, regions], dim=2)[:, :, ::2]  # every other column
    regions_dense = regions_nc.contiguous()
    mask_nc = torch.stack([mask, mask], dim=2)[:, :, 0]
    assert not words_nc.is_contiguous() and not regions_nc.is_contiguous() and not mask_nc.is_contiguous()
    got = word_region_scores(words_nc, regions_nc, mask_nc, backend=backend)
    torch.testing.assert_close(got.cpu(), reference_scores(words, regions_dense, mask), rtol=1e-10, atol=1e-12)


def test_word_region_loss_class_ids(backend_device, rng):
    backend, device = backend_device
    words, regions, mask = make_word_region_inputs((5, 5, 4, 6, 8), torch.float64, device, rng)
    class_ids = torch.tensor([0, 1, 0, 2, 1], device=device)
    i2t, t2i = word_region_loss(words, regions, mask, class_ids, gamma3=10.0, backend=backend)
    scores = reference_scores(words, regions, mask)
    logits = 10.0 * scores
    same = (class_ids.cpu()[:, None] == class_ids.cpu()[None, :]) & ~torch.eye(5, dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    expected_i2t = -(logits.diag() - logits.logsumexp(dim=1)).mean()
    expected_t2i = -(logits.diag() - logits.logsumexp(dim=0)).mean()
    torch.testing.assert_close(i2t.cpu(), expected_i2t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t2i.cpu(), expected_t2i, rtol=1e-10, atol=1e-12)
    # masking changes the value: the test would notice a backend that ignores class_ids
    plain_i2t, _ = word_region_loss(words, regions, mask, None, backend=backend)
    assert not torch.allclose(plain_i2t, i2t)


def test_reference_equals_published_damsm_words_loss(rng):
    B, T, N, D = 5, 6, 9, 10
    words, regions, _ = make_word_region_inputs((B, B, T, N, D), torch.float64, "cpu", rng, ragged=False)
    class_ids = torch.tensor([3, 1, 3, 0, 1])
    labels = torch.arange(B)
    expected = published_damsm_words_loss(
        regions.transpose(1, 2), words.transpose(1, 2), labels, [T] * B, class_ids, B
    )
    for backend in ("reference", "vectorized"):
        got = word_region_loss(words, regions, None, class_ids, backend=backend)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)


def test_word_region_bad_input(backend_device, rng):
    backend, device = backend_device
    words, regions, mask = make_word_region_inputs((2, 3, 4, 5, 6), torch.float64, device, rng)
    cases = [
        (dict(words=words[0]), ValueError, "words must have 3 dimensions"),
        (dict(regions=regions[..., :5]), ValueError, "share the embedding width D"),
        (dict(regions=regions.float()), ValueError, "regions has dtype"),
        (dict(regions=regions.to("meta")), ValueError, "regions is on meta"),
        (dict(word_mask=mask[:, :3]), ValueError, "word_mask must have shape"),
        (dict(word_mask=mask.long()), ValueError, "word_mask must have dtype"),
        (dict(words=words.long()), ValueError, "words must have dtype"),
    ]
    empty = mask.clone()
    empty[1] = False
    cases.append((dict(word_mask=empty), ValueError, r"caption\(s\) \[1\]"))
    nan_words = words.clone()
    nan_words[1, 2, 3] = float("nan")
    cases.append((dict(words=nan_words), ValueError, "words contains NaN"))
    inf_regions = regions.clone()
    inf_regions[0, 1, 2] = float("inf")
    cases.append((dict(regions=inf_regions), ValueError, "regions contains NaN or Inf"))
    for override, error, message in cases:
        args = dict(words=words, regions=regions, word_mask=mask)
        args.update(override)
        with pytest.raises(error, match=message):
            word_region_scores(**args, backend=backend)


# --------------------------------------------------------------------------- InfoNCE


def _info_nce_case(backend, device, shape, dtype, gen, class_ids=None):
    a, b, t = make_info_nce_inputs(shape, dtype, device, gen)
    got = info_nce(a, b, t, class_ids, backend=backend)
    expected = info_nce_reference(a.double().cpu(), b.double().cpu(), t.cpu(), None if class_ids is None else class_ids.cpu())
    return got, expected


@pytest.mark.parametrize("shape", INFO_NCE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-5)], ids=["f64", "f32"])
def test_info_nce_forward_matches_reference(backend_device, shape, dtype, rtol, atol, rng):
    backend, device = backend_device
    got, expected = _info_nce_case(backend, device, shape, dtype, rng)
    assert got.dim() == 0
    torch.testing.assert_close(got.double().cpu(), expected, rtol=rtol, atol=atol)


def test_info_nce_class_ids(backend_device, rng):
    backend, device = backend_device
    class_ids = torch.tensor([0, 1, 0, 2, 1, 0, 3], device=device)
    got, expected = _info_nce_case(backend, device, (7, 9), torch.float64, rng, class_ids)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)
    a, b, t = make_info_nce_inputs((7, 9), torch.float64, device, torch.Generator().manual_seed(1234))
    assert not torch.allclose(info_nce(a, b, t, class_ids, backend=backend), info_nce(a, b, t, None, backend=backend))


@pytest.mark.parametrize("with_class_ids", [False, True], ids=["plain", "class_ids"])
def test_info_nce_backward_matches_reference(backend_device, with_class_ids, rng):
    backend, device = backend_device
    a, b, t = make_info_nce_inputs((11, 7), torch.float64, device, rng)
    class_ids = torch.tensor([0, 1, 2, 0, 3, 4, 1, 5, 6, 7, 0]) if with_class_ids else None
    leaves = [x.detach().cpu().requires_grad_() for x in (a, b, t)]
    info_nce_reference(*leaves, class_ids).backward()
    fused = [x.detach().requires_grad_() for x in (a, b, t)]
    info_nce(*fused, None if class_ids is None else class_ids.to(device), backend=backend).mul(1.7).backward()
    for got, ref, name in zip(fused, leaves, ("a", "b", "temperature")):
        torch.testing.assert_close(got.grad.cpu(), 1.7 * ref.grad, rtol=1e-9, atol=1e-11, msg=f"grad of {name}")


def test_info_nce_gradcheck(backend_device, rng):
    backend, device = backend_device
    interpreted = backend == "triton" and device.type == "cpu"
    a, b, t = make_info_nce_inputs((5, 6), torch.float64, device, rng)
    class_ids = torch.tensor([0, 1, 0, 2, 3], device=device)
    inputs = tuple(x.detach().requires_grad_() for x in (a, b, t))
    assert torch.autograd.gradcheck(lambda a, b, t: info_nce(a, b, t, class_ids, backend=backend), inputs, fast_mode=interpreted)


def test_info_nce_float32_temperature_with_float32_inputs(backend_device, rng):
    backend, device = backend_device
    a, b, _ = make_info_nce_inputs((6, 8), torch.float32, device, rng)
    t = torch.tensor(0.07, device=device, requires_grad=True)
    loss = info_nce(a, b, t, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float32 and t.grad is not None and torch.isfinite(t.grad)


def test_info_nce_non_contiguous(backend_device, rng):
    backend, device = backend_device
    a, b, t = make_info_nce_inputs((6, 10), torch.float64, device, rng)
    a_nc, b_nc = torch.cat([a, a], 1)[:, ::2], b.t().contiguous().t()
    a_nc.copy_(a)
    assert not a_nc.is_contiguous()
    got = info_nce(a_nc, b_nc, t, backend=backend)
    torch.testing.assert_close(got.cpu(), info_nce_reference(a.cpu(), b.cpu(), t.cpu()), rtol=1e-10, atol=1e-12)


def test_info_nce_bad_input(backend_device, rng):
    backend, device = backend_device
    a, b, t = make_info_nce_inputs((4, 5), torch.float64, device, rng)
    nan_a = a.clone()
    nan_a[2, 1] = float("nan")
    cases = [
        (dict(a=a[0]), "a must have 2 dimensions"),
        (dict(b=b[:3]), "exceeds b's 3 rows"),
        (dict(b=b.float()), "b has dtype"),
        (dict(temperature=torch.tensor([0.1, 0.2], device=device)), "temperature must hold one value"),
        (dict(temperature="0.07"), "temperature must be a positive number or a one-element tensor"),
        (dict(temperature=0.0), "temperature must be positive and finite, got 0.0"),
        (dict(temperature=torch.tensor(-0.1, device=device)), "temperature must be positive"),
        (dict(temperature=torch.tensor(float("nan"), device=device)), "temperature must be positive and finite"),
        (dict(a=nan_a), "a contains NaN"),
        (dict(class_ids=torch.tensor([0, 1, 2], device=device)), "class_ids must have length 4"),
        (dict(b=b[:, :4]), "must share D"),
        (dict(class_ids=torch.rand(4, device=device)), "class_ids must hold integers"),
    ]
    for override, message in cases:
        args = dict(a=a, b=b, temperature=t, class_ids=None)
        args.update(override)
        with pytest.raises((ValueError, TypeError), match=message):
            info_nce(**args, backend=backend)


# --------------------------------------------------------------------------- rectangular InfoNCE

# (B, M, offset, symmetric, D): b holds extra negatives before and after the positives.
RECTANGULAR_CASES = [(5, 12, 3, True, 7), (5, 12, 7, False, 7), (9, 9, 0, False, 6), (4, 17, 0, True, 5), (3, 300, 297, True, 4)]


def make_rectangular_inputs(case, dtype, device, gen, n_classes=None):
    B, M, offset, symmetric, D = case
    b = torch.nn.functional.normalize(torch.randn(M, D, generator=gen, dtype=torch.float64), dim=1)
    positives = b[offset : offset + B]
    a = torch.nn.functional.normalize(positives + 0.5 * torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    temperature = torch.tensor(0.1 + torch.rand((), generator=gen, dtype=torch.float64).item(), dtype=torch.float64)
    class_ids = None if n_classes is None else torch.randint(0, n_classes, (M,), generator=gen).to(device)
    return a.to(device, dtype), b.to(device, dtype), temperature.to(device), class_ids


def _rectangular_reference(a, b, t, class_ids, offset, symmetric):
    """The definition written out: row term over all M columns, column term over the positives' columns."""
    B = a.shape[0]
    logits = (a @ b.t()) / t
    positives = torch.arange(offset, offset + B)
    if class_ids is not None:
        same = class_ids[positives][:, None] == class_ids[None, :]
        same[torch.arange(B), positives] = False
        logits = logits.masked_fill(same, float("-inf"))
    positive = logits[torch.arange(B), positives]
    rows = (logits.logsumexp(1) - positive).mean()
    if not symmetric:
        return rows
    return 0.5 * (rows + (logits[:, offset : offset + B].logsumexp(0) - positive).mean())


@pytest.mark.parametrize("case", RECTANGULAR_CASES, ids=str)
@pytest.mark.parametrize("with_class_ids", [False, True], ids=["plain", "class_ids"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_info_nce_rectangular_matches_reference(backend_device, case, with_class_ids, dtype, rtol, rng):
    backend, device = backend_device
    B, M, offset, symmetric, D = case
    a, b, t, class_ids = make_rectangular_inputs(case, dtype, device, rng, n_classes=max(2, M // 3) if with_class_ids else None)
    got = info_nce(a, b, t, class_ids, backend=backend, offset=offset, symmetric=symmetric)
    cpu_ids = None if class_ids is None else class_ids.cpu()
    expected = _rectangular_reference(a.double().cpu(), b.double().cpu(), t.cpu(), cpu_ids, offset, symmetric)
    assert got.dim() == 0
    assert_close(got, expected, rtol=rtol, atol=rtol)
    # the reference module agrees with the definition
    torch.testing.assert_close(
        info_nce_reference(a.double().cpu(), b.double().cpu(), t.cpu(), cpu_ids, offset, symmetric),
        expected, rtol=1e-12, atol=1e-13,
    )


@pytest.mark.parametrize("case", RECTANGULAR_CASES[:4], ids=str)
def test_info_nce_rectangular_backward_matches_reference(backend_device, case, rng):
    backend, device = backend_device
    B, M, offset, symmetric, D = case
    a, b, t, class_ids = make_rectangular_inputs(case, torch.float64, device, rng, n_classes=max(2, M // 2))
    leaves = [x.detach().cpu().requires_grad_() for x in (a, b, t)]
    _rectangular_reference(*leaves, class_ids.cpu(), offset, symmetric).backward()
    fused = [x.detach().requires_grad_() for x in (a, b, t)]
    info_nce(*fused, class_ids, backend=backend, offset=offset, symmetric=symmetric).mul(1.3).backward()
    for got, ref, name in zip(fused, leaves, ("a", "b", "temperature")):
        assert_close(got.grad, 1.3 * ref.grad, rtol=1e-9, atol=1e-11, msg=f"grad of {name}")


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "rows"])
def test_info_nce_rectangular_gradcheck(backend_device, symmetric, rng):
    backend, device = backend_device
    interpreted = backend == "triton" and device.type == "cpu"
    a, b, t, class_ids = make_rectangular_inputs((4, 9, 2, symmetric, 5), torch.float64, device, rng, n_classes=4)
    inputs = tuple(x.detach().requires_grad_() for x in (a, b, t))
    fn = lambda a, b, t: info_nce(a, b, t, class_ids, backend=backend, offset=2, symmetric=symmetric)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=interpreted)


def test_info_nce_rectangular_non_contiguous(backend_device, rng):
    backend, device = backend_device
    a, b, t, _ = make_rectangular_inputs((5, 11, 4, True, 6), torch.float64, device, rng)
    a_nc, b_nc = torch.cat([a, a], 1)[:, ::2], b.t().contiguous().t()
    a_nc.copy_(a)
    assert not a_nc.is_contiguous()
    got = info_nce(a_nc, b_nc, t, backend=backend, offset=4)
    assert_close(got, info_nce_reference(a.cpu(), b.cpu(), t.cpu(), None, 4, True), rtol=1e-10)


def test_info_nce_square_defaults_are_the_symmetric_loss(rng):
    """offset=0, symmetric=True, M=B: the CLIP loss, ½ [CE(rows) + CE(columns)]."""
    a, b, t = make_info_nce_inputs((6, 5), torch.float64, "cpu", rng)
    logits = a @ b.t() / t
    labels = torch.arange(6)
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels))
    assert_close(info_nce_reference(a, b, t), clip, rtol=1e-12)
    assert_close(info_nce_reference(a, b, t, symmetric=False), torch.nn.functional.cross_entropy(logits, labels), rtol=1e-12)


def test_info_nce_rectangular_bad_input(rng):
    a, b, t, _ = make_rectangular_inputs((4, 9, 2, True, 5), torch.float64, "cpu", rng)
    cases = [
        (dict(offset=6), ValueError, r"offset \+ B = 6 \+ 4 exceeds b's 9 rows"),
        (dict(offset=-1), ValueError, "offset must be non-negative"),
        (dict(offset=1.0), TypeError, "offset must be an int"),
        (dict(symmetric=1), TypeError, "symmetric must be a bool"),
        (dict(class_ids=torch.arange(4)), ValueError, r"class_ids must have length 9 \(one id per row of b\)"),
        (dict(b=b[:, :4]), ValueError, "must share D"),
    ]
    for override, error, message in cases:
        args = dict(a=a, b=b, temperature=t, offset=2)
        args.update(override)
        with pytest.raises(error, match=message):
            info_nce(**args)


def test_group_needs_offset_zero(rng):
    a, b, t, _ = make_rectangular_inputs((4, 9, 2, True, 5), torch.float64, "cpu", rng)
    with pytest.raises(ValueError, match="offset must be 0 with a process group"):
        info_nce(a, b, t, offset=2, group=object())


# --------------------------------------------------------------------------- dispatch, custom ops, compile


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=[f"{b}-{d}" for b, d in BACKEND_DEVICES])
def test_expected_backends_are_present(backend, device):
    """The backend matrix is a contract: a backend this installation should have (cpp wherever the
    extension was built, triton wherever triton is installed) must run, or this fails with why."""
    reason = expected_missing_reason(backend, device)
    assert reason is None, f"expected backend {backend} on {device} is missing: {reason}"


def test_auto_backend_and_unknown_backend(rng):
    words, regions, mask = make_word_region_inputs((2, 2, 3, 4, 5), torch.float64, "cpu", rng)
    expected = reference_scores(words, regions, mask)
    torch.testing.assert_close(word_region_scores(words, regions, mask), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        word_region_scores(words, regions, mask, backend="fast")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available for cpu tensors"):
        word_region_scores(words, regions, mask, backend="cuda")


def test_extension_rejects_bad_input_without_crashing(rng):
    if not backends.is_available("cpp", "cpu"):
        pytest.skip("tgfr._C not built")
    ext = backends.RECORDS["cpp"].kernels()
    words, regions, mask = make_word_region_inputs((2, 3, 4, 5, 6), torch.float32, "cpu", rng)
    with pytest.raises(RuntimeError, match="word_mask must be a bool tensor"):
        ext.word_region_scores_forward(words, regions, mask.int(), 4.0, 5.0, 1e-8)
    with pytest.raises(RuntimeError, match="words must be contiguous"):
        ext.word_region_scores_forward(words.transpose(1, 2), regions, mask, 4.0, 5.0, 1e-8)
    with pytest.raises(RuntimeError, match="must share D"):
        ext.word_region_scores_forward(words, regions[..., :4].contiguous(), mask, 4.0, 5.0, 1e-8)
    a = torch.randn(4, 3, generator=rng)
    with pytest.raises(RuntimeError, match="class_ids must be an int64 tensor"):
        ext.info_nce_forward(a, a.clone(), torch.tensor(0.1), torch.arange(3), 0, True)
    with pytest.raises(RuntimeError, match="offset \\+ B must be at most M"):
        ext.info_nce_forward(a, a.clone(), torch.tensor(0.1), torch.arange(4), 1, True)
    with pytest.raises(RuntimeError, match="offset must be non-negative"):
        ext.info_nce_forward(a, a.clone(), torch.tensor(0.1), torch.arange(4), -1, True)
    lse = torch.zeros(4)
    with pytest.raises(RuntimeError, match=r"lse_cols must have shape \[0\]"):
        ext.info_nce_backward(torch.tensor(1.0), a, a.clone(), torch.tensor(0.1), torch.arange(4), lse, lse, 0, False)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_custom_ops_pass_opcheck(backend, rng):
    if not backends.is_available(backend, "cpu"):
        pytest.skip(f"{backend} not available on cpu")
    # the package exports functions of the same names, so import the modules themselves
    info_nce_module = importlib.import_module("tgfr.ops.info_nce")
    word_region_module = importlib.import_module("tgfr.ops.word_region")

    words, regions, mask = make_word_region_inputs((2, 3, 4, 5, 6), torch.float64, "cpu", rng)
    torch.library.opcheck(
        word_region_module._word_region_scores_op,
        (words.requires_grad_(), regions.requires_grad_(), mask, 4.0, 5.0, 1e-8, backend),
    )
    a, b, t = make_info_nce_inputs((5, 6), torch.float64, "cpu", rng)
    torch.library.opcheck(
        info_nce_module._info_nce_op,
        (a.requires_grad_(), b.requires_grad_(), t.requires_grad_(), torch.arange(5), 0, True, backend),
    )
    a, b, t, _ = make_rectangular_inputs((3, 7, 2, False, 4), torch.float64, "cpu", rng)
    torch.library.opcheck(
        info_nce_module._info_nce_op,
        (a.requires_grad_(), b.requires_grad_(), t.requires_grad_(), torch.arange(7), 2, False, backend),
    )


def test_torch_compile_fullgraph(rng):
    if not backends.is_available("cpp", "cpu"):
        pytest.skip("tgfr._C not built")
    words, regions, mask = make_word_region_inputs((3, 3, 4, 5, 6), torch.float32, "cpu", rng)
    a, b, t = make_info_nce_inputs((3, 6), torch.float32, "cpu", rng)
    t = t.float()

    def total_loss(words, regions, a, b, t):
        i2t, t2i = word_region_loss(words, regions, mask, backend="cpp")
        return i2t + t2i + info_nce(a, b, t, backend="cpp")

    compiled = torch.compile(total_loss, fullgraph=True, backend="aot_eager")
    eager_inputs = [x.detach().requires_grad_() for x in (words, regions, a, b, t)]
    compiled_inputs = [x.detach().requires_grad_() for x in (words, regions, a, b, t)]
    expected = total_loss(*eager_inputs)
    expected.backward()
    got = compiled(*compiled_inputs)
    got.backward()
    torch.testing.assert_close(got, expected)
    for x, y in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(x.grad, y.grad)


# --------------------------------------------------------------------------- dispatch that tells the truth


@pytest.fixture
def broken_extension(monkeypatch):
    """tgfr._C as a build with an ABI mismatch would leave it: present, failing to import."""
    real_import = backends._import.__wrapped__

    def fake_import(name):
        if name == "tgfr._C":
            return None, ImportError("tgfr/_C.so: undefined symbol: _ZN4tgfr3fooEv")
        return real_import(name)

    monkeypatch.setattr(backends, "_import", fake_import)
    backends._warn_fallback.cache_clear()
    yield
    backends._warn_fallback.cache_clear()


def test_auto_warns_once_about_a_broken_extension(broken_extension, rng):
    words, regions, mask = make_word_region_inputs((2, 2, 3, 4, 5), torch.float64, "cpu", rng)
    with pytest.warns(RuntimeWarning, match="undefined symbol: _ZN4tgfr3fooEv"):
        word_region_scores(words, regions, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        word_region_scores(words, regions, mask)  # once is enough
    with pytest.raises(RuntimeError, match="backend 'cpp' is not available.*undefined symbol"):
        word_region_scores(words, regions, mask, backend="cpp")
    assert expected_missing_reason("cpp", "cpu") is not None, "a broken build must fail the backend matrix"


def test_unsupported_reason_skips_in_auto_and_raises_when_named(monkeypatch, rng):
    if not backends.is_available("cpp", "cpu"):
        pytest.skip("tgfr._C not built")
    real_import = backends._import
    real_kernels = backends.RECORDS["cpp"].kernels()

    class Declining:
        def __getattr__(self, name):
            return getattr(real_kernels, name)

        @staticmethod
        def unsupported_reason(op, dtype, sizes):
            return f"D={sizes['D']} exceeds 4" if sizes["D"] > 4 else None

    monkeypatch.setattr(backends, "_import", lambda name: (Declining(), None) if name == "tgfr._C" else real_import(name))
    backends._warn_fallback.cache_clear()
    a, b, t = make_info_nce_inputs((3, 5), torch.float64, "cpu", rng)
    assert backends.resolve("auto", "cpu", "info_nce", torch.float64, D=4) == "cpp"
    with pytest.warns(RuntimeWarning, match="D=5 exceeds 4"):
        assert backends.resolve("auto", "cpu", "info_nce", torch.float64, D=5) == "vectorized"
    with pytest.raises(ValueError, match="D=5 exceeds 4"):
        info_nce(a, b, t, backend="cpp")
    backends._warn_fallback.cache_clear()


def test_value_checks_can_be_turned_off(rng):
    from tgfr.ops import set_value_checks

    words, regions, mask = make_word_region_inputs((2, 3, 4, 5, 6), torch.float64, "cpu", rng)
    mask[1] = False
    with pytest.raises(ValueError, match="no valid word"):
        word_region_scores(words, regions, mask, backend="reference")
    set_value_checks(False)
    try:
        for backend in backends.available_backends("cpu"):
            scores = word_region_scores(words, regions, mask, backend=backend)
            assert torch.isneginf(scores[:, 1]).all() and torch.isfinite(scores[:, [0, 2]]).all(), backend
    finally:
        set_value_checks(True)


def test_ops_import_light():
    """The ops and the losses need torch and numpy alone (the core install). ``import torch``
    itself loads tqdm where it is installed (torch.hub), so only what tgfr adds counts."""
    heavy = ("transformers", "matplotlib", "yaml", "sklearn", "PIL", "tqdm", "safetensors")
    code = (
        f"import sys, torch; before = set(sys.modules); import tgfr, tgfr.ops, tgfr.losses; "
        f"print([m for m in {heavy!r} if m in sys.modules and m not in before])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing tgfr.ops / tgfr.losses imported {out.strip()}"
