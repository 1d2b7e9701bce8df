"""Gradient caching gives the gradient of the unchunked loss."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tgfr.engine import Distributed, Epoch, StageRunner
from tgfr.models.text import Vocabulary
from tgfr.models.tgfr import TGFRModel
from tgfr.training import AlignStep, load_config
from tgfr.training.data import build_splits, collate_batch, sample_captions
from tgfr.training.grad_cache import chunked_backward

RTOL, ATOL = 1e-9, 1e-12


def _grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def test_chunks_with_dropout_and_ragged_lengths_replay_their_randomness():
    """Against the same chunked forward kept whole in one graph: the second pass must redraw the same masks."""
    torch.manual_seed(0)
    embed_layer = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).double()
    head = nn.Linear(4, 1).double()
    x = torch.randn(11, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 3, 1, 4, 2, 5, 3, 1, 2, 6])

    def embed(rows):
        T = int(lengths[rows].max())  # every chunk padded to its own longest, like a tokenizer
        mask = torch.arange(T)[None] < lengths[rows, None]
        return {"tokens": embed_layer(x[rows, :T]) * mask[..., None], "mask": mask}

    def loss(e):
        pooled = e["tokens"].sum(1) / e["mask"].sum(1, keepdim=True)
        return {"loss": torch.logsumexp(head(pooled).squeeze(-1), 0)}

    torch.manual_seed(5)
    from tgfr.training.grad_cache import _concatenate
    reference = loss(_concatenate([embed(slice(s, min(s + 4, 11))) for s in range(0, 11, 4)]))
    reference["loss"].backward()
    expected = {**_grads(embed_layer), **{f"head.{k}": v for k, v in _grads(head).items()}}
    embed_layer.zero_grad(), head.zero_grad()

    torch.manual_seed(5)
    terms = chunked_backward(embed, loss, 11, 4, "cpu")
    got = {**_grads(embed_layer), **{f"head.{k}": v for k, v in _grads(head).items()}}
    torch.testing.assert_close(terms["loss"], reference["loss"].detach(), rtol=RTOL, atol=ATOL)
    assert got.keys() == expected.keys() and len(got) == 4
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=RTOL, atol=ATOL, msg=name)
    with pytest.raises(ValueError, match="grad_cache_chunk must be a positive"):
        chunked_backward(embed, loss, 11, 0, "cpu")


def _align_step(config):
    split = build_splits(config).train
    vocabulary = Vocabulary.from_captions(c for record in split.records for c in record.captions)
    torch.manual_seed(config.seed)
    model = TGFRModel(config.model, vocabulary).double()
    step = AlignStep(model, config, split, torch.device("cpu"))
    step.heads.double()
    # at initialisation (gate 0) the regions are GroupNorm outputs whose mean, IMCL's local vector, is rounding noise
    with torch.no_grad():
        model.imim.gate.fill_(0.7)
    step.start_epoch(Epoch(0, 0, torch.Generator().manual_seed(0), Distributed()))
    return step


@pytest.mark.parametrize("chunk", [5, 16])
def test_align_step_with_grad_cache_equals_the_plain_step(chunk):
    config = load_config("smoke", ["data.num_identities=12", "data.images_per_identity=3", "model.dropout=0"])
    step = _align_step(config)
    batch = collate_batch([step.data[i] for i in range(13)])
    batch["image"] = batch["image"].double()
    batch["text"] = sample_captions(batch["captions"], torch.Generator().manual_seed(1))
    runner = StageRunner(step)

    step.optimizer.zero_grad(set_to_none=True)
    plain = step.backward(batch, runner)
    expected = {**_grads(step.model), **{f"heads.{k}": v for k, v in _grads(step.heads).items()}}
    step.optimizer.zero_grad(set_to_none=True)
    step.settings.grad_cache_chunk = chunk
    cached = step.backward(batch, runner)
    got = {**_grads(step.model), **{f"heads.{k}": v for k, v in _grads(step.heads).items()}}
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key].detach(), rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")
    assert got.keys() == expected.keys() and any(k.startswith("text_encoder") for k in got)
    # the absolute floor follows the largest gradient: a bias ahead of a BatchNorm has a zero gradient in
    # exact arithmetic, so both runs hold rounding noise of that scale there
    atol = max(ATOL, RTOL * max(float(g.abs().max()) for g in expected.values()))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=RTOL, atol=atol, msg=name)
