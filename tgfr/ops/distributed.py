"""The two losses over a global batch sharded across the ranks of a process group.

Each rank passes its shard (shards may differ in size). The embeddings of every
rank are gathered with a gradient (only embeddings cross ranks; the backward of the
gather sums every rank's gradient of its copy), and each rank computes the rows of
the global loss that belong to its own samples against the whole gathered batch:
``O(B_local x B_global)`` scores per rank, never ``B_global x B_global``.

Scaling: rank ``r`` returns ``W / B_global`` times the sum of its rows' terms, so that

* the mean over the ``W`` ranks of the returned losses is the single-process loss
  on the concatenated batch, and
* with ``DistributedDataParallel`` (which averages gradients over ranks) every
  parameter gradient, the temperature's included, is the single-process gradient.

Before any gather the ranks exchange a small metadata tensor (shard size, widths,
dtype, whether ``class_ids`` were given, whether the shard passed its checks), so a
mismatch ends in an error naming both ranks on every rank, not in a hang; a rank
that never arrives ends in the process group's timeout, which the error reports.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .common import FLOAT_DTYPES, masked_cross_entropy
from .info_nce import check_args as check_info_nce_args
from .info_nce import info_nce as rectangular_info_nce
from .word_region import check_loss_args as check_word_region_loss_args
from .word_region import word_region_scores

_OPS = ("info_nce", "word_region_loss")
# metadata fields, one int64 each
_FIELDS = ("ok", "op", "batch", "width", "dtype", "class_ids", "words", "regions")


def _world(group) -> tuple[int, int]:
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


def _timeout_seconds(group) -> float | None:
    try:
        return group._get_backend(_comm_device(group, torch.device("cpu"))).options._timeout.total_seconds()
    except (AttributeError, RuntimeError):
        return None


def _comm_device(group, device: torch.device) -> torch.device:
    """Where this group's collectives take their tensors: NCCL needs CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend(group) == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def _exchange_metadata(op: str, fields: dict, error: Exception | None, rank: int, world: int, group,
                       device: torch.device) -> list[dict]:
    """Every rank's metadata; raises on every rank if any rank failed its checks or differs in kind."""
    values = [0 if error else 1, _OPS.index(op)] + [int(fields.get(name, -1)) for name in _FIELDS[2:]]
    mine = torch.tensor(values, dtype=torch.int64, device=_comm_device(group, device))
    everyone = [dict(zip(_FIELDS, t.tolist())) for t in _all_gather(mine, rank, world, group, "metadata exchange")]
    if error is not None:
        raise type(error)(f"rank {rank}: {error}") from error
    failed = [r for r, meta in enumerate(everyone) if not meta["ok"]]
    if failed:
        raise ValueError(f"rank {rank}: rank(s) {failed} of the group passed invalid inputs to the distributed "
                         f"{op} (their own error says which)")
    names = {"op": "the loss called", "width": "embedding width D", "dtype": "dtype",
             "class_ids": "class_ids given (1) or not (0)", "regions": "regions per image N"}
    for field, label in names.items():
        for r, meta in enumerate(everyone):
            if meta[field] != everyone[rank][field]:
                def show(v, f=field):
                    return _OPS[v] if f == "op" else str(FLOAT_DTYPES[v]) if f == "dtype" else v
                raise ValueError(f"rank {rank}: {label} differs across ranks: rank {rank} has "
                                 f"{show(everyone[rank][field])}, rank {r} has {show(meta[field])}")
    return everyone


class _GatherWithGradient(torch.autograd.Function):
    """All-gather of uneven shards along dim 0; the backward sums every rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        world = len(sizes)
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        device = _comm_device(group, x.device)
        parts = _all_gather(padded.to(device), rank, world, group, "gather of the embeddings")
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(x.device)

    @staticmethod
    def backward(ctx, grad):
        # gloo has no reduce-scatter of uneven parts: an all-reduce of the [B_global, ...] gradient, then our rows
        device = _comm_device(ctx.group, grad.device)
        total = grad.contiguous().to(device)
        _collective("gather's backward (all-reduce)", ctx.rank, ctx.group,
                    lambda: dist.all_reduce(total, group=ctx.group))
        start = sum(ctx.sizes[: ctx.rank])
        return total[start: start + ctx.sizes[ctx.rank]].to(grad.device), None, None, None


def _gather(x: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    return _GatherWithGradient.apply(x, sizes, rank, group)


def _gather_ids(ids: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    with torch.no_grad():
        return _GatherWithGradient.apply(ids, sizes, rank, group)


def _dtype_code(x: torch.Tensor) -> int:
    return FLOAT_DTYPES.index(x.dtype) if x.dtype in FLOAT_DTYPES else -1


def info_nce(a, b, temperature, class_ids, backend, symmetric, group) -> torch.Tensor:
    """This rank's share of the InfoNCE of the global batch (see the module docstring)."""
    rank, world = _world(group)
    error = None
    try:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape[:1] != b.shape[:1]:
            raise ValueError(f"with a process group a and b are paired shards: a has shape {tuple(a.shape)}, "
                             f"b has {tuple(b.shape)}")
        check_info_nce_args(a, b, temperature, class_ids)
    except (TypeError, ValueError) as caught:
        error = caught
    width = a.shape[-1] if isinstance(a, torch.Tensor) and a.dim() == 2 else -1
    meta = _exchange_metadata(
        "info_nce", {"batch": a.shape[0] if width >= 0 else 0, "width": width,
                     "dtype": _dtype_code(a) if isinstance(a, torch.Tensor) else -1,
                     "class_ids": class_ids is not None}, error, rank, world, group,
        a.device if isinstance(a, torch.Tensor) else torch.device("cpu"))
    sizes = [m["batch"] for m in meta]
    offset, total = sum(sizes[:rank]), sum(sizes)
    both = _gather(torch.cat([a, b], dim=1), sizes, rank, group)
    a_all, b_all = both[:, : a.shape[1]], both[:, a.shape[1]:]
    ids = _gather_ids(class_ids.to(torch.int64), sizes, rank, group) if class_ids is not None else None
    scale = world * a.shape[0] / total  # each term below is a mean over this rank's rows
    # rows: this rank's a against every b; columns: this rank's b against every a
    loss = scale * rectangular_info_nce(a, b_all, temperature, ids, backend, offset=offset, symmetric=False)
    if not symmetric:
        return loss
    columns = rectangular_info_nce(b, a_all, temperature, ids, backend, offset=offset, symmetric=False)
    return 0.5 * (loss + scale * columns)


def word_region_loss(words, regions, word_mask, class_ids, gamma1, gamma2, gamma3, eps, backend,
                     group) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``(image_to_caption, caption_to_image)`` share of the global WRCL."""
    rank, world = _world(group)
    error = None
    try:
        gamma1, gamma2, gamma3, eps = check_word_region_loss_args(words, regions, word_mask, class_ids, gamma1,
                                                                  gamma2, gamma3, eps)
    except (TypeError, ValueError) as caught:
        error = caught
    shaped = error is None
    meta = _exchange_metadata(
        "word_region_loss",
        {"batch": words.shape[0] if shaped else 0, "width": words.shape[2] if shaped else -1,
         "dtype": _dtype_code(words) if shaped else -1, "class_ids": class_ids is not None,
         "words": words.shape[1] if shaped else -1, "regions": regions.shape[1] if shaped else -1},
        error, rank, world, group, words.device if isinstance(words, torch.Tensor) else torch.device("cpu"))
    sizes = [m["batch"] for m in meta]
    offset, total = sum(sizes[:rank]), sum(sizes)
    T = words.shape[1]
    max_words = max(m["words"] for m in meta)  # captions are padded to their own rank's longest
    if word_mask is None:
        word_mask = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device)
    padded_words = F.pad(words, (0, 0, 0, max_words - T))
    padded_mask = F.pad(word_mask, (0, max_words - T), value=False)
    both = _gather(torch.cat([padded_words, regions], dim=1), sizes, rank, group)
    words_all, regions_all = both[:, :max_words], both[:, max_words:]
    ints = padded_mask.to(torch.int64)
    if class_ids is not None:
        ints = torch.cat([ints, class_ids.to(torch.int64)[:, None]], dim=1)
    ints_all = _gather_ids(ints, sizes, rank, group)
    mask_all = ints_all[:, :max_words].bool()
    ids = ints_all[:, max_words] if class_ids is not None else None
    # rows: this rank's images against every caption; columns: this rank's captions against every image
    image_rows = word_region_scores(words_all, regions, mask_all, gamma1, gamma2, eps, backend)  # [B_l, B_g]
    caption_rows = word_region_scores(words, regions_all, word_mask, gamma1, gamma2, eps, backend).t()
    scale = world / total
    image_to_caption = scale * masked_cross_entropy(gamma3 * image_rows, ids, offset, reduction="sum")
    caption_to_image = scale * masked_cross_entropy(gamma3 * caption_rows, ids, offset, reduction="sum")
    return image_to_caption, caption_to_image
