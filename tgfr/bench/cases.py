"""What is measured: one op, one implementation, one size and dtype, its inputs and its two halves.

A *spec* is a plain dict (it travels to worker processes as JSON):
``{"op": "word_region" | "info_nce", "impl": ..., "dtype": "fp32" | "bf16", "batch": B, "device": ...}``
plus the sizes (``T``, ``N``, ``D`` for word-region, ``D`` for InfoNCE). Only the public ops and the
reference functions are called, so every backend is measured through the API users call.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops import available_backends, info_nce, word_region_scores
from ..ops.common import accumulation_dtype
from ..ops.info_nce import info_nce_reference
from ..ops.word_region import published_damsm_words_loss

# Word-region rows: the authors' code verbatim, then the backends of tgfr.ops.word_region_scores.
WORD_REGION_IMPLS = ("published", "reference", "vectorized", "cpp", "cuda", "triton")
# InfoNCE rows: F.cross_entropy on the full logits, then the fused backends of tgfr.ops.info_nce.
INFO_NCE_IMPLS = ("cross_entropy", "cpp", "cuda", "triton")
IMPLS = {"word_region": WORD_REGION_IMPLS, "info_nce": INFO_NCE_IMPLS}
# what each row is compared against, and how rows are named in reports
BASELINE = {"word_region": "reference", "info_nce": "cross_entropy"}
LABELS = {"published": "published code", "reference": "loop", "cross_entropy": "F.cross_entropy"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def label(impl: str) -> str:
    return LABELS.get(impl, impl)


def available(impl: str, device: str) -> bool:
    """Whether ``impl`` can run on ``device`` in this process (the plain-PyTorch rows always can)."""
    if impl in ("published", "cross_entropy"):
        return True
    return impl in available_backends(device)


@dataclass
class Case:
    """Inputs (the leaves whose gradients are cleared between steps) and the two halves of a step."""

    leaves: list[torch.Tensor]
    forward: Callable[[], torch.Tensor]
    grad_output: torch.Tensor | None  # None for a scalar loss

    def backward(self, out: torch.Tensor, retain_graph: bool = False) -> None:
        torch.autograd.backward(out, self.grad_output, retain_graph=retain_graph)

    def step(self) -> None:
        self.clear_grads()
        self.backward(self.forward())

    def clear_grads(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None


def _randn(*shape, gen, device):
    # drawn on the CPU so that a seed gives the same inputs on every device
    return torch.randn(*shape, generator=gen).to(device)


def word_region_case(spec: dict) -> Case:
    B, T, N, D, device = spec["batch"], spec["T"], spec["N"], spec["D"], spec["device"]
    dtype = DTYPES[spec["dtype"]]
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    words = torch.nn.functional.normalize(_randn(B, T, D, gen=gen, device=device), dim=-1).to(dtype)
    regions = _randn(B, N, D, gen=gen, device=device).to(dtype)
    # ragged captions, as in training: between half and all of the T words are real
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=gen)
    if spec["impl"] == "published":
        # the published code's own layout: channel-first features and the loss of the B x B scores
        words_cf = words.transpose(1, 2).contiguous().requires_grad_()
        regions_cf = regions.transpose(1, 2).contiguous().requires_grad_()
        ids, cap_lens = torch.arange(B, device=device), lengths.tolist()

        def forward():
            image_to_caption, caption_to_image = published_damsm_words_loss(regions_cf, words_cf, ids, cap_lens, ids, B)
            return image_to_caption + caption_to_image

        return Case([words_cf, regions_cf], forward, None)
    words.requires_grad_()
    regions.requires_grad_()
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
    upstream = _randn(B, B, gen=gen, device=device).to(accumulation_dtype(dtype))  # the scores' dtype
    impl = spec["impl"]
    return Case([words, regions], lambda: word_region_scores(words, regions, mask, backend=impl), upstream)


def info_nce_case(spec: dict) -> Case:
    B, D, device = spec["batch"], spec["D"], spec["device"]
    dtype = DTYPES[spec["dtype"]]
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    a = torch.nn.functional.normalize(_randn(B, D, gen=gen, device=device), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * _randn(B, D, gen=gen, device=device), dim=1)
    a = a.to(dtype).requires_grad_()
    b = b.to(dtype).requires_grad_()
    temperature = torch.tensor(0.07, device=device, requires_grad=True)
    if spec["impl"] == "cross_entropy":
        forward = lambda: info_nce_reference(a, b, temperature)  # noqa: E731
    else:
        impl = spec["impl"]
        forward = lambda: info_nce(a, b, temperature, backend=impl)  # noqa: E731
    return Case([a, b, temperature], forward, None)


def make_case(spec: dict) -> Case:
    return {"word_region": word_region_case, "info_nce": info_nce_case}[spec["op"]](spec)
