"""tgfr.atomic: a file is replaced whole or not at all, also with several processes writing it at once."""
from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

from tgfr.atomic import read_cache, save_tensors, write_file, write_text


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_text(path, '{"epoch": 1}')

    def interrupted(f):
        f.write(b'{"epoch": 2')
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        write_file(path, interrupted)
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_tensors_load_back_with_weights_only(tmp_path):
    state = {"weight": torch.randn(3, 4, dtype=torch.float64), "names": ["a", "b"]}
    path = save_tensors(state, tmp_path / "state.pt")
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["names"] == state["names"]


def _write_many(path: str, writer: int, barrier) -> None:
    barrier.wait()
    for i in range(100):
        write_text(path, json.dumps({"writer": writer, "i": i, "padding": "x" * 4096}))


def test_processes_writing_one_path_at_once_all_succeed(tmp_path):
    # every rank of a torchrun job writes the same cache or split file: with one shared temporary
    # name, one rank's rename moved the file that another was about to rename
    path = str(tmp_path / "shared.json")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    workers = [context.Process(target=_write_many, args=(path, w, barrier)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    final = json.loads(open(path).read())  # one writer's whole last file
    assert final["i"] == 99 and final["writer"] in (0, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


def test_a_cache_that_cannot_be_used_reads_as_none(tmp_path):
    path = tmp_path / "cache.pt"
    assert read_cache(path, ["x"]) is None  # none yet
    save_tensors({"x": torch.arange(3)}, path)
    assert torch.equal(read_cache(path, ["x"])["x"], torch.arange(3))
    assert read_cache(path, ["x", "y"]) is None  # written by another version: a key is missing
    path.write_bytes(path.read_bytes()[:50])
    assert read_cache(path, ["x"]) is None  # damaged
