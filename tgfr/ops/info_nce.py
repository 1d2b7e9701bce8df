"""InfoNCE (CLIP loss; TGFR's CICL and IMCL) as a drop-in op, square or rectangular: its
argument checks, its pure-PyTorch form, its custom op, and the public function.

The fused backends never hold the ``B x M`` logits: they return the loss and the
log-sum-exp of every row (and of every positive's column), and the backward
recomputes logit tiles from those statistics (the Inf-CL pattern). The pure-PyTorch
form :func:`info_nce_reference` (backends ``"reference"`` and ``"vectorized"``) builds
the full logits and calls ``F.cross_entropy`` on rows and on the positives' columns.
"""
from __future__ import annotations

import numbers

import torch

from . import backends
from .common import (
    ArgumentTypeError,
    accumulation_dtype,
    autocast_disabled,
    check_bool,
    check_class_ids,
    check_device,
    check_finite,
    check_int,
    check_real,
    check_same,
    check_tensor,
    check_value,
    masked_cross_entropy,
    value_checks_enabled,
)

# --------------------------------------------------------------------------- the argument contract


def check_temperature(temperature, like: torch.Tensor | None = None) -> torch.Tensor | float:
    """A positive finite Python number (returned as a float), or a one-element floating-point
    tensor on ``like``'s device (returned as it is: its value is read by :func:`check_values`)."""
    if not isinstance(temperature, torch.Tensor):
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise ArgumentTypeError(f"temperature must be a positive number or a one-element tensor, got "
                                    f"{type(temperature).__name__} {temperature!r}")
        return check_real("temperature", temperature, positive=True)
    if temperature.numel() != 1:
        raise ValueError(f"temperature must hold one value, got shape {tuple(temperature.shape)}")
    if not temperature.is_floating_point():
        raise ValueError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
    if like is not None:
        check_device("temperature", temperature, "a", like)
    return temperature


def check_args(a, b, temperature, class_ids, offset=0, symmetric=True):
    """Check the arguments of :func:`info_nce`; returns ``(temperature, offset, symmetric)``."""
    check_tensor("a", a, 2)
    check_tensor("b", b, 2)
    check_same("b", b, "a", a)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a [B, D] and b [M, D] must share D, got {tuple(a.shape)} and {tuple(b.shape)}")
    offset = check_int("offset", offset)
    if offset + a.shape[0] > b.shape[0]:
        raise ValueError(
            f"offset + B = {offset} + {a.shape[0]} exceeds b's {b.shape[0]} rows: b must hold the positives "
            f"of a's rows at rows offset..offset+B-1"
        )
    symmetric = check_bool("symmetric", symmetric)
    temperature = check_temperature(temperature, a)
    check_class_ids(class_ids, b.shape[0], "a", a, what=" (one id per row of b)")
    return temperature, offset, symmetric


def check_values(a, b, temperature):
    """The data-reading checks (see :mod:`tgfr.ops.common`)."""
    if not value_checks_enabled():
        return
    check_finite("a", a)
    check_finite("b", b)
    t = temperature.detach().reshape(())
    got = f", got {t.item()}" if t.device.type == "cpu" else ""
    check_value(torch.isfinite(t) & (t > 0), f"temperature must be positive and finite{got}")


# --------------------------------------------------------------------------- pure PyTorch


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
    rows = masked_cross_entropy(logits, class_ids, offset)
    if not symmetric:
        return rows
    # the positives' columns, transposed: column offset + k against the rows of a, positive at row k
    positive_ids = None if class_ids is None else class_ids[offset : offset + B]
    return 0.5 * (rows + masked_cross_entropy(logits[:, offset : offset + B].t(), positive_ids))


# one pure-PyTorch form serves both: the logits are one product either way
PURE_PYTORCH = {"reference": info_nce_reference, "vectorized": info_nce_reference}


# --------------------------------------------------------------------------- the custom op (fused backends)


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
    check_values(a, b, temperature)
    return backends.RECORDS[backend].kernels().info_nce_forward(a, b, temperature, class_ids, offset, symmetric)


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
    return backends.RECORDS[backend].kernels().info_nce_backward(
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


# --------------------------------------------------------------------------- public


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor | float,
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
    columns only. Returns ``(R + C) / 2``, or ``R`` when not symmetric, in the accumulation
    dtype (float64 for float64 inputs, else float32). With ``M = B`` and ``offset = 0``
    this is the CLIP loss ``½ [CE(rows) + CE(columns)]``.

    Args:
        a: ``[B, D]`` anchors (float16, bfloat16, float32 or float64).
        b: ``[M, D]`` candidates, ``M >= offset + B``, ``a``'s dtype and device.
        temperature: ``τ > 0``, a Python number or a one-element tensor (which gets a
            gradient if it requires one); computed with in the accumulation dtype.
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
        # the distributed form checks the shard itself and tells every rank, so that a bad shard
        # on one rank stops them all at once instead of leaving the others waiting in a collective
        from . import distributed

        return distributed.info_nce(a, b, temperature, class_ids, backend, symmetric, group)
    temperature, offset, symmetric = check_args(a, b, temperature, class_ids, offset, symmetric)
    record = backends.RECORDS[backends.resolve(backend, a.device, "info_nce", a.dtype, D=a.shape[1])]
    acc = accumulation_dtype(a.dtype)
    with autocast_disabled(a.device):
        # a bfloat16 τ would round 0.07 to 0.0703: the temperature is always in the accumulation dtype
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.reshape(()).to(acc)
        else:
            temperature = torch.full((), temperature, dtype=acc, device=a.device)  # a fill: no host-to-device copy
        a, b = record.native_inputs(a, b)
        if not record.fused:
            if not torch.compiler.is_compiling():
                check_values(a, b, temperature)
            return PURE_PYTORCH[record.name](a, b, temperature, class_ids, offset, symmetric)
        if class_ids is None:
            class_ids = torch.arange(b.shape[0], device=a.device)
        loss, _, _ = _info_nce_op(
            a.contiguous(), b.contiguous(), temperature, class_ids.to(torch.int64).contiguous(), offset, symmetric,
            record.name,
        )
        return loss
