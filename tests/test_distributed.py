"""Global-batch losses over 2 and 3 gloo processes equal the single-process losses, gradients included.

Every rank builds the same float64 models and the same global batch, takes its shard
(7 + 5 rows, or 5 + 1 + 4: uneven, one rank with a single sample; each rank's captions
padded to a different length), runs the loss with ``group=`` under
``DistributedDataParallel`` and compares the mean of the ranks' losses and every averaged
parameter gradient with the single-process reference on the whole batch, through the
public ops' ``group=``. The collectives under them (the all-to-all with uneven parts and
the distributed transpose with its gradient) are checked on 3 ranks.
"""
from __future__ import annotations

import datetime
import os
import socket
import traceback
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tgfr.ops import backends, collectives, info_nce, word_region_loss

RTOL, ATOL = 1e-9, 1e-12


@dataclass(frozen=True)
class Layout:
    """A global batch's shards, its identities and the longest caption of each shard."""

    shards: tuple[int, ...]
    class_ids: tuple[int, ...]
    words: tuple[int, ...]

    @property
    def world(self) -> int:
        return len(self.shards)


# identities 1, 2 and 3 have samples on both ranks
TWO_RANKS = Layout((7, 5), (0, 1, 2, 3, 0, 4, 5, 1, 6, 3, 7, 2), (6, 3))
# an odd world, a rank with one sample; identity 1 on all three ranks, 2 on the first and the last
THREE_RANKS = Layout((5, 1, 4), (0, 1, 2, 3, 4, 1, 5, 2, 1, 6), (6, 2, 4))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InfoNCEModel(nn.Module):
    def __init__(self, features, dim):
        super().__init__()
        self.a, self.b = nn.Linear(features, dim), nn.Linear(features, dim)
        self.log_temperature = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x, y, class_ids, backend, group):
        a, b = nn.functional.normalize(self.a(x), dim=-1), nn.functional.normalize(self.b(y), dim=-1)
        return info_nce(a, b, self.log_temperature.exp(), class_ids, backend, group=group)


class WordRegionModel(nn.Module):
    def __init__(self, features, dim):
        super().__init__()
        self.words, self.regions = nn.Linear(features, dim), nn.Linear(features, dim)

    def forward(self, x, r, mask, class_ids, backend, group):
        words = nn.functional.normalize(self.words(x), dim=-1)
        regions = torch.tanh(self.regions(r))
        i2t, t2i = word_region_loss(words, regions, mask, class_ids, 4.0, 5.0, 10.0, 1e-8, backend, group=group)
        return torch.stack([i2t, t2i])


def _inputs(op, generator, layout):
    B = sum(layout.shards)
    if op == "info_nce":
        return [torch.randn(B, 5, generator=generator, dtype=torch.float64),
                torch.randn(B, 5, generator=generator, dtype=torch.float64)]
    T, N = max(layout.words), 4
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    for start, size, longest in zip(_starts(layout), layout.shards, layout.words):  # each shard its own longest
        lengths[start:start + size] = lengths[start:start + size].clamp(max=longest)
        lengths[start] = longest
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return [torch.randn(B, T, 5, generator=generator, dtype=torch.float64),
            torch.randn(B, N, 5, generator=generator, dtype=torch.float64), mask]


def _starts(layout):
    return [sum(layout.shards[:rank]) for rank in range(layout.world)]


def _shard(op, inputs, rank, layout):
    start = _starts(layout)[rank]
    rows = slice(start, start + layout.shards[rank])
    shard = [x[rows] for x in inputs]
    if op == "word_region_loss":  # pad captions to this shard's longest only
        T = int(shard[2].sum(1).max())
        shard[0], shard[2] = shard[0][:, :T].contiguous(), shard[2][:, :T].contiguous()
    return shard


def _check_equivalence(rank, group, layout, op, backend, with_ids, device="cpu"):
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(11)
    model_cls = InfoNCEModel if op == "info_nce" else WordRegionModel
    single = model_cls(5, 4).double().to(device)
    inputs = [x.to(device) for x in _inputs(op, generator, layout)]
    ids = torch.tensor(layout.class_ids, device=device) if with_ids else None
    loss = single(*inputs, ids, "reference", None)
    loss.sum().backward()

    model = model_cls(5, 4).double().to(device)
    model.load_state_dict(single.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model, process_group=group)
    shard = _shard(op, inputs, rank, layout)
    start = _starts(layout)[rank]
    shard_ids = ids[start:start + layout.shards[rank]] if with_ids else None
    mine = ddp(*shard, shard_ids, backend, group)
    mine.sum().backward()
    mean = mine.detach().clone()
    dist.all_reduce(mean, group=group)
    mean /= dist.get_world_size(group)
    where = f"{op} backend={backend} class_ids={with_ids} shards={layout.shards}"
    torch.testing.assert_close(mean, loss.detach(), rtol=RTOL, atol=ATOL, msg=lambda m: f"{where} loss: {m}")
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=RTOL, atol=ATOL, msg=lambda m: f"{where} grad {name}: {m}")


def _check_bad_inputs(rank, group, layout):
    a = torch.randn(3, 4 if rank == 0 else 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"rank {rank}: embedding width D differs across ranks: .*rank {1 - rank}"):
        info_nce(a, a.clone(), torch.tensor(0.1, dtype=torch.float64), None, "reference", group=group)
    a = torch.randn(3, 4, dtype=torch.float64 if rank == 0 else torch.float32)
    with pytest.raises(ValueError, match=rf"rank {rank}: dtype differs across ranks"):
        info_nce(a, a.clone(), torch.tensor(0.1, dtype=a.dtype), None, "reference", group=group)
    # a bad shard on one rank: that rank names the argument, the other names the rank
    b = torch.randn(3 if rank == 0 else 2, 4, dtype=torch.float64)
    a = torch.randn(3, 4, dtype=torch.float64)
    expected = "rank 1: with a process group a and b are paired" if rank == 1 else r"rank 0: rank\(s\) \[1\]"
    with pytest.raises(ValueError, match=expected):
        info_nce(a, b, torch.tensor(0.1, dtype=torch.float64), None, "reference", group=group)
    # the score blocks of the all-to-all need one N and one D: a rank with other regions is named, not waited for
    words, regions = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 5 + rank, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"rank {rank}: regions per image N differs across ranks"):
        word_region_loss(words, regions, backend="reference", group=group)
    # a rank that never calls the loss: the other one stops at the group's timeout and says so
    short = dist.new_group(timeout=datetime.timedelta(seconds=2))
    if rank == 0:
        with pytest.raises(RuntimeError, match="rank 0: the metadata exchange .* timeout of 2 s"):
            info_nce(a, a.clone(), torch.tensor(0.1, dtype=torch.float64), None, "reference", group=short)
    dist.barrier(group)


def _shards(rank, group, layout):
    return collectives.Shards(group, rank, layout.shards, ())


def _check_all_to_all(rank, group, layout):
    """Rank r sends rank q ``(r + 2q) % 4`` rows (none, some, uneven); each rank receives the known blocks,
    and the reverse exchange (the adjoint, which the transpose's backward is) brings every block home."""
    world, generator = layout.world, torch.Generator().manual_seed(5)
    parts = [[(r + 2 * q) % 4 for q in range(world)] for r in range(world)]  # parts[r][q]: rows from r to q
    blocks = [[torch.randn(n, 3, generator=generator, dtype=torch.float64) for n in row] for row in parts]
    shards, receive = _shards(rank, group, layout), [parts[q][rank] for q in range(world)]
    out = collectives.all_to_all(torch.cat(blocks[rank]), parts[rank], receive, shards)
    torch.testing.assert_close(out, torch.cat([blocks[q][rank] for q in range(world)]), rtol=RTOL, atol=ATOL)
    back = collectives.all_to_all(out, receive, parts[rank], shards)
    torch.testing.assert_close(back, torch.cat(blocks[rank]), rtol=RTOL, atol=ATOL)


def _check_transpose(rank, group, layout):
    """This rank's rows of a matrix give this rank's rows of its transpose; the gradient is transposed back."""
    B, start = sum(layout.shards), _starts(layout)[rank]
    own = slice(start, start + layout.shards[rank])
    generator = torch.Generator().manual_seed(6)
    matrix, cotangent = (torch.randn(B, B, generator=generator, dtype=torch.float64) for _ in range(2))
    rows = matrix[own].clone().requires_grad_()
    out = collectives.transpose(rows, _shards(rank, group, layout))
    torch.testing.assert_close(out, matrix.t()[own], rtol=RTOL, atol=ATOL)
    (out * cotangent[own]).sum().backward()  # d/dM <Mᵀ, C> = Cᵀ
    torch.testing.assert_close(rows.grad, cotangent.t()[own], rtol=RTOL, atol=ATOL)


def _check_non_finite_regions(rank, group, layout):
    """Regions never leave their rank: a NaN in one rank's stops every rank at once, before the all-to-all."""
    short = dist.new_group(timeout=datetime.timedelta(seconds=5))  # not a wait for the 60 s timeout
    words, regions = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    if rank == 1:
        regions[1, 2, 0] = float("nan")
    expected = "rank 1: regions contains NaN or Inf values" if rank == 1 else rf"rank {rank}: rank\(s\) \[1\]"
    with pytest.raises(ValueError, match=expected):
        word_region_loss(words, regions, backend="reference", group=short)
    dist.barrier(group)


def _worker(rank, port, result_dir, layout, checks, backend="gloo"):
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=layout.world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        group = dist.group.WORLD
        for check, *args in checks:
            check(rank, group, layout, *args)
    except BaseException:
        with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def kernel_runs(op: str, backend: str, device: str = "cpu") -> bool:
    """Whether ``backend`` is available and computes the local blocks of ``op`` (InfoNCE: the rectangular form)."""
    if not backends.is_available(backend, torch.device(device)):
        return False
    x = torch.randn(6, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)

    def run(name):
        if op == "info_nce":
            return info_nce(x[:3, 0], x[:, 1], torch.tensor(0.5, dtype=torch.float64, device=device), None, name,
                            offset=3, symmetric=False)
        return word_region_loss(x[:3], x[1:4], backend=name)[0]
    try:
        torch.testing.assert_close(run(backend), run("reference"), rtol=1e-9, atol=1e-12)
    except (AssertionError, RuntimeError, TypeError, ValueError, NotImplementedError) as error:
        warnings.warn(f"{op} on the {backend} backend does not run here ({str(error)[:80]}): not compared")
        return False
    return True


def spawn_ranks(tmp_path, layout, checks, backend="gloo"):
    """Run each ``(check, *args)`` of ``checks`` as ``check(rank, group, layout, *args)`` on every rank."""
    try:
        mp.spawn(_worker, args=(free_port(), str(tmp_path), layout, checks, backend), nprocs=layout.world,
                 join=True)
    except mp.ProcessRaisedException:
        errors = "\n".join(p.read_text() for p in sorted(tmp_path.glob("rank*.txt")))
        pytest.fail(f"a rank failed:\n{errors}")


OPS = ("info_nce", "word_region_loss")


def test_losses_and_gradients_over_two_ranks_equal_one_process(tmp_path):
    # the interpreted triton word-region kernels take a minute even at these sizes: see the slow test
    cases = [(_check_equivalence, op, b, ids) for op in OPS for b in ("reference", "vectorized", "cpp", "triton")
             for ids in (False, True) if (op, b) != ("word_region_loss", "triton") and kernel_runs(op, b)]
    spawn_ranks(tmp_path, TWO_RANKS, [*cases, (_check_bad_inputs,)])


def test_losses_gradients_and_collectives_over_three_ranks(tmp_path):
    """An odd world with a one-sample rank: off-by-one block offsets of the all-to-all would show here."""
    cases = [(_check_equivalence, "word_region_loss", b, ids) for b in ("reference", "cpp") for ids in (False, True)
             if kernel_runs("word_region_loss", b)]
    cases += [(_check_equivalence, "info_nce", b, True) for b in ("reference", "cpp") if kernel_runs("info_nce", b)]
    spawn_ranks(tmp_path, THREE_RANKS,
                [(_check_all_to_all,), (_check_transpose,), *cases, (_check_non_finite_regions,)])


@pytest.mark.slow
@pytest.mark.parametrize("layout", [TWO_RANKS, THREE_RANKS], ids=["two_ranks", "three_ranks"])
def test_triton_word_region_over_ranks_equals_one_process(tmp_path, layout):
    if not kernel_runs("word_region_loss", "triton"):
        pytest.skip("the triton word-region kernels do not run here (not installed, or TRITON_INTERPRET is not 1)")
    spawn_ranks(tmp_path, layout, [(_check_equivalence, "word_region_loss", "triton", True)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_over_gloo_and_nccl(tmp_path):
    """CUDA tensors through gloo (3 ranks sharing the first GPU: the collectives' shape and device logic) and
    through nccl (one rank per GPU: as many ranks as GPUs, at least one)."""
    cases = [(_check_equivalence, op, b, True, "cuda") for op in OPS for b in ("reference", "cuda", "triton")
             if kernel_runs(op, b, "cuda")]
    (tmp_path / "gloo").mkdir(), (tmp_path / "nccl").mkdir()
    spawn_ranks(tmp_path / "gloo", THREE_RANKS, cases)
    gpus = min(torch.cuda.device_count(), 3)
    layout = Layout(THREE_RANKS.shards[:gpus], THREE_RANKS.class_ids[:sum(THREE_RANKS.shards[:gpus])],
                    THREE_RANKS.words[:gpus])
    spawn_ranks(tmp_path / "nccl", layout, cases, backend="nccl")


def test_group_without_torch_distributed_is_a_clear_error():
    a = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        info_nce(a, a, torch.tensor(0.1), None, "auto", group=object())
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        word_region_loss(a[None], a[None], None, None, 4.0, 5.0, 10.0, 1e-8, "auto", group=object())
