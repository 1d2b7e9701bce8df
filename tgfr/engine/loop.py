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

What a run directory holds always describes what ran. :meth:`Engine._resume_point` decides what an
existing run directory means: a run of another command or a damaged checkpoint is refused, and a
resumed run may change only what has not trained yet (:meth:`Engine._check_resumable`): the
settings of the stages it has not started, the epochs of the stage it is in (more epochs train
them), and the settings that change nothing trained (``Training.run_settings``). A finished run
with nothing left to train is not touched: no file of it is rewritten. A new run directory is
created only once the data are read; if reading them fails, what was created is removed again.
Ctrl-C stops the run with :class:`TrainingInterrupted`, which names where it stopped; the epoch's
log line and checkpoint are written together or not at all.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
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


class RunExistsError(FileExistsError):
    """A new run asked for in a directory that already holds one (``out_dir``)."""

    def __init__(self, message: str, out_dir: Path):
        super().__init__(message)
        self.out_dir = out_dir


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: ``where`` it stopped (``"in align epoch 3"``) and whether ``saved``, a
    checkpoint in the run directory keeps its last finished epoch."""

    def __init__(self, where: str, saved: bool):
        super().__init__(f"interrupted {where}")
        self.where, self.saved = where, saved


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C during the block takes effect when it ends, so that what it writes is written whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)


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


class Optimizers:
    """Several optimizers stepped as one, for a stage whose parameters train under different rules
    (Adam for a fusion module, SGD for its ArcFace head); what the engine uses of an optimizer."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)


class Stage:
    """One stage of a run: what it trains, with which optimizer, its batches and its loss.

    Subclasses set ``name``, ``epochs`` and ``optimizer`` and give :meth:`modules`,
    :meth:`start_epoch` and :meth:`loss`; the other methods have defaults.
    """

    name: str
    epochs: int
    optimizer: torch.optim.Optimizer | Optimizers

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
    """What a command trains: its config, data and model, its stages and its checkpoint's contents.

    The settings of a stage alone live under the config key :meth:`section` names (TGFR's
    ``align``); every other key is the whole run's. ``run_settings`` are the keys (or sections) that
    change how a run is shown or where it reads from, never what it trains: a resumed run may
    change them.
    """

    kind: str  # the checkpoint's "kind"
    command: str  # the command that trains it, for messages ("tgfr train")
    stages: tuple[str, ...]  # every stage, in order: a stage's position seeds its epochs
    config: object  # the run's config dataclass (config.yaml)
    settings: EngineSettings
    run_settings: tuple[str, ...] = ()

    def first_stage(self) -> str:
        return self.stages[0]

    def section(self, stage: str) -> str | None:
        """The config key of the settings of ``stage`` alone; None: its settings are the run's."""
        return None

    def epochs(self, stage: str) -> int:
        """The epochs ``stage`` trains, by the config."""
        raise NotImplementedError

    def comparable(self, values: dict) -> dict:
        """A dumped config as resuming compares it (without what building the model fills in)."""
        return values

    def prepare(self, saved: dict | None, device: torch.device, ranks: Distributed, out_dir: Path) -> None:
        """Read the data and build the model (from the checkpoint ``saved`` when resuming)."""
        raise NotImplementedError

    def build_stage(self, name: str) -> Stage:
        raise NotImplementedError

    def state(self) -> dict:
        """What the checkpoint keeps besides the engine's keys (the model's state dict, ...)."""
        raise NotImplementedError


def _value(values: dict, key: str):
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _changes(keys: list[str], before: dict, after: dict) -> str:
    shown = [f"{key} ({_value(before, key)!r} -> {_value(after, key)!r})" for key in keys[:4]]
    return ", ".join(shown) + (", ..." if len(keys) > 4 else "")


class Engine:
    """Trains a :class:`Training` into a run directory; ``run()`` returns the checkpoint path.

    ``resume=True`` continues the run in ``out_dir`` (or starts one when there is none); without
    it an existing checkpoint is an error rather than being overwritten. ``on_epoch(record)`` is
    called on rank 0 after every epoch is logged and checkpointed; ``log`` gets a line when a
    resumed run has nothing left to train.
    """

    def __init__(self, training: Training, out_dir, resume: bool = False,
                 on_epoch: Callable[[dict], None] | None = None, log: Callable[[str], None] | None = None):
        self.training, self.out_dir, self.resume, self.on_epoch = training, Path(out_dir), resume, on_epoch
        self.log = log
        self.settings = training.settings
        self.checkpoint = self.out_dir / CHECKPOINT_NAME
        # the config as requested, before building the model may fill in fields (config.yaml)
        self.requested = configs.dump(training.config)
        self.where = "while preparing the run"

    def _resume_point(self) -> dict | None:
        """The checkpoint this run continues, or None for a new run."""
        if not self.checkpoint.exists():
            return None
        saved = read_checkpoint(self.checkpoint, self.training.kind, self.training.command)
        if not self.resume:
            raise RunExistsError(f"{self.out_dir} already holds a training run of '{self.training.command}'; "
                                 "resume it or start a new run in another directory", self.out_dir)
        self._check_resumable(saved)
        return saved

    def _check_resumable(self, saved: dict) -> None:
        """A :class:`ResumeError` when the config asks for another run than the one ``saved`` trained so far:
        only what has not trained yet may change."""
        training, stages = self.training, self.training.stages
        requested, trained = training.comparable(self.requested), training.comparable(saved["config"])
        step, done = saved["progress"]["step"], saved["progress"]["epochs_done"]
        first, current = stages.index(training.first_stage()), stages.index(step)
        sections = {training.section(stage): stage for stage in stages if training.section(stage)}
        fixed, finished, started, undone = [], [], [], []
        for key in configs.differences(requested, trained):
            if any(key == setting or key.startswith(setting + ".") for setting in training.run_settings):
                continue
            stage = sections.get(key.split(".")[0])
            position = stages.index(stage) if stage is not None else None
            if position is None:
                fixed.append(key)
            elif position < first or position > current or (position == current and done == 0):
                continue  # a stage that has trained nothing yet
            elif position < current:
                finished.append(key)
            elif key != f"{key.split('.')[0]}.epochs":
                started.append(key)
            elif _value(requested, key) < done:
                undone.append(key)
        where = f"cannot resume {self.out_dir}:"
        remedy = f"; start a new run in another directory, or resume with the run's config ({CONFIG_NAME})"
        if fixed:
            raise ResumeError(f"{where} the config differs from the run's in {_changes(fixed, trained, requested)}, "
                              f"which are fixed once a run has started{remedy}")
        if finished:
            stage = sections[finished[0].split(".")[0]]
            raise ResumeError(f"{where} step '{stage}' has finished and the steps after it trained on it, so "
                              f"{_changes(finished, trained, requested)} cannot change{remedy}")
        if started:
            raise ResumeError(f"{where} step '{step}' has trained {done} epoch(s) with the run's settings, so "
                              f"{_changes(started, trained, requested)} cannot change (its epochs may grow)"
                              f"{remedy}")
        if undone:
            raise ResumeError(f"{where} step '{step}' has already trained {done} epoch(s), more than "
                              f"{_changes(undone, trained, requested)}{remedy}")

    def _left_to_train(self, progress: dict) -> bool:
        stages = self.training.stages
        position = stages.index(progress["step"])
        return progress["epochs_done"] < self.training.epochs(progress["step"]) or \
            any(self.training.epochs(stage) > 0 for stage in stages[position + 1:])

    @contextlib.contextmanager
    def _new_directory(self):
        """``out_dir``, created (with its missing folders) for the block; if the block fails before the run
        has a checkpoint, what it created is removed again."""
        missing = [path for path in (self.out_dir, *self.out_dir.parents) if not path.exists()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            yield
        except BaseException:
            if missing and self.ranks.is_main and not self.checkpoint.exists():
                shutil.rmtree(missing[-1], ignore_errors=True)
            raise

    def run(self) -> Path:
        saved = self._resume_point()
        if saved is not None and not self._left_to_train(saved["progress"]):
            if self.log is not None:
                self.log(f"{self.out_dir} has trained every epoch of its config: nothing left to train")
            return self.checkpoint  # a finished run: nothing is read, trained or rewritten
        device = resolve_device(self.settings.device)
        self.ranks = Distributed.from_environment(self.settings.distributed, device)  # torchrun: one process per rank
        self.device = self.ranks.device(device)
        try:
            with self._new_directory():
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
        except KeyboardInterrupt as interrupt:
            raise TrainingInterrupted(self.where, self.checkpoint.is_file()) from interrupt
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
            self.where = f"while preparing {name}"
            self.ranks.main_first(stage.prepare)
        for number in range(epochs_done, stage.epochs):
            self.where = f"in {name} epoch {number + 1}"
            record = self._train_epoch(stage, runner, position, number)
            if not self.ranks.is_main:
                continue
            with _interrupts_deferred():  # the log and the checkpoint agree on the epochs done
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
