"""InfoNCE (CLIP loss; TGFR's CICL and IMCL) as a drop-in op, square or rectangular.

The fused backends never hold the ``B x M`` logits: they return the loss and the
log-sum-exp of every row (and of every positive's column), and the backward
recomputes logit tiles from those statistics (the Inf-CL pattern).
"""
from __future__ import annotations

import torch

from . import backends, reference
from .validation import check_info_nce_args, check_info_nce_values


@torch.library.custom_op("tgfr::info_nce", mutates_args=())
def _info_nce_op(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    class_ids: torch.Tensor,
    offset: int,
    symmetric: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_info_nce_values(a, b, temperature)
    return backends.kernels(backend).info_nce_forward(a, b, temperature, class_ids, offset, symmetric)


@_info_nce_op.register_fake
def _(a, b, temperature, class_ids, offset, symmetric, backend):
    rows = temperature.new_empty((a.shape[0],))
    return temperature.new_empty(()), rows, temperature.new_empty((a.shape[0] if symmetric else 0,))


@torch.library.custom_op("tgfr::info_nce_backward", mutates_args=())
def _info_nce_backward_op(
    grad_loss: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    class_ids: torch.Tensor,
    lse_rows: torch.Tensor,
    lse_cols: torch.Tensor,
    offset: int,
    symmetric: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backends.kernels(backend).info_nce_backward(
        grad_loss.contiguous(), a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric
    )


@_info_nce_backward_op.register_fake
def _(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric, backend):
    return torch.empty_like(a), torch.empty_like(b), torch.empty_like(temperature)


def _setup_context(ctx, inputs, output):
    a, b, temperature, class_ids, offset, symmetric, backend = inputs
    _, lse_rows, lse_cols = output
    ctx.mark_non_differentiable(lse_rows, lse_cols)
    ctx.save_for_backward(a, b, temperature, class_ids, lse_rows, lse_cols)
    ctx.params = (offset, symmetric, backend)


def _backward(ctx, grad_loss, _grad_lse_rows, _grad_lse_cols):
    a, b, temperature, class_ids, lse_rows, lse_cols = ctx.saved_tensors
    grad_a, grad_b, grad_t = _info_nce_backward_op(
        grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, *ctx.params
    )
    return grad_a, grad_b, grad_t, None, None, None, None


_info_nce_op.register_autograd(_backward, setup_context=_setup_context)


def _distributed():
    """``tgfr.ops.distributed``, imported only when a process group is given."""
    try:
        from . import distributed
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.distributed":
            raise
        raise NotImplementedError("group= needs tgfr.ops.distributed, which this installation lacks") from error
    return distributed


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    backend: str = "auto",
    *,
    offset: int = 0,
    symmetric: bool = True,
    group=None,
) -> torch.Tensor:
    """InfoNCE of ``a [B, D]`` against ``b [M, D]``, logits ``l = a bᵀ / τ``.

    The positive of row ``i`` of ``a`` is row ``offset + i`` of ``b``; the other rows of
    ``b`` are its negatives. ``R = mean_i CE(row i of l, offset + i)`` and, when
    ``symmetric``, ``C = mean_k CE(column offset + k of l, k)`` over the ``B`` positives'
    columns only. Returns ``(R + C) / 2``, or ``R`` when not symmetric. With ``M = B`` and
    ``offset = 0`` this is the CLIP loss ``½ [CE(rows) + CE(columns)]``.

    Args:
        a: ``[B, D]`` anchors.
        b: ``[M, D]`` candidates, ``M >= offset + B``.
        temperature: one-element tensor ``τ > 0``; gets a gradient if it requires one.
        class_ids: optional ``[M]`` integer identities of ``b``'s rows (row ``i`` of ``a`` has
            ``class_ids[offset + i]``); same-identity pairs other than the positive leave
            every denominator.
        backend: ``"auto"`` or one of ``tgfr.ops.BACKENDS``.
        offset: column of row 0's positive.
        symmetric: add the column term.
        group: a ``torch.distributed`` process group: ``a`` and ``b`` are then this rank's
            shards of the global batch (``M = B``, ``offset = 0``) and the mean over ranks of
            the returned losses is the loss of the global batch.
    """
    if group is not None:
        if offset != 0:
            raise ValueError(f"offset must be 0 with a process group, got {offset}")
        # the distributed form checks the shard itself and tells every rank, so a bad shard on one
        # rank stops them all at once instead of leaving the others waiting in a collective
        return _distributed().info_nce(a, b, temperature, class_ids, backend, symmetric, group)
    check_info_nce_args(a, b, temperature, class_ids, offset, symmetric)
    backend = backends.resolve(backend, a.device, "info_nce", a.dtype, D=a.shape[1])
    if backend in backends.REFERENCE_BACKENDS:
        if not torch.compiler.is_compiling():
            check_info_nce_values(a, b, temperature)
        return reference.info_nce_reference(a, b, temperature.reshape(()), class_ids, offset, symmetric)
    if class_ids is None:
        class_ids = torch.arange(b.shape[0], device=a.device)
    loss, _, _ = _info_nce_op(
        a.contiguous(),
        b.contiguous(),
        # statistics and the temperature in the accumulation dtype: a bf16 τ would round 0.07 to 0.0703
        temperature.reshape(()).to(backends.accumulation_dtype(a.dtype)),
        class_ids.to(torch.int64).contiguous(),
        offset,
        symmetric,
        backend,
    )
    return loss
