"""The training engine: what every command that trains shares.

A command describes its run as a :class:`Training` (its config, data and model, the stages it
trains and what its checkpoint keeps) and each stage as a :class:`Stage` (what it trains, with which
optimizer, its batches and its loss). :class:`Engine` does the rest, the same way for all of them:

* the run directory (``config.yaml``, ``checkpoint.pt``, ``log.jsonl``; rank 0 alone writes);
* resume: a run continues at the first unfinished epoch of its unfinished stage, with the weights,
  optimizer and loss heads of the last finished epoch. Every epoch reseeds from
  ``(seed, stage, epoch)``, so a run that was killed and resumed gives the weights of one that was not;
* the epochs: train modes, the batches, mixed precision, the optimizer steps, a progress bar (tqdm);
* torchrun: a stage trains inside ``DistributedDataParallel`` (:class:`StageRunner`), its
  contrastive losses see the global batch, and its data are sharded over the ranks;
* the log: loss terms are summed on the device and read by the host once per ``log_interval``
  batches (for the progress bar, when it shows) and once at the end of the epoch, never per batch.

Where the rules of a run directory go: :meth:`Engine._resume_point` decides what an existing run
directory means (continue it, refuse it); :meth:`Engine._train_stage` is where an interrupted
epoch (Ctrl-C) would be caught and named.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import config as configs
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, read_checkpoint, save_checkpoint
from .distributed import Distributed, DistributedConfig


class ResumeError(ValueError):
    """A run directory whose run cannot continue under the config given."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of an epoch of the stage at position ``stage`` (epoch -1: the stage's initialisation)."""
    return seed * 1_000_003 + stage * 10_007 + epoch


@dataclass
class Epoch:
    """What a stage needs to draw one epoch's batches: its number, its seed and a generator seeded with
    it, and the process group (a rank reads its own part of the epoch)."""

    number: int
    seed: int
    generator: torch.Generator
    ranks: Distributed


class Stage:
    """One stage of a run: what it trains, with which optimizer, its batches and its loss.

    Subclasses set ``name``, ``epochs`` and ``optimizer`` and give :meth:`modules`,
    :meth:`start_epoch` and :meth:`loss`; the other methods have defaults.
    """

    name: str
    epochs: int
    optimizer: torch.optim.Optimizer

    def modules(self) -> list[nn.Module]:
        """Every module whose parameters this stage trains (what DDP wraps)."""
        raise NotImplementedError

    def start_epoch(self, epoch: Epoch) -> Iterable:
        """Set the train/eval modes and learning rates of ``epoch``; returns its batches (with a length)."""
        raise NotImplementedError

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """The loss terms of a batch: ``"loss"`` is minimised, every term is logged."""
        raise NotImplementedError

    def backward(self, batch, runner: StageRunner) -> dict[str, torch.Tensor]:
        """Back-propagate the loss of a batch; returns its terms. The default runs ``runner.forward``;
        a stage that computes its gradients another way calls ``runner.average_gradients()`` after."""
        terms = runner.forward(batch)
        terms["loss"].backward()
        return terms

    def after_optimizer_step(self) -> None:
        """After every optimizer step (a learning rate that changes per batch)."""

    def count(self, batch) -> int:
        """Samples in a batch: the weight of its loss in the epoch's mean."""
        return len(batch["index"])

    def epoch_log(self) -> dict:
        """What the log records of this stage's epoch besides the losses (the learning rate, ...)."""
        return {"lr": self.optimizer.param_groups[-1]["lr"]}

    def prepare(self) -> None:
        """Work before the stage's first epoch, on rank 0 first (a cache the ranks share on disk)."""

    def use_process_group(self, group) -> None:
        """Under torchrun: hand the process group to the losses whose negatives span the global batch."""

    def state_dict(self) -> dict:
        """What resumes this stage mid-way besides the model (the optimizer, loss heads)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class _StageModule(nn.Module):
    """What DDP wraps: a stage's trained modules; ``forward`` is the stage's batch loss."""

    def __init__(self, stage: Stage):
        super().__init__()
        self.trained = nn.ModuleList(stage.modules())
        self.stage = stage

    def forward(self, batch):
        return self.stage.loss(batch)


class StageRunner:
    """How the engine runs a batch of a stage: its loss through ``DistributedDataParallel`` under
    torchrun (on the process group's global batch), under mixed precision when enabled."""

    def __init__(self, stage: Stage, ranks: Distributed | None = None, device=None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.stage, self.ranks, self.autocast = stage, ranks or Distributed(), autocast
        self.loss = stage.loss
        if self.ranks.enabled:
            stage.use_process_group(self.ranks.group)
            if self.ranks.config.sync_batchnorm:
                # the parameters stay the same objects, so the stage's optimizer still holds them
                for module in stage.modules():
                    nn.SyncBatchNorm.convert_sync_batchnorm(module)
            device = torch.device(device) if device is not None else torch.device("cpu")
            # unused parameters: loss terms switched off, the unused pooler of a Hugging Face text model
            self.loss = nn.parallel.DistributedDataParallel(
                _StageModule(stage), device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.loss(batch)

    def average_gradients(self) -> None:
        """Average the gradients over the ranks, as DDP does, after a backward that bypassed its forward."""
        self.ranks.average_gradients(p for group in self.stage.optimizer.param_groups for p in group["params"])

    def train_batch(self, batch) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch``; returns its loss terms (still on the device)."""
        optimizer = self.stage.optimizer
        optimizer.zero_grad(set_to_none=True)
        terms = self.stage.backward(batch, self)
        optimizer.step()
        self.stage.after_optimizer_step()
        return terms


class _Totals:
    """Loss terms summed on the device, weighted by the samples of each batch; the host reads them only
    when asked (one transfer for all terms)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.samples = 0

    def add(self, terms: dict[str, torch.Tensor], samples: int) -> None:
        for key, value in terms.items():
            weighted = value.detach().double() * samples
            self.sums[key] = self.sums[key] + weighted if key in self.sums else weighted
        self.samples += samples

    def means(self, ranks: Distributed | None = None) -> tuple[dict[str, float], int]:
        """Per-sample means of every term and the sample count (summed over the ranks when given)."""
        if not self.sums:
            return {}, self.samples
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys])
        values = torch.cat([values, values.new_tensor([self.samples])])
        if ranks is not None:
            values = ranks.sum_over_ranks(values)
        read = values.tolist()
        samples = int(read[-1])
        return {k: v / max(samples, 1) for k, v in zip(keys, read)}, samples


@dataclass
class EngineSettings:
    """How the engine runs a training: ``device`` ("auto": CUDA when there is one), bfloat16 autocast
    on CUDA (``amp``), the progress bar, how many batches between two host reads of the running loss
    for it (``log_interval``), and data-parallel training under torchrun (``distributed``; None:
    the command trains in one process)."""

    seed: int
    device: str = "auto"
    amp: bool = False
    progress: bool = True
    log_interval: int = 50
    distributed: DistributedConfig | None = None


class Training:
    """What a command trains: its config, data and model, its stages and its checkpoint's contents."""

    kind: str  # the checkpoint's "kind"
    command: str  # the command that trains it, for messages ("tgfr train")
    stages: tuple[str, ...]  # every stage, in order: a stage's position seeds its epochs
    config: object  # the run's config dataclass (config.yaml)
    settings: EngineSettings

    def first_stage(self) -> str:
        return self.stages[0]

    def check_resumable(self, saved_config: dict) -> None:
        """Raise :class:`ResumeError` when the run saved with ``saved_config`` cannot continue under ``config``."""
        differing = configs.differences(configs.dump(self.config), saved_config)
        if differing:
            raise ResumeError(f"cannot resume: the config differs from the checkpoint's in {differing}")

    def prepare(self, saved: dict | None, device: torch.device, ranks: Distributed, out_dir: Path) -> None:
        """Read the data and build the model (from the checkpoint ``saved`` when resuming)."""
        raise NotImplementedError

    def build_stage(self, name: str) -> Stage:
        raise NotImplementedError

    def state(self) -> dict:
        """What the checkpoint keeps besides the engine's keys (the model's state dict, ...)."""
        raise NotImplementedError


class Engine:
    """Trains a :class:`Training` into a run directory; ``run()`` returns the checkpoint path.

    ``resume=True`` continues the run in ``out_dir`` (or starts one when there is none); without
    it an existing checkpoint is an error rather than being overwritten. ``on_epoch(record)`` is
    called on rank 0 after every epoch is logged and checkpointed.
    """

    def __init__(self, training: Training, out_dir, resume: bool = False,
                 on_epoch: Callable[[dict], None] | None = None):
        self.training, self.out_dir, self.resume, self.on_epoch = training, Path(out_dir), resume, on_epoch
        self.settings = training.settings
        self.checkpoint = self.out_dir / CHECKPOINT_NAME
        # the config as requested, before building the model may fill in fields (config.yaml)
        self.requested = configs.dump(training.config)

    def _resume_point(self) -> dict | None:
        """The checkpoint this run continues, or None for a new run."""
        if not self.checkpoint.exists():
            return None
        if not self.resume:
            raise FileExistsError(f"{self.out_dir} already holds a training run; resume it or use another out_dir")
        saved = read_checkpoint(self.checkpoint, self.training.kind, self.training.command)
        self.training.check_resumable(saved["config"])
        return saved

    def run(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        saved = self._resume_point()
        device = resolve_device(self.settings.device)
        self.ranks = Distributed.from_environment(self.settings.distributed, device)  # torchrun: one process per rank
        self.device = self.ranks.device(device)
        try:
            self.training.prepare(saved, self.device, self.ranks, self.out_dir)
            if self.ranks.is_main:
                configs.save(self.requested, self.out_dir / CONFIG_NAME)
            progress = saved["progress"] if saved else {"step": self.training.first_stage(), "epochs_done": 0}
            stages = self.training.stages
            for position, name in enumerate(stages[stages.index(progress["step"]):]):
                resuming = position == 0 and saved is not None
                self._train_stage(name, progress["epochs_done"] if position == 0 else 0,
                                  saved["trainer"] if resuming else None)
            if self.ranks.is_main and not self.checkpoint.exists():  # nothing to train: the model as built
                self._save(self.training.first_stage(), 0, None)
        finally:
            self.ranks.close()
        return self.checkpoint

    def _save(self, stage: str, epochs_done: int, trainer: dict | None) -> None:
        save_checkpoint({"kind": self.training.kind, "config": configs.dump(self.training.config),
                         "progress": {"step": stage, "epochs_done": epochs_done}, "trainer": trainer,
                         **self.training.state()}, self.checkpoint)

    def _autocast(self):
        if self.device.type == "cuda" and self.settings.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_stage(self, name: str, epochs_done: int, trainer: dict | None) -> None:
        position = self.training.stages.index(name)
        torch.manual_seed(epoch_seed(self.settings.seed, position, -1))  # a resumed run initialises its heads alike
        stage = self.training.build_stage(name)
        runner = StageRunner(stage, self.ranks, self.device, self._autocast)
        if trainer is not None:
            stage.load_state_dict(trainer)
        if epochs_done < stage.epochs:
            self.ranks.main_first(stage.prepare)
        for number in range(epochs_done, stage.epochs):
            record = self._train_epoch(stage, runner, position, number)
            if not self.ranks.is_main:
                continue
            with open(self.out_dir / LOG_NAME, "a") as log:
                log.write(json.dumps(record) + "\n")
            self._save(name, number + 1, stage.state_dict())
            if self.on_epoch is not None:
                self.on_epoch(record)

    def _train_epoch(self, stage: Stage, runner: StageRunner, position: int, number: int) -> dict:
        seed = epoch_seed(self.settings.seed, position, number)
        torch.manual_seed(seed)  # dropout and the other randomness of this epoch
        epoch = Epoch(number, seed, torch.Generator().manual_seed(seed), self.ranks)
        batches = stage.start_epoch(epoch)
        totals, started = _Totals(), time.perf_counter()
        show = self.settings.progress and self.ranks.is_main
        bar = tqdm(batches, total=len(batches), desc=f"{stage.name} {number + 1}/{stage.epochs}", disable=not show,
                   leave=False)
        for index, batch in enumerate(bar, start=1):
            terms = runner.train_batch(batch)
            totals.add(terms, stage.count(batch))
            if show and index % self.settings.log_interval == 0:
                bar.set_postfix(loss=f"{totals.means()[0]['loss']:.4g}")
        means, samples = totals.means(self.ranks)
        return {"step": stage.name, "epoch": number + 1, "epochs": stage.epochs, **stage.epoch_log(), **means,
                "samples": samples, "seconds": round(time.perf_counter() - started, 3)}
