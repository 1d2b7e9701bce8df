"""Gradient caching (GradCache): a batch whose embedding graph does not fit, trained exactly.

1. Embed the batch chunk by chunk without a graph (only the embeddings are kept).
2. Compute the loss on the whole batch from detached leaf copies of the embeddings
   and back-propagate it: this gives the gradient of every embedding (and of the
   parameters the loss itself holds).
3. Embed each chunk again, now with a graph, and back-propagate the cached
   embedding gradients through it; only one chunk's graph lives at a time.

The result is the gradient of the unchunked loss, provided the embedding of a sample
does not depend on the other samples of its chunk (no training-mode BatchNorm there:
keep such layers in the full-batch part). Randomness (dropout) is replayed: each
chunk's second pass starts from the random state its first pass started from.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

Embeddings = dict


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _pad_to(x: torch.Tensor, shape) -> torch.Tensor:
    """``x`` right-padded with zeros (False) to ``shape`` in every dimension but the first."""
    pad = []
    for have, want in zip(reversed(x.shape[1:]), reversed(shape[1:])):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


def _concatenate(chunks: list[Embeddings]) -> Embeddings:
    """Chunks joined along the batch; ragged trailing sizes (captions padded per chunk) padded to the longest."""
    joined = {}
    for key, first in chunks[0].items():
        if not isinstance(first, torch.Tensor):
            joined[key] = first
            continue
        shape = [max(c[key].shape[d] for c in chunks) for d in range(first.dim())]
        joined[key] = torch.cat([_pad_to(c[key], shape) for c in chunks])
    return joined


def chunked_backward(embed, loss_fn, batch_size: int, chunk: int, device, autocast=contextlib.nullcontext):
    """Back-propagate ``loss_fn(embed(all rows))["loss"]`` through ``embed`` one chunk of rows at a time.

    Args:
        embed: ``rows (slice) -> dict`` of per-sample tensors (batch first); non-float
            tensors (masks) and non-tensors pass through without a gradient.
        loss_fn: ``dict of the whole batch's embeddings -> dict`` of loss terms with ``"loss"``.
        batch_size: number of rows; chunk: rows per chunk.
        autocast: a context factory wrapped around every forward (mixed precision).

    Returns the loss terms (detached); gradients are accumulated into the parameters.
    """
    if chunk <= 0:
        raise ValueError(f"grad_cache_chunk must be a positive number of samples, got {chunk}")
    device = torch.device(device)
    rows = [slice(start, min(start + chunk, batch_size)) for start in range(0, batch_size, chunk)]
    states, chunks = [], []
    with torch.no_grad():
        for part in rows:
            states.append(_rng_state(device))
            with autocast():
                chunks.append(embed(part))
    after = _rng_state(device)
    cached = _concatenate(chunks)
    leaves = {k: v.detach().requires_grad_() for k, v in cached.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    with autocast():
        terms = loss_fn({**cached, **leaves})
    terms["loss"].backward()
    for part, state in zip(rows, states):
        _set_rng_state(state, device)
        with autocast():
            again = embed(part)
        outputs, grads = [], []
        for key, leaf in leaves.items():
            if leaf.grad is None:
                continue
            value = again[key]
            index = (slice(None),) + tuple(slice(0, n) for n in value.shape[1:])
            outputs.append(value)
            grads.append(leaf.grad[part][index].to(value.dtype))
        if outputs:
            torch.autograd.backward(outputs, grads)
    _set_rng_state(after, device)
    return {k: v.detach() for k, v in terms.items()}


def align_loss_and_backward(step, batch: dict, chunk: int, autocast) -> dict:
    """The align step's loss and its backward with gradient caching.

    Chunked: the caption encoder with the word projection, and IMIM when it is per-sample.
    Whole batch: the global projection and a BatchNorm IMIM (BatchNorm couples the samples;
    both are small) and the loss heads.
    """
    model, captions = step.model, batch["text"]
    labels = batch["label"].to(step.device)
    feature, regions = step.frozen_image(batch)
    imim_per_sample = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.imim.modules())

    def embed(rows):
        embedded = model.encode_text(captions[rows])
        if imim_per_sample:
            embedded["regions"] = model.imim(regions[rows])
        return embedded

    def loss(embedded):
        image = {"feature": feature, "global": model.global_projection(feature),
                 "regions": embedded["regions"] if imim_per_sample else model.imim(regions),
                 "region_shape": tuple(regions.shape[-2:])}
        text = {key: embedded[key] for key in ("words", "mask", "caption")}
        return step.heads(image, text, labels)

    return chunked_backward(embed, loss, len(labels), chunk, step.device, autocast)
