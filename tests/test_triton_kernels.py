"""Triton kernel specifics the shared backend suite does not cover.

The kernel entry points are called directly, with tile sizes forced small so that
tiny shapes still cross every block boundary (captions per block, D chunks, row and
column blocks of the logits). 16-bit inputs are checked against the float64
reference within about ten units of their rounding (bfloat16: 8 bits of
mantissa, float16: 11). On the CPU the kernels run under ``TRITON_INTERPRET=1``
(set by ``conftest.py``).
"""
import pytest
import torch
from conftest import assert_close

from tgfr.ops import backends
from tgfr.ops.info_nce import info_nce_reference
from tgfr.ops.word_region import word_region_scores_loop

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not backends.is_available("triton", DEVICE), reason="triton not installed (or no GPU and no TRITON_INTERPRET=1)"
)
kernels = backends.RECORDS["triton"].kernels()

# dtype -> (rtol, atol relative to the largest magnitude) of values and gradients against
# the float64 reference
LOW_PRECISION = {
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (3e-2, 2e-2),
    torch.float16: (4e-3, 3e-3),
}


def _word_region_inputs(shape, gen, ragged=True):
    B_v, B_t, T, N, D = shape
    words = torch.nn.functional.normalize(torch.randn(B_t, T, D, generator=gen, dtype=torch.float64), dim=-1)
    regions = torch.randn(B_v, N, D, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B_t,), generator=gen) if ragged else torch.full((B_t,), T)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return words, regions, mask


def _reference_word_region(words, regions, mask, upstream, gamma1=4.0, gamma2=5.0, eps=1e-8):
    w = words.double().cpu().requires_grad_()
    r = regions.double().cpu().requires_grad_()
    scores = word_region_scores_loop(w, r, mask.cpu(), gamma1, gamma2, eps)
    (scores * upstream.double().cpu()).sum().backward()
    return scores.detach(), w.grad, r.grad


def _run_word_region(words, regions, mask, upstream, gamma1=4.0, gamma2=5.0, eps=1e-8, caption_groups=None,
                     **tiles):
    words, regions, mask, upstream = (x.to(DEVICE) for x in (words, regions, mask, upstream))
    scores = kernels.word_region_scores_forward(words, regions, mask, gamma1, gamma2, eps, **tiles)
    grad_words, grad_regions = kernels.word_region_scores_backward(
        upstream, words, regions, mask, gamma1, gamma2, eps, caption_groups=caption_groups, **tiles
    )
    return scores.cpu(), grad_words.cpu(), grad_regions.cpu()


def _close(actual, expected, rtol, atol):
    """``|actual - expected| <= rtol |expected| + atol max|expected|`` (at least the shared
    absolute floor): atol is relative to the tensor's scale, so gradients of size 1/B are held to
    the same standard as scores."""
    assert_close(actual, expected, rtol, atol, scale_atol=True)


# (B_v, B_t, T, N, D), the tiles (captions per block, D chunk) and the backward's caption groups
BOUNDARY_CASES = [
    ((2, 5, 4, 7, 16), 2, 8, 2),  # T a power of two, D a multiple of the chunk, B_t odd, uneven groups
    ((3, 4, 3, 5, 10), 4, 4, 1),  # one caption block holding every caption, ragged D tail
    ((2, 3, 6, 9, 7), 1, 16, 3),  # one caption per block and per group, one D chunk wider than D
    ((1, 2, 8, 16, 12), 2, 4, 1),  # N a power of two, a single image
]


@pytest.mark.parametrize("shape,caps,block_d,groups", BOUNDARY_CASES, ids=str)
def test_word_region_block_boundaries_float64(shape, caps, block_d, groups):
    gen = torch.Generator().manual_seed(7)
    words, regions, mask = _word_region_inputs(shape, gen)
    upstream = torch.randn(shape[0], shape[1], generator=gen, dtype=torch.float64)
    expected = _reference_word_region(words, regions, mask, upstream)
    actual = _run_word_region(words, regions, mask, upstream, caps=caps, block_d=block_d, caption_groups=groups)
    for got, want in zip(actual, expected):
        _close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
def test_word_region_low_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(11)
    words, regions, mask = _word_region_inputs((3, 4, 5, 7, 12), gen)
    words, regions = words.to(dtype), regions.to(dtype)  # the reference sees the same rounded inputs
    upstream = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    expected = _reference_word_region(words, regions, mask, upstream)
    scores, grad_words, grad_regions = _run_word_region(words, regions, mask, upstream.float(), caps=2, block_d=8)
    assert scores.dtype == torch.float32 and grad_words.dtype == grad_regions.dtype == dtype
    rtol, atol = LOW_PRECISION[dtype]
    _close(scores, expected[0], rtol, atol)
    _close(grad_words, expected[1], rtol, atol)
    _close(grad_regions, expected[2], rtol, atol)


def test_word_region_padded_words_are_inert():
    gen = torch.Generator().manual_seed(3)
    words, regions, mask = _word_region_inputs((2, 3, 5, 6, 9), gen)
    mask[1, 2:] = False
    upstream = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    scores, grad_words, grad_regions = _run_word_region(words, regions, mask, upstream)
    garbage = words.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 9, generator=gen, dtype=torch.float64)
    scores_g, grad_words_g, grad_regions_g = _run_word_region(garbage, regions, mask, upstream)
    torch.testing.assert_close(scores_g, scores, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_regions_g, grad_regions, rtol=1e-12, atol=1e-12)
    assert torch.all(grad_words_g[~mask] == 0) and torch.all(grad_words[~mask] == 0)
    assert torch.all(grad_words[mask].abs().sum(-1) > 0)


def test_word_region_all_padded_caption():
    # a caption with every word masked: score -inf against every image (the log-sum-exp of
    # an empty set), zero gradient for its words and none passed to the regions
    gen = torch.Generator().manual_seed(41)
    words, regions, mask = _word_region_inputs((3, 4, 5, 6, 9), gen)
    mask[2] = False
    upstream = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    scores, grad_words, grad_regions = _run_word_region(words, regions, mask, upstream, caps=2, block_d=4)
    assert torch.all(scores[:, 2] == float("-inf"))
    assert torch.all(grad_words[2] == 0)
    kept = [0, 1, 3]
    expected = _reference_word_region(words[kept], regions, mask[kept], upstream[:, kept])
    _close(scores[:, kept], expected[0], rtol=1e-10, atol=1e-12)
    _close(grad_words[kept], expected[1], rtol=1e-10, atol=1e-12)
    _close(grad_regions, expected[2], rtol=1e-10, atol=1e-12)


def test_word_region_clamped_cosine_branch():
    # a word of tiny norm makes |w||c| fall below eps: the cosine is <w,c>/eps there
    gen = torch.Generator().manual_seed(5)
    words, regions, mask = _word_region_inputs((2, 2, 4, 5, 6), gen, ragged=False)
    words[0, 1] *= 1e-4
    eps = 1e-2
    upstream = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    norms = words[0, 1].norm() * regions.norm(dim=-1).max()
    assert norms < eps  # the branch is really taken
    expected = _reference_word_region(words, regions, mask, upstream, eps=eps)
    actual = _run_word_region(words, regions, mask, upstream, eps=eps, caps=1, block_d=4)
    for got, want in zip(actual, expected):
        _close(got, want, rtol=1e-10, atol=1e-12)


def test_word_region_rejects_bad_tiles():
    words, regions, mask = _word_region_inputs((1, 1, 2, 3, 4), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="caps"):
        kernels.word_region_scores_forward(words, regions, mask, 4.0, 5.0, 1e-8, caps=3)
    with pytest.raises(ValueError, match="block_d"):
        kernels.word_region_scores_forward(words, regions, mask, 4.0, 5.0, 1e-8, block_d=6)


class _LaunchRecorder:
    """Stands in for a Triton kernel: records the grid of every launch, then launches."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_word_region_backward_under_deterministic_algorithms(monkeypatch):
    # grad_words takes atomic adds from every image's programs, in whatever order they run; under
    # torch.use_deterministic_algorithms(True) each image gets a launch of its own, whose programs own
    # disjoint caption blocks, so the adds come in image order. Otherwise one launch for all images.
    from tgfr.kernels import word_region as module

    shape = (3, 5, 4, 7, 16)
    gen = torch.Generator().manual_seed(17)
    words, regions, mask = _word_region_inputs(shape, gen)
    upstream = torch.randn(shape[0], shape[1], generator=gen, dtype=torch.float64)
    expected = _reference_word_region(words, regions, mask, upstream)
    launches = _LaunchRecorder(module._scores_backward_kernel)
    monkeypatch.setattr(module, "_scores_backward_kernel", launches)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        deterministic = _run_word_region(words, regions, mask, upstream, caps=2, block_d=8, caption_groups=2)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    assert launches.grids == [(1, 2)] * 3
    for got, want in zip(deterministic, expected):
        _close(got, want, rtol=1e-10, atol=1e-12)
    launches.grids.clear()
    _run_word_region(words, regions, mask, upstream, caps=2, block_d=8, caption_groups=2)
    assert launches.grids == [(3, 2)]


# --------------------------------------------------------------------------- InfoNCE


def _info_nce_inputs(B, D, gen, temperature=0.1):
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    return a, b, torch.tensor(temperature, dtype=torch.float64)


def _reference_info_nce(a, b, temperature, class_ids, grad_loss):
    a, b, t = (x.double().cpu().requires_grad_() for x in (a, b, temperature))
    loss = info_nce_reference(a, b, t, class_ids)
    (loss * grad_loss).backward()
    return loss.detach(), a.grad, b.grad, t.grad


def _run_info_nce(a, b, temperature, class_ids, grad_loss, offset=0, symmetric=True, **tiles):
    stat_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b, class_ids = a.to(DEVICE), b.to(DEVICE), class_ids.to(DEVICE)
    temperature = temperature.to(DEVICE, stat_dtype)
    loss, lse_rows, lse_cols = kernels.info_nce_forward(a, b, temperature, class_ids, offset, symmetric, **tiles)
    assert lse_rows.dtype == lse_cols.dtype == loss.dtype == stat_dtype
    assert lse_cols.numel() == (a.shape[0] if symmetric else 0)
    grads = kernels.info_nce_backward(
        torch.tensor(grad_loss, dtype=stat_dtype, device=DEVICE), a, b, temperature, class_ids, lse_rows, lse_cols,
        offset, symmetric, **tiles,
    )
    return (loss.cpu(),) + tuple(g.cpu() for g in grads), (lse_rows.cpu(), lse_cols.cpu())


@pytest.mark.parametrize(
    "B,D,block_m,block_n",
    [(9, 12, 4, 2), (8, 16, 2, 8), (5, 3, 8, 8), (2, 20, 1, 1)],
    ids=str,
)
def test_info_nce_block_boundaries_float64(B, D, block_m, block_n):
    gen = torch.Generator().manual_seed(B * 100 + D)
    a, b, temperature = _info_nce_inputs(B, D, gen)
    class_ids = torch.randint(0, max(1, B // 2), (B,), generator=gen)
    expected = _reference_info_nce(a, b, temperature, class_ids, grad_loss=0.7)
    actual, (lse_rows, lse_cols) = _run_info_nce(a, b, temperature, class_ids, 0.7, block_m=block_m, block_n=block_n)
    for got, want in zip(actual, expected):
        _close(got, want, rtol=1e-10, atol=1e-12)
    # the statistics themselves: log-sum-exp of the masked rows and columns
    logits = (a @ b.t()) / temperature
    same_identity = (class_ids[:, None] == class_ids[None, :]) & ~torch.eye(B, dtype=torch.bool)
    logits = logits.masked_fill(same_identity, float("-inf"))
    _close(lse_rows, torch.logsumexp(logits, dim=1), rtol=1e-12, atol=1e-12)
    _close(lse_cols, torch.logsumexp(logits, dim=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
def test_info_nce_low_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(13)
    a, b, temperature = _info_nce_inputs(11, 24, gen, temperature=0.07)
    a, b = a.to(dtype), b.to(dtype)
    class_ids = torch.tensor([0, 1, 2, 0, 3, 4, 1, 5, 6, 7, 3])
    expected = _reference_info_nce(a, b, temperature.float(), class_ids, grad_loss=1.0)
    actual, _ = _run_info_nce(a, b, temperature, class_ids, 1.0, block_m=4, block_n=8)
    assert actual[1].dtype == actual[2].dtype == dtype
    rtol, atol = LOW_PRECISION[dtype]
    for got, want in zip(actual, expected):
        _close(got, want, rtol, atol)


def test_info_nce_float16_gradients_of_a_large_batch():
    # dl_ij ~ 1/B^2 here, far below float16's normal range: the products must not see it raw
    gen = torch.Generator().manual_seed(29)
    a, b, temperature = _info_nce_inputs(4096, 8, gen, temperature=0.5)
    a, b = a.half(), b.half()
    class_ids = torch.arange(4096)
    expected = _reference_info_nce(a, b, temperature.float(), class_ids, grad_loss=1.0)
    actual, _ = _run_info_nce(a, b, temperature, class_ids, 1.0, block_m=256, block_n=256)
    rtol, atol = LOW_PRECISION[torch.float16]
    for got, want in zip(actual, expected):
        _close(got, want, rtol, atol)


def _rectangular_info_nce_reference(a, b, temperature, class_ids, offset, symmetric):
    """The rectangular loss from its definition: rows of ``a`` against all of ``b``, and the
    ``B`` columns ``offset..offset+B-1`` against ``a``; a pair of one identity leaves both."""
    B = a.shape[0]
    own = torch.arange(B)
    logits = (a @ b.t()) / temperature
    same = class_ids[offset:offset + B, None] == class_ids[None, :]
    same[own, offset + own] = False
    logits = logits.masked_fill(same, float("-inf"))
    rows = torch.nn.functional.cross_entropy(logits, offset + own)
    if not symmetric:
        return rows
    return (rows + torch.nn.functional.cross_entropy(logits[:, offset:offset + B].t(), own)) / 2


# (B, M, offset, symmetric, D, block_m, block_n, block_d): block_d below D takes the tiled path
RECTANGULAR_CASES = [
    (5, 9, 3, True, 12, 4, 2, None),
    (5, 9, 1, False, 12, 2, 4, 4),
    (3, 11, 8, True, 7, 2, 8, 2),  # the slice at the end of b, a D tail in the last chunk
    (6, 6, 0, False, 10, 4, 4, 4),
    (4, 13, 0, True, 9, 8, 2, 8),  # the slice at the start, extra negatives after it
]


@pytest.mark.parametrize("B,M,offset,symmetric,D,block_m,block_n,block_d", RECTANGULAR_CASES, ids=str)
def test_info_nce_rectangular_float64(B, M, offset, symmetric, D, block_m, block_n, block_d):
    gen = torch.Generator().manual_seed(B * 1000 + M * 10 + offset)
    a = torch.randn(B, D, generator=gen, dtype=torch.float64)
    b = torch.randn(M, D, generator=gen, dtype=torch.float64)
    temperature = torch.tensor(0.7, dtype=torch.float64)
    class_ids = torch.randint(0, 3, (M,), generator=gen)  # identities of b's rows, shared across the slice
    a_ref, b_ref, t_ref = (x.clone().requires_grad_() for x in (a, b, temperature))
    loss_ref = _rectangular_info_nce_reference(a_ref, b_ref, t_ref, class_ids, offset, symmetric)
    (loss_ref * 0.7).backward()
    actual, _ = _run_info_nce(a, b, temperature, class_ids, 0.7, offset, symmetric,
                              block_m=block_m, block_n=block_n, block_d=block_d)
    for got, want in zip(actual, (loss_ref.detach(), a_ref.grad, b_ref.grad, t_ref.grad)):
        _close(got, want, rtol=1e-10, atol=1e-12)


def test_info_nce_float16_small_probabilities_keep_their_precision():
    # Extra negatives of b far from every row of a: their probabilities (~3e-7) lie in
    # float16's subnormal range, where an unscaled operand keeps 2-3 bits. Their gradient
    # rows (grad_loss scales them into the normal range) must still be float16-accurate.
    gen = torch.Generator().manual_seed(37)
    B, M, D = 2, 10, 8
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=torch.float64), dim=1)
    extra = -a.mean(0, keepdim=True) + 0.05 * torch.randn(M - B, D, generator=gen, dtype=torch.float64)
    b = torch.cat([a, torch.nn.functional.normalize(extra, dim=1)]).half()
    a = a.half()
    temperature = torch.tensor(0.1, dtype=torch.float64)
    class_ids = torch.arange(M)
    a_ref, b_ref = a.double().requires_grad_(), b.double().requires_grad_()
    loss = _rectangular_info_nce_reference(a_ref, b_ref, temperature, class_ids, 0, False)
    (loss * 1e4).backward()
    probabilities = torch.softmax((a.double() @ b.double().t()) / temperature, dim=1)[:, B:]
    assert probabilities.max() < 6e-5  # the case really is subnormal in float16
    _, _, grad_b, _ = _run_info_nce(a, b, temperature, class_ids, 1e4, 0, False, block_m=2, block_n=4)[0]
    extra_rows = grad_b[B:].double()
    torch.testing.assert_close(extra_rows, b_ref.grad[B:], rtol=4e-3, atol=4e-3 * b_ref.grad[B:].abs().max())


def test_info_nce_sharp_temperature_stays_finite():
    # logits up to 1/0.005 = 200: exp would overflow float32 without the running maximum
    gen = torch.Generator().manual_seed(17)
    a, b, temperature = _info_nce_inputs(7, 8, gen, temperature=0.005)
    a, b = a.float(), b.float()
    class_ids = torch.arange(7)
    expected = _reference_info_nce(a, b, temperature.float(), class_ids, grad_loss=1.0)
    actual, _ = _run_info_nce(a, b, temperature, class_ids, 1.0, block_m=2, block_n=4)
    for got, want in zip(actual, expected):
        assert torch.isfinite(got).all()
        _close(got, want, rtol=1e-4, atol=1e-5)


def test_info_nce_rejects_bad_tiles():
    a, b, temperature = _info_nce_inputs(3, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="block_m"):
        kernels.info_nce_forward(a, b, temperature, torch.arange(3), block_m=3)


def test_tf32_switch_only_touches_float32():
    from tgfr.kernels import _common

    try:
        kernels.set_allow_tf32(True)
        assert _common.dot_precision(torch.float32) == "tf32"
        assert _common.dot_precision(torch.float64) == "ieee"
    finally:
        kernels.set_allow_tf32(False)
    assert _common.dot_precision(torch.float32) == "ieee"


# --------------------------------------------------------------------------- the GPU's tiles


@pytest.fixture
def gpu_tiles():
    """The tiles an H100 gets (all regions in one 256-wide tile, 32-word captions...).

    Under the interpreter this runs those exact tiles on the CPU, so their masks and
    loop bounds are checked at the paper's shapes even without a GPU.
    """
    return {"gpu": kernels.GPU.of_arch(90)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_word_region_gpu_tiles_at_paper_shapes(gpu_tiles, dtype):
    gen = torch.Generator().manual_seed(19)
    words, regions, _ = _word_region_inputs((2, 3, 22, 196, 256), gen)
    mask = torch.arange(22)[None, :] < torch.tensor([22, 7, 15])[:, None]
    words, regions = words.to(dtype), regions.to(dtype)
    upstream = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    expected = _reference_word_region(words, regions, mask, upstream)
    actual = _run_word_region(words, regions, mask, upstream.float(), caption_groups=2, **gpu_tiles)
    rtol, atol = LOW_PRECISION[dtype]
    for got, want in zip(actual, expected):
        _close(got, want, rtol, atol)


def test_word_region_float16_small_gradients(gpu_tiles):
    # an upstream gradient of ~1e-4 puts dC and dS far below float16's normal range: the
    # products must see them rescaled. (grad_regions, ~1e-6 here, is itself subnormal in
    # float16, so only grad_words can be held to float16 accuracy.)
    gen = torch.Generator().manual_seed(31)
    words, regions, _ = _word_region_inputs((2, 3, 22, 196, 256), gen)
    mask = torch.arange(22)[None, :] < torch.tensor([22, 7, 15])[:, None]
    words, regions = words.half(), regions.half()
    upstream = 1e-4 * torch.randn(2, 3, generator=gen, dtype=torch.float64)
    expected = _reference_word_region(words, regions, mask, upstream)
    _, grad_words, _ = _run_word_region(words, regions, mask, upstream.float(), **gpu_tiles)
    _close(grad_words, expected[1], *LOW_PRECISION[torch.float16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_info_nce_gpu_tiles(gpu_tiles, dtype):
    gen = torch.Generator().manual_seed(23)
    a, b, temperature = _info_nce_inputs(150, 256, gen, temperature=0.07)
    a, b = a.to(dtype), b.to(dtype)
    class_ids = torch.randint(0, 60, (150,), generator=gen)
    expected = _reference_info_nce(a, b, temperature.float(), class_ids, grad_loss=1.0)
    actual, _ = _run_info_nce(a, b, temperature, class_ids, 1.0, **gpu_tiles)
    rtol, atol = LOW_PRECISION[dtype]
    for got, want in zip(actual, expected):
        _close(got, want, rtol, atol)


# --------------------------------------------------------------------------- dispatch limits


def test_unsupported_reason_names_the_limit():
    gpu86 = kernels.GPU.of_arch(86)
    # 64 words x 784 regions cannot stay on chip: a reason naming it, so dispatch goes elsewhere
    reason = kernels.unsupported_reason("word_region", torch.float32, dict(T=64, N=784, D=256), gpu=gpu86)
    assert reason and "shared memory" in reason and "sm_86" in reason
    # the paper's shapes fit every architecture; InfoNCE walks D in chunks past what fits
    for arch in (80, 86, 89, 90):
        gpu = kernels.GPU.of_arch(arch)
        assert kernels.unsupported_reason("word_region", torch.bfloat16, dict(T=22, N=196, D=256), gpu=gpu) is None
        assert kernels.unsupported_reason("info_nce", torch.float32, dict(D=1024), gpu=gpu) is None
    with pytest.raises(ValueError, match="op"):
        kernels.unsupported_reason("conv", torch.float32, {}, gpu=gpu86)


def test_launch_config_fits_the_gpu():
    from tgfr.kernels import info_nce as info_nce_kernels

    for arch in (80, 86, 89, 90):
        gpu = kernels.GPU.of_arch(arch)
        for D in (256, 512, 1024):
            x = torch.empty(4, D, dtype=torch.bfloat16, device="meta")
            for kernel in ("lse", "grad"):
                config = info_nce_kernels._launch_config(x, kernel, gpu=gpu)
                shared, _ = info_nce_kernels.footprint(kernel, torch.bfloat16, config)
                assert shared <= gpu.shared_memory
                assert config["RESIDENT"] == (config["BLOCK_D"] >= D)
