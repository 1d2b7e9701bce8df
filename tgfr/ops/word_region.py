"""Word-region matching scores (WRCL, the DAMSM "words loss") as a drop-in op.

``word_region_scores`` validates its arguments, picks a backend and, for the
fused backends, goes through the ``tgfr::word_region_scores`` custom op, whose
backward is its own custom op: both work under ``torch.compile`` (fake kernels
give the output shapes) and under ``torch.autograd.gradcheck``.
"""
from __future__ import annotations

import torch

from . import backends, reference
from .info_nce import _distributed
from .validation import check_class_ids, check_word_region_args, check_word_region_values


@torch.library.custom_op("tgfr::word_region_scores", mutates_args=())
def _word_region_scores_op(
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor,
    gamma1: float,
    gamma2: float,
    eps: float,
    backend: str,
) -> torch.Tensor:
    check_word_region_values(words, regions, word_mask)
    return backends.kernels(backend).word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps)


@_word_region_scores_op.register_fake
def _(words, regions, word_mask, gamma1, gamma2, eps, backend):
    return words.new_empty((regions.shape[0], words.shape[0]))


@torch.library.custom_op("tgfr::word_region_scores_backward", mutates_args=())
def _word_region_scores_backward_op(
    grad_scores: torch.Tensor,
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor,
    gamma1: float,
    gamma2: float,
    eps: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return backends.kernels(backend).word_region_scores_backward(
        grad_scores.contiguous(), words, regions, word_mask, gamma1, gamma2, eps
    )


@_word_region_scores_backward_op.register_fake
def _(grad_scores, words, regions, word_mask, gamma1, gamma2, eps, backend):
    return torch.empty_like(words), torch.empty_like(regions)


def _setup_context(ctx, inputs, output):
    words, regions, word_mask, gamma1, gamma2, eps, backend = inputs
    ctx.save_for_backward(words, regions, word_mask)
    ctx.params = (gamma1, gamma2, eps, backend)


def _backward(ctx, grad_scores):
    words, regions, word_mask = ctx.saved_tensors
    grad_words, grad_regions = _word_region_scores_backward_op(grad_scores, words, regions, word_mask, *ctx.params)
    return grad_words, grad_regions, None, None, None, None, None


_word_region_scores_op.register_autograd(_backward, setup_context=_setup_context)


def word_region_scores(
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    eps: float = 1e-8,
    backend: str = "auto",
) -> torch.Tensor:
    """Matching score of every image against every caption.

    Args:
        words: ``[B_t, T, D]`` word embeddings of ``B_t`` captions.
        regions: ``[B_v, N, D]`` region features of ``B_v`` images.
        word_mask: ``[B_t, T]`` bool, True for real words; None means all real.
            Padded words take part in no softmax or sum. Every caption needs one word.
        gamma1: sharpness of each word's attention over regions (eq. 4).
        gamma2: sharpness of the aggregation over words (eq. 5).
        eps: lower bound of ``|w||c|`` in the cosine.
        backend: ``"auto"`` or one of ``tgfr.ops.BACKENDS``.

    Returns:
        ``[B_v, B_t]`` scores, rows images and columns captions.
    """
    check_word_region_args(words, regions, word_mask)
    T, N, D = words.shape[1], regions.shape[1], words.shape[2]
    backend = backends.resolve(backend, words.device, "word_region", words.dtype, T=T, N=N, D=D)
    if backend in backends.REFERENCE_BACKENDS:
        if not torch.compiler.is_compiling():
            check_word_region_values(words, regions, word_mask)
        fn = reference.word_region_scores_loop if backend == "reference" else reference.word_region_scores_vectorized
        return fn(words, regions, word_mask, gamma1, gamma2, eps)
    if word_mask is None:
        word_mask = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device)
    return _word_region_scores_op(
        words.contiguous(),
        regions.contiguous(),
        word_mask.contiguous(),
        float(gamma1),
        float(gamma2),
        float(eps),
        backend,
    )


def word_region_loss(
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    class_ids: torch.Tensor | None = None,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
    eps: float = 1e-8,
    backend: str = "auto",
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WRCL: DAMSM cross-entropy over the matching scores of a paired batch.

    Image ``i`` and caption ``i`` are the positive pair. Returns
    ``(image_to_caption, caption_to_image)``; with ``class_ids``, other pairs of the
    same identity are left out of both softmaxes. With a ``torch.distributed`` process
    ``group`` the inputs are this rank's shard of the global batch, and the mean over
    ranks of each returned loss is that loss on the global batch.
    """
    if group is not None:  # checked by the distributed form, which tells every rank (see info_nce)
        return _distributed().word_region_loss(
            words, regions, word_mask, class_ids, gamma1, gamma2, gamma3, eps, backend, group
        )
    if words.dim() == 3 and regions.dim() == 3 and words.shape[0] != regions.shape[0]:
        raise ValueError(
            f"word_region_loss needs paired batches: words has {words.shape[0]} captions, "
            f"regions has {regions.shape[0]} images"
        )
    check_class_ids(class_ids, words.shape[0], words.device)
    scores = word_region_scores(words, regions, word_mask, gamma1, gamma2, eps, backend)
    return reference.matching_loss(scores, class_ids, gamma3)
