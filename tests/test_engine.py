"""The training engine on a stage of its own: the host reads the loss terms once per log interval and once per
epoch, never per batch; the run directory's files."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from tgfr.engine import CONFIG_NAME, LOG_NAME, Engine, EngineSettings, Stage, Training, read_checkpoint

# every way a tensor's value reaches the host
HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


class LinearStage(Stage):
    name = "linear"

    def __init__(self, layer: nn.Module, batches: int, epochs: int):
        self.layer, self.epochs = layer, epochs
        self.optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)  # SGD reads no step count on the host
        generator = torch.Generator().manual_seed(0)
        self.batches = [{"index": torch.arange(4), "x": torch.randn(4, 3, generator=generator)} for _ in range(batches)]

    def modules(self):
        return [self.layer]

    def start_epoch(self, epoch):
        return self.batches

    def loss(self, batch):
        out = self.layer(batch["x"])
        return {"loss": out.pow(2).mean(), "size": out.abs().mean()}


@dataclass
class LinearConfig:
    batches: int = 4
    epochs: int = 1


class LinearTraining(Training):
    kind, command, stages = "linear", "test", ("linear",)

    def __init__(self, config: LinearConfig, progress: bool = False, log_interval: int = 10):
        self.config = config
        self.settings = EngineSettings(seed=0, device="cpu", progress=progress, log_interval=log_interval)

    def prepare(self, saved, device, ranks, out_dir):
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)

    def epochs(self, stage):
        return self.config.epochs

    def build_stage(self, name):
        return LinearStage(self.layer, self.config.batches, self.config.epochs)

    def state(self):
        return {"model": self.layer.state_dict()}


def _host_reads(monkeypatch, tmp_path, batches: int, progress: bool) -> int:
    """How many times the engine's run of one epoch of ``batches`` batches read a tensor on the host."""
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    Engine(LinearTraining(LinearConfig(batches), progress=progress), tmp_path / f"{batches}-{progress}").run()
    monkeypatch.undo()
    return len(reads)


def test_loss_terms_reach_the_host_once_per_log_interval_not_per_batch(monkeypatch, tmp_path):
    # without a progress bar: the epoch's means alone, however many batches
    assert _host_reads(monkeypatch, tmp_path, 40, progress=False) == _host_reads(monkeypatch, tmp_path, 4, False)
    # with one (log_interval 10): one more read per 10 batches
    assert _host_reads(monkeypatch, tmp_path, 40, True) - _host_reads(monkeypatch, tmp_path, 4, True) == 4


def test_the_log_holds_the_per_sample_means_and_the_run_directory_its_files(tmp_path):
    training = LinearTraining(LinearConfig(batches=3, epochs=2))
    checkpoint = Engine(training, tmp_path).run()
    records = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [(r["step"], r["epoch"], r["samples"]) for r in records] == [("linear", 1, 12), ("linear", 2, 12)]
    assert set(records[0]) == {"step", "epoch", "epochs", "lr", "loss", "size", "samples", "seconds"}
    assert (tmp_path / CONFIG_NAME).read_text() == "batches: 3\nepochs: 2\n"
    state = read_checkpoint(checkpoint, "linear", "test")
    assert state["progress"] == {"step": "linear", "epochs_done": 2} and "optimizer" in state["trainer"]
    with pytest.raises(FileExistsError, match="already holds a training run"):
        Engine(LinearTraining(LinearConfig()), tmp_path).run()
    with pytest.raises(ValueError, match=r"differs from the run's in batches \(3 -> 4\)"):
        Engine(LinearTraining(LinearConfig(batches=4, epochs=2)), tmp_path, resume=True).run()


def test_a_run_with_nothing_to_train_still_keeps_its_model(tmp_path):
    checkpoint = Engine(LinearTraining(LinearConfig(epochs=0)), tmp_path).run()
    state = read_checkpoint(checkpoint, "linear", "test")
    assert state["progress"] == {"step": "linear", "epochs_done": 0} and state["trainer"] is None
    assert not (tmp_path / LOG_NAME).exists()
