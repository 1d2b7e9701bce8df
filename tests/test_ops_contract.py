"""One argument contract and one dtype rule for the ops, identical on every backend.

Every public argument is checked once, at the public boundary, before any backend is
chosen: the same value is accepted, or rejected with the same exception and message, by
every backend available here (on the CPU: reference, vectorized, cpp, and triton under
``TRITON_INTERPRET=1``). Scalar arguments are drawn by hypothesis (finite, non-finite,
negative, zero, huge, strings, bools, tensors).

The dtype rule: float16/bfloat16/float32/float64 inputs on every backend; computed in the
accumulation dtype (float32, or float64 for float64 inputs), outputs in it, each input's
gradient in the input's dtype. Under ``torch.autocast`` the ops give what they give without it.
"""
from __future__ import annotations

import math
import numbers

import pytest
import torch
from conftest import assert_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tgfr import InfoNCELoss, WordRegionLoss
from tgfr.ops import available_backends, info_nce, word_region_loss, word_region_scores
from tgfr.ops.info_nce import info_nce_reference
from tgfr.ops.word_region import word_region_scores_loop

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# the interpreted triton kernels take ~0.5 s a call: a few dozen draws per test
CONTRACT = settings(max_examples=40, deadline=None, derandomize=True, database=None)
# values whose results every backend computes alike to 1e-9 (the extremes are checked for acceptance only)
COMPARABLE = 100.0


def _outcome(call):
    """``("ok", result)``, or the exception's type and message: what must agree across backends."""
    try:
        return "ok", call()
    except Exception as error:  # noqa: BLE001 - any exception is an outcome to compare
        return type(error), str(error)


def _word_region_inputs(device, dtype=torch.float64, B=3, T=4, N=5, D=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    words = torch.nn.functional.normalize(torch.randn(B, T, D, generator=gen, dtype=torch.float64), dim=-1)
    regions = torch.randn(B, N, D, generator=gen, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor([T, 2, 3])[:, None]
    return words.to(device, dtype), regions.to(device, dtype), mask.to(device)


def _info_nce_inputs(device, dtype=torch.float64, B=4, M=7, D=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    b = torch.nn.functional.normalize(torch.randn(M, D, generator=gen, dtype=torch.float64), dim=1)
    a = torch.nn.functional.normalize(b[:B] + 0.5 * torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    return a.to(device, dtype), b.to(device, dtype)


def _finite_real(value) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None: the rule of every scalar."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _assert_same_everywhere(outcomes: dict, valid: bool, name: str, reference=None, comparable=True):
    """Every backend accepted (and agrees with ``reference``), or every one raised the same ValueError naming ``name``."""
    kinds = {backend: kind for backend, (kind, _) in outcomes.items()}
    if valid:
        assert set(kinds.values()) == {"ok"}, f"{name}: valid value rejected: {outcomes}"
        if comparable and reference is not None:
            for backend, (_, result) in outcomes.items():
                results = result if isinstance(result, tuple) else (result,)
                for got, want in zip(results, reference):
                    assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{backend}: {name}")
        return
    distinct = set(outcomes.values())
    assert len(distinct) == 1, f"{name}: backends disagree: {outcomes}"
    kind, message = distinct.pop()
    assert kind != "ok", f"{name}: invalid value accepted"
    assert issubclass(kind, ValueError) and message.startswith(name), (kind, message)


SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, 0.0, -0.0, 10**400, -(10**400), True, False, "5", "", None, [4.0]]),
    st.floats(min_value=-10.0, max_value=10.0).map(torch.tensor),
)


@pytest.mark.parametrize("device", DEVICES)
@CONTRACT
@given(name=st.sampled_from(["gamma1", "gamma2", "gamma3", "eps"]), value=SCALARS)
def test_word_region_scalar_arguments_behave_alike_on_every_backend(device, name, value):
    words, regions, mask = _word_region_inputs(device)
    number = _finite_real(value)
    valid = number is not None and (name != "eps" or number > 0)
    arguments = {**dict(gamma1=4.0, gamma2=5.0, gamma3=10.0, eps=1e-8), name: value}
    outcomes = {backend: _outcome(lambda: word_region_loss(words, regions, mask, backend=backend, **arguments))
                for backend in available_backends(device)}
    reference = None
    if valid:
        scalars = {k: float(v) for k, v in arguments.items()}
        scores = word_region_scores_loop(words, regions, mask, scalars["gamma1"], scalars["gamma2"], scalars["eps"])
        logits = scalars["gamma3"] * scores
        labels = torch.arange(scores.shape[0], device=device)
        F = torch.nn.functional
        reference = (F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels))
    _assert_same_everywhere(outcomes, valid, name, reference, comparable=valid and abs(number) <= COMPARABLE)


TEMPERATURES = st.one_of(
    SCALARS,
    st.floats(allow_nan=True, allow_infinity=True).map(lambda t: torch.tensor(t, dtype=torch.float64)),
)


@pytest.mark.parametrize("device", DEVICES)
@CONTRACT
@given(temperature=TEMPERATURES)
def test_info_nce_temperature_behaves_alike_on_every_backend(device, temperature):
    a, b = _info_nce_inputs(device)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(device)
        number = _finite_real(temperature.item())
    else:
        number = _finite_real(temperature)
    valid = number is not None and number > 0
    # a tensor's value is checked by a device assert on CUDA, which would end the process
    assume(valid or device == "cpu" or not isinstance(temperature, torch.Tensor))
    outcomes = {backend: _outcome(lambda: info_nce(a, b, temperature, backend=backend, offset=2))
                for backend in available_backends(device)}
    reference = None
    if valid:
        reference = (info_nce_reference(a, b, torch.tensor(number, dtype=torch.float64, device=device), None, 2),)
    _assert_same_everywhere(outcomes, valid, "temperature", reference,
                            comparable=valid and 1 / COMPARABLE <= number <= COMPARABLE)


@pytest.mark.parametrize("device", DEVICES)
@CONTRACT
@given(name=st.sampled_from(["offset", "symmetric"]),
       value=st.one_of(st.integers(min_value=-5, max_value=8), st.booleans(), st.floats(0, 3),
                       st.sampled_from(["1", None, torch.tensor(1)])))
def test_info_nce_offset_and_symmetric_behave_alike_on_every_backend(device, name, value):
    a, b = _info_nce_inputs(device)  # B = 4, M = 7: offsets 0..3
    if name == "offset":
        valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3
    else:
        valid = isinstance(value, bool)
    arguments = {**dict(offset=1, symmetric=True), name: value}
    temperature = torch.tensor(0.3, dtype=torch.float64, device=device)
    outcomes = {backend: _outcome(lambda: info_nce(a, b, temperature, backend=backend, **arguments))
                for backend in available_backends(device)}
    reference = (info_nce_reference(a, b, temperature, None, **arguments),) if valid else None
    _assert_same_everywhere(outcomes, valid, name, reference)


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_arguments_are_rejected_alike_on_every_backend(device):
    words, regions, mask = _word_region_inputs(device)
    a, b = _info_nce_inputs(device)
    t = torch.tensor(0.3, dtype=torch.float64, device=device)
    nan_words = words.clone()
    nan_words[0, 0, 0] = float("nan")
    cases = {
        "words": lambda backend: word_region_scores(words.tolist(), regions, mask, backend=backend),
        "regions": lambda backend: word_region_scores(words, regions.float(), mask, backend=backend),
        "word_mask": lambda backend: word_region_scores(words, regions, mask.int(), backend=backend),
        "class_ids": lambda backend: word_region_loss(words, regions, mask, torch.zeros(3), backend=backend),
        "words contains": lambda backend: word_region_scores(nan_words, regions, mask, backend=backend),
        "a": lambda backend: info_nce(a.long(), b, t, backend=backend),
        "b": lambda backend: info_nce(a, b[:, :3], t, backend=backend),
        "temperature": lambda backend: info_nce(a, b, t.reshape(1, 1).expand(1, 2), backend=backend),
    }
    for name, call in cases.items():
        outcomes = {backend: _outcome(lambda: call(backend)) for backend in available_backends(device)}
        _assert_same_everywhere(outcomes, False, name.split()[0] if name != "b" else "a [B, D] and b")


def test_modules_check_their_hyperparameters_where_they_are_set():
    with pytest.raises(ValueError, match="temperature must be positive and finite, got 0"):
        InfoNCELoss(temperature=0)
    with pytest.raises(ValueError, match="temperature must be positive and finite, got -0.5"):
        InfoNCELoss(temperature=torch.tensor(-0.5))
    with pytest.raises(TypeError, match="temperature must be a positive number"):
        InfoNCELoss(temperature="0.07")
    with pytest.raises(ValueError, match="gamma1 must be finite, got nan"):
        WordRegionLoss(gamma1=float("nan"))
    with pytest.raises(ValueError, match="eps must be positive and finite, got -1"):
        WordRegionLoss(eps=-1)
    with pytest.raises(ValueError, match="gamma2 must be a real number"):
        WordRegionLoss(gamma2="5")
    assert InfoNCELoss(temperature=torch.tensor(0.5)).temperature.item() == pytest.approx(0.5)


def test_info_nce_takes_a_python_temperature_like_a_tensor():
    a, b = _info_nce_inputs("cpu", torch.float32)
    for backend in available_backends("cpu"):
        as_tensor = info_nce(a, b, torch.tensor(0.07), backend=backend, offset=3)
        for temperature in (0.07, 1):
            got = info_nce(a, b, temperature, backend=backend, offset=3)
            want = as_tensor if temperature == 0.07 else info_nce(a, b, torch.tensor(1.0), backend=backend, offset=3)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=backend)


# --------------------------------------------------------------------------- the dtype rule

# relative tolerance against the float64 reference on the rounded inputs: 16-bit inputs of a
# backend that computes them natively enter its products in 16 bits (the triton and cuda kernels)
FLOAT32_ACCURATE = 2e-5
ROUNDED_OPERANDS = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 2e-5, torch.float64: 1e-10}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _tolerance(backend: str, dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return 1e-10
    return ROUNDED_OPERANDS[dtype] if backend in ("triton", "cuda") else FLOAT32_ACCURATE


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_rule_on_every_backend(device, dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    words, regions, mask = _word_region_inputs(device, dtype)
    a, b = _info_nce_inputs(device, dtype)
    # the reference sees exactly the backends' inputs: the rounded values, in float64
    want_scores = word_region_scores_loop(words.double(), regions.double(), mask)
    want_loss = info_nce_reference(a.double(), b.double(), torch.tensor(0.3, dtype=torch.float64, device=device))
    for backend in available_backends(device):
        w, r = words.clone().requires_grad_(), regions.clone().requires_grad_()
        scores = word_region_scores(w, r, mask, backend=backend)
        assert scores.dtype == acc, f"{backend}: scores in {scores.dtype}"
        scores.sum().backward()
        assert w.grad.dtype == r.grad.dtype == dtype, f"{backend}: word-region gradients"
        rtol = _tolerance(backend, dtype)
        assert_close(scores, want_scores, rtol=rtol, atol=rtol, msg=f"{backend} scores")

        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        t = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)
        loss = info_nce(x, y, t, backend=backend)
        assert loss.dtype == acc, f"{backend}: loss in {loss.dtype}"
        loss.backward()
        assert x.grad.dtype == y.grad.dtype == dtype and t.grad.dtype == torch.float64, f"{backend}: InfoNCE gradients"
        assert_close(loss, want_loss, rtol=rtol, atol=rtol, msg=f"{backend} loss")


AUTOCAST_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16}


@pytest.mark.parametrize("device", DEVICES)
def test_ops_ignore_autocast(device):
    """Under autocast the ops compute what they compute without it: float32 inputs stay float32,
    and the 16-bit activations an autocast region makes follow the dtype rule."""
    words, regions, mask = _word_region_inputs(device, torch.float32)
    a, b = _info_nce_inputs(device, torch.float32)
    t = torch.tensor(0.3, device=device)
    for backend in available_backends(device):
        plain = word_region_loss(words, regions, mask, backend=backend), info_nce(a, b, t, backend=backend)
        with torch.autocast(device, dtype=AUTOCAST_DTYPES[device]):
            under = word_region_loss(words, regions, mask, backend=backend), info_nce(a, b, t, backend=backend)
            projected = torch.nn.Linear(6, 6).to(device)(words)  # a 16-bit activation, as a model makes it
            assert projected.dtype == AUTOCAST_DTYPES[device]
            half_scores = word_region_scores(projected, regions.to(projected.dtype), mask, backend=backend)
        assert half_scores.dtype == torch.float32, backend
        for got, want in zip((*under[0], under[1]), (*plain[0], plain[1])):
            assert got.dtype == torch.float32, backend
            assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"{backend} under autocast")
