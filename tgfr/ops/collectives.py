"""The collectives of the ops' global-batch forms (``group=``): the metadata exchange, the
gather with a gradient, the all-to-all and the distributed transpose built on it (with a
gradient). A leaf beside :mod:`tgfr.ops.common`: it imports nothing else of tgfr.

Shards may differ in size. Every collective takes its tensors on the device the group's
backend needs (CUDA for ``nccl``, the CPU for ``gloo``) and gives its results back on the
inputs' device. A collective that fails or does not complete within the group's timeout
(a rank that never arrives) raises an error that says so on the ranks that reached it.

Before any other collective the ranks exchange a small metadata tensor (shard size,
widths, dtype, whether ``class_ids`` were given, whether the shard passed its checks), so
that a mismatch or a bad shard ends in an error on every rank, naming the ranks, instead
of a hang in the next collective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .common import FLOAT_DTYPES

OPS = ("info_nce", "word_region_loss")
# every rank sends this many int64s whichever op it called, so that a mismatch of ops is read, not hung on
_SLOTS = 8


@dataclass(frozen=True)
class Shards:
    """This rank's place in a global batch sharded over the ranks of ``group``, in rank order."""

    group: dist.ProcessGroup
    rank: int
    sizes: tuple[int, ...]
    metadata: tuple[dict[str, int], ...]  # every rank's fields, as exchanged

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def size(self) -> int:
        return self.sizes[self.rank]

    @property
    def offset(self) -> int:
        """The global index of this rank's first sample."""
        return sum(self.sizes[: self.rank])

    @property
    def total(self) -> int:
        return sum(self.sizes)


def member(group) -> tuple[int, int]:
    """``(rank, world size)`` of this process in ``group``; a clear error if there is no such group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "group= was given but torch.distributed is not initialised: call "
            "torch.distributed.init_process_group first (torchrun does it for `tgfr train`), or pass group=None")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD), "
                        f"got {type(group).__name__}")
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError(f"this process (global rank {dist.get_rank()}) is not a member of the given group")
    return rank, dist.get_world_size(group)


def comm_device(group, device: torch.device) -> torch.device:
    """Where this group's collectives take their tensors: NCCL needs CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend(group) == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _timeout_seconds(group) -> float | None:
    try:
        return group._get_backend(comm_device(group, torch.device("cpu"))).options._timeout.total_seconds()
    except (AttributeError, RuntimeError):
        return None


def _collective(what: str, rank: int, group, fn):
    try:
        return fn()
    except RuntimeError as error:
        timeout = _timeout_seconds(group)
        limit = f"within the process group's timeout of {timeout:g} s" if timeout else "(process group error)"
        raise RuntimeError(
            f"rank {rank}: the {what} of the distributed loss did not complete {limit}; "
            f"every rank of the group must call the same loss in the same order: {error}") from error


def _all_gather(x: torch.Tensor, rank: int, world: int, group, what: str) -> list[torch.Tensor]:
    out = [torch.empty_like(x) for _ in range(world)]
    _collective(what, rank, group, lambda: dist.all_gather(out, x.contiguous(), group=group))
    return out


def dtype_code(x) -> int:
    """``x``'s dtype as an int of the metadata (-1: not a tensor of a supported dtype)."""
    return FLOAT_DTYPES.index(x.dtype) if isinstance(x, torch.Tensor) and x.dtype in FLOAT_DTYPES else -1


def exchange_metadata(op: str, fields: dict[str, int], agree: dict[str, str], error: Exception | None, group,
                      device: torch.device) -> Shards:
    """Every rank's ``fields`` (``"batch"``, the shard size, among them; at most six), exchanged.

    ``error`` is this rank's failed argument check, or None. Raises on every rank if any rank
    failed its checks, called another op, or differs in a field of ``agree`` (field: label);
    this rank's own error is raised again, prefixed with its rank.
    """
    rank, world = member(group)
    names = ("ok", "op", *fields)
    values = [0 if error else 1, OPS.index(op), *map(int, fields.values())]
    values += [-1] * (_SLOTS - len(values))
    mine = torch.tensor(values, dtype=torch.int64, device=comm_device(group, device))
    everyone = [dict(zip(names, t.tolist())) for t in _all_gather(mine, rank, world, group, "metadata exchange")]
    if error is not None:
        raise type(error)(f"rank {rank}: {error}") from error
    failed = [r for r, meta in enumerate(everyone) if not meta["ok"]]
    if failed:
        raise ValueError(f"rank {rank}: rank(s) {failed} of the group passed invalid inputs to the distributed "
                         f"{op} (their own error says which)")

    def show(field, value):
        return OPS[value] if field == "op" else str(FLOAT_DTYPES[value]) if field == "dtype" else value

    for field, label in {"op": "the loss called", **agree}.items():
        for r, meta in enumerate(everyone):
            if meta[field] != everyone[rank][field]:
                raise ValueError(f"rank {rank}: {label} differs across ranks: rank {rank} has "
                                 f"{show(field, everyone[rank][field])}, rank {r} has {show(field, meta[field])}")
    return Shards(group, rank, tuple(meta["batch"] for meta in everyone), tuple(everyone))


# --------------------------------------------------------------------------- gather


class _GatherWithGradient(torch.autograd.Function):
    """All-gather of uneven shards along dim 0; the backward sums every rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x, shards):
        ctx.shards = shards
        padded = x.new_zeros((max(shards.sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        device = comm_device(shards.group, x.device)
        parts = _all_gather(padded.to(device), shards.rank, shards.world, shards.group, "gather of the embeddings")
        return torch.cat([p[:n] for p, n in zip(parts, shards.sizes)]).to(x.device)

    @staticmethod
    def backward(ctx, grad):
        # gloo has no reduce-scatter of uneven parts: an all-reduce of the [B_global, ...] gradient, then our rows
        shards = ctx.shards
        total = grad.contiguous().to(comm_device(shards.group, grad.device))
        _collective("gather's backward (all-reduce)", shards.rank, shards.group,
                    lambda: dist.all_reduce(total, group=shards.group))
        return total[shards.offset: shards.offset + shards.size].to(grad.device), None


def gather(x: torch.Tensor, shards: Shards) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, with a gradient."""
    return _GatherWithGradient.apply(x, shards)


def gather_ids(x: torch.Tensor, shards: Shards) -> torch.Tensor:
    """Every rank's ``x`` (integers: masks, identities) concatenated along dim 0, without a gradient."""
    with torch.no_grad():
        return _GatherWithGradient.apply(x, shards)


# --------------------------------------------------------------------------- all-to-all


def all_to_all(x: torch.Tensor, send: list[int], receive: list[int], shards: Shards, what: str = "all-to-all"
               ) -> torch.Tensor:
    """Rows ``x[sum(send[:q]) : sum(send[:q + 1])]`` go to rank ``q``; the result holds, in rank order,
    the ``receive[q]`` rows rank ``q`` sent here. Without a gradient (:func:`transpose` has one)."""
    if len(send) != shards.world or len(receive) != shards.world or sum(send) != x.shape[0]:
        raise ValueError(f"all_to_all: send {list(send)} and receive {list(receive)} need one part per rank "
                         f"({shards.world}), and send must split x's {x.shape[0]} rows")
    device = comm_device(shards.group, x.device)
    out = torch.empty((sum(receive), *x.shape[1:]), dtype=x.dtype, device=device)
    source = x.contiguous().to(device)
    _collective(what, shards.rank, shards.group,
                lambda: dist.all_to_all_single(out, source, list(receive), list(send), group=shards.group))
    return out.to(x.device)


def _columns_of_own(rows: torch.Tensor, shards: Shards, what: str) -> torch.Tensor:
    """``M[:, own]`` (``[B, B_l]``, contiguous) from every rank's ``rows = M[own, :]``.

    Rank ``r`` sends rank ``q`` the block ``M[own_r, own_q]``, row-major (``B_r x B_q`` values),
    and receives ``M[own_q, own_r]``: in rank order these blocks are ``M[:, own_r]`` row by row.
    """
    send = torch.cat([block.flatten() for block in rows.split(list(shards.sizes), dim=1)])  # the one copy
    parts = [shards.size * n for n in shards.sizes]  # as many values to rank q as come back from it
    return all_to_all(send, parts, parts, shards, what).view(shards.total, shards.size)


class _Transpose(torch.autograd.Function):
    """Self-adjoint: the gradient of ``Mᵀ``'s rows is transposed back the same way."""

    @staticmethod
    def forward(ctx, rows, shards):
        ctx.shards = shards
        return _columns_of_own(rows, shards, "all-to-all").t()

    @staticmethod
    def backward(ctx, grad):
        return _columns_of_own(grad, ctx.shards, "all-to-all's backward").t(), None


def transpose(rows: torch.Tensor, shards: Shards) -> torch.Tensor:
    """This rank's rows of ``Mᵀ`` from this rank's rows of ``M``, with a gradient.

    ``M`` is a ``[B, B]`` matrix whose rows and columns both follow the batch's sharding;
    ``rows = M[own, :]`` (``[B_l, B]``) gives ``M[:, own]ᵀ`` (``[B_l, B]``, a transposed view
    of the received blocks). One all-to-all each way: ``B_l x B`` values out and as many in,
    of which only the blocks for other ranks cross; the send buffer is the one copy.
    """
    if rows.dim() != 2 or tuple(rows.shape) != (shards.size, shards.total):
        raise ValueError(f"transpose needs this rank's rows [{shards.size}, {shards.total}], got {tuple(rows.shape)}")
    return _Transpose.apply(rows, shards)
