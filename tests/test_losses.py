import math

import torch

from tgfr import InfoNCELoss, WordRegionLoss
from tgfr.ops.info_nce import info_nce_reference
from tgfr.ops.word_region import matching_loss, word_region_scores_loop


def test_word_region_loss_module_matches_functional():
    gen = torch.Generator().manual_seed(7)
    words = torch.randn(4, 5, 8, generator=gen, dtype=torch.float64)
    regions = torch.randn(4, 6, 8, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    class_ids = torch.tensor([0, 1, 0, 2])
    loss = WordRegionLoss(backend="vectorized")(words, regions, mask, class_ids)
    scores = word_region_scores_loop(words, regions, mask)
    expected = sum(matching_loss(scores, class_ids, 10.0))
    torch.testing.assert_close(loss, expected)


def test_info_nce_module_learns_its_temperature():
    gen = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(16, 8, generator=gen), dim=1)
    module = InfoNCELoss(temperature=0.5, backend="reference")
    assert math.isclose(module.temperature.item(), 0.5, rel_tol=1e-6)
    torch.testing.assert_close(module(a, b), info_nce_reference(a, b, torch.tensor(0.5)))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    before = module(a, b).item()
    for _ in range(20):
        optimizer.zero_grad()
        module(a, b).backward()
        optimizer.step()
    # well-aligned pairs: a sharper temperature lowers the loss, and it stays positive
    assert module.temperature.item() < 0.5 and module(a, b).item() < before


def test_info_nce_fixed_temperature_is_a_buffer():
    module = InfoNCELoss(temperature=0.07, learnable=False)
    assert list(module.parameters()) == [] and "log_temperature" in dict(module.named_buffers())


def test_modules_pass_their_process_group_on(monkeypatch):
    """group= reaches tgfr.ops.distributed with this rank's shard (contract of the ops)."""
    from tgfr.ops import distributed

    calls = []

    def fake_info_nce(a, b, temperature, class_ids, backend, symmetric, group):
        calls.append(("info_nce", backend, symmetric, group))
        return a.sum() * 0

    def fake_word_region_loss(words, regions, word_mask, class_ids, gamma1, gamma2, gamma3, eps, backend, group):
        calls.append(("word_region", backend, group))
        zero = words.sum() * 0
        return zero, zero

    monkeypatch.setattr(distributed, "info_nce", fake_info_nce)
    monkeypatch.setattr(distributed, "word_region_loss", fake_word_region_loss)
    group = object()
    a = torch.randn(3, 4)
    InfoNCELoss(backend="vectorized", group=group)(a, a.clone())
    words, regions = torch.randn(3, 2, 4), torch.randn(3, 5, 4)
    WordRegionLoss(backend="vectorized", group=group)(words, regions)
    assert calls == [("info_nce", "vectorized", True, group), ("word_region", "vectorized", group)]
