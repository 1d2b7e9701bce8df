"""Pure-PyTorch reference implementations of the two hot ops.

These are the ground truth for every fused backend and the baseline of every
benchmark. Autograd differentiates them directly.

* ``word_region_scores_loop`` keeps the structure of the published DAMSM
  "words loss" (AttnGAN / TGFR code): a Python loop over captions, each caption's
  valid words attending over every image's regions at once.
* ``word_region_scores_vectorized`` computes all ``B_v x B_t`` pairs in one go and
  therefore materialises ``B_v * B_t * T * N`` attention values.
* ``info_nce_reference`` builds the full ``B x M`` logits and calls
  ``F.cross_entropy`` on rows and on the positives' columns.

Shapes: ``words[B_t, T, D]``, ``regions[B_v, N, D]``, ``word_mask[B_t, T]`` (bool,
True = real word), ``scores[B_v, B_t]`` (rows images, columns captions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def same_identity_mask(class_ids: torch.Tensor) -> torch.Tensor:
    """True where two different samples share an identity (kept out of softmaxes)."""
    same = class_ids[:, None] == class_ids[None, :]
    same.fill_diagonal_(False)
    return same


def matching_loss(scores: torch.Tensor, class_ids=None, gamma3: float = 10.0):
    """DAMSM cross-entropy on a square score matrix.

    Returns ``(image_to_caption, caption_to_image)``: CE over each row of
    ``gamma3 * scores`` (an image against all captions) and over each column.
    Same-identity off-diagonal pairs are masked out of both softmaxes.
    """
    logits = gamma3 * scores
    if class_ids is not None:
        logits = logits.masked_fill(same_identity_mask(class_ids), float("-inf"))
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels)


def info_nce_reference(a, b, temperature, class_ids=None, offset=0, symmetric=True):
    """InfoNCE on the full logits ``l = a bᵀ / τ`` (``a [B, D]``, ``b [M, D]``).

    The positive of row ``i`` is column ``offset + i``. Row term: ``CE(l, offset + i)``
    over all ``M`` columns. Column term (symmetric only): ``CE`` over the rows of each
    positive's column ``offset + k``. Returns ``(rows + columns) / 2``, or the row term
    alone. ``class_ids [M]`` names the identities of ``b``'s rows (row ``i`` of ``a`` has
    ``class_ids[offset + i]``); same-identity pairs other than the positive are masked.
    """
    B = a.shape[0]
    logits = (a @ b.t()) / temperature
    positives = torch.arange(offset, offset + B, device=a.device)
    if class_ids is not None:
        same = class_ids[positives][:, None] == class_ids[None, :]
        same[torch.arange(B, device=a.device), positives] = False
        logits = logits.masked_fill(same, float("-inf"))
    rows = F.cross_entropy(logits, positives)
    if not symmetric:
        return rows
    columns = F.cross_entropy(logits[:, offset : offset + B].t(), torch.arange(B, device=a.device))
    return 0.5 * (rows + columns)


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
