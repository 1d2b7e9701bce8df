"""Word-region matching scores (WRCL, the DAMSM "words loss") as a drop-in op: its
argument checks, its pure-PyTorch forms, its custom op, and the public functions.

``word_region_scores`` checks its arguments, picks a backend and, for the fused
backends, goes through the ``tgfr::word_region_scores`` custom op, whose backward is
its own custom op: both work under ``torch.compile`` (fake kernels give the output
shapes) and under ``torch.autograd.gradcheck``. The pure-PyTorch forms are the
ground truth of every fused backend and the baseline of every benchmark:

* :func:`word_region_scores_loop` (backend ``"reference"``) keeps the structure of the
  published DAMSM "words loss" (AttnGAN / TGFR code): a Python loop over captions, each
  caption's valid words attending over every image's regions at once.
* :func:`word_region_scores_vectorized` (backend ``"vectorized"``) computes all
  ``B_v x B_t`` pairs in one go and therefore materialises ``B_v * B_t * T * N``
  attention values.
* :func:`published_damsm_words_loss` is the published loss verbatim, the test oracle.

Shapes: ``words[B_t, T, D]``, ``regions[B_v, N, D]``, ``word_mask[B_t, T]`` (bool,
True = real word), ``scores[B_v, B_t]`` (rows images, columns captions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backends
from .common import (
    accumulation_dtype,
    autocast_disabled,
    check_class_ids,
    check_device,
    check_finite,
    check_real,
    check_same,
    check_tensor,
    check_value,
    masked_cross_entropy,
    value_checks_enabled,
)

# --------------------------------------------------------------------------- the argument contract


def check_scalars(gamma1, gamma2, eps, gamma3=10.0) -> tuple[float, float, float, float]:
    """``(gamma1, gamma2, eps, gamma3)`` as floats: the gammas must be finite real numbers, ``eps`` a
    positive finite one."""
    return (check_real("gamma1", gamma1), check_real("gamma2", gamma2), check_real("eps", eps, positive=True),
            check_real("gamma3", gamma3))


def check_scores_args(words, regions, word_mask, gamma1, gamma2, eps) -> tuple[float, float, float]:
    """Check the arguments of :func:`word_region_scores`; returns ``(gamma1, gamma2, eps)`` as floats."""
    check_tensor("words", words, 3)
    check_tensor("regions", regions, 3)
    check_same("regions", regions, "words", words)
    if regions.shape[2] != words.shape[2]:
        raise ValueError(
            f"words and regions must share the embedding width D: words is {tuple(words.shape)} "
            f"([B_t, T, D]), regions is {tuple(regions.shape)} ([B_v, N, D])"
        )
    if word_mask is not None:
        check_tensor("word_mask", word_mask, 2, dtypes=(torch.bool,))
        if tuple(word_mask.shape) != tuple(words.shape[:2]):
            raise ValueError(
                f"word_mask must have shape [B_t, T] = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}"
            )
        check_device("word_mask", word_mask, "words", words)
    return check_scalars(gamma1, gamma2, eps)[:3]


def check_loss_args(words, regions, word_mask, class_ids, gamma1, gamma2, gamma3, eps) -> tuple[float, ...]:
    """Check the arguments of :func:`word_region_loss` (also its distributed form);
    returns ``(gamma1, gamma2, gamma3, eps)`` as floats."""
    check_scores_args(words, regions, word_mask, gamma1, gamma2, eps)
    if words.shape[0] != regions.shape[0]:
        raise ValueError(
            f"word_region_loss needs paired batches: words has {words.shape[0]} captions, "
            f"regions has {regions.shape[0]} images"
        )
    check_class_ids(class_ids, words.shape[0], "words", words)
    gamma1, gamma2, eps, gamma3 = check_scalars(gamma1, gamma2, eps, gamma3)
    return gamma1, gamma2, gamma3, eps


def check_values(words, regions, word_mask):
    """The data-reading checks (see :mod:`tgfr.ops.common`)."""
    if not value_checks_enabled():
        return
    check_finite("words", words)
    check_finite("regions", regions)
    if word_mask is not None:
        has_word = word_mask.any(dim=1)
        if word_mask.device.type == "cpu":
            empty = (~has_word).nonzero().flatten()
            if empty.numel():
                raise ValueError(
                    f"word_mask marks no valid word for caption(s) {empty.tolist()[:8]}: "
                    "every caption needs at least one word"
                )
        else:
            check_value(has_word.all(), "word_mask marks no valid word for some caption: every caption needs one")


# --------------------------------------------------------------------------- pure PyTorch


def _cosine(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    # <x, y> / max(|x| |y|, eps): the clamp of the product, as in the authors' code
    # (newer F.cosine_similarity clamps each norm separately, which differs near 0).
    num = (x * y).sum(-1)
    den = (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=eps)
    return num / den


def word_region_scores_loop(words, regions, word_mask=None, gamma1=4.0, gamma2=5.0, eps=1e-8):
    """Word-region matching scores, one caption at a time (the published loop)."""
    columns = []
    for k in range(words.shape[0]):
        w = words[k] if word_mask is None else words[k][word_mask[k]]  # [T_k, D]
        # every image's regions against this caption's words: [B_v, N, T_k]
        attn = torch.matmul(regions, w.t())
        attn = torch.softmax(attn, dim=2)  # eq. 3: each region normalised over words
        attn = attn.transpose(1, 2)  # [B_v, T_k, N]
        attn = torch.softmax(gamma1 * attn, dim=2)  # eq. 4: each word over regions
        context = torch.bmm(attn, regions)  # [B_v, T_k, D]
        cos = _cosine(w.unsqueeze(0), context, eps)  # [B_v, T_k]
        columns.append(torch.logsumexp(gamma2 * cos, dim=1))  # eq. 5
    return torch.stack(columns, dim=1)


def word_region_scores_vectorized(words, regions, word_mask=None, gamma1=4.0, gamma2=5.0, eps=1e-8):
    """Word-region matching scores for all pairs at once (memory ``B_v*B_t*T*N``)."""
    B_t, T, _ = words.shape
    if word_mask is None:
        word_mask = torch.ones(B_t, T, dtype=torch.bool, device=words.device)
    sim = torch.einsum("ktd,ind->iktn", words, regions)  # [B_v, B_t, T, N]
    valid = word_mask[None, :, :, None]
    sim = sim.masked_fill(~valid, float("-inf"))
    p = torch.softmax(sim, dim=2).masked_fill(~valid, 0.0)
    attn = torch.softmax(gamma1 * p, dim=3)
    context = torch.einsum("iktn,ind->iktd", attn, regions)
    cos = _cosine(words.unsqueeze(0), context, eps)  # [B_v, B_t, T]
    logits = (gamma2 * cos).masked_fill(~word_mask[None], float("-inf"))
    return torch.logsumexp(logits, dim=2)


PURE_PYTORCH = {"reference": word_region_scores_loop, "vectorized": word_region_scores_vectorized}


def matching_loss(scores: torch.Tensor, class_ids=None, gamma3: float = 10.0):
    """DAMSM cross-entropy on a square score matrix.

    Returns ``(image_to_caption, caption_to_image)``: CE over each row of
    ``gamma3 * scores`` (an image against all captions) and over each column.
    Same-identity off-diagonal pairs are masked out of both softmaxes.
    """
    logits = gamma3 * scores
    return masked_cross_entropy(logits, class_ids), masked_cross_entropy(logits.t(), class_ids)


def published_damsm_words_loss(
    img_features, words_emb, labels, cap_lens, class_ids, batch_size, g1=4.0, g2=5.0, g3=10.0
):
    """The DAMSM words loss as published (AttnGAN ``words_loss`` with ``func_attention``), line for line.

    Channel-first layout: ``img_features[B, D, N]``, ``words_emb[B, D, T]``; returns
    ``(image_to_caption, caption_to_image)``. Kept verbatim, ``repeat`` and copies included,
    as the test oracle of ``word_region_loss`` and as the "published code" row of the benchmark.
    """
    masks, similarities = [], []
    for i in range(batch_size):
        mask = class_ids == class_ids[i]
        mask[i] = False
        masks.append(mask.reshape(1, -1))
        words_num = int(cap_lens[i])
        word = words_emb[i, :, :words_num].unsqueeze(0).contiguous()  # 1 x nef x words_num
        word = word.repeat(batch_size, 1, 1)
        context = img_features  # batch x nef x 17 x 17 (here x N)
        # func_attention
        query, ih_iw = word, context.size(2)
        context_t = torch.transpose(context, 1, 2).contiguous()
        attn = torch.bmm(context_t, query).view(batch_size * ih_iw, words_num)
        attn = torch.softmax(attn, dim=1).view(batch_size, ih_iw, words_num)
        attn = torch.transpose(attn, 1, 2).contiguous().view(batch_size * words_num, ih_iw)
        attn = torch.softmax(attn * g1, dim=1).view(batch_size, words_num, ih_iw)
        wei_context = torch.bmm(context, torch.transpose(attn, 1, 2).contiguous())
        # words_loss continued
        word = word.transpose(1, 2).contiguous().view(batch_size * words_num, -1)
        wei_context = wei_context.transpose(1, 2).contiguous().view(batch_size * words_num, -1)
        w12 = (word * wei_context).sum(1)
        w1, w2 = word.norm(2, dim=1), wei_context.norm(2, dim=1)
        row_sim = (w12 / (w1 * w2).clamp(min=1e-8)).view(batch_size, words_num)
        row_sim = torch.log(row_sim.mul(g2).exp().sum(dim=1, keepdim=True))
        similarities.append(row_sim)
    similarities = torch.cat(similarities, 1) * g3
    masks = torch.cat(masks, 0)
    similarities = similarities.masked_fill(masks, -float("inf"))
    loss0 = F.cross_entropy(similarities, labels)
    loss1 = F.cross_entropy(similarities.transpose(0, 1), labels)
    return loss0, loss1


# --------------------------------------------------------------------------- the custom op (fused backends)


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
    check_values(words, regions, word_mask)
    kernels = backends.RECORDS[backend].kernels()
    return kernels.word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps)


@_word_region_scores_op.register_fake
def _(words, regions, word_mask, gamma1, gamma2, eps, backend):
    return words.new_empty((regions.shape[0], words.shape[0]), dtype=accumulation_dtype(words.dtype))


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
    return backends.RECORDS[backend].kernels().word_region_scores_backward(
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


# --------------------------------------------------------------------------- public


def _scores(words, regions, word_mask, gamma1, gamma2, eps, backend) -> torch.Tensor:
    """The scores of checked arguments (``gamma1``, ``gamma2``, ``eps`` floats)."""
    T, N, D = words.shape[1], regions.shape[1], words.shape[2]
    record = backends.RECORDS[backends.resolve(backend, words.device, "word_region", words.dtype, T=T, N=N, D=D)]
    with autocast_disabled(words.device):
        words, regions = record.native_inputs(words, regions)
        if not record.fused:
            if not torch.compiler.is_compiling():
                check_values(words, regions, word_mask)
            return PURE_PYTORCH[record.name](words, regions, word_mask, gamma1, gamma2, eps)
        if word_mask is None:
            word_mask = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device)
        return _word_region_scores_op(
            words.contiguous(), regions.contiguous(), word_mask.contiguous(), gamma1, gamma2, eps, record.name
        )


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
        words: ``[B_t, T, D]`` word embeddings of ``B_t`` captions (float16, bfloat16,
            float32 or float64).
        regions: ``[B_v, N, D]`` region features of ``B_v`` images, ``words``' dtype and device.
        word_mask: ``[B_t, T]`` bool, True for real words; None means all real.
            Padded words take part in no softmax or sum. Every caption needs one word.
        gamma1: sharpness of each word's attention over regions (eq. 4), a finite number.
        gamma2: sharpness of the aggregation over words (eq. 5), a finite number.
        eps: lower bound of ``|w||c|`` in the cosine, a positive finite number.
        backend: ``"auto"`` or one of ``tgfr.ops.BACKENDS``.

    Returns:
        ``[B_v, B_t]`` scores, rows images and columns captions, in the accumulation dtype
        (float64 for float64 inputs, else float32).
    """
    gamma1, gamma2, eps = check_scores_args(words, regions, word_mask, gamma1, gamma2, eps)
    return _scores(words, regions, word_mask, gamma1, gamma2, eps, backend)


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
    ``(image_to_caption, caption_to_image)`` in the accumulation dtype; with ``class_ids``,
    other pairs of the same identity are left out of both softmaxes. ``gamma3`` (a finite
    number) scales the scores into logits. With a ``torch.distributed`` process ``group``
    the inputs are this rank's shard of the global batch, and the mean over ranks of each
    returned loss is that loss on the global batch.
    """
    if group is not None:  # checked by the distributed form, which tells every rank (see info_nce)
        from . import distributed

        return distributed.word_region_loss(
            words, regions, word_mask, class_ids, gamma1, gamma2, gamma3, eps, backend, group
        )
    gamma1, gamma2, gamma3, eps = check_loss_args(words, regions, word_mask, class_ids, gamma1, gamma2, gamma3, eps)
    scores = _scores(words, regions, word_mask, gamma1, gamma2, eps, backend)
    with autocast_disabled(scores.device):
        return matching_loss(scores, class_ids, gamma3)
