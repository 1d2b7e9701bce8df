"""Symmetric InfoNCE (CLIP loss; TGFR's CICL and IMCL) as a drop-in op.

The fused backends never hold the ``B x B`` logits: they return the loss and the
log-sum-exp of every row and column, and the backward recomputes logit tiles from
those statistics (the Inf-CL pattern).
"""
from __future__ import annotations

import torch

from . import backends, reference
from .validation import check_info_nce_args, check_info_nce_values


@torch.library.custom_op("tgfr::info_nce", mutates_args=())
def _info_nce_op(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, class_ids: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_info_nce_values(a, b, temperature)
    return backends.kernels(backend).info_nce_forward(a, b, temperature, class_ids)


@_info_nce_op.register_fake
def _(a, b, temperature, class_ids, backend):
    stat = temperature.new_empty((a.shape[0],))
    return temperature.new_empty(()), stat, stat.clone()


@torch.library.custom_op("tgfr::info_nce_backward", mutates_args=())
def _info_nce_backward_op(
    grad_loss: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    class_ids: torch.Tensor,
    lse_rows: torch.Tensor,
    lse_cols: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backends.kernels(backend).info_nce_backward(
        grad_loss.contiguous(), a, b, temperature, class_ids, lse_rows, lse_cols
    )


@_info_nce_backward_op.register_fake
def _(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, backend):
    return torch.empty_like(a), torch.empty_like(b), torch.empty_like(temperature)


def _setup_context(ctx, inputs, output):
    a, b, temperature, class_ids, backend = inputs
    _, lse_rows, lse_cols = output
    ctx.mark_non_differentiable(lse_rows, lse_cols)
    ctx.save_for_backward(a, b, temperature, class_ids, lse_rows, lse_cols)
    ctx.backend = backend


def _backward(ctx, grad_loss, _grad_lse_rows, _grad_lse_cols):
    a, b, temperature, class_ids, lse_rows, lse_cols = ctx.saved_tensors
    grad_a, grad_b, grad_t = _info_nce_backward_op(
        grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, ctx.backend
    )
    return grad_a, grad_b, grad_t, None, None


_info_nce_op.register_autograd(_backward, setup_context=_setup_context)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``½ [mean_i CE(row i of a·bᵀ/τ, i) + mean_k CE(column k, k)]``.

    Args:
        a, b: ``[B, D]`` paired embeddings (row ``i`` of each is a positive pair).
        temperature: one-element tensor ``τ > 0``; gets a gradient if it requires one.
        class_ids: optional ``[B]`` integer identities; off-diagonal pairs of the same
            identity leave both denominators.
        backend: ``"auto"`` or one of ``tgfr.ops.BACKENDS``.
    """
    check_info_nce_args(a, b, temperature, class_ids)
    backend = backends.resolve(backend, a.device)
    if backend in backends.REFERENCE_BACKENDS:
        if not torch.compiler.is_compiling():
            check_info_nce_values(a, b, temperature)
        return reference.info_nce_reference(a, b, temperature.reshape(()), class_ids)
    # statistics and the temperature in float32 (float64 for float64 inputs): a bf16 τ would round 0.07 to 0.0703
    stat_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    if class_ids is None:
        class_ids = torch.arange(a.shape[0], device=a.device)
    loss, _, _ = _info_nce_op(
        a.contiguous(),
        b.contiguous(),
        temperature.reshape(()).to(stat_dtype),
        class_ids.to(torch.int64).contiguous(),
        backend,
    )
    return loss
